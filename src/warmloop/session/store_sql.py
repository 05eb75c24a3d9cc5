"""Durable responses in SQL: SQLite (WAL) by default, PostgreSQL for more than one box,
with the in-memory LRU in front as a cache. Both share this code; only connecting and
the placeholder style differ.

Writes go through one writer thread, so the event loop never waits on disk; the service
awaits a write before it reports `completed`, so a response a client saw complete is
committed. Reads are single-row primary-key lookups on a read connection (SQLite's WAL
lets them run beside the writer). Records are stored as their wire JSON, with the chain's
exact tokens and text: a continuation after a restart, or on another worker, is a delta
whose prefix is token for token what the KV (a slot, or a file of --kv-disk-dir) holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import queue
import sqlite3
import sys
import threading
import time
from array import array
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from warmloop.fleet.keys import worker_of
from warmloop.protocol.errors import StoreUnavailable
from warmloop.protocol.items import Item, ItemReference, item_to_wire, parse_item
from warmloop.session.response_store import (
    ChainState,
    InMemoryResponseStore,
    RecentIds,
    StoredResponse,
    expires_at,
)

log = logging.getLogger("warmloop.store")
T = TypeVar("T")

# The schema, as migration steps: MIGRATIONS[k] takes a database from version k to k + 1
# (version 0: empty, or a database from before versions were kept: its statements are
# all IF NOT EXISTS). To change the schema, append a step; never edit a shipped one.
MIGRATIONS: list[list[str]] = [
    [
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
    ],
    [  # 1: conversations (session/conversation_sql.py)
        """CREATE TABLE IF NOT EXISTS conversations (
    id            TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    created_at    DOUBLE PRECISION NOT NULL,
    metadata      TEXT NOT NULL,   -- JSON object of strings
    next_position BIGINT NOT NULL  -- the position the next item gets
)""",
        """CREATE TABLE IF NOT EXISTS conversation_items (
    conversation_id TEXT NOT NULL,
    position        BIGINT NOT NULL,  -- the conversation's order
    id              TEXT NOT NULL,
    item            TEXT NOT NULL,    -- the item as the store keeps it (item_to_wire stored)
    PRIMARY KEY (conversation_id, position)
)""",
        "CREATE UNIQUE INDEX IF NOT EXISTS conversation_items_id "
        "ON conversation_items (conversation_id, id)",
    ],
    [  # 2: the chain's exact tokens and text, so a turn after a restart (or on another
        # worker of a fleet) is a delta and finds the KV files of --kv-disk-dir token for
        # token; NULL for responses saved before (those re-tokenize, as they did)
        "ALTER TABLE responses ADD COLUMN chain_tokens TEXT",  # base64 of int32 LE
        "ALTER TABLE responses ADD COLUMN chain_text TEXT",
    ],
]
VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS warmloop_schema (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)"
)


MIGRATION_LOCK = 0x7761726D  # PostgreSQL advisory lock key ("warm") held while migrating


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer warmloop than this one."""


def migrate(db: Any, migrations: list[list[str]] = MIGRATIONS) -> tuple[int, int]:
    """Bring the database to the latest schema version; (version before, version now)."""
    db.execute(VERSION_TABLE)
    row = db.execute("SELECT version FROM warmloop_schema WHERE id = 1").fetchone()
    before = int(row[0]) if row else 0
    if before > len(migrations):
        raise SchemaTooNew(
            f"the store's schema is version {before}; this warmloop knows up to "
            f"{len(migrations)}: upgrade warmloop or use another --store"
        )
    for version in range(before, len(migrations)):
        for statement in migrations[version]:
            db.execute(statement)
        db.execute(
            "INSERT INTO warmloop_schema (id, version) VALUES (1, "
            f"{version + 1}) ON CONFLICT (id) DO UPDATE SET version = excluded.version"
        )
        log.info("store schema migrated to version %d", version + 1)
    return before, len(migrations)


