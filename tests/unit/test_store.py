"""The in-memory response store (count and byte bounds, LRU, owners) and connections."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from warmloop.protocol.items import MessageItem
from warmloop.session.connection import RECENT_RESPONSES, Connection
from warmloop.session.response_store import ChainState, InMemoryResponseStore, StoredResponse
from warmloop.session.store_sql import SQLiteResponseStore


def record(rid: str, owner: str = "a", text: str = "x", stored: bool = True) -> StoredResponse:
    item = MessageItem(f"m{rid}", "user", text)
    return StoredResponse(
        rid, owner, {"id": rid}, (item,), (), (item,), ChainState.of("t", (1, 2)), stored
    )


def test_count_bound_evicts_least_recently_used() -> None:
    store = InMemoryResponseStore(max_responses=2, max_bytes=10**9)
    store.put(record("r1"))
    store.put(record("r2"))
    assert store.get("r1", "a") is not None  # r1 is now the most recent
    store.put(record("r3"))
    assert store.get("r2", "a") is None
    assert store.get("r1", "a") is not None and store.get("r3", "a") is not None
    assert len(store) == 2


def test_byte_bound() -> None:
    one = record("r1", text="y" * 1000).size()
    store = InMemoryResponseStore(max_responses=100, max_bytes=one * 2 + 10)
    for k in range(5):
        store.put(record(f"r{k}", text="y" * 1000))
    assert len(store) == 2
    assert store.bytes_used <= store.max_bytes
    assert store.get("r4", "a") is not None and store.get("r0", "a") is None


def test_owners_are_isolated_and_delete_frees_bytes() -> None:
    store = InMemoryResponseStore(10, 10**9)
    store.put(record("r1", owner="a"))
    assert store.get("r1", "b") is None
    assert not store.delete("r1", "b")
    before = store.bytes_used
    assert store.delete("r1", "a")
    assert store.bytes_used < before and store.bytes_used == 0
    assert not store.delete("r1", "a")
    assert not store.delete("nope", "a")


def test_put_same_id_replaces() -> None:
    store = InMemoryResponseStore(10, 10**9)
    store.put(record("r1", text="a"))
    store.put(record("r1", text="bbbb"))
    assert len(store) == 1
    assert store.bytes_used == record("r1", text="bbbb").size()


def test_connection_keeps_recent_responses() -> None:
    conn = Connection(tenant="a")
    for k in range(RECENT_RESPONSES + 3):
        conn.remember(record(f"r{k}", stored=k % 2 == 0), "lane")
    assert conn.lookup("r0") is None
    assert conn.lookup(f"r{RECENT_RESPONSES + 2}") is not None
    assert conn.lane_is_stored("lane")  # the latest (even index) was stored
    conn.forget(f"r{RECENT_RESPONSES + 2}")
    assert conn.lookup(f"r{RECENT_RESPONSES + 2}") is None


def test_get_refreshes_recency_so_the_other_one_is_evicted() -> None:
    store = InMemoryResponseStore(max_responses=3, max_bytes=10**9)
    for rid in ("r1", "r2", "r3"):
        store.put(record(rid))
    store.get("r1", "a")
    store.get("r2", "a")
    store.put(record("r4"))  # r3 is now the least recently used
    assert [rid for rid in ("r1", "r2", "r3", "r4") if store.get(rid, "a")] == ["r1", "r2", "r4"]


def test_get_by_another_owner_does_not_refresh_recency() -> None:
    store = InMemoryResponseStore(max_responses=2, max_bytes=10**9)
    store.put(record("r1"))
    store.put(record("r2"))
    assert store.get("r1", "intruder") is None
    store.put(record("r3"))
    assert store.get("r1", "a") is None and store.get("r2", "a") is not None


def test_bytes_used_tracks_every_put_and_drop() -> None:
    store = InMemoryResponseStore(max_responses=10, max_bytes=10**9)
    sizes = {rid: record(rid, text="z" * n).size() for rid, n in (("r1", 10), ("r2", 300))}
    store.put(record("r1", text="z" * 10))
    assert store.bytes_used == sizes["r1"]
    store.put(record("r2", text="z" * 300))
    assert store.bytes_used == sizes["r1"] + sizes["r2"]
    assert store.delete("r2", "a")
    assert store.bytes_used == sizes["r1"]
    assert store.delete("r1", "a")
    assert store.bytes_used == 0 and len(store) == 0


def test_byte_bound_evicts_oldest_until_it_fits() -> None:
    small, big = record("s1", text="a").size(), record("b", text="a" * 5000).size()
    store = InMemoryResponseStore(max_responses=100, max_bytes=big + small)
    store.put(record("s1", text="a"))
    store.put(record("s2", text="a"))
    store.put(record("b", text="a" * 5000))  # needs room for itself: s1 goes, s2 stays
    assert store.get("s1", "a") is None
    assert store.get("s2", "a") is not None and store.get("b", "a") is not None
    assert store.bytes_used == big + small


def test_a_record_bigger_than_the_whole_budget_is_not_kept() -> None:
    store = InMemoryResponseStore(max_responses=10, max_bytes=100)
    store.put(record("r1", text="a" * 1000))
    assert store.get("r1", "a") is None and store.bytes_used == 0 and len(store) == 0


def test_size_counts_items_chain_and_history() -> None:
    item = MessageItem("m", "user", "x" * 10)
    base = StoredResponse("r", "a", {}, (), (), (), None, True).size()
    assert base == 512 + len("{}")
    with_items = StoredResponse("r", "a", {}, (item,), (item,), (item, item), None, True)
    assert with_items.size() == base + 2 * (64 + 10) + 8 * 2
    chained = StoredResponse("r", "a", {}, (), (), (), ChainState.of("abc", (1, 2, 3, 4)), True)
    assert chained.size() == base + 4 * 4 + 3


def test_size_counts_the_response_object() -> None:
    """The echoed request fields (metadata, instructions) are part of what a record
    holds: a response with 8 KB of instructions weighs at least 8 KB more."""
    plain = StoredResponse("r", "a", {"id": "r"}, (), (), (), None, True).size()
    heavy = {"id": "r", "instructions": "i" * 8192}
    assert StoredResponse("r", "a", heavy, (), (), (), None, True).size() >= plain + 8192


async def test_save_is_put() -> None:
    store = InMemoryResponseStore(10, 10**9)
    await store.save(record("r1"))
    got = store.get("r1", "a")
    assert got is not None and got.response == {"id": "r1"}
    store.close()


def test_connection_remember_lookup_forget() -> None:
    conn = Connection(tenant="a")
    assert conn.id.startswith("conn_") and conn.id != Connection(tenant="a").id
    assert conn.lookup("r1") is None and not conn.lane_is_stored("a")
    r1 = record("r1", stored=False)
    conn.remember(r1, "a")
    assert conn.lookup("r1") is r1
    assert not conn.lane_is_stored("a")  # the latest is store:false
    conn.remember(record("r2", stored=True), "a")
    assert conn.lane_is_stored("a")
    conn.remember(r1, "a")  # remembering again makes it the latest
    assert not conn.lane_is_stored("a")
    conn.forget("r1")
    conn.forget("never")  # no error
    assert conn.lookup("r1") is None


def test_a_stored_lane_does_not_keep_another_lanes_kv() -> None:
    """On disconnect each lane's KV follows its own latest response: a store:false lane
    is dropped even when another lane's latest response was stored."""
    conn = Connection(tenant="a")
    conn.remember(record("r1", stored=False), "conn#x")
    conn.remember(record("r2", stored=True), "conn#y")
    assert not conn.lane_is_stored("conn#x")
    assert conn.lane_is_stored("conn#y")


