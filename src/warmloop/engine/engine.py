"""The engine: one thread owns llama.cpp and runs every sequence in shared batches.

Jobs arrive through a thread-safe inbox. Each step the `Scheduler` places waiting jobs on slots
and plans one batch (a decode token for every running sequence plus prefill chunks);
the engine decodes it, samples each sequence with its own sampler chain, and posts
tokens back to the job's asyncio queue. Which slot a job runs on, and what KV it
reuses, is the decision of the injected `KVCache` (the KV cache manager).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from warmloop.engine.backend import BackendError, LlamaBackend
from warmloop.engine.request import (
    EngineEvent,
    Failed,
    Finished,
    FinishReason,
    Job,
    Outbox,
    Placed,
    TokenOut,
)
from warmloop.engine.sampling import GrammarRejected, check_grammar, make_sampler
from warmloop.engine.scheduler import Scheduler, Sequence, StepPlan
from warmloop.engine.speculative import Drafter
from warmloop.kvcache.base import KVCache, KVCacheFactory, Placement

log = logging.getLogger("warmloop.engine")


@dataclass(frozen=True)
class EngineConfig:
    """The engine's share of `Config` (app.build_engine fills it; the defaults are there)."""

    model_path: Path
    ctx_per_seq: int
    slots: int
    threads: int
    batch_tokens: int
    prefill_chunk: int  # prefill tokens per step while other sequences decode
    prefill_stall_factor: float  # opt-in bound on decode stalls (0: off)
    max_running: int  # sequences decoding at once (1: no batching, the baseline)
    idle_snapshot_s: float  # chains idle this long move to host RAM (0: only when needed)
    max_draft: int  # prompt-lookup draft tokens per step for greedy sequences (0: off)
    cpu_variant: str  # llama.cpp CPU backend variant (engine/cpu.py): "auto" or a name