COLUMNS = (
    "id, owner, created_at, expires_at, status, response, input_items, output_items, history, "
    "chain_tokens, chain_text"
)


def _chain_columns(chain: ChainState | None) -> tuple[str | None, str | None]:
    if chain is None:
        return None, None
    tokens = chain.tokens
    if sys.byteorder != "little":
        tokens = array("i", tokens)
        tokens.byteswap()
    return base64.b64encode(tokens.tobytes()).decode(), chain.text


def _chain(tokens: str | None, text: str | None) -> ChainState | None:
    """The chain stored with a response, or None (none stored, or unreadable: then the
    conversation is re-tokenized, which is slower, never wrong)."""
    if tokens is None or text is None:
        return None
    try:
        raw = base64.b64decode(tokens, validate=True)
        out = array("i")
        out.frombytes(raw)
    except ValueError:
        return None
    if sys.byteorder != "little":
        out.byteswap()
    return ChainState(text, out)


def _items_json(items: tuple[Item, ...]) -> str:
    return json.dumps([item_to_wire(i, stored=True) for i in items], ensure_ascii=False)


def _items(raw: str) -> tuple[Item, ...]:
    out: list[Item] = []
    for k, wire in enumerate(json.loads(raw)):
        item = parse_item(wire, k)
        assert not isinstance(item, ItemReference)
        out.append(item)
    return tuple(out)


