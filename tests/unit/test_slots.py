"""Slot placement (`KVCacheManager`, the engine's `KVCache`) and `common_prefix`, against a
fake KV backend that records which tenant computed every cached token. Every manager
made here passes `check_integrity()` when its test ends (tests/unit/conftest.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.fake_kv import FakeKV, compute, hold, job, make, run, start
from warmloop.kvcache.base import Slot, common_prefix
from warmloop.kvcache.disk_store import DiskStore
from warmloop.kvcache.manager import KVCacheManager


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert common_prefix([1, 2, 3], [1, 2]) == 2
    assert common_prefix([5], [6]) == 0
    assert common_prefix((), ()) == 0
    assert common_prefix([1, 2, 3, 4], (1, 9, 3, 4)) == 1  # stops at the first difference


def test_slot_is_busy_from_lease_to_finish() -> None:
    mgr, kv = make(1)
    assert not Slot(0).busy
    p = start(mgr, kv, job([1, 2]))
    assert p.slot.busy and mgr.in_use() == 1
    mgr.finish(p.slot)
    assert not p.slot.busy and mgr.in_use() == 0


def test_first_placement_reuses_nothing() -> None:
    mgr, _ = make(2)
    p = mgr.place(job(range(10)))
    assert p is not None and p.reuse == 0 and p.tier == "none"
    assert p.slot.busy and mgr.in_use() == 1


def test_leased_slot_is_chosen_and_continues_delta_only() -> None:
    mgr, kv = make(3)
    first = run(mgr, kv, job(range(10), lease="c1"), (100, 101), at=1.0)
    run(mgr, kv, job([7, 7, 7, 7, 7]), at=0.5)  # an older free slot with nothing useful
    nxt = job([*range(10), 100, 101, 102, 103], lease="c1")
    p = mgr.place(nxt)
    assert p is not None
    assert p.slot is first.slot
    assert (p.reuse, p.tier) == (12, "slot")
    assert mgr.leased_to("c1") is first.slot and mgr.leased() == 1


def test_leased_slot_gets_a_longer_prefix_copied_in() -> None:
    mgr, kv = make(2)
    leased = run(mgr, kv, job([1, 2, 9], lease="c1"))
    other = run(mgr, kv, job([1, 2, 3, 4, 5, 6]))
    copies = mgr.stats.prefix_copies
    p = start(mgr, kv, job([1, 2, 3, 4, 5, 7], lease="c1"))
    assert p.slot is leased.slot  # the connection keeps its slot...
    assert (p.reuse, p.tier) == (5, "prefix")  # ...and gets the other slot's KV copied in
    assert ("copy", other.slot.id, leased.slot.id) in kv.calls
    assert mgr.stats.prefix_copies == copies + 1


def test_free_slot_with_the_longest_common_prefix_wins() -> None:
    mgr, kv = make(3)
    run(mgr, kv, job([1, 2, 3]), at=1.0)
    best = run(mgr, kv, job([1, 2, 3, 4, 5, 6]), at=3.0)
    run(mgr, kv, job([9, 9]), at=2.0)
    p = mgr.place(job([1, 2, 3, 4, 5, 7]))
    assert p is not None
    assert p.slot is best.slot and (p.reuse, p.tier) == (5, "slot")
    assert kv.tokens(best.slot.id) == [1, 2, 3, 4, 5]  # truncated to the reused prefix


def test_least_recently_used_slot_on_ties() -> None:
    mgr, kv = make(3)
    a = run(mgr, kv, job([5, 1]), at=30.0)
    b = run(mgr, kv, job([6, 1]), at=10.0)
    c = run(mgr, kv, job([7, 1]), at=20.0)
    p = mgr.place(job([8, 8, 8]))  # no slot shares anything: oldest one goes
    assert p is not None and p.slot is b.slot and p.reuse == 0
    for s in (a.slot, c.slot):
        s.tokens, kv.seqs[s.id] = [1, 2], [("A", 1), ("A", 2)]
        mgr.finish(s)
    a.slot.last_used, c.slot.last_used = 40.0, 35.0
    p2 = mgr.place(job([1, 2, 3]))  # equal prefixes: the older of the two
    assert p2 is not None and p2.slot is c.slot and p2.reuse == 2


def test_never_reuses_another_tenants_kv() -> None:
    mgr, kv = make(1)
    run(mgr, kv, job(range(8), tenant="A"))
    p = start(mgr, kv, job(range(8), tenant="B"))
    assert (p.reuse, p.tier) == (0, "none")
    assert kv.seqs[p.slot.id] == [("B", n) for n in range(8)]
    mgr.finish(p.slot)
    # A's chain went to host RAM when B took the slot; only A can have it back
    assert mgr.stats.snapshots == 1
    back = start(mgr, kv, job(range(8), tenant="A"))
    assert (back.reuse, back.tier) == (7, "host")


def test_another_tenants_longer_prefix_does_not_attract_the_job() -> None:
    mgr, kv = make(2)
    theirs, mine = hold(mgr, kv, 0, range(8), "B", at=1.0), hold(mgr, kv, 1, [0, 50], "A", at=2.0)
    p = mgr.place(job([*range(8), 9], tenant="A"))  # B's is older, and a longer "match"
    assert p is not None and p.slot is mine and (p.reuse, p.tier) == (1, "slot")
    assert kv.tokens(theirs.id) == list(range(8))


def test_reuse_is_capped_below_the_prompt_unless_prefill_only() -> None:
    mgr, kv = make(1)
    run(mgr, kv, job([1, 2, 3, 4]))
    p = mgr.place(job([1, 2, 3, 4]))
    assert p is not None and p.reuse == 3  # one token is left to compute the first logits
    assert kv.tokens(p.slot.id) == [1, 2, 3]
    compute(kv, p.slot, [4])
    mgr.finish(p.slot)
    warm = mgr.place(job([1, 2, 3, 4], prefill_only=True))
    assert warm is not None and warm.reuse == 4


def test_steals_the_least_recently_used_idle_leased_slot() -> None:
    mgr, kv = make(2)
    c1 = run(mgr, kv, job(range(10), lease="c1"), at=1.0)
    c2 = run(mgr, kv, job(range(20, 30), lease="c2"), at=2.0)
    p = start(mgr, kv, job([50, 51], lease="c3"))
    assert p.slot is c1.slot
    assert mgr.leased_to("c1") is None and mgr.leased_to("c3") is c1.slot
    assert mgr.leased_to("c2") is c2.slot
    assert mgr.stats.slot_evictions == 1
    mgr.finish(p.slot)
    # c1's chain was saved to host RAM and comes back on its next turn
    back = start(mgr, kv, job([*range(10), 11], lease="c1"))
    assert back.slot is c2.slot  # c2 is now the least recently used
    assert (back.reuse, back.tier) == (10, "host")
    assert mgr.stats.restores == 1 and mgr.stats.slot_evictions == 2


def test_none_when_every_slot_is_busy() -> None:
    mgr, kv = make(2)
    start(mgr, kv, job([1]))
    start(mgr, kv, job([2]))
    assert mgr.in_use() == 2
    assert not mgr.can_place(job([3]))
    assert mgr.place(job([3])) is None


def test_job_waits_for_its_own_busy_leased_slot() -> None:
    mgr, kv = make(2)
    start(mgr, kv, job([1, 2], lease="c1"))
    assert not mgr.can_place(job([1, 2, 3], lease="c1"))  # a free slot exists, but not its own
    assert mgr.can_place(job([1, 2, 3], lease="c2"))


def test_without_kv_reuse_nothing_is_reused() -> None:
    mgr, kv = make(1, kv_reuse=False)
    run(mgr, kv, job(range(10), lease="c1"))
    assert len(mgr.index) == 0 and len(mgr.host) == 0
    p = mgr.place(job(range(12), lease="c1"))
    assert p is not None and (p.reuse, p.tier) == (0, "none")
    assert kv.seqs[p.slot.id] == []


def test_fork_from_a_running_chain() -> None:
    mgr, kv = make(2)
    running = start(mgr, kv, job(range(10)))
    p = start(mgr, kv, job([*range(8), 99]))
    assert p.slot is not running.slot
    assert (p.reuse, p.tier) == (8, "prefix")
    assert kv.tokens(running.slot.id) == list(range(10))  # the source is untouched


def test_release_drop_kv_keeps_only_the_shared_prefix() -> None:
    mgr, kv = make(2)
    gone = run(mgr, kv, job(range(10), lease="c1", shared_prefix=4))
    kept = run(mgr, kv, job(range(20, 30), lease="c2", shared_prefix=4))
    mgr.release("c1", drop_kv=True)
    mgr.release("c2", drop_kv=False)
    assert mgr.leased() == 0
    assert gone.slot.tokens == [0, 1, 2, 3] and kv.tokens(gone.slot.id) == [0, 1, 2, 3]
    assert kept.slot.tokens == list(range(20, 30))
    assert mgr.index.match("A", list(range(10))) == (4, {gone.slot})


def test_snapshot_idle_moves_leased_chains_to_host() -> None:
    mgr, kv = make(2)
    a = run(mgr, kv, job(range(10), lease="c1"), at=0.0)
    assert mgr.snapshot_idle(1.0) == 1
    assert a.slot.tokens == [] and a.slot.lease is None and len(mgr.host) == 1
    p = start(mgr, kv, job([*range(10), 10], lease="c1"))
    assert (p.reuse, p.tier) == (10, "host")
    assert len(mgr.host) == 0  # the chain lives in a slot again: its snapshot is dropped


# ----- invariants under random traffic --------------------------------------------------
step = st.one_of(
    st.tuples(
        st.just("start"),
        st.sampled_from(["A", "B"]),
        st.sampled_from([None, "c1", "c2", "c3"]),
        st.lists(st.integers(0, 3), min_size=1, max_size=8),
        st.booleans(),
        st.integers(0, 3),
        st.booleans(),
    ),
    st.tuples(st.just("finish"), st.integers(0, 3)),
    st.tuples(st.just("persist"), st.booleans()),
    st.tuples(st.just("release"), st.sampled_from(["c1", "c2", "c3"]), st.booleans()),
    st.tuples(st.just("idle")),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(step, max_size=30),
    st.booleans(),
    st.sampled_from([0, 400, 10**6]),
    st.sampled_from([None, 900, 10**6]),
)
def test_invariants_under_random_traffic(
    steps: list[tuple],  # type: ignore[type-arg]
    reuse: bool,
    budget: int,
    disk_budget: int | None,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        disk = None if disk_budget is None else DiskStore(Path(tmp), disk_budget, {"m": 1})
        mgr, kv = make(3, kv_reuse=reuse, host=budget, disk=disk, disk_sync="turn")
        try:
            traffic(mgr, kv, steps, reuse=reuse, budget=budget)
        finally:
            mgr.close()


def traffic(
    mgr: KVCacheManager,
    kv: FakeKV,
    steps: list[tuple],  # type: ignore[type-arg]
    *,
    reuse: bool,
    budget: int,
) -> None:
    running: list[Slot] = []
    for s in steps:
        if s[0] == "start":
            _, tenant, lease, tokens, prefill_only, generated, durable = s
            j = job(
                tokens, tenant, lease, prefill_only=prefill_only, shared_prefix=1, durable=durable
            )
            before = {r.id: list(kv.seqs[r.id]) for r in running}
            if not mgr.can_place(j):
                assert mgr.place(j) is None
                continue
            p = start(mgr, kv, j)  # checks tokens, KV and tenant of the reused prefix
            assert p.reuse <= (len(tokens) if prefill_only else len(tokens) - 1)
            assert reuse or p.reuse == 0
            assert p.slot not in running and p.slot.lease == lease
            assert {r.id: kv.seqs[r.id] for r in running} == before  # busy slots untouched
            if not prefill_only:
                compute(kv, p.slot, range(generated), tenant)
            running.append(p.slot)
        elif s[0] == "finish" and running:
            mgr.finish(running.pop(s[1] % len(running)))
        elif s[0] == "release":
            mgr.release(s[1], drop_kv=s[2])
        elif s[0] == "idle":
            mgr.snapshot_idle(0.0)
        elif s[0] == "persist":
            mgr.persist(drain=s[1])
        for slot in mgr.slots:
            assert kv.tokens(slot.id) == slot.tokens
            assert slot.busy == (slot in running)
        leases = [x.lease for x in mgr.slots if x.lease is not None]
        assert len(leases) == len(set(leases))  # a connection pins at most one slot
        assert mgr.host.bytes_used <= max(budget, 0) if reuse else len(mgr.host) == 0
        assert all(not x.busy for x in mgr.slots if x in mgr.index)  # busy slots unindexed
        mgr.check_integrity()


def test_release_of_a_busy_slot_is_not_undone_by_finish() -> None:
    """A socket closing mid-generation: `Engine.release_lease` runs from the inbox before
    the cancelled job is finished, so `release` meets a busy slot."""
    mgr, kv = make(1)
    p = start(mgr, kv, job(range(10), lease="c1", shared_prefix=3))
    mgr.release("c1", drop_kv=True)
    assert p.slot.lease is None
    mgr.finish(p.slot)
    # store:false: only the shared prefix may stay matchable once the connection is gone
    assert mgr.index.match("A", list(range(10)))[0] <= 3


HEAD, OLD, KEPT = list(range(100, 110)), list(range(200, 220)), list(range(300, 330))


def test_a_truncated_chain_cuts_the_dropped_turns_and_keeps_the_tail() -> None:
    """truncation "auto": the prompt is the head, then the chain minus its oldest turns,
    then the new turn; the slot that holds the chain cuts those turns out instead of
    recomputing the tail, over WebSocket (its own slot) and HTTP (an idle slot)."""
    for lease in ("c1", None):
        mgr, kv = make(2)
        run(mgr, kv, job([7] * 40), at=0.0)  # another idle slot: holds only junk
        chain = run(mgr, kv, job(HEAD + OLD + KEPT, lease=lease), at=1.0)
        nxt = job([*HEAD, *KEPT, 1, 2, 3], lease=lease, drop=(10, 30))
        p = start(mgr, kv, nxt)  # start() checks the slot's KV equals the prompt's prefix
        assert p.slot is chain.slot and (p.reuse, p.tier) == (40, "slot")
        assert ("cut", p.slot.id, 20) in kv.calls and mgr.stats.cuts == 1


def test_no_cut_when_the_model_cannot_shift_or_the_chain_is_elsewhere() -> None:
    mgr, kv = make(1)
    kv.can_cut = False
    run(mgr, kv, job(HEAD + OLD + KEPT, lease="c1"))
    p = start(mgr, kv, job([*HEAD, *KEPT, 1], lease="c1", drop=(10, 30)))
    assert p.reuse == 10 and not any(c[0] == "cut" for c in kv.calls)
    # A slot whose tokens stop inside the dropped range has nothing after it to keep.
    mgr, kv = make(1)
    run(mgr, kv, job(HEAD + OLD[:5], lease="c1"))
    p = start(mgr, kv, job([*HEAD, *KEPT, 1], lease="c1", drop=(10, 30)))
    assert p.reuse == 10 and mgr.stats.cuts == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(step, max_size=30), st.sampled_from([900, 10**6]))
def test_invariants_with_chains_coming_back_from_disk(
    steps: list[tuple],  # type: ignore[type-arg]
    disk_budget: int,
) -> None:
    """One slot and no host RAM: every chain that leaves the slot goes to disk, and any
    later prompt sharing its prefix restores it (start() checks tokens and tenants)."""
    with tempfile.TemporaryDirectory() as tmp:
        disk = DiskStore(Path(tmp), disk_budget, {"m": 1})
        mgr, kv = make(1, host=0, disk=disk, disk_sync="idle", min_snapshot_tokens=1)
        durable = [(*s[:6], True) if s[0] == "start" else s for s in steps]
        try:
            traffic(mgr, kv, durable, reuse=True, budget=0)
            mgr.persist_idle()
        finally:
            mgr.close()
