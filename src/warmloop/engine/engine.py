"""The engine: one thread owns llama.cpp and runs every sequence in shared batches.

Jobs arrive through a thread-safe inbox; each engine step builds one batch with one
decode token for every running sequence plus prefill chunks of admitted prompts
(oldest first) up to `batch_tokens`, decodes it, samples, and posts tokens back to the
job's asyncio queue. Which slot a job runs on, and what KV it reuses, is the injected
`Placer`'s decision (the KV cache manager); the engine executes it.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from warmloop.engine.backend import BackendError, BatchRow, LlamaBackend, Sampler
from warmloop.engine.request import (
    Admitted,
    EngineEvent,
    Failed,
    Finished,
    FinishReason,
    Job,
    TokenOut,
)
from warmloop.engine.slots import Placement, Placer, PlacerFactory, Slot

log = logging.getLogger("warmloop.engine")


@dataclass(frozen=True)
class EngineConfig:
    model_path: Path
    ctx_per_seq: int
    slots: int
    threads: int
    batch_tokens: int
    # Chains idle this long move to host RAM (0 = only when a slot is needed).
    idle_snapshot_s: float = 0.0


@dataclass
class _Running:
    job: Job
    slot: Slot
    sampler: Sampler | None
    reused: int
    generated: list[int] = field(default_factory=list)
    next_token: int | None = None  # sampled but not yet decoded
    utf8: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )
    prefill_ms: float = 0.0
    decode_ms: float = 0.0

    @property
    def prefilling(self) -> bool:
        return len(self.slot.tokens) < len(self.job.tokens)


@dataclass
class EngineStats:
    prompt_tokens_computed: int = 0
    prompt_tokens_reused: int = 0
    output_tokens: int = 0
    jobs_finished: int = 0


class Engine:
    def __init__(self, config: EngineConfig, placer: PlacerFactory) -> None:
        self.config = config
        self.backend = LlamaBackend(
            config.model_path,
            ctx_per_seq=config.ctx_per_seq,
            n_seq=config.slots,
            n_threads=config.threads,
            n_batch=config.batch_tokens,
        )
        self.slots: Placer = placer(self.backend)
        self.stats = EngineStats()
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._waiting: deque[Job] = deque()
        self._running: list[_Running] = []
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="warmloop-engine", daemon=True)
        self._eog_text_cache: dict[int, str] = {}

    # ----- lifecycle (any thread) ----------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        def _halt() -> None:
            self._stop = True

        self._inbox.put(_halt)
        self._thread.join(timeout=30)
        self.backend.close()

    @property
    def ctx_per_seq(self) -> int:
        return self.config.ctx_per_seq

    # ----- async API (event loop thread) ---------------------------------------------
    async def run(self, job: Job) -> AsyncIterator[EngineEvent]:
        """Submit `job` and yield its events until Finished or Failed.

        Leaving the iteration early (client gone, task cancelled) cancels the job; the
        engine frees its sequence before the next decode step.
        """
        job.loop = asyncio.get_running_loop()
        job.out = asyncio.Queue()
        self._inbox.put(lambda: self._waiting.append(job))
        done = False
        try:
            while True:
                event = await job.out.get()
                yield event
                if isinstance(event, Finished | Failed):
                    done = True
                    return
        finally:
            if not done:
                self.cancel(job)

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        self._inbox.put(lambda: None)  # wake the loop if it is idle

    def release_lease(self, lease: str, *, drop_kv: bool = True) -> None:
        """The connection is gone: unpin its slot and (by default) forget its KV."""
        self._inbox.put(lambda: self.slots.release(lease, drop_kv=drop_kv))

    # ----- engine thread -------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop:
            idle = not self._running and not self._waiting
            try:
                cmd = self._inbox.get(timeout=1.0) if idle else self._inbox.get_nowait()
                cmd()
                while True:
                    self._inbox.get_nowait()()
            except queue.Empty:
                if idle and self.config.idle_snapshot_s > 0:
                    self.slots.snapshot_idle(self.config.idle_snapshot_s)
            if self._stop:
                break
            try:
                self._drop_cancelled()
                self._admit()
                if self._running:
                    self._step()
            except Exception as exc:  # never let the engine thread die silently
                log.exception("engine step failed")
                for r in list(self._running):
                    self._fail(r, f"engine error: {exc}")
        for r in list(self._running):
            self._finish(r, "cancelled")
        for job in self._waiting:
            job.post(Failed("server is shutting down"))

    def _drop_cancelled(self) -> None:
        for r in [r for r in self._running if r.job.cancelled]:
            self._finish(r, "cancelled")
        if any(j.cancelled for j in self._waiting):
            kept = [j for j in self._waiting if not j.cancelled]
            self._waiting = deque(kept)

    def _admit(self) -> None:
        # Oldest first; a job whose connection's slot is busy does not block the others.
        still_waiting: deque[Job] = deque()
        while self._waiting:
            job = self._waiting.popleft()
            placement = self.slots.place(job)
            if placement is None:
                still_waiting.append(job)
                continue
            self._start(job, placement)
        self._waiting = still_waiting

    def _start(self, job: Job, placement: Placement) -> None:
        slot = placement.slot
        sampler = None
        if not job.prefill_only:
            p = job.params
            try:
                sampler = self.backend.make_sampler(
                    temperature=p.temperature,
                    top_p=p.top_p,
                    seed=p.seed,
                    grammar=p.grammar,
                    lazy_trigger=p.grammar_trigger,
                )
            except BackendError as exc:
                self.slots.finish(slot)
                job.post(Failed(str(exc)))
                return
        self._running.append(_Running(job, slot, sampler, placement.reuse))
        self.stats.prompt_tokens_reused += placement.reuse
        job.post(Admitted(slot.id, len(job.tokens), placement.reuse, placement.tier))

    def _step(self) -> None:
        rows: list[BatchRow] = []
        samples: list[tuple[_Running, int]] = []
        prefill_jobs: list[_Running] = []
        decode_jobs: list[_Running] = []
        for r in self._running:
            if r.next_token is not None:
                rows.append(BatchRow(r.next_token, len(r.slot.tokens), r.slot.id, True))
                samples.append((r, len(rows) - 1))
                decode_jobs.append(r)
        budget = self.config.batch_tokens - len(rows)
        pending: list[tuple[_Running, list[int]]] = []
        for r in self._running:
            if budget <= 0:
                break
            if r.next_token is not None or not r.prefilling:
                continue
            start = len(r.slot.tokens)
            chunk = r.job.tokens[start : start + budget]
            for i, tok in enumerate(chunk):
                last = start + i == len(r.job.tokens) - 1
                rows.append(BatchRow(tok, start + i, r.slot.id, last and not r.job.prefill_only))
            if start + len(chunk) == len(r.job.tokens) and not r.job.prefill_only:
                samples.append((r, len(rows) - 1))
            budget -= len(chunk)
            pending.append((r, chunk))
            prefill_jobs.append(r)
        if not rows:
            # Only prefill-only jobs whose prompt was entirely cached.
            for r in [r for r in self._running if r.job.prefill_only and not r.prefilling]:
                self._finish(r, "prefilled")
            return

        t0 = time.perf_counter()
        try:
            self.backend.decode(rows)
        except BackendError as exc:
            for r in {id(x): x for x in decode_jobs + prefill_jobs}.values():
                self._fail(r, str(exc))
                self.slots.clear(r.slot)
            return
        elapsed_ms = (time.perf_counter() - t0) * 1000.0

        for r in decode_jobs:
            assert r.next_token is not None
            r.slot.tokens.append(r.next_token)
            r.next_token = None
            r.decode_ms += elapsed_ms
        for r, chunk in pending:
            r.slot.tokens.extend(chunk)
            r.prefill_ms += elapsed_ms
            self.stats.prompt_tokens_computed += len(chunk)

        for r, idx in samples:
            assert r.sampler is not None
            self._on_sample(r, r.sampler.sample(self.backend.ctx, idx))
        for r in [r for r in self._running if r.job.prefill_only and not r.prefilling]:
            self._finish(r, "prefilled")

    def _on_sample(self, r: _Running, token: int) -> None:
        if self.backend.is_eog(token):
            self._finish(r, "stop")
            return
        r.generated.append(token)
        text = r.utf8.decode(self.backend.token_bytes(token))
        r.job.post(TokenOut(token, text))
        at_limit = len(r.generated) >= r.job.params.max_tokens
        ctx_full = len(r.slot.tokens) + 1 >= self.config.ctx_per_seq
        if at_limit or ctx_full:
            self._finish(r, "length")
        else:
            r.next_token = token

    def _finish(self, r: _Running, reason: FinishReason) -> None:
        self._running.remove(r)
        tail = r.utf8.decode(b"", final=True)
        if tail:
            r.job.post(TokenOut(-1, tail))
        if r.sampler is not None:
            r.sampler.free()
        self.slots.finish(r.slot)
        self.stats.output_tokens += len(r.generated)
        self.stats.jobs_finished += 1
        r.job.post(
            Finished(
                reason=reason,
                output_tokens=len(r.generated),
                chain_tokens=tuple(r.job.tokens) + tuple(r.generated),
                prefill_ms=r.prefill_ms,
                decode_ms=r.decode_ms,
            )
        )

    def _fail(self, r: _Running, message: str) -> None:
        if r in self._running:
            self._running.remove(r)
        if r.sampler is not None:
            r.sampler.free()
        self.slots.finish(r.slot)
        r.job.post(Failed(message))
