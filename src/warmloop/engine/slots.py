"""Engine sequence slots, and the placement interface the engine asks for them.

A slot is one llama.cpp sequence: `tokens` is the exact token list whose KV it holds. The
engine thread runs jobs on slots; *which* slot a job gets, and what KV is moved first,
is decided by a `Placer` (the KV cache manager in `warmloop.kvcache`), injected when the
engine is built, so the engine never imports the layer above it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from warmloop.engine.request import Job

Tier = Literal["slot", "host", "prefix", "none"]


def common_prefix(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(eq=False)
class Slot:
    id: int
    tokens: list[int] = field(default_factory=list)
    tenant: str = ""
    lease: str | None = None  # connection that keeps this slot pinned across tool pauses
    job: Job | None = None
    last_used: float = 0.0
    shared_prefix: int = 0  # leading tokens that are instructions/tools, not conversation
    # The owner left while a job ran: forget the conversation when that job finishes.
    forget_after_job: bool = False

    @property
    def busy(self) -> bool:
        return self.job is not None


@dataclass(frozen=True)
class Placement:
    slot: Slot
    reuse: int  # prompt tokens whose KV the job keeps
    tier: Tier  # where those tokens came from


class KVOps(Protocol):
    """Sequence operations the backend provides to whoever places jobs."""

    def seq_truncate(self, seq: int, keep: int) -> None: ...
    def seq_copy(self, src: int, dst: int) -> None: ...
    def seq_state_get(self, seq: int) -> bytearray: ...
    def seq_state_set(self, seq: int, data: bytes | bytearray) -> None: ...


class Placer(Protocol):
    slots: list[Slot]

    def can_lease(self, job: Job) -> bool: ...
    def lease(self, job: Job) -> Placement | None: ...
    def finish(self, slot: Slot) -> None: ...
    def clear(self, slot: Slot) -> None: ...
    def release(self, lease: str, *, drop_kv: bool) -> None: ...
    def snapshot_idle(self, idle_s: float) -> int: ...
    def in_use(self) -> int: ...
    def leased(self) -> int: ...


PlacerFactory = Callable[[KVOps], Placer]
