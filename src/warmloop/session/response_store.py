"""Responses kept after they finish: the records and the bounded in-memory store.

A record holds the wire `response` object, the request's input items, its output
items and the whole conversation up to and including this response (`history`), so a
`previous_response_id` continuation needs nothing else. `chain` is the exact token
list this conversation's KV corresponds to (and its text): with it a continuation
tokenizes only its delta. The SQL stores keep it too (schema step 2), so that holds
after a restart and on another worker of a fleet.
"""

from __future__ import annotations

import json
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from warmloop.protocol.items import Item, item_size


@dataclass(frozen=True)
class ChainState:
    text: str  # rendered prompt text + generated text
    # The tokens of exactly that text, as the KV holds them: 4 bytes each (a tuple of
    # Python ints costs ~36), since every recent response of every socket keeps one.
    tokens: array[int]

    @classmethod
    def of(cls, text: str, tokens: Iterable[int]) -> ChainState:
        return cls(text, array("i", tokens))


@dataclass
class StoredResponse:
    id: str
    owner: str
    response: dict[str, Any]  # the final wire object
    input_items: tuple[Item, ...]
    output_items: tuple[Item, ...]
    history: tuple[Item, ...]
    chain: ChainState | None
    stored: bool  # store:true; store:false records live only in their connection

    def size(self) -> int:
        """Approximate bytes held: items, the chain's tokens and text, and the response
        object (its echoed request fields can be most of it)."""
        own = sum(item_size(i) for i in self.input_items + self.output_items)
        chain = 4 * len(self.chain.tokens) + len(self.chain.text) if self.chain else 0
        response = len(json.dumps(self.response, ensure_ascii=False, default=str))
        return 512 + own + chain + 8 * len(self.history) + response


class RecentIds:
    """The newest `keep` ids added (deleted responses, so that a racing read or create
    cannot bring one back); the oldest go first. Not locked: its owner guards it."""

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, response_id: str) -> None:
        self._ids[response_id] = None
        while len(self._ids) > self.keep:
            self._ids.popitem(last=False)

    def __contains__(self, response_id: object) -> bool:
        return response_id in self._ids


def expires_at(record: StoredResponse, ttl_s: float | None) -> float | None:
    """The one rule for when a stored response expires, in every store: `ttl_s` after it
    was created (the response's own `created_at`, wall-clock seconds); None: never."""
    if not ttl_s:
        return None
    created = record.response.get("created_at")
    return (float(created) if created is not None else time.time()) + ttl_s


class ResponseStore(Protocol):
    """Where store:true responses live. `save` returns once the record is durable."""

    async def save(self, record: StoredResponse) -> None: ...
    def get(self, response_id: str, owner: str) -> StoredResponse | None: ...
    def delete(self, response_id: str, owner: str) -> bool: ...
    def fail_unfinished(self, message: str, fleet_worker: str | None) -> int:
        """Mark records still `queued` or `in_progress` (background responses a stopped
        server left) `failed` with `message`; how many. At startup. `fleet_worker` None: the
        server owns the database (no --worker-id), every such record is its own. A
        worker of a fleet (--worker-id, one database for all) takes only those whose id
        names it (`fleet/keys.py`), and ids without a worker (from before worker ids),
        never another worker's running responses."""
        ...

    def close(self) -> None: ...
    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers now."""

    def writer_alive(self) -> bool: ...
    @property
    def pending_writes(self) -> int: ...


class InMemoryResponseStore:
    """LRU bounded by count and by bytes. Thread-safe; owners never see each other."""

    def __init__(self, max_responses: int, max_bytes: int, ttl_s: float | None = None) -> None:
        self.max_responses = max_responses
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s  # None: records never expire (the LRU bounds still apply)
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    async def save(self, record: StoredResponse) -> None:
        self.put(record)

    def fail_unfinished(self, message: str, fleet_worker: str | None) -> int:
        return 0  # nothing in memory outlives the process

    def close(self) -> None:
        pass

    def ping(self) -> None:
        pass

    def writer_alive(self) -> bool:
        return True

    @property
    def pending_writes(self) -> int:
        return 0

    def put(self, record: StoredResponse) -> None:
        size = record.size()
        with self._lock:
            self._drop(record.id)
            self._items[record.id] = record
            self._sizes[record.id] = size
            self._bytes += size
            while self._items and (
                len(self._items) > self.max_responses or self._bytes > self.max_bytes
            ):
                oldest = next(iter(self._items))
                self._drop(oldest)

    def get(self, response_id: str, owner: str) -> StoredResponse | None:
        with self._lock:
            record = self._items.get(response_id)
            if record is None or record.owner != owner:
                return None
            if self._expired(record):
                self._drop(response_id)
                return None
            self._items.move_to_end(response_id)
            return record

    def _expired(self, record: StoredResponse) -> bool:
        until = expires_at(record, self.ttl_s)
        return until is not None and time.time() > until

    def delete(self, response_id: str, owner: str) -> bool:
        with self._lock:
            record = self._items.get(response_id)
            if record is None or record.owner != owner:
                return False
            self._drop(response_id)
            return True

    def _drop(self, response_id: str) -> None:
        if response_id in self._items:
            del self._items[response_id]
            self._bytes -= self._sizes.pop(response_id)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes_used(self) -> int:
        return self._bytes
