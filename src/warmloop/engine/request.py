"""What goes into the engine (a job) and what comes out (a stream of engine events)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Literal

from warmloop.engine.sampling import SamplingParams

FinishReason = Literal["stop", "length", "cancelled", "prefilled"]


@dataclass(frozen=True)
class Admitted:
    """The job has a slot: `cached_tokens` of its prompt were reused, the rest will be computed."""

    slot: int
    prompt_tokens: int
    cached_tokens: int
    tier: str  # where the cached tokens came from: slot | host | prefix | none


@dataclass(frozen=True)
class TokenOut:
    token: int
    text: str  # may be "" while a multi-byte character is incomplete


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    output_tokens: int
    # Exact tokens of this turn's chain: prompt + every sampled token, including the last
    # one even when it was never decoded. The slot holds a prefix of this list.
    chain_tokens: tuple[int, ...]
    prefill_ms: float
    decode_ms: float
    drafted: int = 0  # speculative draft tokens verified (prompt lookup)
    accepted: int = 0  # ... and accepted: output tokens that cost no decode step of their own


@dataclass(frozen=True)
class Failed:
    message: str


EngineEvent = Admitted | TokenOut | Finished | Failed


@dataclass
class Job:
    """One generation (or prefill-only) request, as the engine thread sees it."""

    id: str
    tokens: list[int]
    params: SamplingParams
    tenant: str = ""
    lease: str | None = None  # connection that keeps the slot pinned after the job
    prefill_only: bool = False
    # Leading tokens that are the tenant's shared instructions/tools, not the chain's own
    # conversation: kept as a reusable prefix when the chain's owner goes away.
    shared_prefix: int = 0
    # truncation "auto": the prompt continues a chain with its tokens [start, end) dropped
    drop: tuple[int, int] | None = None
    submitted_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # set from the event loop; read by the engine thread
    # Where the results go: the engine thread posts into this loop-owned queue.
    loop: asyncio.AbstractEventLoop | None = None
    out: asyncio.Queue[EngineEvent] | None = None

    def post(self, event: EngineEvent) -> None:
        if self.loop is None or self.out is None:
            return
        # RuntimeError: the loop is closed, nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.out.put_nowait, event)
