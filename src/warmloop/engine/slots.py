"""Engine sequence slots: which tokens each llama.cpp sequence holds, and who may use it.

The engine thread is the only writer. A slot's `tokens` is the exact token list whose
KV the sequence holds, so a new job reuses the longest common prefix and computes
only the rest. A `lease` pins an idle slot to one connection across its tool pauses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from warmloop.engine.request import Job


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Slot:
    id: int
    tokens: list[int] = field(default_factory=list)
    tenant: str = ""
    lease: str | None = None
    job: Job | None = None
    last_used: float = 0.0

    @property
    def busy(self) -> bool:
        return self.job is not None


@dataclass(frozen=True)
class Placement:
    slot: Slot
    reuse: int  # tokens of the slot's KV the job may keep
    stolen_from: str | None  # lease that lost this slot to the job, if any


class SlotTable:
    def __init__(self, n_slots: int, *, kv_reuse: bool = True) -> None:
        self.slots = [Slot(i) for i in range(n_slots)]
        self.kv_reuse = kv_reuse

    def leased_to(self, lease: str) -> Slot | None:
        return next((s for s in self.slots if s.lease == lease), None)

    def place(self, job: Job) -> Placement | None:
        """Pick a slot for `job`, or None if it must wait.

        Order: the slot the job's connection already leases; else the free unleased slot
        with the longest common prefix (llama-server's rule), least recently used on
        ties; else the least recently used idle leased slot, whose owner loses it.
        """
        if job.lease is not None:
            own = self.leased_to(job.lease)
            if own is not None:
                return None if own.busy else Placement(own, self._reuse(own, job), None)
        free = [s for s in self.slots if not s.busy and s.lease is None]
        if free:
            best = max(free, key=lambda s: (self._reuse(s, job), -s.last_used))
            return Placement(best, self._reuse(best, job), None)
        idle = [s for s in self.slots if not s.busy]
        if idle:
            victim = min(idle, key=lambda s: s.last_used)
            return Placement(victim, self._reuse(victim, job), victim.lease)
        return None

    def _reuse(self, slot: Slot, job: Job) -> int:
        if not self.kv_reuse or slot.tenant != job.tenant:
            return 0
        n = common_prefix(slot.tokens, job.tokens)
        # At least one prompt token is always computed so there are logits to sample
        # from; a prefill-only job has nothing to sample and may reuse everything.
        return n if job.prefill_only else min(n, len(job.tokens) - 1)

    def release_lease(self, lease: str) -> Slot | None:
        slot = self.leased_to(lease)
        if slot is not None:
            slot.lease = None
        return slot

    def touch(self, slot: Slot) -> None:
        slot.last_used = time.monotonic()

    def in_use(self) -> int:
        return sum(1 for s in self.slots if s.busy)

    def leased(self) -> int:
        return sum(1 for s in self.slots if s.lease is not None)
