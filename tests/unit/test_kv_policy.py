"""`LRUPolicy`: the plans it returns for slots and host RAM, and that planning changes
nothing; and the policy as the manager's injection point."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tests.unit.fake_kv import job, make, run, start
from warmloop.kvcache.base import KVRequest, Slot
from warmloop.kvcache.host_store import HostStore, Snapshot
from warmloop.kvcache.policy import LRUPolicy, SlotPlan


@dataclass(frozen=True)
class Req:
    """Any object with these fields is a request: the cache never sees an engine Job."""

    tokens: tuple[int, ...]
    tenant: str = "A"
    lease: str | None = None
    prefill_only: bool = False
    shared_prefix: int = 0
    drop: tuple[int, int] | None = None
    durable: bool = False
    retention: Literal["in_memory", "24h"] = "in_memory"


def slot(
    i: int,
    tokens: Sequence[int] = (),
    *,
    tenant: str = "A",
    lease: str | None = None,
    busy: bool = False,
    at: float = 0.0,
) -> Slot:
    return Slot(i, list(tokens), tenant, lease, busy, at)


def state(slots: list[Slot]) -> list[dict[str, Any]]:
    return [{**vars(s), "tokens": list(s.tokens)} for s in slots]


def plan(slots: list[Slot], req: Req, *, kv_reuse: bool = True) -> SlotPlan | None:
    """The policy's plan, checking that making it changed no slot."""
    before = state(slots)
    p = LRUPolicy().plan_slot(slots, req, kv_reuse=kv_reuse, can_cut=True)
    assert state(slots) == before
    return p


def test_the_connections_own_slot_first_even_without_a_prefix() -> None:
    slots = [slot(0, [1, 2, 3], at=1.0), slot(1, [9], lease="c1", at=5.0), slot(2)]
    assert plan(slots, Req((1, 2, 3, 4), lease="c1")) == SlotPlan(slots[1], evicts=False)


def test_a_busy_own_slot_means_wait_although_others_are_free() -> None:
    slots = [slot(0, lease="c1", busy=True), slot(1), slot(2)]
    assert plan(slots, Req((1,), lease="c1")) is None
    assert plan(slots, Req((1,), lease="c2")) is not None  # another connection is placed


def test_free_slot_with_the_longest_prefix_then_the_lowest_id() -> None:
    slots = [
        slot(0, [1, 2], at=1.0),
        slot(1, [1, 2, 3, 4], at=3.0),
        slot(2, [1, 2, 3, 4, 5, 6], tenant="B", at=0.5),  # longer, but another tenant's
        slot(3, [1, 2, 3, 4, 5], lease="c9", at=0.0),  # longer, but pinned to c9
    ]
    assert plan(slots, Req((1, 2, 3, 4, 5, 7))) == SlotPlan(slots[1], evicts=False)
    slots[0].tokens = [1, 2, 3, 4]  # a tie between chains: the least recently used goes
    assert plan(slots, Req((1, 2, 3, 4, 5, 7))) == SlotPlan(slots[0], evicts=False)
    # without KV reuse nothing held counts: the lowest free slot (slots stay contiguous)
    assert plan(slots, Req((1, 2, 3, 4, 5, 7)), kv_reuse=False) == SlotPlan(slots[0], False)


def test_a_cold_request_takes_the_lowest_empty_slot_before_any_chain() -> None:
    """Busy slots stay contiguous (llama.cpp decodes consecutive sequences in one
    micro-batch), and no chain is moved out while an empty slot is free."""
    slots = [
        slot(0, [5, 6], at=0.0),
        slot(1, [], at=3.0),
        slot(2, [], at=1.0),
        slot(3, [7], at=2.0),
    ]
    assert plan(slots, Req((1, 2))) == SlotPlan(slots[1], evicts=False)
    slots[1].tokens = [8]
    assert plan(slots, Req((1, 2))) == SlotPlan(slots[2], evicts=False)
    slots[2].tokens = [9]  # no empty slot left: the least recently used chain goes
    assert plan(slots, Req((1, 2))) == SlotPlan(slots[0], evicts=False)


def test_no_free_slot_evicts_the_least_recently_used_idle_chain() -> None:
    slots = [
        slot(0, [1], lease="c1", at=2.0),
        slot(1, [2], lease="c2", at=1.0),
        slot(2, [3], lease="c3", busy=True, at=0.0),  # older, but running
    ]
    assert plan(slots, Req((4,), lease="c4")) == SlotPlan(slots[1], evicts=True)
    for s in slots:
        s.busy = True
    assert plan(slots, Req((4,))) is None


def host(budget: int, *sizes: int) -> tuple[HostStore, list[Snapshot]]:
    store = HostStore(budget)
    snaps = [Snapshot((i,), bytearray(n - 4), "A", None) for i, n in enumerate(sizes)]
    for s in snaps:
        store.put(s)
    return store, snaps


def test_host_plan_drops_least_recently_used_until_it_fits() -> None:
    store, (a, b, c) = host(300, 100, 100, 100)
    store.touch(a)  # order, least recent first: b, c, a
    before = (list(store), store.bytes_used)
    policy = LRUPolicy()
    assert policy.plan_host(store, 0) == []
    assert policy.plan_host(store, 100) == [b]
    assert policy.plan_host(store, 150) == [b, c]
    assert policy.plan_host(store, 300) == [b, c, a]
    assert (list(store), store.bytes_used) == before  # planning dropped nothing


def test_host_plan_counts_what_a_snapshot_was_charged() -> None:
    """A released chain's snapshot shrinks to its shared prefix in place; it still frees
    its full charge when it goes."""
    store, (a, _) = host(200, 100, 100)
    a.tokens = ()
    assert LRUPolicy().plan_host(store, 100) == [a]


def test_room_for_everything_means_no_victims() -> None:
    store, _ = host(10**6, 100, 100)
    assert LRUPolicy().plan_host(store, 1000) == []


# ----- the manager takes its policy ----------------------------------------------------
class Refuse:
    def plan_slot(
        self, slots: Sequence[Slot], req: KVRequest, *, kv_reuse: bool, can_cut: bool
    ) -> SlotPlan | None:
        return None

    def plan_host(self, host: HostStore, nbytes: int) -> list[Snapshot]:
        return []


class LastFreeSlot(LRUPolicy):
    def plan_slot(
        self, slots: Sequence[Slot], req: KVRequest, *, kv_reuse: bool, can_cut: bool
    ) -> SlotPlan | None:
        free = [s for s in slots if not s.busy]
        return SlotPlan(free[-1], evicts=False) if free else None


def test_can_lease_is_the_policy_returning_a_plan() -> None:
    mgr, _ = make(2, policy=Refuse())
    assert not mgr.can_place(job([1]))
    assert mgr.place(job([1])) is None and mgr.in_use() == 0


def test_the_manager_places_on_the_planned_slot() -> None:
    mgr, kv = make(3, policy=LastFreeSlot())
    first = start(mgr, kv, job([1, 2]))
    second = start(mgr, kv, Req((1, 2, 3)))  # a plain request, not an engine Job
    assert (first.slot.id, second.slot.id) == (2, 1)
    assert (second.reuse, second.tier) == (2, "prefix")  # forked from the running chain


def test_a_plan_that_evicts_moves_the_victim_to_host_first() -> None:
    mgr, kv = make(1)
    run(mgr, kv, job(range(10), lease="c1"))
    p = start(mgr, kv, job([50, 51], lease="c2"))
    assert mgr.stats.slot_evictions == 1 and mgr.host_snapshots() == 1
    assert mgr.leased_to("c1") is None and mgr.leased_to("c2") is p.slot
