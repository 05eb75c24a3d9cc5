"""What goes into the engine (a job) and what comes out (a stream of engine events)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal, Protocol

from warmloop.kvcache.base import KVCache, Retention

FinishReason = Literal["stop", "length", "cancelled", "prefilled"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    grammar: str | None = None
    # With a trigger the grammar is lazy: it constrains output from the trigger's match on.
    grammar_trigger: str | None = None

    @classmethod
    def of(
        cls,
        *,
        max_tokens: int,
        temperature: float | None,
        top_p: float | None,
        seed: int | None,
        default_temperature: float,
        grammar: str | None = None,
        grammar_trigger: str | None = None,
    ) -> SamplingParams:
        """What a request asked for; what it left out gets the server's temperature,
        top_p 1 and a fresh random seed (OpenAI's defaults)."""
        return cls(
            max_tokens=max(max_tokens, 1),
            temperature=default_temperature if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            seed=random.getrandbits(32) if seed is None else seed,
            grammar=grammar,
            grammar_trigger=grammar_trigger if grammar is not None else None,
        )


@dataclass(frozen=True)
class Placed:
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


EngineEvent = Placed | TokenOut | Finished | Failed


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
    # store: true or a conversation: the chain's KV may be written to disk and outlive
    # the process, for `retention` after its last use
    durable: bool = False
    retention: Retention = "in_memory"
    cancelled: bool = False  # set from the event loop; read by the engine thread
    # Where the results go: the engine thread posts into this loop-owned queue, through
    # the engine's outbox.
    loop: asyncio.AbstractEventLoop | None = None
    out: asyncio.Queue[EngineEvent] | None = None
    outbox: Outbox | None = None

    def post(self, event: EngineEvent) -> None:
        if self.outbox is not None and self.loop is not None and self.out is not None:
            self.outbox.put(self.loop, self.out, event)


class Outbox:
    """Events the engine thread posts during one pass of its loop, handed to each event
    loop in one call when the pass ends (`flush`): one wake-up of the loop per step,
    not one per token of every sequence. Owned by the engine thread."""

    def __init__(self) -> None:
        self._pending: dict[
            asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[EngineEvent], EngineEvent]]
        ] = {}

    def put(
        self,
        loop: asyncio.AbstractEventLoop,
        out: asyncio.Queue[EngineEvent],
        event: EngineEvent,
    ) -> None:
        self._pending.setdefault(loop, []).append((out, event))

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for loop, items in pending.items():
            # RuntimeError: the loop is closed, nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[asyncio.Queue[EngineEvent], EngineEvent]]) -> None:
    for out, event in items:
        out.put_nowait(event)


class EngineHandle(Protocol):
    """What the serving layer asks of the engine (engine/engine.py's `Engine`; app.py
    hands it over), so serving never imports the engine's llama.cpp side."""

    @property
    def kv(self) -> KVCache: ...

    def run(self, job: Job) -> AsyncIterator[EngineEvent]:
        """Submit `job` and yield its events until it finishes or fails."""
        ...

    def cancel(self, job: Job) -> None: ...

    def release_lease(self, lease: str, *, drop_kv: bool = True) -> None: ...

    def persist(self, *, drain: bool) -> Future[int]:
        """Write the durable chains the engine holds to disk (see Engine.persist)."""
        ...

    def alive(self) -> bool: ...
