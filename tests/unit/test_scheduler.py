"""The batch planner: decode rows, chunked prefill within the stall bound, admission.
Each scheduler's KV cache passes `check_integrity()` when its test ends (conftest.py)."""

from __future__ import annotations

from tests.unit.fake_kv import FakeKV, compute, job, make
from warmloop.engine.scheduler import Scheduler, Sequence, StepPlan
from warmloop.kvcache.manager import KVCacheManager


def scheduler(
    n_slots: int = 4, *, chunk: int = 64, factor: float = 2.0, ctx: int = 4096, running: int = 4
) -> Scheduler:
    mgr, _ = make(n_slots)
    return Scheduler(
        mgr,
        batch_tokens=512,
        prefill_chunk=chunk,
        max_running=running,
        ctx_per_seq=ctx,
        stall_factor=factor,
    )


def fake(s: Scheduler) -> FakeKV:
    assert isinstance(s.kv, KVCacheManager) and isinstance(s.kv.ops, FakeKV)
    return s.kv.ops


def admit_all(s: Scheduler) -> list[Sequence]:
    for j, placement in s.placements():
        s.start(Sequence(j, placement.slot, None))
    return s.running


def decoding(s: Scheduler, tokens: list[int]) -> Sequence:
    """A running sequence whose prompt is computed and whose next token is sampled."""
    s.submit(job(tokens))
    seq = admit_all(s)[-1]
    compute(fake(s), seq.slot, tokens[len(seq.slot.tokens) :])
    seq.next_token = 7
    return seq


def test_prefill_alone_gets_the_whole_batch_and_logits_at_its_end() -> None:
    s = scheduler()
    s.submit(job(range(100, 400)))
    (seq,) = admit_all(s)
    plan = s.plan()
    assert [len(c) for _, c in plan.chunks] == [300]
    assert [r.logits for r in plan.rows].count(True) == 1 and plan.rows[-1].logits
    assert plan.samples == [(seq, 299)]


def test_decodes_first_then_a_bounded_chunk() -> None:
    s = scheduler(chunk=64, factor=0)  # fixed chunks
    a, b = decoding(s, [1, 2, 3]), decoding(s, [4, 5])
    s.submit(job(range(1000, 1300)))
    admit_all(s)
    plan = s.plan()
    assert plan.decodes == [a, b] and [r.token for r in plan.rows[:2]] == [7, 7]
    assert [len(c) for _, c in plan.chunks] == [64]
    assert not any(r.logits for r in plan.rows[2:])  # mid-prompt: no logits yet


def test_stall_controller_sizes_chunks_to_the_bound() -> None:
    s = scheduler(chunk=64, factor=2.0)
    decoding(s, [1, 2, 3])
    assert s.prefill_budget() == 64  # nothing learnt yet
    only_decode = StepPlan(decodes=list(s.running))
    for _ in range(20):
        s.observe(only_decode, 20.0)  # a decode-only step takes 20 ms
    assert abs((s.decode_step_ms or 0) - 20.0) < 0.5
    # a mixed step with 40 prefill tokens took 120 ms: 100 ms for 40 tokens
    seq = s.running[0]
    s.observe(StepPlan(decodes=[seq], chunks=[(seq, list(range(40)))]), 120.0)
    # room for 0.75 x (2 - 1) x 20 ms of prefill at 2.5 ms a token: 6 tokens
    assert s.prefill_budget() == 6
    # deeper into the prompt tokens cost more: the budget shrinks, never below 1
    s.observe(StepPlan(decodes=[seq], chunks=[(seq, list(range(8)))]), 20.0 + 8 * 40.0)
    assert s.prefill_budget() == 1
    # prefill-only steps teach the per-token cost too, and the chunk cap still holds
    for _ in range(10):
        s.observe(StepPlan(chunks=[(seq, list(range(500)))]), 50.0)  # 0.1 ms a token
    assert s.prefill_budget() == 64


def test_admission_is_oldest_first_and_a_blocked_job_does_not_block_others() -> None:
    s = scheduler(n_slots=2, running=2)
    first = job([1, 2, 3], lease="c1")
    s.submit(first)
    admit_all(s)
    compute(fake(s), s.running[0].slot, [1, 2, 3])
    # c1's slot is busy: its next job waits; a younger job of another connection runs
    blocked, other = job([1, 2, 3, 4], lease="c1"), job([9, 9], lease="c2")
    s.waiting.extend([blocked, other])
    admit_all(s)
    assert [q.job for q in s.running] == [first, other] and list(s.waiting) == [blocked]


