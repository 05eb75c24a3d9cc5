"""The KV cache's pure structures: the tenant radix index and the host-RAM store (with
the LRU policy choosing what leaves it). Each index test ends with `verify()`: the tree
and the recorded paths agree."""

from __future__ import annotations

import pytest

from warmloop.kvcache.base import Slot, common_prefix
from warmloop.kvcache.host_store import HostStore, Snapshot
from warmloop.kvcache.policy import LRUPolicy
from warmloop.kvcache.prefix_index import PrefixIndex


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix((1, 2), [1, 2, 3]) == 2


def test_longest_match_and_holders() -> None:
    idx = PrefixIndex()
    a, b, c = Slot(0), Slot(1), Slot(2)
    idx.insert("t", [1, 2, 3, 4], a)
    idx.insert("t", [1, 2, 9], b)
    idx.insert("t", [1, 2, 3, 4, 5, 6], c)
    assert idx.match("t", [1, 2, 3, 4, 5, 7]) == (5, {c})
    assert idx.match("t", [1, 2, 3, 8]) == (3, {a, c})
    assert idx.match("t", [1, 2]) == (2, {a, b, c})
    assert idx.match("t", [7]) == (0, set())
    assert idx.tokens_of(b) == (1, 2, 9)
    assert idx.entry(b) == ("t", (1, 2, 9)) and set(idx) == {a, b, c}
    assert idx.verify() == []


def test_tenants_never_match_each_other() -> None:
    idx = PrefixIndex()
    idx.insert("A", [1, 2, 3], "holder-a")
    assert idx.match("B", [1, 2, 3]) == (0, set())
    assert idx.match("A", [1, 2, 3]) == (3, {"holder-a"})
    assert idx.verify() == []


def test_reinsert_and_remove_prune() -> None:
    idx = PrefixIndex()
    idx.insert("t", [1, 2, 3], "x")
    idx.insert("t", [1, 2, 3, 4], "y")
    idx.insert("t", [5, 6], "x")  # x now holds something else
    assert idx.match("t", [1, 2, 3, 4]) == (4, {"y"})
    assert idx.match("t", [5, 6, 7]) == (2, {"x"})
    assert idx.verify() == []
    idx.remove("y")
    assert idx.match("t", [1, 2, 3]) == (0, set())
    idx.remove("x")
    assert len(idx) == 0
    assert idx.match("t", [5]) == (0, set())
    idx.remove("never-inserted")  # no error
    assert idx.verify() == []


def test_empty_tokens_are_not_indexed() -> None:
    idx = PrefixIndex()
    idx.insert("t", [], "x")
    assert "x" not in idx and idx.entry("x") is None


def snap(n: int, size: int) -> Snapshot:
    return Snapshot(tuple(range(n)), bytearray(size), "t", None)


def put_lru(store: HostStore, s: Snapshot) -> list[Snapshot]:
    """Make room as the LRU policy plans, then add `s` (what the manager's mover does)."""
    victims = LRUPolicy().plan_host(store, s.nbytes)
    for old in victims:
        store.drop(old)
    store.put(s)
    return victims


def test_host_store_budget_evicts_lru() -> None:
    s1, s2, s3 = snap(1, 100), snap(2, 100), snap(3, 100)
    store = HostStore(budget_bytes=s1.nbytes + s3.nbytes)  # any two fit, three do not
    assert put_lru(store, s1) == [] and put_lru(store, s2) == []
    store.touch(s1)  # s2 is now the least recently used
    assert put_lru(store, s3) == [s2]
    assert s1 in store and s3 in store and s2 not in store
    assert store.bytes_used == s1.nbytes + s3.nbytes
    store.drop(s1)
    assert store.bytes_used == s3.nbytes and len(store) == 1
    assert not store.fits(10**9)


def test_host_store_refuses_what_is_over_budget() -> None:
    """Making room is the policy's job; the store only refuses to overflow."""
    s1, s2 = snap(1, 100), snap(2, 100)
    store = HostStore(budget_bytes=s1.nbytes + 1)
    store.put(s1)
    with pytest.raises(ValueError, match="does not fit"):
        store.put(s2)
    assert list(store) == [s1] and store.bytes_used == s1.nbytes == store.charged(s1)
    assert store.charged(s2) == 0


def test_host_store_bytes_survive_a_snapshot_shrinking_in_place() -> None:
    """A released chain keeps only its shared prefix (`tokens` shortened in place); the
    budget must still give back exactly what the snapshot was charged."""
    s = snap(100, 1000)
    store = HostStore(budget_bytes=10**6)
    put_lru(store, s)
    s.tokens = s.tokens[:10]
    store.drop(s)
    assert store.bytes_used == 0 and len(store) == 0
    s2, s3 = snap(100, 1000), snap(100, 1000)
    small = HostStore(budget_bytes=s2.nbytes + 1)
    put_lru(small, s2)
    s2.tokens = s2.tokens[:1]
    assert put_lru(small, s3) == [s2]  # evicting the shrunk one frees its full charge
    assert small.bytes_used == s3.nbytes
