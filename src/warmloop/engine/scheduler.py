"""Continuous batching: which jobs run, and what goes into the next `llama_batch`.

Every engine step carries one decode token for each running sequence plus prefill
chunks of started prompts, the shortest remaining prompt first (a continuation's delta
before a long cold prompt). While any sequence is decoding, prefill gets at most
`prefill_chunk` tokens per step (default: the whole batch, which is what minimises the
turn time of agent loops). With a `stall_factor` (opt-in, for streams a person reads)
it gets fewer when the step would otherwise take longer than that factor times a
decode-only step: the scheduler learns what a decode-only step and a prefill token cost
(a token deep in a long prompt costs more, its attention spans everything before it)
and sizes each chunk to fit.
Starting a job is `can_start(job)` then `place(job)`, oldest job first, and a job that can
never fit is refused with a clear reason instead of waiting forever. A job that shares a
long prefix with a sequence of its tenant that is still prefilling it (sessions that
start together with the same instructions) waits until that prefix is computed and then
forks its KV: the shared head is computed once, not once per session.
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

from warmloop.engine.backend import BatchRow
from warmloop.engine.request import Job
from warmloop.engine.sampling import Sampler
from warmloop.engine.speculative import MAX_DECODING, Drafter
from warmloop.kvcache.base import KVCache, Placement, Slot, common_prefix, reuse_cap

STALL_MARGIN = 0.75  # of the extra time a prefilling step may take
# A job waits for a prefilling sequence that will give it at least this many more tokens
# of KV than it can reuse now (below it, computing them again costs about one step).
SHARE_MIN_TOKENS = 64


@dataclass
class Sequence:
    """A job that holds a slot: its prompt is being prefilled or its tokens decoded."""

    job: Job
    slot: Slot
    sampler: Sampler | None
    generated: list[int] = field(default_factory=list)
    next_token: int | None = None  # sampled but not yet decoded
    utf8: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    drafter: Drafter | None = None  # greedy sequences draft from their own context
    draft: list[int] = field(default_factory=list)  # in this step's batch after next_token

    @property
    def prefilling(self) -> bool:
        return len(self.slot.tokens) < len(self.job.tokens)


@dataclass
class StepPlan:
    rows: list[BatchRow] = field(default_factory=list)
    decodes: list[Sequence] = field(default_factory=list)
    chunks: list[tuple[Sequence, list[int]]] = field(default_factory=list)
    samples: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, row index)


class Scheduler:
    """Owned by the engine thread: only its methods change the queues (`waiting`,
    `running`, `refused`), and only the engine thread calls them."""

    def __init__(
        self,
        kv: KVCache,
        *,
        batch_tokens: int,
        prefill_chunk: int,
        max_running: int,
        ctx_per_seq: int,
        stall_factor: float,  # the flag's (--prefill-stall-factor); 0: fixed chunks
    ) -> None:
        self.kv = kv
        self.batch_tokens = batch_tokens
        self.prefill_chunk = max(1, min(prefill_chunk, batch_tokens))
        self.stall_factor = stall_factor  # 0: fixed chunks of prefill_chunk tokens
        self.decode_step_ms: float | None = None  # moving average of decode-only steps
        self.prefill_token_ms: float | None = None  # moving average cost of one prefill token
        self.max_running = max_running
        self.ctx_per_seq = ctx_per_seq
        self.waiting: deque[Job] = deque()
        self.running: list[Sequence] = []
        self.refused: list[tuple[Job, Exception]] = []  # placement raised: fail these

    # ----- the queues: only these methods change them -----------------------------------
    def submit(self, job: Job) -> None:
        self.waiting.append(job)

    def start(self, seq: Sequence) -> None:
        self.running.append(seq)

    def remove(self, seq: Sequence) -> None:
        """`seq` ended (finished or failed); nothing happens if it was gone already."""
        if seq in self.running:
            self.running.remove(seq)

    def idle(self) -> bool:
        return not self.running and not self.waiting

    def cancelled_running(self) -> list[Sequence]:
        return [s for s in self.running if s.job.cancelled]

    def take_refused(self) -> list[tuple[Job, Exception]]:
        """The jobs whose placement raised since the last call (the engine fails them)."""
        refused, self.refused = self.refused, []
        return refused

    def clear(self) -> list[Job]:
        """Empty both queues (the engine stops): every job that was in them."""
        jobs = [s.job for s in self.running] + list(self.waiting)
        self.running, self.waiting = [], deque()
        return jobs

    # ----- admission ---------------------------------------------------------------------
    def never_fits(self, job: Job) -> str | None:
        """Why `job` can never run (so it must fail now rather than wait), or None."""
        need = len(job.tokens) + (0 if job.prefill_only else 1)
        if not job.tokens:
            return "the prompt is empty"
        if need > self.ctx_per_seq:
            return (
                f"the prompt needs {need} tokens of context but a sequence holds {self.ctx_per_seq}"
            )
        return None

    def can_start(self, job: Job, placed: Collection[tuple[Job, Placement]] = ()) -> bool:
        return (
            len(self.running) + len(placed) < self.max_running
            and self.kv.can_place(job)
            and self.leader(job, placed) is None
        )

    def place(self, job: Job) -> Placement | None:
        return self.kv.place(job)

    def leader(self, job: Job, placed: Collection[tuple[Job, Placement]] = ()) -> Slot | None:
        """The slot of a job of `job`'s tenant (running, or `placed` this round) that is
        still prefilling a prefix `job` shares, at least SHARE_MIN_TOKENS beyond what `job`
        could reuse now: `job` waits for it, then forks its KV (a busy slot's computed
        prefix is final)."""
        cap = reuse_cap(job)
        best: tuple[Slot | None, int] = (None, 0)
        pairs = [(q.job, q.slot) for q in self.running] + [(j, p.slot) for j, p in placed]
        for other, holder in pairs:
            done = len(holder.tokens)
            if other.tenant != job.tenant or done >= len(other.tokens):
                continue
            # Cheap test first: the job must agree with it just past what it computed.
            probe = done + SHARE_MIN_TOKENS
            if probe > cap or job.tokens[done:probe] != other.tokens[done:probe]:
                continue
            shared = min(common_prefix(other.tokens, job.tokens), cap)
            if shared > best[1]:
                best = (holder, shared)
        slot, shared = best
        if slot is None or shared - self.kv.reusable(job) < SHARE_MIN_TOKENS:
            return None
        return slot

    def placements(self) -> list[tuple[Job, Placement]]:
        """Place waiting jobs on slots, oldest first. A job that must wait (say, its
        connection's slot is busy) does not hold back younger jobs that can run. A job
        whose placement raised is in `self.refused` with the error (the engine fails it)."""
        placed: list[tuple[Job, Placement]] = []
        still: deque[Job] = deque()
        while self.waiting:
            job = self.waiting.popleft()
            try:
                placement = self.place(job) if self.can_start(job, placed) else None
            except Exception as exc:
                self.refused.append((job, exc))
                continue
            if placement is None:
                still.append(job)
            else:
                placed.append((job, placement))
        self.waiting = still
        return placed

    def drop_cancelled_waiting(self) -> list[Job]:
        gone = [j for j in self.waiting if j.cancelled]
        if gone:
            self.waiting = deque(j for j in self.waiting if not j.cancelled)
        return gone

    # ----- one step ----------------------------------------------------------------------
    def plan(self) -> StepPlan:
        plan = StepPlan()
        decoding = [s for s in self.running if s.next_token is not None]
        room = self.batch_tokens - len(decoding)
        drafting = len(decoding) <= MAX_DECODING
        # Each sequence's rows, with the index (within them) of the row it samples from
        groups: list[tuple[Sequence, list[BatchRow], int | None]] = []
        used = 0
        for seq in decoding:
            assert seq.next_token is not None
            pos = len(seq.slot.tokens)
            seq.draft = self._draft(seq, pos, room) if drafting else []
            room -= len(seq.draft)
            rows = [BatchRow(seq.next_token, pos, seq.slot.id, True)]
            rows += [BatchRow(t, pos + i, seq.slot.id, True) for i, t in enumerate(seq.draft, 1)]
            groups.append((seq, rows, 0))
            plan.decodes.append(seq)
            used += len(rows)
        budget = self.batch_tokens - used
        if plan.decodes:
            budget = min(budget, self.prefill_budget())
        # Shortest remaining prompt first: a continuation's delta (what an agent waits on
        # between tool calls) is done in one step instead of queueing behind a cold prompt,
        # which minimises the mean time to first token; ties keep admission order.
        prefilling = [s for s in self.running if s.next_token is None and s.prefilling]
        prefilling.sort(key=lambda s: len(s.job.tokens) - len(s.slot.tokens))
        for seq in prefilling:
            if budget <= 0:
                break
            start = len(seq.slot.tokens)
            chunk = seq.job.tokens[start : start + budget]
            end = start + len(chunk)
            wants_logits = end == len(seq.job.tokens) and not seq.job.prefill_only
            rows = [
                BatchRow(tok, start + i, seq.slot.id, wants_logits and start + i == end - 1)
                for i, tok in enumerate(chunk)
            ]
            groups.append((seq, rows, len(rows) - 1 if wants_logits else None))
            plan.chunks.append((seq, chunk))
            budget -= len(chunk)
        # In the batch, sequences go in slot order: with a KV stream per sequence,
        # llama.cpp puts only consecutive sequence ids into one micro-batch, so rows in
        # any other order cost a pass over the weights per sequence instead of one.
        for seq, rows, sample in sorted(groups, key=lambda g: g[0].slot.id):
            if sample is not None:
                plan.samples.append((seq, len(plan.rows) + sample))
            plan.rows.extend(rows)
        return plan

    def _draft(self, seq: Sequence, pos: int, room: int) -> list[int]:
        """Draft tokens to verify after `seq`'s next token (at `pos`), within the batch's
        `room`, the context, and the tokens the response may still produce."""
        if seq.drafter is None:
            return []
        left = seq.job.params.max_tokens - len(seq.generated) - 1
        return seq.drafter.propose(min(room, self.ctx_per_seq - pos - 2, left))

    # ----- stall control -----------------------------------------------------------------
    def prefill_budget(self) -> int:
        """Prefill tokens for a step that also decodes: within the stall bound."""
        if self.stall_factor <= 0 or self.decode_step_ms is None or not self.prefill_token_ms:
            return self.prefill_chunk
        # Aim below the bound: step times vary by a few ms, and the bound is on the worst.
        room = STALL_MARGIN * (self.stall_factor - 1.0) * self.decode_step_ms
        return max(1, min(self.prefill_chunk, int(room / self.prefill_token_ms)))

    def observe(self, plan: StepPlan, elapsed_ms: float) -> None:
        """Learn from a finished step what decoding and prefilling cost."""
        prefilled = sum(len(chunk) for _, chunk in plan.chunks)
        if not prefilled:
            if plan.decodes:
                self.decode_step_ms = _average(self.decode_step_ms, elapsed_ms)
            return
        spent = elapsed_ms
        if plan.decodes:
            if self.decode_step_ms is None:
                return  # nothing to tell the prefill share of this step from the decodes
            spent -= self.decode_step_ms
        # Costs grow with depth into a prompt: weigh the newest step heavily.
        per_token = max(spent, 0.0) / prefilled
        self.prefill_token_ms = _average(self.prefill_token_ms, per_token, weight=0.5)


def _average(old: float | None, new: float, weight: float = 0.2) -> float:
    return new if old is None else old + weight * (new - old)
