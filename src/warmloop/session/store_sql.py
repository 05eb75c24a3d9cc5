"""Durable responses in SQL: SQLite (WAL) by default, PostgreSQL for more than one box,
with the in-memory LRU in front as a cache. Both share this code; only connecting and
the placeholder style differ.

Writes go through one writer thread, so the event loop never waits on disk; the service
awaits a write before it reports `completed`, so a response a client saw complete is
committed. Reads are single-row primary-key lookups on a read connection (SQLite's WAL
lets them run beside the writer). Records are stored as their wire JSON; the KV token
chain is not persisted (a reloaded chain is re-tokenized, or found in the prefix cache).
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from warmloop.protocol.items import Item, ItemReference, item_to_wire, parse_item
from warmloop.session.response_store import InMemoryResponseStore, StoredResponse

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS responses (
    id           TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL,
    expires_at   DOUBLE PRECISION,
    status       TEXT NOT NULL,
    response     TEXT NOT NULL,  -- the final wire object (request fields, output, usage)
    input_items  TEXT NOT NULL,  -- this request's own input items
    output_items TEXT NOT NULL,
    history      TEXT NOT NULL   -- the whole conversation up to and including the output
)""",
    "CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at)",
]
COLUMNS = "id, owner, created_at, expires_at, status, response, input_items, output_items, history"


def _items_json(items: tuple[Item, ...]) -> str:
    return json.dumps([item_to_wire(i) for i in items], ensure_ascii=False)


def _items(raw: str) -> tuple[Item, ...]:
    out: list[Item] = []
    for k, wire in enumerate(json.loads(raw)):
        item = parse_item(wire, k)
        assert not isinstance(item, ItemReference)
        out.append(item)
    return tuple(out)


class SQLResponseStore:
    """The store over any DB-API connection; subclasses say how to connect."""

    placeholder = "?"

    def __init__(self, *, cache: InMemoryResponseStore, ttl_s: float | None = None) -> None:
        self.cache = cache
        self.ttl_s = ttl_s
        self._jobs: queue.SimpleQueue[tuple[Callable[[Any], Any], Future[Any]] | None]
        self._jobs = queue.SimpleQueue()
        writer = self._connect()
        for statement in SCHEMA:
            writer.execute(statement)
        self._reader = self._connect()
        self._read_lock = threading.Lock()
        ph = ", ".join([self.placeholder] * 9)
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS.split(", ")[1:])
        self._upsert = (
            f"INSERT INTO responses ({COLUMNS}) VALUES ({ph}) "
            f"ON CONFLICT (id) DO UPDATE SET {updates}"
        )
        self._thread = threading.Thread(
            target=self._writer, args=(writer,), name="warmloop-store", daemon=True
        )
        self._thread.start()

    def _connect(self) -> Any:
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        return sql.replace("?", self.placeholder)

    # ----- writer thread ---------------------------------------------------------------
    def _writer(self, db: Any) -> None:
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            try:
                fut.set_result(fn(db))
            except Exception as exc:  # reported to whoever awaits the write
                fut.set_exception(exc)
        db.close()

    def _submit(self, fn: Callable[[Any], Any]) -> Future[Any]:
        fut: Future[Any] = Future()
        self._jobs.put((fn, fut))
        return fut

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)
        self._reader.close()

    # ----- API -------------------------------------------------------------------------
    async def save(self, record: StoredResponse) -> None:
        """Persist `record`; returns once it is committed."""
        self.cache.put(record)
        now = time.time()
        row = (
            record.id,
            record.owner,
            now,
            now + self.ttl_s if self.ttl_s else None,
            record.response.get("status", ""),
            json.dumps(record.response, ensure_ascii=False),
            _items_json(record.input_items),
            _items_json(record.output_items),
            _items_json(record.history),
        )

        def write(db: Any) -> None:
            db.execute(self._upsert, row)

        await asyncio.wrap_future(self._submit(write))

    def get(self, response_id: str, owner: str) -> StoredResponse | None:
        now = time.time()
        cached = self.cache.get(response_id, owner)  # the cache applies the same TTL
        if cached is not None:
            return cached
        with self._read_lock:
            row = self._reader.execute(
                self._q(
                    "SELECT response, input_items, output_items, history FROM responses "
                    "WHERE id = ? AND owner = ? AND (expires_at IS NULL OR expires_at > ?)"
                ),
                (response_id, owner, now),
            ).fetchone()
        if row is None:
            return None
        record = StoredResponse(
            id=response_id,
            owner=owner,
            response=json.loads(row[0]),
            input_items=_items(row[1]),
            output_items=_items(row[2]),
            history=_items(row[3]),
            chain=None,
            stored=True,
        )
        self.cache.put(record)
        return record

    def delete(self, response_id: str, owner: str) -> bool:
        self.cache.delete(response_id, owner)

        def remove(db: Any) -> bool:
            sql = self._q("DELETE FROM responses WHERE id = ? AND owner = ?")
            return bool(db.execute(sql, (response_id, owner)).rowcount > 0)

        return bool(self._submit(remove).result(timeout=30))

    def purge_expired(self) -> int:
        def purge(db: Any) -> int:
            sql = self._q("DELETE FROM responses WHERE expires_at IS NOT NULL AND expires_at <= ?")
            return int(db.execute(sql, (time.time(),)).rowcount)

        return int(self._submit(purge).result(timeout=60))


class SQLiteResponseStore(SQLResponseStore):
    def __init__(
        self, path: Path, *, cache: InMemoryResponseStore, ttl_s: float | None = None
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        super().__init__(cache=cache, ttl_s=ttl_s)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across process crashes
        return db


class PostgresResponseStore(SQLResponseStore):
    """`--store postgresql://…`: one table, autocommit; needs `psycopg` (3)."""

    placeholder = "%s"

    def __init__(
        self, dsn: str, *, cache: InMemoryResponseStore, ttl_s: float | None = None
    ) -> None:
        self.dsn = dsn
        super().__init__(cache=cache, ttl_s=ttl_s)

    def _connect(self) -> Any:
        import psycopg  # optional dependency: only needed for PostgreSQL

        return psycopg.connect(self.dsn, autocommit=True)