class SQLResponseStore:
    """The store over any DB-API connection; subclasses say how to connect.

    A database that goes away (PostgreSQL restarted, a disk error) never takes the
    writer thread with it: each failure is a `StoreUnavailable` for the write or read
    that hit it, the broken connection is dropped, and the next operation reconnects.
    """

    placeholder = "?"

    def __init__(
        self, *, cache: InMemoryResponseStore, ttl_s: float | None = None, timeout_s: float = 10.0
    ) -> None:
        self.cache = cache
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._jobs: queue.SimpleQueue[tuple[Callable[[Any], Any], Future[Any]] | None]
        self._jobs = queue.SimpleQueue()
        self._pending = 0  # submitted writes not yet finished (a leak gauge)
        self._pending_lock = threading.Lock()
        self._writer_db: Any = self._connect()  # fail at startup if the store is unusable
        self._migrate()
        self._reader: Any = self._connect()
        self._read_lock = threading.Lock()
        # Ids deleted lately: a read that raced their DELETE must not put them back
        # into the cache. Guarded by _cache_lock with the cache writes that depend on it.
        self._deleted = RecentIds()
        self._cache_lock = threading.Lock()
        ph = ", ".join([self.placeholder] * len(COLUMNS.split(", ")))
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS.split(", ")[1:])
        self._upsert = (
            f"INSERT INTO responses ({COLUMNS}) VALUES ({ph}) "
            f"ON CONFLICT (id) DO UPDATE SET {updates}"
        )
        self._closing = False
        self._thread = self._start_writer()

    def _connect(self) -> Any:
        raise NotImplementedError

    def _migrate(self) -> None:
        migrate(self._writer_db)

    def _q(self, sql: str) -> str:
        return sql.replace("?", self.placeholder)

    def query(self, sql: str) -> str:
        """`sql` written with `?` placeholders, in this database's style."""
        return self._q(sql)

    def transaction(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(connection)` on the writer thread in one transaction (all of it or
        none) and return what it returns. Blocks: a worker thread's call. Raises
        StoreUnavailable."""
        result: T = self._wait(self._submit(lambda db: self._atomic(db, fn)))
        return result

    def _atomic(self, db: Any, fn: Callable[[Any], T]) -> T:
        db.execute("BEGIN IMMEDIATE")  # SQLite: take the write lock now, not at the 1st write
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    # ----- writer thread ---------------------------------------------------------------
    def _start_writer(self) -> threading.Thread:
        thread = threading.Thread(target=self._writer, name="warmloop-store", daemon=True)
        thread.start()
        return thread

    def _writer(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            runs = fut.set_running_or_notify_cancel()  # False: the caller gave up first
            result: Any = None
            error: StoreUnavailable | None = None
            if runs:
                try:
                    result = self._run_write(fn)
                except StoreUnavailable as exc:  # every database error becomes one
                    error = exc
            with self._pending_lock:  # before the caller can see the outcome
                self._pending -= 1
            if error is not None:
                fut.set_exception(error)
            elif runs:
                fut.set_result(result)
        self._close_quietly(self._writer_db)

    def _run_write(self, fn: Callable[[Any], Any]) -> Any:
        """Run `fn` on the writer's connection; any failure drops the connection (the next
        write opens a new one) and is a StoreUnavailable for this write."""
        try:
            if self._writer_db is None:
                self._writer_db = self._connect()
            return fn(self._writer_db)
        except Exception as exc:
            self._close_quietly(self._writer_db)
            self._writer_db = None
            raise self._unavailable("write", exc) from exc

    def _submit(self, fn: Callable[[Any], Any]) -> Future[Any]:
        fut: Future[Any] = Future()
        if not self._thread.is_alive() and not self._closing:  # never silently dead
            log.error("store writer thread was dead; restarting it")
            self._thread = self._start_writer()
        with self._pending_lock:
            self._pending += 1
        self._jobs.put((fn, fut))
        return fut

    def _wait(self, fut: Future[Any]) -> Any:
        try:
            return fut.result(timeout=self.timeout_s)
        except TimeoutError:
            raise self._timed_out() from None

    def _timed_out(self) -> StoreUnavailable:
        return StoreUnavailable(f"The response store did not answer within {self.timeout_s:g} s.")

    @property
    def pending_writes(self) -> int:
        return self._pending

    def writer_alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._closing = True
        self._jobs.put(None)
        self._thread.join(timeout=10)
        self._close_quietly(self._reader)

    @staticmethod
    def _close_quietly(db: Any) -> None:
        if db is not None:
            with contextlib.suppress(Exception):
                db.close()

    def _unavailable(self, what: str, exc: Exception) -> StoreUnavailable:
        log.warning("response store %s failed: %s", what, exc)
        kind = type(self).__name__.removesuffix("ResponseStore") or "SQL"
        return StoreUnavailable(
            f"The response store ({kind}) is unavailable: {what} failed "
            f"({type(exc).__name__}). Retry shortly."
        )

    # ----- API -------------------------------------------------------------------------
    async def save(self, record: StoredResponse) -> None:
        """Persist `record`; returns once it is committed. Raises StoreUnavailable."""
        created = record.response.get("created_at")
        row = (
            record.id,
            record.owner,
            float(created) if created is not None else time.time(),
            expires_at(record, self.ttl_s),
            record.response.get("status", ""),
            json.dumps(record.response, ensure_ascii=False),
            _items_json(record.input_items),
            _items_json(record.output_items),
            _items_json(record.history),
            *_chain_columns(record.chain),
        )

        def write(db: Any) -> None:
            db.execute(self._upsert, row)

        # Shielded: a client that leaves mid-write does not cancel the write itself.
        future = asyncio.wrap_future(self._submit(write))
        try:
            await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError:
            raise self._timed_out() from None
        self.cache.put(record)  # cached only once durable: a read never sees a lost write

    def rows(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """Every row of a read (`?` placeholders) on the read connection. Blocks: a
        worker thread's call. Raises StoreUnavailable."""
        return list(self._read(sql, args, every=True))

    def _read(self, sql: str, args: tuple[Any, ...], *, every: bool = False) -> Any:
        with self._read_lock:
            for attempt in (1, 2):  # a connection lost since the last read: reconnect once
                try:
                    if self._reader is None:
                        self._reader = self._connect()
                    cursor = self._reader.execute(self._q(sql), args)
                    return cursor.fetchall() if every else cursor.fetchone()
                except Exception as exc:
                    self._close_quietly(self._reader)
                    self._reader = None
                    if attempt == 2:
                        raise self._unavailable("read", exc) from exc
        return None

    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers a trivial query."""
        self._read("SELECT 1", ())

    def get(self, response_id: str, owner: str) -> StoredResponse | None:
        now = time.time()
        cached = self.cache.get(response_id, owner)  # the cache applies the same TTL
        if cached is not None:
            return cached
        row = self._read(
            "SELECT response, input_items, output_items, history, chain_tokens, chain_text "
            "FROM responses "
            "WHERE id = ? AND owner = ? AND (expires_at IS NULL OR expires_at > ?)",
            (response_id, owner, now),
        )
        if row is None:
            return None
        record = StoredResponse(
            id=response_id,
            owner=owner,
            response=json.loads(row[0]),
            input_items=_items(row[1]),
            output_items=_items(row[2]),
            history=_items(row[3]),
            chain=_chain(row[4], row[5]),
            stored=True,
        )
        with self._cache_lock:
            if response_id in self._deleted:  # its DELETE ran while this read did
                return None
            self.cache.put(record)
        return record

    def delete(self, response_id: str, owner: str) -> bool:
        with self._cache_lock:
            self._deleted.add(response_id)
            self.cache.delete(response_id, owner)

        def remove(db: Any) -> bool:
            sql = self._q("DELETE FROM responses WHERE id = ? AND owner = ?")
            return bool(db.execute(sql, (response_id, owner)).rowcount > 0)

        try:
            return bool(self._wait(self._submit(remove)))
        finally:
            self.cache.delete(response_id, owner)  # a save that was in flight

    def fail_unfinished(self, message: str, fleet_worker: str | None) -> int:
        def sweep(db: Any) -> int:
            rows = db.execute(
                self._q("SELECT id, response FROM responses WHERE status IN (?, ?)"),
                ("queued", "in_progress"),
            ).fetchall()
            if fleet_worker is not None:
                rows = [r for r in rows if worker_of(r[0]) in (fleet_worker, None)]
            for response_id, raw in rows:
                response = json.loads(raw)
                response["status"] = "failed"
                response["error"] = {"code": "server_error", "message": message}
                db.execute(
                    self._q("UPDATE responses SET status = ?, response = ? WHERE id = ?"),
                    ("failed", json.dumps(response, ensure_ascii=False), response_id),
                )
            return len(rows)

        return int(self._wait(self._submit(sweep)))

    def purge_expired(self) -> int:
        def purge(db: Any) -> int:
            sql = self._q("DELETE FROM responses WHERE expires_at IS NOT NULL AND expires_at <= ?")
            return int(db.execute(sql, (time.time(),)).rowcount)

        return int(self._wait(self._submit(purge)))


class SQLiteResponseStore(SQLResponseStore):
    def __init__(
        self,
        path: Path,
        *,
        cache: InMemoryResponseStore,
        ttl_s: float | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        super().__init__(cache=cache, ttl_s=ttl_s, timeout_s=timeout_s)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across process crashes
        return db


class PostgresResponseStore(SQLResponseStore):
    """`--store postgresql://…`: one table, autocommit; needs `psycopg` (3)."""

    placeholder = "%s"

    def __init__(
        self,
        dsn: str,
        *,
        cache: InMemoryResponseStore,
        ttl_s: float | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.dsn = dsn
        super().__init__(cache=cache, ttl_s=ttl_s, timeout_s=timeout_s)

    def _connect(self) -> Any:
        import psycopg  # optional dependency: only needed for PostgreSQL

        # A bounded connect: a stopped server must not hold a request for minutes.
        timeout = max(1, int(self.timeout_s))
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=timeout)

    def _atomic(self, db: Any, fn: Callable[[Any], T]) -> T:
        with db.transaction():
            return fn(db)

    def _migrate(self) -> None:
        """Workers of a fleet start together on one database: PostgreSQL's `IF NOT
        EXISTS` is not safe against a concurrent create, so one migrates at a time."""
        db = self._writer_db
        db.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            migrate(db)
        finally:
            db.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
