"""store:true responses on SQLite and on PostgreSQL: they outlive the process, survive
SIGKILL, and expire. Every test runs against both backends."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import KEY_A, KEY_B, fresh_store, start_server

AUTH = {"Authorization": f"Bearer {KEY_A}"}
OTHER = {"Authorization": f"Bearer {KEY_B}"}
KEYS = ("--api-key", KEY_A, "--api-key", KEY_B)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_store(request, tmp_path)


def stored_rows(store: str) -> list[tuple[str, str, str]]:
    if store.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(store) as conn:
            return list(conn.execute("SELECT id, status, response FROM responses").fetchall())
    with sqlite3.connect(store) as conn:
        return conn.execute("SELECT id, status, response FROM responses").fetchall()


def create(base: str, body: dict[str, Any], headers: dict[str, str] = AUTH) -> dict[str, Any]:
    r = httpx.post(
        f"{base}/responses",
        json={"model": "default", "temperature": 0} | body,
        headers=headers,
        timeout=120,
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_responses_survive_a_restart(store: str) -> None:
    db = store
    s = start_server(*KEYS, "--store", str(db), name="store1")
    try:
        first = create(s.base_url, {"input": "My name is Ada.", "max_output_tokens": 6})
        second = create(
            s.base_url,
            {
                "input": "What is my name?",
                "max_output_tokens": 6,
                "previous_response_id": first["id"],
            },
        )
        ephemeral = create(s.base_url, {"input": "Hi", "max_output_tokens": 2, "store": False})
    finally:
        s.stop()
    s = start_server(*KEYS, "--store", str(db), name="store2")
    try:
        got = httpx.get(f"{s.base_url}/responses/{second['id']}", headers=AUTH).json()
        assert got["output"] == second["output"] and got["usage"] == second["usage"]
        items = httpx.get(f"{s.base_url}/responses/{first['id']}/input_items", headers=AUTH).json()
        assert [i["content"][0]["text"] for i in items["data"]] == ["My name is Ada."]
        # the chain continues from the stored conversation after the restart
        third = create(
            s.base_url,
            {
                "input": "Say it again.",
                "max_output_tokens": 4,
                "previous_response_id": second["id"],
            },
        )
        assert third["usage"]["input_tokens"] > second["usage"]["input_tokens"]
        # ... as a delta: the chain's exact tokens were stored with it (schema step 2)
        assert third["warmloop"]["delta_only"] is True
        # store:false never reached the disk; other tenants see nothing
        assert (
            httpx.get(f"{s.base_url}/responses/{ephemeral['id']}", headers=AUTH).status_code == 404
        )
        assert httpx.get(f"{s.base_url}/responses/{first['id']}", headers=OTHER).status_code == 404
        r = httpx.post(
            f"{s.base_url}/responses",
            headers=OTHER,
            json={"model": "default", "input": "x", "previous_response_id": first["id"]},
        )
        assert r.json()["error"]["code"] == "previous_response_not_found"
        # delete is durable too
        assert (
            httpx.delete(f"{s.base_url}/responses/{first['id']}", headers=AUTH).status_code == 200
        )
    finally:
        s.stop()
    s = start_server(*KEYS, "--store", str(db), name="store3")
    try:
        assert httpx.get(f"{s.base_url}/responses/{first['id']}", headers=AUTH).status_code == 404
        assert httpx.get(f"{s.base_url}/responses/{second['id']}", headers=AUTH).status_code == 200
    finally:
        s.stop()


async def test_sigkill_during_a_burst_loses_nothing_reported_complete(store: str) -> None:
    db = store
    s = start_server(*KEYS, "--store", str(db), "--slots", "4", name="crash")
    completed: dict[str, dict[str, Any]] = {}

    async def one(client: httpx.AsyncClient, k: int) -> None:
        body = {
            "model": "default",
            "input": f"Count to {k}.",
            "temperature": 0,
            "max_output_tokens": 12,
            "stream": True,
        }
        async with client.stream("POST", f"{s.base_url}/responses", json=body, headers=AUTH) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if event["type"] in ("response.completed", "response.incomplete"):
                        completed[event["response"]["id"]] = event["response"]

    async with httpx.AsyncClient(timeout=120) as client:
        tasks = [asyncio.create_task(one(client, k)) for k in range(24)]
        while len(completed) < 6:
            await asyncio.sleep(0.05)
        s.process.send_signal(signal.SIGKILL)  # no shutdown, no flush
        s.process.wait()
        await asyncio.gather(*tasks, return_exceptions=True)
    seen = dict(completed)
    assert seen, "nothing completed before the kill"
    # the database is consistent: every row is a whole, finished response
    for rid, status, raw in stored_rows(db):
        obj = json.loads(raw)
        assert obj["id"] == rid and status in ("completed", "incomplete") and obj["usage"]
    s = start_server(*KEYS, "--store", str(db), name="crash-restart")
    try:
        for rid, resp in seen.items():
            got = httpx.get(f"{s.base_url}/responses/{rid}", headers=AUTH)
            assert got.status_code == 200, rid
            assert got.json()["output"] == resp["output"]
    finally:
        s.stop()


def test_ttl_expiry(store: str) -> None:
    s = start_server(*KEYS, "--store", store, "--store-ttl", "2", name="ttl")
    try:
        r = create(s.base_url, {"input": "Hi", "max_output_tokens": 2})
        assert httpx.get(f"{s.base_url}/responses/{r['id']}", headers=AUTH).status_code == 200
        time.sleep(3.2)
        assert httpx.get(f"{s.base_url}/responses/{r['id']}", headers=AUTH).status_code == 404
        cont = httpx.post(
            f"{s.base_url}/responses",
            headers=AUTH,
            json={"model": "default", "input": "x", "previous_response_id": r["id"]},
        )
        assert cont.json()["error"]["code"] == "previous_response_not_found"
    finally:
        s.stop()


def _connect(store: str) -> Any:
    if store.startswith("postgresql://"):
        import psycopg

        return psycopg.connect(store, autocommit=True)
    return sqlite3.connect(store, isolation_level=None)


def test_schema_is_versioned_and_migrates_one_step_at_a_time(store: str) -> None:
    """A fresh store is at the latest version; a new step runs once, on the next open,
    and keeps the data; a store newer than this warmloop is refused."""
    from warmloop.app import build_store
    from warmloop.config import Config
    from warmloop.session import store_sql

    latest = len(store_sql.MIGRATIONS)
    opened = build_store(Config(store=store))
    opened.close()
    with _connect(store) as db:
        assert db.execute("SELECT version FROM warmloop_schema").fetchall() == [(latest,)]
        db.execute(
            "INSERT INTO responses (id, owner, created_at, status, response, input_items,"
            " output_items, history) VALUES ('resp_x', 'o', 0, 'completed', '{}', '[]', '[]', '[]')"
        )
        step = ["ALTER TABLE responses ADD COLUMN note TEXT"]
        assert store_sql.migrate(db, [*store_sql.MIGRATIONS, step]) == (latest, latest + 1)
        assert store_sql.migrate(db, [*store_sql.MIGRATIONS, step]) == (latest + 1, latest + 1)
        assert db.execute("SELECT id, note FROM responses").fetchall() == [("resp_x", None)]
        with pytest.raises(store_sql.SchemaTooNew, match=f"version {latest + 1}"):
            store_sql.migrate(db)


def test_a_store_from_before_versions_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path, isolation_level=None) as db:
        from warmloop.session import store_sql

        for statement in store_sql.MIGRATIONS[0]:  # the tables as they were, no version
            db.execute(statement)
        db.execute(
            "INSERT INTO responses (id, owner, created_at, status, response, input_items,"
            " output_items, history) VALUES ('resp_o', 'o', 0, 'completed', '{}', '[]', '[]', '[]')"
        )
        assert store_sql.migrate(db) == (0, len(store_sql.MIGRATIONS))
        assert db.execute("SELECT id FROM responses").fetchall() == [("resp_o",)]


def test_a_restart_fails_only_its_own_unfinished_responses(store: str) -> None:
    """Workers of a fleet share one database: a worker (--worker-id) that starts marks
    failed only the background responses it stopped under (its id is in theirs), never
    another's that is still running; ids from before worker ids count as its own."""
    from warmloop.app import build_store
    from warmloop.config import Config
    from warmloop.fleet.keys import response_id

    mine, theirs, legacy = response_id("w1"), response_id("w2"), "resp_" + "ab" * 12
    opened = build_store(Config(store=store))
    try:
        with _connect(store) as db:
            for rid in (mine, theirs, legacy):
                db.execute(
                    "INSERT INTO responses (id, owner, created_at, status, response, input_items,"
                    " output_items, history) VALUES "
                    + ("(%s, 'o', 0, 'in_progress', '{}', '[]', '[]', '[]')"
                       if store.startswith("postgresql://")
                       else "(?, 'o', 0, 'in_progress', '{}', '[]', '[]', '[]')"),
                    (rid,),
                )  # fmt: skip
        assert opened.fail_unfinished("stopped", "w1") == 2
        status = {rid: s for rid, s, _ in stored_rows(store)}
        assert status == {mine: "failed", legacy: "failed", theirs: "in_progress"}
        # A server without --worker-id owns its database: every unfinished one is its own.
        assert opened.fail_unfinished("stopped", None) == 1
    finally:
        opened.close()
    assert {s for _, s, _ in stored_rows(store)} == {"failed"}


def test_workers_opening_one_fresh_postgres_at_once_all_start(postgres_dsn: str) -> None:
    """A fleet's workers start together on one database: the schema is created once,
    under an advisory lock (PostgreSQL's IF NOT EXISTS races: "duplicate key value")."""
    from concurrent.futures import ThreadPoolExecutor

    import psycopg

    from warmloop.app import build_store
    from warmloop.config import Config

    for _ in range(3):
        schema = "t" + uuid.uuid4().hex[:12]
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        dsn = f"{postgres_dsn}?options=-csearch_path%3D{schema}"
        with ThreadPoolExecutor(6) as pool:
            stores = list(pool.map(build_store, [Config(store=dsn)] * 6))
        for s in stores:
            s.close()
