"""KV operations on the real backend, in the order one admission round can issue them.

A prefix copy between slots followed, before any decode, by a state save or restore of
the source or the destination must leave every sequence's KV equal to its tokens. With
llama.cpp's `llama_memory_seq_cp` (per-sequence KV streams) the copy was only queued
until the next decode, so a restore into the source was copied into the destination
afterwards, and a save of the destination read stale data. `seq_len` (what the KV
cache's `check_integrity` compares each slot with) is checked after every operation, and
every test that runs an engine ends with `Engine.check_integrity()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from warmloop.config import embedded_model_path
from warmloop.engine.backend import BatchRow, LlamaBackend

TEXT_A = "def parse(path):\n    with open(path) as f:\n        return json.load(f)\n" * 4
TEXT_B = "The weather in Paris is mild in spring, with light rain and sunny spells. " * 4
KEEP = 30


@pytest.fixture(scope="module")
def backend() -> Iterator[LlamaBackend]:
    b = LlamaBackend(embedded_model_path(), ctx_per_seq=256, n_seq=3, n_threads=2, n_batch=128)
    yield b
    b.close()


def prefill(b: LlamaBackend, seq: int, tokens: list[int]) -> None:
    b.seq_truncate(seq, 0)
    assert b.seq_len(seq) == 0
    b.decode([BatchRow(t, i, seq, False) for i, t in enumerate(tokens)])
    assert b.seq_len(seq) == len(tokens)


def next_logits(b: LlamaBackend, seq: int, token: int, pos: int) -> np.ndarray:
    b.decode([BatchRow(token, pos, seq, True)])
    view = np.ctypeslib.as_array(b.logits(0), shape=(b.n_vocab(),))
    return np.array(view, copy=True)


def cold_logits(b: LlamaBackend, seq: int, tokens: list[int]) -> np.ndarray:
    """What a sequence holding exactly `tokens[:-1]` predicts after `tokens[-1]`."""
    prefill(b, seq, tokens[:-1])
    return next_logits(b, seq, tokens[-1], len(tokens) - 1)


def assert_same(warm: np.ndarray, cold: np.ndarray) -> None:
    """The same prediction: a KV computed in other batch shapes differs in the last bits
    (logits move by up to ~1), while KV of the wrong text changes the distribution."""
    assert int(np.argmax(warm)) == int(np.argmax(cold))
    correlation = float(np.corrcoef(warm, cold)[0, 1])
    assert correlation > 0.995, correlation


def test_restore_into_the_source_after_a_copy_leaves_the_copy_intact(
    backend: LlamaBackend,
) -> None:
    a, b = backend.tokenize(TEXT_A), backend.tokenize(TEXT_B)
    prefill(backend, 0, a)
    prefill(backend, 1, b)
    snap_b = backend.seq_state_get(1)
    # one admission round: copy a prefix of A into slot 2, then restore B into slot 0
    backend.seq_truncate(2, 0)
    backend.seq_copy(0, 2)
    backend.seq_truncate(2, KEEP)
    backend.seq_state_set(0, snap_b)
    assert [backend.seq_len(s) for s in (0, 1, 2)] == [len(b), len(b), KEEP]
    warm = next_logits(backend, 2, a[KEEP], KEEP)
    assert_same(warm, cold_logits(backend, 1, a[: KEEP + 1]))


def test_a_save_of_the_destination_right_after_a_copy_holds_the_copy(
    backend: LlamaBackend,
) -> None:
    a, b = backend.tokenize(TEXT_A), backend.tokenize(TEXT_B)
    prefill(backend, 0, a)
    prefill(backend, 2, b)  # the destination holds something else before the copy
    backend.seq_truncate(2, 0)
    backend.seq_copy(0, 2)
    backend.seq_truncate(2, KEEP)
    saved = backend.seq_state_get(2)  # same round: no decode in between
    backend.seq_state_set(1, saved)
    assert [backend.seq_len(s) for s in (0, 1, 2)] == [len(a), KEEP, KEEP]
    warm = next_logits(backend, 1, a[KEEP], KEEP)
    assert_same(warm, cold_logits(backend, 0, a[: KEEP + 1]))


def test_stop_never_frees_the_context_under_a_running_thread() -> None:
    """A join that times out leaves llama.cpp's state alone (freeing it under a decode
    would crash the process); a clean stop frees it."""
    import threading

    from warmloop.app import build_engine
    from warmloop.config import Config

    engine = build_engine(Config(ctx=256, slots=1, threads=1))
    stuck = threading.Event()
    engine._thread = threading.Thread(target=stuck.wait, args=(30,), daemon=True)
    engine._thread.start()
    engine.stop(timeout_s=0.1)
    assert engine.backend.ctx is not None
    stuck.set()
    engine._thread.join()
    engine.stop(timeout_s=5)
    assert engine.backend.ctx is None


async def test_a_sampler_that_fails_in_any_way_gives_its_slot_back() -> None:
    """A grammar the engine thread cannot even encode (not a BackendError) used to leave
    the slot it had claimed busy forever."""
    from warmloop.app import build_engine
    from warmloop.config import Config
    from warmloop.engine.request import Failed, Job, SamplingParams

    engine = build_engine(Config(ctx=256, slots=1, threads=1))
    engine.start()
    try:
        tokens = engine.backend.tokenize("hello there")
        bad = SamplingParams(max_tokens=2, grammar='root ::= "\ud800"')
        async with asyncio.timeout(30):  # it used to hang: the job never got an event
            events = [e async for e in engine.run(Job("j1", tokens, bad))]
        assert isinstance(events[-1], Failed)
        assert engine.kv.in_use() == 0
        ok = SamplingParams(max_tokens=2)
        events = [e async for e in engine.run(Job("j2", tokens, ok))]
        assert not isinstance(events[-1], Failed)
        engine.check_integrity()
    finally:
        engine.stop()


async def test_engine_integrity_check_sees_the_real_sequences() -> None:
    """Chains through the engine leave every slot's tokens equal to what llama.cpp holds
    (a host snapshot and a restore included); KV removed behind the cache's back is
    reported, on the caller's thread."""
    from warmloop.app import build_engine
    from warmloop.config import Config
    from warmloop.engine.request import Finished, Job, Placed, SamplingParams
    from warmloop.kvcache.base import KVIntegrityError

    engine = build_engine(Config(ctx=256, slots=1, threads=1, kv_host_budget=10**8))
    engine.start()
    try:
        params = SamplingParams(max_tokens=3)
        a, b = engine.backend.tokenize(TEXT_A)[:40], engine.backend.tokenize(TEXT_B)[:40]
        async with asyncio.timeout(120):
            for i, (tokens, lease) in enumerate([(a, "c1"), (b, "c2"), (a + b[:5], "c1")]):
                events = [e async for e in engine.run(Job(f"j{i}", tokens, params, lease=lease))]
                assert isinstance(events[-1], Finished)
                engine.check_integrity()
        assert isinstance(events[0], Placed) and events[0].tier == "host"  # c1's is back
        slot = engine.kv.slots[0]
        assert len(slot.tokens) > len(a)  # the prompt and what was generated
        engine._inbox.put(lambda: engine.backend.seq_truncate(0, 10))
        with pytest.raises(
            KVIntegrityError, match=r"slot 0 records \d+ tokens but its sequence holds 10"
        ):
            engine.check_integrity()
    finally:
        engine.stop()


