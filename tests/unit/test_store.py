"""The in-memory response store (count and byte bounds, LRU, owners) and connections."""

from __future__ import annotations

from warmloop.protocol.items import MessageItem
from warmloop.session.connection import RECENT_RESPONSES, Connection
from warmloop.session.response_store import ChainState, InMemoryResponseStore, StoredResponse


def record(rid: str, owner: str = "a", text: str = "x", stored: bool = True) -> StoredResponse:
    item = MessageItem(f"m{rid}", "user", text)
    return StoredResponse(
        rid, owner, {"id": rid}, (item,), (), (item,), ChainState("t", (1, 2)), stored
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
        conn.remember(record(f"r{k}", stored=k % 2 == 0))
    assert conn.lookup("r0") is None
    assert conn.lookup(f"r{RECENT_RESPONSES + 2}") is not None
    assert conn.chain_is_stored  # the latest (even index) was stored
    conn.forget(f"r{RECENT_RESPONSES + 2}")
    assert conn.lookup(f"r{RECENT_RESPONSES + 2}") is None
    assert not conn.chain_is_stored
