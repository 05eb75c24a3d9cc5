"""Host-RAM tier: sequence snapshots (`llama_state_seq_get_data`) under a byte budget.

A snapshot is the KV of one sequence plus the exact tokens it holds; restoring it into
any free slot resumes that chain delta-only. The store keeps the bytes within its
budget; which snapshots go to make room is the eviction policy's choice (least
recently used first). A chain whose snapshot went is recomputed from its items on its
next turn (slower, never wrong).
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from warmloop.kvcache.base import Retention

_ids = itertools.count(1)


@dataclass(eq=False)
class Snapshot:
    tokens: tuple[int, ...]  # what may be matched; the data can hold more (never used)
    data: bytearray = field(repr=False)
    tenant: str
    lease: str | None  # the connection whose chain this is, if any
    shared_prefix: int = 0  # leading tokens that are the tenant's instructions/tools
    durable: bool = False  # may spill to disk (store: true or a conversation)
    retention: Retention = "in_memory"
    id: int = field(default_factory=lambda: next(_ids))
    created: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return len(self.data) + 4 * len(self.tokens)


class HostStore:
    """Snapshots in host RAM under a byte budget; owned by the engine thread (through
    KVCacheManager)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._snaps: OrderedDict[int, Snapshot] = OrderedDict()
        # Bytes charged per snapshot when it came in: `tokens` may be shortened later
        # (a released chain keeps only its shared prefix), so never recompute them.
        self._charged: dict[int, int] = {}
        self.bytes_used = 0

    def __len__(self) -> int:
        return len(self._snaps)

    def __iter__(self) -> Iterator[Snapshot]:
        """Least recently used first."""
        return iter(list(self._snaps.values()))

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.budget

    def charged(self, snap: Snapshot) -> int:
        """What `snap` counts against the budget (0 when it is not here)."""
        return self._charged.get(snap.id, 0)

    def put(self, snap: Snapshot) -> None:
        """Add `snap` as the most recently used; the caller made room first."""
        self.drop(snap)
        if self.bytes_used + snap.nbytes > self.budget:
            raise ValueError(
                f"snapshot of {snap.nbytes} bytes does not fit: {self.bytes_used} of "
                f"{self.budget} used (drop the policy's victims first)"
            )
        self._snaps[snap.id] = snap
        self._charged[snap.id] = snap.nbytes
        self.bytes_used += snap.nbytes

    def touch(self, snap: Snapshot) -> None:
        if snap.id in self._snaps:
            self._snaps.move_to_end(snap.id)

    def drop(self, snap: Snapshot) -> None:
        if self._snaps.pop(snap.id, None) is not None:
            self.bytes_used -= self._charged.pop(snap.id)

    def __contains__(self, snap: object) -> bool:
        return isinstance(snap, Snapshot) and snap.id in self._snaps
