"""The KV cache interface: what the engine's sequences hold, and who may reuse it.

One implementation, `KVCacheManager` (manager.py), owns every placement decision; the
engine only executes them through its backend's sequence operations (`KVOps`).
Invariants every implementation keeps: a slot whose job is running is never evicted,
copied from through the index, or matched; what it evicts from host RAM is recomputed
later, never served wrong; nothing is matched across tenants.
"""

from __future__ import annotations

from typing import Protocol

from warmloop.engine.request import Job
from warmloop.engine.slots import Placement, Slot
from warmloop.kvcache.host_store import Snapshot


class KVCache(Protocol):
    def match_prefix(
        self, tenant: str, tokens: list[int], *, exclude: Slot | None = None
    ) -> tuple[int, Slot | Snapshot | None]:
        """Longest reusable prefix of `tokens` for `tenant`, and where it is held."""
        ...

    def lease(self, job: Job) -> Placement | None:
        """Pin a slot to the job (and its connection lane), moving KV into it as needed;
        None when the job must wait."""
        ...

    def finish(self, slot: Slot) -> None:
        """The slot's job ended: its tokens become matchable; the pin stays."""
        ...

    def release(self, lease: str, *, drop_kv: bool) -> None:
        """The connection lane is gone: unpin its slot (and forget its conversation)."""
        ...

    def snapshot(self, slot: Slot, *, keep: int = 0) -> bool:
        """Save the slot's chain to host RAM; True when it is held there afterwards."""
        ...

    def restore(self, snap: Snapshot, dst: Slot, n: int, *, own_chain: bool) -> None:
        """Load the first `n` tokens of a snapshot into a slot."""
        ...

    def evict(self, slot: Slot) -> bool:
        """Move an idle chain from its slot to host RAM and free the slot."""
        ...
