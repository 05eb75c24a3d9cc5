"""Mechanisms behind the hardening fixes that need no model: the store writer survives
cancelled and failing writes, the rate limiter counts only admitted creates, the
doctor turns an engine crash into one clear error, and client JSON is checked once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from warmloop import doctor
from warmloop.protocol import wire_json
from warmloop.protocol.errors import InvalidRequest, StoreUnavailable, TooManyRequests
from warmloop.protocol.items import MessageItem
from warmloop.session.limits import RateLimiter
from warmloop.session.response_store import InMemoryResponseStore, StoredResponse
from warmloop.session.store_sql import SQLiteResponseStore


def record(rid: str) -> StoredResponse:
    item = MessageItem(f"m{rid}", "user", "x")
    return StoredResponse(
        rid, "a", {"id": rid, "status": "completed"}, (item,), (), (item,), None, True
    )


async def test_a_cancelled_write_does_not_kill_the_store_writer(tmp_path: Path) -> None:
    store = SQLiteResponseStore(tmp_path / "r.db", cache=InMemoryResponseStore(10, 10**9))
    gate = threading.Event()
    blocker = store._submit(lambda db: gate.wait(10))
    doomed = store._submit(lambda db: None)
    assert doomed.cancel()  # the client left before the writer got to it
    gate.set()
    blocker.result(timeout=10)
    await store.save(record("r1"))  # the writer is still there
    assert store.writer_alive() and store.pending_writes == 0
    assert store.get("r1", "a") is not None
    store.close()


async def test_a_client_leaving_mid_save_does_not_cancel_the_write(tmp_path: Path) -> None:
    store = SQLiteResponseStore(tmp_path / "r.db", cache=InMemoryResponseStore(10, 10**9))
    gate = threading.Event()
    store._submit(lambda db: gate.wait(10))
    task = asyncio.create_task(store.save(record("r1")))
    await asyncio.sleep(0.05)
    task.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if store.pending_writes == 0:
            break
        await asyncio.sleep(0.02)
    assert store.writer_alive()
    store.cache = InMemoryResponseStore(10, 10**9)  # read from disk, not the cache
    assert store.get("r1", "a") is not None  # written all the same
    store.close()


async def test_a_failing_database_is_a_503_and_the_writer_recovers(tmp_path: Path) -> None:
    store = SQLiteResponseStore(tmp_path / "r.db", cache=InMemoryResponseStore(10, 10**9))
    store._writer_db.close()  # the connection is gone (as when PostgreSQL restarts)
    with pytest.raises(StoreUnavailable):
        await store.save(record("r1"))
    await store.save(record("r2"))  # reconnected
    assert store.writer_alive() and store.get("r2", "a") is not None
    store._reader.close()
    assert store.get("r2", "a") is not None  # the cache answers; the reader reconnects
    store.ping()
    store.close()


def test_rate_limiter_counts_only_admitted_creates() -> None:
    limiter = RateLimiter(2)
    for _ in range(5):
        limiter.check("t")  # checks alone count nothing
    limiter.hit("t")
    limiter.hit("t")
    with pytest.raises(TooManyRequests):
        limiter.check("t")
    with pytest.raises(TooManyRequests):
        limiter.hit("t")
    limiter.check("other")


def test_self_test_turns_sigill_into_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def crashed(*_a: Any, **_k: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], -signal.SIGILL, "", "")

    monkeypatch.setattr(doctor.subprocess, "run", crashed)
    with pytest.raises(doctor.SelfTestFailed) as err:
        doctor.self_test(Path("m.gguf"), threads=1)
    assert "SIGILL" in str(err.value) and "make clean && make setup" in str(err.value)


@pytest.mark.parametrize(
    ("text", "param"),
    [
        ('{"a": "\\ud800"}', "a"),
        ('{"a": [1, {"b": "x\\udfff"}]}', "a[1].b"),
        ('{"\\ud800": 1}', None),
        ("[" * 100_000, None),
        ('{"a": ' * 70 + "1" + "}" * 70, "a" + ".a" * 63),
    ],
)
def test_client_json_is_checked_once(text: str, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as err:
        wire_json.loads(text, max_depth=64)
    assert err.value.param == param and err.value.status == 400


def test_valid_json_passes_unchanged() -> None:
    value = {"input": [{"role": "user", "content": "héllo 😀"}], "n": [[1, 2], {"x": None}]}
    import json

    assert wire_json.loads(json.dumps(value), max_depth=64) == value
