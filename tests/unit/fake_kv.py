"""Test doubles for the KV cache: a fake backend (`KVOps` over plain lists) and helpers
that place, compute and finish jobs the way the engine does."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Sequence

from warmloop.engine.request import Job, SamplingParams
from warmloop.kvcache.base import KVRequest, Placement, Retention, Slot
from warmloop.kvcache.disk_store import DiskStore
from warmloop.kvcache.manager import DiskSync, KVCacheManager
from warmloop.kvcache.policy import EvictionPolicy

MADE: list[KVCacheManager] = []  # checked managers of the running test

_ids = itertools.count()


class FakeKV:
    """`KVOps` over plain lists: each sequence holds (tenant, token) pairs, so a test can
    tell whose computation any reused KV came from."""

    def __init__(self) -> None:
        self.seqs: defaultdict[int, list[tuple[str, int]]] = defaultdict(list)
        self.calls: list[tuple[str, int, int]] = []

    def seq_truncate(self, seq: int, keep: int) -> None:
        self.calls.append(("truncate", seq, keep))
        del self.seqs[seq][keep:]

    def seq_copy(self, src: int, dst: int) -> None:
        self.calls.append(("copy", src, dst))
        self.seqs[dst] = list(self.seqs[src])

    def seq_state_get(self, seq: int) -> bytearray:
        self.calls.append(("get", seq, len(self.seqs[seq])))
        return bytearray(json.dumps(self.seqs[seq]).encode())

    def seq_state_set(self, seq: int, data: bytes | bytearray) -> None:
        self.calls.append(("set", seq, 0))
        self.seqs[seq] = [(t, n) for t, n in json.loads(bytes(data))]

    def seq_len(self, seq: int) -> int:
        return len(self.seqs[seq])

    def seq_cut(self, seq: int, start: int, end: int) -> None:
        self.calls.append(("cut", seq, end - start))
        del self.seqs[seq][start:end]

    can_cut = True

    def tokens(self, seq: int) -> list[int]:
        return [n for _, n in self.seqs[seq]]


def make(
    n_slots: int,
    *,
    kv_reuse: bool = True,
    host: int = 10**6,
    policy: EvictionPolicy | None = None,
    checked: bool = True,
    disk: DiskStore | None = None,
    disk_sync: DiskSync = "off",
    min_snapshot_tokens: int = 4,
) -> tuple[KVCacheManager, FakeKV]:
    """A manager over a fake backend; with `checked` its integrity is verified after the
    test (the `kv_integrity` fixture in conftest.py)."""
    kv = FakeKV()
    mgr = KVCacheManager(
        n_slots,
        kv,
        kv_reuse=kv_reuse,
        host_budget_bytes=host,
        policy=policy,
        disk=disk,
        disk_sync=disk_sync,
        min_snapshot_tokens=min_snapshot_tokens,
    )
    if checked:
        MADE.append(mgr)
    return mgr, kv


def compute(kv: FakeKV, slot: Slot, tokens: Sequence[int], tenant: str = "A") -> None:
    """Append `tokens` to the slot as a decode would: its record and its KV."""
    for n in tokens:
        slot.tokens.append(n)
        kv.seqs[slot.id].append((tenant, n))


def job(
    tokens: list[int] | range,
    tenant: str = "A",
    lease: str | None = None,
    *,
    prefill_only: bool = False,
    shared_prefix: int = 0,
    drop: tuple[int, int] | None = None,
    durable: bool = False,
    retention: Retention = "in_memory",
) -> Job:
    return Job(
        f"j{next(_ids)}",
        list(tokens),
        SamplingParams(max_tokens=1),
        tenant=tenant,
        lease=lease,
        prefill_only=prefill_only,
        shared_prefix=shared_prefix,
        drop=drop,
        durable=durable,
        retention=retention,
    )


def start(mgr: KVCacheManager, kv: FakeKV, j: KVRequest) -> Placement:
    """Place `j` and compute the rest of its prompt, as the engine would."""
    p = mgr.place(j)
    assert p is not None
    assert p.slot.tokens == list(j.tokens[: p.reuse])
    assert kv.tokens(p.slot.id) == p.slot.tokens
    assert all(t == j.tenant for t, _ in kv.seqs[p.slot.id])  # never another tenant's KV
    compute(kv, p.slot, j.tokens[p.reuse :], j.tenant)
    return p


def run(
    mgr: KVCacheManager,
    kv: FakeKV,
    j: Job,
    generated: tuple[int, ...] = (),
    *,
    at: float | None = None,
) -> Placement:
    """Place, compute, generate `generated` and finish; `at` overrides the slot's last use."""
    p = start(mgr, kv, j)
    compute(kv, p.slot, generated, j.tenant)
    mgr.finish(p.slot)
    if at is not None:
        p.slot.last_used = at
    return p


def hold(
    mgr: KVCacheManager, kv: FakeKV, i: int, tokens: list[int] | range, tenant: str, *, at: float
) -> Slot:
    """Make idle slot `i` hold `tokens` computed by `tenant`, last used at `at`."""
    slot = mgr.slots[i]
    slot.tokens, slot.tenant = list(tokens), tenant
    kv.seqs[i] = [(tenant, n) for n in tokens]
    mgr.finish(slot)
    slot.last_used = at
    return slot
