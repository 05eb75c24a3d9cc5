"""Durable responses on SQLite (WAL), with the in-memory LRU in front as a cache.

Writes go through one writer thread, so the event loop never waits on disk; the service
awaits a write before it reports `completed`, so a response a client saw complete is
committed. Reads are single-row primary-key lookups on a read connection (WAL lets them
run beside the writer). Records are stored as their wire JSON; the KV token chain is not
persisted (a reloaded chain is re-tokenized, or found in the prefix cache).
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

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL,
    status      TEXT NOT NULL,
    response    TEXT NOT NULL,   -- the final wire object (request fields, output, usage)
    input_items TEXT NOT NULL,   -- this request's own input items
    output_items TEXT NOT NULL,
    history     TEXT NOT NULL    -- the whole conversation up to and including the output
);
CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at);
"""


def _items_json(items: tuple[Item, ...]) -> str:
    return json.dumps([item_to_wire(i) for i in items], ensure_ascii=False)


def _items(raw: str) -> tuple[Item, ...]:
    out: list[Item] = []
    for k, wire in enumerate(json.loads(raw)):
        item = parse_item(wire, k)
        assert not isinstance(item, ItemReference)
        out.append(item)
    return tuple(out)


class SQLiteResponseStore:
    def __init__(
        self,
        path: Path,
        *,
        cache: InMemoryResponseStore,
        ttl_s: float | None = None,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.cache = cache
        self.ttl_s = ttl_s
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[sqlite3.Connection], Any], Future[Any]] | None
        ]
        self._jobs = queue.SimpleQueue()
        writer = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        writer.executescript(SCHEMA)
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._read_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._writer, args=(writer,), name="warmloop-store", daemon=True
        )
        self._thread.start()

    # ----- writer thread ---------------------------------------------------------------
    def _writer(self, db: sqlite3.Connection) -> None:
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            try:
                fut.set_result(fn(db))
            except Exception as exc:  # reported to whoever awaits the write
                fut.set_exception(exc)
        db.close()

    def _submit(self, fn: Callable[[sqlite3.Connection], Any]) -> Future[Any]:
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

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?,?)", row)

        await asyncio.wrap_future(self._submit(write))

    def get(self, response_id: str, owner: str) -> StoredResponse | None:
        now = time.time()
        cached = self.cache.get(response_id, owner)
        if cached is not None and not self._expired(cached, now):
            return cached
        with self._read_lock:
            row = self._reader.execute(
                "SELECT response, input_items, output_items, history FROM responses "
                "WHERE id = ? AND owner = ? AND (expires_at IS NULL OR expires_at > ?)",
                (response_id, owner, now),
            ).fetchone()
        if row is None:
            if cached is not None:
                self.cache.delete(response_id, owner)
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

    def _expired(self, record: StoredResponse, now: float) -> bool:
        if not self.ttl_s:
            return False
        created = float(record.response.get("created_at") or now)
        return now > created + self.ttl_s

    def delete(self, response_id: str, owner: str) -> bool:
        self.cache.delete(response_id, owner)

        def remove(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner)
            )
            return cur.rowcount > 0

        return bool(self._submit(remove).result(timeout=30))

    def purge_expired(self) -> int:
        def purge(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "DELETE FROM responses WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (time.time(),),
            )
            return cur.rowcount

        return int(self._submit(purge).result(timeout=60))
