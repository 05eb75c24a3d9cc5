"""Greedy outputs served warm and cold must be identical, except at a near-tie.

llama.cpp's logits can differ in the last bits between batch shapes, so two greedy runs
of the same prompt may part ways where the top two logits are (almost) equal. When two
outputs differ, this recomputes the prompt with the model in-process, finds the first
token where they part, and asserts that the top-2 logit gap there is below 1e-3; any
other divergence is a cache bug.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from warmloop.config import Config, embedded_model_path
from warmloop.engine.backend import BatchRow, LlamaBackend
from warmloop.protocol.items import Item, MessageItem
from warmloop.protocol.tools import FunctionTool
from warmloop.serving.chat_template import fallback_template
from warmloop.serving.prompt import Head, PromptRenderer

NEAR_TIE = 1e-3
# Batch shapes a warm run may have used: the default --prefill-chunk (prefill beside
# decodes) and --batch-tokens (prefill alone).
PREFILL_CHUNKS = sorted(
    {Config.model_fields["prefill_chunk"].default, Config.model_fields["batch_tokens"].default, 64}
)


@functools.cache
def _backend(model: Path | None = None) -> tuple[LlamaBackend, PromptRenderer]:
    """The model in-process (the embedded one unless named) and the server's renderer."""
    backend = LlamaBackend(
        model or embedded_model_path(), ctx_per_seq=4096, n_seq=1, n_threads=2, n_batch=512
    )
    template = backend.chat_template() or fallback_template(backend.architecture())
    renderer = PromptRenderer(
        template, bos_token=backend.special_text("bos"), eos_token=backend.special_text("eos")
    )
    return backend, renderer


def logits_after(
    prompt: list[int],
    cuts: list[int],
    generated: list[int],
    gen_batch: int = 1,
    model: Path | None = None,
) -> np.ndarray:
    """Logits after `prompt` computed in batches split at `cuts` (none: one batch; a cache
    hit splits at its cached length; chunked prefill every few dozen tokens), then
    `generated` fed one token at a time, as decoding does (or `gen_batch` at a time, as
    verifying speculative drafts does)."""
    backend, _ = _backend(model)
    backend.seq_truncate(0, 0)
    cuts = [0, *sorted(c for c in set(cuts) if 0 < c < len(prompt)), len(prompt)]
    for lo, hi in itertools.pairwise(cuts):
        for start in range(lo, hi, backend.n_batch):
            end = min(start + backend.n_batch, hi)
            backend.decode(
                [BatchRow(prompt[i], i, 0, i == len(prompt) - 1) for i in range(start, end)]
            )
    for lo in range(0, len(generated), gen_batch):
        part = generated[lo : lo + gen_batch]
        backend.decode([BatchRow(tok, len(prompt) + lo + j, 0, True) for j, tok in enumerate(part)])
    return np.ctypeslib.as_array(backend.logits(-1), shape=(backend.n_vocab(),)).copy()


GEN_BATCHES = (2, 4, 8)  # draft verification decodes generated tokens several at a time


def _check_divergence(
    prompt: list[int], a: list[int], b: list[int], cached: int, what: str, model: Path | None = None
) -> None:
    """`a` (the run under test) and `b` (the reference, one token at a time, no cache)
    first differ at some k: pass only if step k is a near-tie, or a tie within the noise
    that `a`'s batch shapes alone cause."""
    k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    if k >= min(len(a), len(b)):
        return  # one is a prefix of the other: only max_output_tokens/EOG differ
    cold_logits = logits_after(prompt, [], b[:k], model=model)
    top = np.sort(cold_logits)[::-1]
    gap = float(top[0] - top[1])
    if gap < NEAR_TIE:
        return
    shapes = [[cached]] + [
        list(range(cached or chunk, len(prompt), chunk)) for chunk in PREFILL_CHUNKS
    ]
    noise = max(
        float(np.abs(logits_after(prompt, cuts, a[:k], model=model) - cold_logits).max())
        for cuts in shapes
    )
    noise = max(
        noise,
        *(
            float(np.abs(logits_after(prompt, [cached], a[:k], g, model) - cold_logits).max())
            for g in GEN_BATCHES
        ),
    )
    assert gap <= noise, (
        f"{what} diverge at token {k}: top-2 gap {gap:.4g} is larger than the batch-shape "
        f"noise {noise:.4g}"
    )


def assert_tokens_same_or_near_tie(prompt: list[int], tested: list[int], plain: list[int]) -> None:
    """Greedy token lists of the same prompt: equal, or diverging only at a near-tie."""
    if tested != plain:
        _check_divergence(prompt, tested, plain, 0, "speculative and plain greedy decoding")


def assert_same_or_near_tie(
    instructions: str | None,
    history: list[tuple[str, str]],
    user_text: str,
    warm: str,
    cold: str,
    cached: int,
    tools: Sequence[FunctionTool] = (),
) -> None:
    """Pass if equal; else the first divergent step must be a near-tie: a top-2 gap under
    1e-3, or a gap inside the logit noise that the warm run's batch shapes (prompt split
    at `cached`, or prefilled in chunks beside other sequences) cause on their own,
    reproduced here on one sequence without any cache."""
    items: list[Item] = []
    for k, (u, a) in enumerate(history):
        items += [MessageItem(f"u{k}", "user", u), MessageItem(f"a{k}", "assistant", a)]
    items.append(MessageItem("u", "user", user_text))
    head = _backend()[1].head(instructions, tools)
    assert_items_same_or_near_tie(head, items, warm, cold, cached)


def assert_items_same_or_near_tie(
    system: Head | None,
    items: Sequence[Item],
    warm: str,
    cold: str,
    cached: int,
    model: Path | None = None,
) -> None:
    """`assert_same_or_near_tie` for a prompt of any items after a system text."""
    if warm == cold:
        return
    backend, renderer = _backend(model)
    prompt = backend.tokenize(renderer.render(system, items))
    a, b = backend.tokenize(warm), backend.tokenize(cold)
    _check_divergence(
        prompt,
        a,
        b,
        cached,
        f"warm and cold outputs (a cache bug?)\nwarm: {warm!r}\ncold: {cold!r}\n",
        model,
    )
