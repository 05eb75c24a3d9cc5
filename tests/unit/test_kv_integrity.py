"""`KVCacheManager.check_integrity`: silent on a consistent cache, and a clear error for
each kind of disagreement (between the records and the backend, the slots, the host
store and the prefix index)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.unit.fake_kv import FakeKV, job, make, run, start
from warmloop.kvcache.base import KVIntegrityError, Slot
from warmloop.kvcache.host_store import Snapshot
from warmloop.kvcache.manager import KVCacheManager


@dataclass
class Scene:
    """Two slots: `busy` runs c3's job, `idle` holds c2's chain; c1's chain was evicted
    to host RAM (`snap`) to make room for c3."""

    mgr: KVCacheManager
    kv: FakeKV
    busy: Slot
    idle: Slot
    snap: Snapshot


def scene() -> Scene:
    mgr, kv = make(2, checked=False)  # the tests below break it on purpose
    run(mgr, kv, job(range(10), lease="c1"), at=1.0)
    idle = run(mgr, kv, job(range(20, 30), lease="c2"), at=2.0).slot
    busy = start(mgr, kv, job([50, 51, 52], lease="c3")).slot
    (snap,) = mgr.host
    return Scene(mgr, kv, busy, idle, snap)


def test_a_consistent_cache_passes() -> None:
    s = scene()
    assert s.busy.busy and not s.idle.busy and s.snap.tokens == tuple(range(10))
    s.mgr.check_integrity()
    s.mgr.finish(s.busy)
    s.mgr.release("c2", drop_kv=True)
    s.mgr.check_integrity()


def shrink_snapshot(s: Scene) -> None:
    s.snap.tokens = s.snap.tokens[:5]  # not re-indexed


def ghost_in_tree(s: Scene) -> None:
    node = next(iter(s.mgr.index._roots["A"].children.values()))
    node.holders.add("ghost")


BREAKS: dict[str, tuple[Callable[[Scene], object], str]] = {
    "backend lost a token": (
        lambda s: s.kv.seqs[s.idle.id].pop(),
        r"slot 1 records 10 tokens but its sequence holds 9",
    ),
    "backend gained a token": (
        lambda s: s.kv.seqs[s.busy.id].append(("A", 53)),
        r"slot 0 records 3 tokens but its sequence holds 4",
    ),
    "two slots hold one lease": (
        lambda s: setattr(s.idle, "lease", "c3"),
        r"lease 'c3' pins 2 slots",
    ),
    "busy slot in the index": (
        lambda s: s.mgr.index.insert("A", s.busy.tokens, s.busy),
        r"slot 0 is busy but in the prefix index",
    ),
    "idle slot missing from the index": (
        lambda s: s.mgr.index.remove(s.idle),
        r"idle slot 1: should be indexed as 10 tokens \[20, 21, .*\] of tenant 'A' but the "
        r"prefix index has nothing",
    ),
    "idle slot indexed with other tokens": (
        lambda s: s.mgr.index.insert("A", [20, 21, 99], s.idle),
        r"idle slot 1: .* has 3 tokens \[20, 21, 99\] .*differ from position 2",
    ),
    "idle slot indexed under another tenant": (
        lambda s: s.mgr.index.insert("B", s.idle.tokens, s.idle),
        r"idle slot 1: .* of tenant 'A' but the prefix index has .* of tenant 'B'",
    ),
    "host bytes miscounted": (
        lambda s: setattr(s.mgr.host, "bytes_used", s.mgr.host.bytes_used + 1),
        r"host store counts \d+ bytes but its snapshots were charged \d+",
    ),
    "host over budget": (
        lambda s: setattr(s.mgr.host, "budget", s.mgr.host.bytes_used - 1),
        r"host store holds \d+ bytes over its budget",
    ),
    "snapshot missing from the index": (
        lambda s: s.mgr.index.remove(s.snap),
        r"snapshot \d+: should be indexed as 10 tokens .* has nothing",
    ),
    "snapshot tokens changed behind the index": (
        shrink_snapshot,
        r"snapshot \d+: should be indexed as 5 tokens .* has 10 tokens",
    ),
    "index holds a dropped snapshot": (
        lambda s: s.mgr.host.drop(s.snap),
        r"prefix index holds snapshot \d+: neither a slot, in host, nor a file",
    ),
    "index holds a stranger": (
        lambda s: s.mgr.index.insert("A", [1, 2], Slot(7)),
        r"prefix index holds a foreign slot 7: neither a slot, in host, nor a file",
    ),
    "index tree out of step": (
        ghost_in_tree,
        r"prefix index: the tree still holds 'ghost', which has no path",
    ),
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_each_disagreement_is_named(name: str) -> None:
    s = scene()
    s.mgr.check_integrity()
    breaks, message = BREAKS[name]
    breaks(s)
    with pytest.raises(KVIntegrityError, match=message):
        s.mgr.check_integrity()


def test_without_kv_reuse_nothing_may_be_indexed() -> None:
    mgr, kv = make(1, kv_reuse=False, checked=False)
    slot = run(mgr, kv, job(range(6), lease="c1", shared_prefix=2)).slot
    mgr.release("c1", drop_kv=True)  # keeps the shared prefix in the slot, unindexed
    mgr.check_integrity()
    mgr.index.insert("A", slot.tokens, slot)
    with pytest.raises(KVIntegrityError, match=r"idle slot 0: should be indexed as nothing"):
        mgr.check_integrity()


def test_every_problem_is_reported_at_once() -> None:
    s = scene()
    s.kv.seqs[s.idle.id].pop()
    s.mgr.host.drop(s.snap)
    with pytest.raises(KVIntegrityError) as err:
        s.mgr.check_integrity()
    assert "slot 1 records" in str(err.value) and "neither a slot, in host, nor a file" in str(
        err.value
    )