def test_a_cut_shifts_the_tail_into_place(backend: LlamaBackend) -> None:
    """`seq_cut` removes a range and moves the tokens after it down, re-rotating their
    keys: tokens computed alone at positions d.. and then cut down to 0.. predict what
    computing them at 0.. does (attention sees only relative positions), within the
    ~0.8 logit noise that computing them at another offset shows on its own. Without the
    shift, decoding the next token at position len - 1 would be refused."""
    assert backend.can_cut
    text = backend.tokenize("<|im_start|>user\nName a large animal with a trunk.<|im_end|>\n")
    text += backend.tokenize("<|im_start|>assistant\n")
    d = 100
    backend.seq_truncate(0, 0)
    backend.decode([BatchRow(t, d + i, 0, False) for i, t in enumerate(text[:-1])])
    backend.seq_cut(0, 0, d)  # nothing is held below d: this only shifts
    assert backend.seq_len(0) == len(text) - 1
    warm = next_logits(backend, 0, text[-1], len(text) - 1)
    cold = cold_logits(backend, 1, text)
    assert float(np.abs(warm - cold).max()) < 1.0
    assert_same(warm, cold)


def test_a_cut_is_not_a_cold_computation_of_the_shorter_prompt(backend: LlamaBackend) -> None:
    """Why `--truncation-kv shift` is opt-in: the kept tail's KV was computed while the
    dropped turns were in view, so after the cut the model still "remembers" them, and
    its prediction differs from a cold computation of head + tail by more than batch
    shapes ever do (the default recomputes the tail instead)."""
    head = backend.tokenize("<|im_start|>system\nYou answer with one word.<|im_end|>\n")
    old = backend.tokenize("<|im_start|>user\nWhat colour is the sky at noon?<|im_end|>\n")
    tail = backend.tokenize("<|im_start|>user\nName a large animal with a trunk.<|im_end|>\n")
    tail += backend.tokenize("<|im_start|>assistant\n")
    prefill(backend, 0, head + old + tail[:-1])
    backend.seq_cut(0, len(head), len(head) + len(old))
    warm = next_logits(backend, 0, tail[-1], len(head) + len(tail) - 1)
    cold = cold_logits(backend, 1, head + tail)
    assert float(np.abs(warm - cold).max()) > 2.0  # measured: 4.8