def test_connection_bound_keeps_exactly_the_latest() -> None:
    conn = Connection(tenant="a")
    n = RECENT_RESPONSES + 5
    for k in range(n):
        conn.remember(record(f"r{k}"))
    assert len(conn.recent) == RECENT_RESPONSES
    kept = [k for k in range(n) if conn.lookup(f"r{k}") is not None]
    assert kept == list(range(5, n))


def test_ttl_expires_records_in_memory_too() -> None:
    import time

    store = InMemoryResponseStore(10, 10**9, ttl_s=60)
    fresh, old = record("r1"), record("r2")
    fresh.response["created_at"] = int(time.time())
    old.response["created_at"] = int(time.time()) - 61
    store.put(fresh)
    store.put(old)
    assert store.get("r1", "a") is fresh
    assert store.get("r2", "a") is None and len(store) == 1  # dropped, bytes freed
    assert InMemoryResponseStore(10, 10**9).get("r2", "a") is None
    forever = InMemoryResponseStore(10, 10**9)
    forever.put(old)
    assert forever.get("r2", "a") is old


def test_a_chain_costs_about_four_bytes_a_token() -> None:
    """Every recent response of every socket keeps its chain: 4,096 tokens must not cost
    ~150 KB of Python ints (the store's byte bound counts 4 bytes a token)."""
    import sys

    chain = ChainState.of("", range(1000, 1000 + 4096))
    assert sys.getsizeof(chain.tokens) < 4096 * 5  # ints as a tuple: ~36 bytes each
    assert list(chain.tokens[:2]) == [1000, 1001]


def test_connection_keeps_at_most_its_byte_budget_oldest_first() -> None:
    big = record("r0", text="x" * 10_000)
    conn = Connection(tenant="a", max_bytes=25_000)
    assert conn.remember(big) == 0 and conn.retained_bytes == big.size()
    assert conn.remember(record("r1", text="y" * 10_000)) == 0
    # A third would hold ~30 kB: the oldest goes, and the gauge follows.
    assert conn.remember(record("r2", text="z" * 10_000)) == 1
    assert conn.lookup("r0") is None and conn.lookup("r1") is not None
    assert conn.retained_bytes == sum(r.size() for r in conn.recent.values())
    # One response over the budget on its own is still kept: the chain must go on.
    huge = record("r3", text="h" * 60_000)
    assert conn.remember(huge) == 2 and list(conn.recent) == ["r3"]
    conn.forget("r3")
    assert conn.retained_bytes == 0


def test_a_read_racing_a_delete_does_not_bring_the_record_back(tmp_path: Path) -> None:
    """A read that found the row just before its DELETE committed must not put the
    record back into the cache: afterwards the response is gone for every reader."""
    store = SQLiteResponseStore(
        tmp_path / "r.db", cache=InMemoryResponseStore(max_responses=10, max_bytes=1 << 20)
    )
    try:
        asyncio.run(store.save(record("r1")))
        store.cache.delete("r1", "a")  # the next read goes to the database
        read = store._read
        found, go = threading.Event(), threading.Event()

        def slow_read(*args: Any) -> Any:
            row = read(*args)
            found.set()  # the row is read; its DELETE now runs before the read ends
            go.wait(5)
            return row

        store._read = slow_read  # type: ignore[method-assign]
        raced: list[StoredResponse | None] = []
        reader = threading.Thread(target=lambda: raced.append(store.get("r1", "a")))
        reader.start()
        assert found.wait(5)
        assert store.delete("r1", "a")
        go.set()
        reader.join(5)
        store._read = read  # type: ignore[method-assign]
        assert raced == [None]  # its DELETE ran while it read: it does not count
        assert store.get("r1", "a") is None
    finally:
        store.close()