class Engine:
    """The engine thread and its inbox. Its public methods may be called from any
    thread and only hand work to the inbox (`cancel` sets the job's flag, which the
    engine thread reads); everything else here runs on the engine thread."""

    def __init__(self, config: EngineConfig, kv_cache: KVCacheFactory) -> None:
        self.config = config
        self.backend = LlamaBackend(
            config.model_path,
            ctx_per_seq=config.ctx_per_seq,
            n_seq=config.slots,
            n_threads=config.threads,
            n_batch=config.batch_tokens,
            cpu_variant=config.cpu_variant,
        )
        self.kv: KVCache = kv_cache(self.backend)
        self.scheduler = Scheduler(
            self.kv,
            batch_tokens=config.batch_tokens,
            prefill_chunk=config.prefill_chunk,
            max_running=config.max_running or config.slots,
            ctx_per_seq=config.ctx_per_seq,
            stall_factor=config.prefill_stall_factor,
        )
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._outbox = Outbox()  # events of one pass of the loop, delivered at its end
        self._stop = False
        self._dead = False
        self._thread = threading.Thread(target=self._loop, name="warmloop-engine", daemon=True)

    # ----- lifecycle (any thread) ----------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        def _halt() -> None:
            self._stop = True

        self._inbox.put(_halt)
        with contextlib.suppress(RuntimeError):  # never started
            self._thread.join(timeout=timeout_s)
        # Queued KV files are written before the process ends (this touches no llama.cpp
        # state, so it runs even when the engine thread is stuck).
        self.kv.close(timeout_s)
        if self._thread.is_alive():
            # Freeing the context under a running decode would crash the process; the
            # process is exiting anyway, so leave the memory to the OS.
            log.error("engine thread did not stop in %g s; not freeing llama.cpp state", timeout_s)
            return
        self.backend.close()

    def alive(self) -> bool:
        """True while the engine thread runs (healthz reports a dead engine as 503)."""
        return self._thread.is_alive() and not self._dead

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
        job.outbox = self._outbox
        if not self.alive():
            yield Failed("the engine is not running (see the server log)")
            return
        self._inbox.put(lambda: self._submit(job))
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

    def check_grammar(self, grammar: str, lazy_trigger: str | None) -> None:
        """GrammarRejected if llama.cpp would refuse `grammar` (any thread)."""
        check_grammar(self.backend.vocab, grammar, lazy_trigger)

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        self._inbox.put(lambda: None)  # wake the loop if it is idle

    def release_lease(self, lease: str, *, drop_kv: bool = True) -> None:
        """The connection is gone: unpin its slot and (by default) forget its KV."""
        self._inbox.put(lambda: self.kv.release(lease, drop_kv=drop_kv))

    def persist(self, *, drain: bool) -> Future[int]:
        """Write every durable chain the engine holds to the disk tier (with `drain`, each
        running one too as it finishes); resolves with how many were queued."""
        done: Future[int] = Future()

        def _persist() -> None:
            try:
                done.set_result(self.kv.persist(drain=drain))
            except BaseException as exc:
                done.set_exception(exc)

        self._inbox.put(_persist)
        return done

    def check_integrity(self, timeout_s: float = 30.0) -> None:
        """Run the KV cache's `check_integrity` on the engine thread (the only one that may
        touch it) and raise its error here. Blocks until the engine gets to it."""
        if not self.alive():
            raise RuntimeError("the engine is not running")
        done: Future[None] = Future()

        def _check() -> None:
            try:
                self.kv.check_integrity()
            except BaseException as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        self._inbox.put(_check)
        done.result(timeout=timeout_s)

    # ----- engine thread -------------------------------------------------------------
    def _submit(self, job: Job) -> None:
        reason = self.scheduler.never_fits(job)
        if reason is not None:
            job.post(Failed(f"request can never be served: {reason}"))
        else:
            self.scheduler.submit(job)

    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException:
            # Fail loudly: healthz turns 503, every job ends with an error, none hangs.
            self._dead = True
            log.critical("engine thread died; the server cannot generate", exc_info=True)
            for job in self.scheduler.clear():
                job.post(Failed("the engine stopped"))
            raise
        finally:
            self._outbox.flush()

    def _run_commands(self, idle: bool) -> None:
        """Run what the event loop asked for (submit, cancel, release); one that fails
        is logged and the rest still run."""
        try:
            cmd = self._inbox.get(timeout=1.0) if idle else self._inbox.get_nowait()
        except queue.Empty:
            if idle and self.config.idle_snapshot_s > 0:
                self.kv.snapshot_idle(self.config.idle_snapshot_s)
            if idle:
                try:
                    self.kv.persist_idle()  # --kv-disk-sync idle: nothing else to do now
                except Exception:
                    log.exception("writing idle chains to disk failed")
            return
        while True:
            try:
                cmd()
            except Exception:
                log.exception("engine command failed")
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _serve(self) -> None:
        sched = self.scheduler
        while not self._stop:
            idle = sched.idle()
            self._run_commands(idle)
            if self._stop:
                break
            try:
                for seq in sched.cancelled_running():
                    self._finish(seq, "cancelled")
                for job in sched.drop_cancelled_waiting():
                    # Cancelled before it had a slot: it ends here, with nothing computed.
                    job.post(Finished("cancelled", 0, tuple(job.tokens), 0.0, 0.0))
                for job, placement in sched.placements():
                    self._start(job, placement)
                for job, exc in sched.take_refused():
                    log.error("job %s: placement failed: %r", job.id, exc)
                    job.post(Failed(f"could not place the request on a slot: {exc}"))
                if sched.running:
                    self._step()
            except Exception as exc:  # never let the engine thread die silently
                log.exception("engine step failed")
                for seq in list(sched.running):
                    self._fail(seq, f"engine error: {exc}")
            self._outbox.flush()
        for seq in list(sched.running):
            self._finish(seq, "cancelled")
        for job in sched.clear():
            job.post(Failed("server is shutting down"))

    def _start(self, job: Job, placement: Placement) -> None:
        slot = placement.slot
        sampler = None
        if not job.prefill_only:
            try:
                sampler = make_sampler(self.backend.vocab, job.params)
            except Exception as exc:  # whatever failed, the claimed slot goes back
                self.kv.finish(slot)
                log.warning("job %s: sampler refused: %s", job.id, exc)
                message = str(exc) if isinstance(exc, GrammarRejected) else "sampler setup failed"
                job.post(Failed(message))
                return
        seq = Sequence(job, slot, sampler)
        greedy = job.params.temperature <= 0 and job.params.grammar is None
        if self.config.max_draft > 0 and sampler is not None and greedy:
            seq.drafter = Drafter(job.tokens, self.config.max_draft)
        self.scheduler.start(seq)
        job.post(Placed(slot.id, len(job.tokens), placement.reuse, placement.tier))

    def _step(self) -> None:
        sched = self.scheduler
        plan = sched.plan()
        if not plan.rows:
            self._finish_prefilled()  # prompts that were entirely cached
            return
        t0 = time.perf_counter()
        try:
            self.backend.decode(plan.rows)
        except BackendError as exc:
            self._fail_step(plan, str(exc))
            return
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        sched.observe(plan, elapsed_ms)
        for seq in plan.decodes:
            assert seq.next_token is not None
            self.kv.computed(seq.slot, [seq.next_token, *seq.draft])  # drafts: verified below
            seq.next_token = None
            seq.decode_ms += elapsed_ms
        for seq, chunk in plan.chunks:
            self.kv.computed(seq.slot, chunk)
            seq.prefill_ms += elapsed_ms
        for seq, idx in plan.samples:
            if seq.draft:
                self._verify(seq, idx)
            else:
                assert seq.sampler is not None
                self._on_sample(seq, seq.sampler.sample(self.backend.ctx, idx))
        self._finish_prefilled()

    def _finish_prefilled(self) -> None:
        for seq in [s for s in self.scheduler.running if s.job.prefill_only and not s.prefilling]:
            self._finish(seq, "prefilled")

    def _fail_step(self, plan: StepPlan, message: str) -> None:
        # The batch's KV is in an unknown state: fail its sequences and forget their KV.
        for seq in {id(s): s for s in plan.decodes + [c[0] for c in plan.chunks]}.values():
            self._fail(seq, message)
            self.kv.clear(seq.slot)

    def _on_sample(self, r: Sequence, token: int) -> None:
        if self._emit(r, token):
            r.next_token = token

    def _verify(self, r: Sequence, idx: int) -> None:
        """Greedy verification of `r.draft`, decoded at rows idx+1.. after its token at
        row idx: sample row by row while the sampled token is the draft's next one."""
        assert r.sampler is not None and r.drafter is not None
        draft, r.draft = r.draft, []
        sampled = []
        for i in range(len(draft) + 1):
            token = r.sampler.sample(self.backend.ctx, idx + i)
            sampled.append(token)
            if i == len(draft) or token != draft[i]:
                break
        accepted = len(sampled) - 1
        # The KV keeps the accepted drafts (they are the sampled tokens before the last).
        self.kv.trim(r.slot, len(r.slot.tokens) - len(draft) + accepted)
        r.drafter.verified(len(draft), accepted)
        for token in sampled:
            if not self._emit(r, token):
                return
        r.next_token = sampled[-1]

    def _emit(self, r: Sequence, token: int) -> bool:
        """Hand one sampled token to the job; False when that ended the sequence."""
        if self.backend.is_eog(token):
            self._finish(r, "stop")
            return False
        r.generated.append(token)
        if r.drafter is not None:
            r.drafter.append(token)
        # Special tokens spelled out: a family's parser reads its markers (harmony's
        # <|channel|>, [TOOL_CALLS]) and the chain's text matches its rendering.
        text = r.utf8.decode(self.backend.token_bytes(token, special=True))
        r.job.post(TokenOut(token, text))
        at_limit = len(r.generated) >= r.job.params.max_tokens
        ctx_full = len(r.slot.tokens) + 1 >= self.config.ctx_per_seq
        if at_limit or ctx_full:
            self._finish(r, "length")
            return False
        return True

    def _finish(self, r: Sequence, reason: FinishReason) -> None:
        self.scheduler.remove(r)
        tail = r.utf8.decode(b"", final=True)
        if tail:
            r.job.post(TokenOut(-1, tail))
        if r.sampler is not None:
            r.sampler.free()
        self.kv.finish(r.slot)
        r.job.post(
            Finished(
                reason=reason,
                output_tokens=len(r.generated),
                chain_tokens=tuple(r.job.tokens) + tuple(r.generated),
                prefill_ms=r.prefill_ms,
                decode_ms=r.decode_ms,
                drafted=r.drafter.drafted if r.drafter else 0,
                accepted=r.drafter.accepted if r.drafter else 0,
            )
        )

    def _fail(self, r: Sequence, message: str) -> None:
        self.scheduler.remove(r)
        if r.sampler is not None:
            r.sampler.free()
        self.kv.finish(r.slot)
        r.job.post(Failed(message))
