"""Prompt-lookup drafting: what a `Drafter` proposes, how its draft length adapts, and
where the scheduler puts the drafts in a batch."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.fake_kv import compute, job, make
from warmloop.engine.scheduler import Scheduler, Sequence
from warmloop.engine.speculative import MAX_DECODING, REST_STEPS, WORTH, Drafter


def test_it_proposes_what_followed_the_latest_occurrence_of_the_last_ngram() -> None:
    d = Drafter([1, 2, 3, 4, 5, 6, 9, 1, 2, 3, 7, 8, 0, 1, 2, 3], max_draft=8)
    d.p = 0.99  # drafts have been right so far: it drafts as many as asked
    assert d.propose(3) == [7, 8, 0]  # the later occurrence wins
    assert d.propose(8) == [7, 8, 0, 1, 2, 3]  # up to the end of what is known
    assert d.propose(0) == []


def test_no_match_no_draft_and_a_match_appears_as_tokens_arrive() -> None:
    d = Drafter([5, 6, 7, 8, 9], max_draft=4)
    d.p = 0.99
    assert d.propose(4) == []
    for t in (5, 6):
        d.append(t)
        assert d.propose(4) == []  # only 2 tokens of the n-gram match so far
    d.append(7)
    assert d.propose(4) == [8, 9, 5, 6]


def test_the_draft_length_is_what_acceptance_pays_for() -> None:
    d = Drafter([1, 2, 3, 4, 5, 6, 1, 2, 3], max_draft=8)
    assert d.length == 1  # the prior: one token is worth a try, two are not
    for _ in range(12):
        d.verified(d.length, d.length)  # its drafts are always right: p → 1
    assert d.p > 0.95 and d.length == 8
    d.verified(8, 0)
    assert d.length < 8  # one outright failure shortens it at once
    while d.length:
        d.verified(d.length, 0)
    assert d.p**1 < WORTH


def test_a_drafter_that_stopped_paying_probes_with_one_token_now_and_then() -> None:
    d = Drafter([1, 2, 3, 4, 5, 6, 1, 2, 3], max_draft=8)
    d.verified(1, 0)
    d.verified(1, 0)
    assert d.length == 0
    assert all(d.propose(8) == [] for _ in range(REST_STEPS - 1))
    assert d.propose(8) == [4]  # the probe
    d.verified(1, 1)
    assert (d.drafted, d.accepted) == (3, 1)


def scheduler(batch: int = 512, ctx: int = 4096) -> Scheduler:
    mgr, _ = make(2)
    return Scheduler(
        mgr, batch_tokens=batch, prefill_chunk=512, max_running=2, ctx_per_seq=ctx, stall_factor=0
    )


def decoding(s: Scheduler, prompt: list[int], next_token: int, max_tokens: int = 100) -> Sequence:
    j = job(prompt)
    j.params = replace(j.params, max_tokens=max_tokens)
    s.submit(j)
    ((_, placement),) = s.placements()
    seq = Sequence(j, placement.slot, None)
    s.start(seq)
    assert s.kv.__class__.__name__ == "KVCacheManager"
    compute(s.kv.ops, seq.slot, prompt)  # type: ignore[attr-defined]
    seq.drafter = Drafter([*prompt, next_token], max_draft=8)
    seq.drafter.p = 0.99  # its drafts have been right: it drafts all it may
    seq.generated.append(next_token)
    seq.next_token = next_token
    return seq


def test_drafts_ride_after_the_next_token_each_row_with_logits() -> None:
    s = scheduler()
    prompt = [10, 11, 12, 13, 14, 15, 16, 17, 10, 11]
    seq = decoding(s, prompt, 12)
    plan = s.plan()
    assert seq.draft == [13, 14, 15, 16, 17, 10, 11, 12]
    assert [(r.token, r.pos, r.logits) for r in plan.rows] == [
        (t, len(prompt) + i, True) for i, t in enumerate([12, *seq.draft])
    ]
    assert plan.samples == [(seq, 0)]


def test_no_drafts_while_more_sequences_decode_than_drafting_pays_for() -> None:
    s = scheduler()
    s.max_running = MAX_DECODING + 1
    s.kv = make(MAX_DECODING + 1)[0]
    prompt = [10, 11, 12, 13, 14, 15, 16, 17, 10, 11]
    seqs = [decoding(s, [k, *prompt], 12) for k in range(MAX_DECODING + 1)]
    plan = s.plan()
    assert all(not q.draft for q in seqs) and len(plan.rows) == MAX_DECODING + 1
    s.running.pop()  # one fewer: they draft again
    s.plan()
    assert all(q.draft for q in s.running)


def test_drafts_stop_at_the_output_limit_the_context_and_the_batch() -> None:
    prompt = [10, 11, 12, 13, 14, 15, 16, 17, 10, 11]
    s = scheduler()
    seq = decoding(s, prompt, 12, max_tokens=4)  # 1 generated: 3 more, 1 of them sampled
    s.plan()
    assert seq.draft == [13, 14]
    s = scheduler(ctx=len(prompt) + 5)  # positions up to ctx - 2 may be drafted
    seq = decoding(s, prompt, 12)
    s.plan()
    assert seq.draft == [13, 14, 15]
    s = scheduler(batch=4)
    seq = decoding(s, prompt, 12)
    s.plan()
    assert seq.draft == [13, 14, 15]


def test_the_prompt_indexed_in_one_pass_is_the_prompt_appended_token_by_token() -> None:
    import random

    rng = random.Random(3)
    tokens = [rng.randrange(12) for _ in range(2000)]
    bulk, one_by_one = Drafter(tokens, 8), Drafter([], 8)
    for t in tokens:
        one_by_one.append(t)
    assert bulk.tokens == one_by_one.tokens and bulk._after == one_by_one._after