def test_never_fits_and_cancelled_waiting_jobs() -> None:
    s = scheduler(ctx=10)
    assert s.never_fits(job(range(10))) is not None  # no room for one output token
    assert s.never_fits(job(range(10), prefill_only=True)) is None
    assert s.never_fits(job([])) == "the prompt is empty"
    j = job([1])
    j.cancelled = True
    s.waiting.extend([j, job([2])])
    assert s.drop_cancelled_waiting() == [j] and len(s.waiting) == 1


def test_the_shortest_remaining_prompt_prefills_first() -> None:
    """A continuation's short delta is not queued behind a long cold prompt admitted
    before it: it finishes in this step, the long one takes what is left."""
    s = scheduler(chunk=128, factor=0)
    a = decoding(s, [1, 2, 3])
    s.submit(job(range(1000, 1400)))  # cold: 400 tokens
    s.submit(job(range(2000, 2030)))  # a delta: 30 tokens
    long, short = admit_all(s)[1:]
    plan = s.plan()
    assert plan.decodes == [a]
    assert [(seq, len(c)) for seq, c in plan.chunks] == [(short, 30), (long, 98)]
    # the delta's last row has logits: it samples now
    (idx,) = [i for seq, i in plan.samples if seq is short]
    row = plan.rows[idx]
    assert row.logits and row.seq == short.slot.id and row.pos == 29
    # rows go in slot order (llama.cpp batches only consecutive sequence ids together)
    seqs = [r.seq for r in plan.rows]
    assert seqs == sorted(seqs)
    assert all(plan.rows[i].seq == q.slot.id for q, i in plan.samples)


def test_sessions_that_start_together_compute_a_shared_head_once() -> None:
    """Four cold prompts with the same 300-token head: one computes it, the others wait
    and then fork its KV (and a prompt of another tenant never waits for it)."""
    s = scheduler(chunk=512, factor=0)
    head = list(range(1000, 1300))
    first = job([*head, 1, 2, 3])
    same = [job([*head, 10 * k, 5]) for k in range(1, 3)]
    other_tenant = job([*head, 7], tenant="B")
    s.waiting.extend([first, *same, other_tenant])
    admit_all(s)
    assert [q.job for q in s.running] == [first, other_tenant]
    assert list(s.waiting) == same
    lead = s.running[0]
    compute(fake(s), lead.slot, head[:200])  # partway: they still wait
    admit_all(s)
    assert list(s.waiting) == same
    compute(fake(s), lead.slot, [*head[200:], 1])  # the head is computed
    forks = admit_all(s)[2:]
    assert [q.job for q in forks] == same and not s.waiting
    assert all(len(q.slot.tokens) == len(head) for q in forks)  # what each reused
    assert all(fake(s).tokens(q.slot.id) == head for q in forks)


def test_a_job_with_its_own_warm_chain_does_not_wait_for_a_shared_head() -> None:
    s = scheduler(chunk=512, factor=0)
    head = list(range(1000, 1300))
    mine = job([*head, 1], lease="c1")
    s.submit(mine)
    (warm,) = admit_all(s)
    compute(fake(s), warm.slot, [*head, 1])
    s.kv.finish(warm.slot)
    s.running.clear()
    s.submit(job([*range(1000, 1400), 9]))  # cold: 400 tokens share the 300
    (lead,) = admit_all(s)
    # c1's next turn shares 300 tokens with the prefilling job but its own slot holds
    # them already: it runs now instead of waiting.
    s.submit(job([*head, 1, 2, 3], lease="c1"))
    assert len(admit_all(s)) == 2 and not s.waiting and lead.prefilling


def test_decode_rows_go_in_slot_order_whatever_the_admission_order() -> None:
    """Sequences that started in another order than their slots' (a slot freed and
    taken again) still decode in one micro-batch: rows in slot order, each sample at its
    own sequence's row."""
    s = scheduler(chunk=128, factor=0)
    seqs = [decoding(s, [10 * k + 1, 10 * k + 2]) for k in range(4)]
    s.running.reverse()  # as if the last slot had been taken first
    plan = s.plan()
    assert [r.seq for r in plan.rows] == sorted(q.slot.id for q in seqs)
    assert sorted(plan.decodes, key=lambda q: q.slot.id) == sorted(seqs, key=lambda q: q.slot.id)
    for q, i in plan.samples:
        assert plan.rows[i].seq == q.slot.id and plan.rows[i].pos == len(q.slot.tokens)
