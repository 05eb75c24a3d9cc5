"""Sampling on llama.cpp: what a response's `SamplingParams` (engine/request.py) become.

`make_sampler` gives a request without a grammar or top-p (greedy, or a temperature:
what agents send) a `RowSampler`, one numpy pass over the row of logits, and anything
else llama.cpp's sampler chain (grammar → top-p → temperature → seeded draw, or
greedy), which first copies every token of the vocabulary into a candidate array (the
chain cost about 0.4 ms a sampled token per sequence; a RowSampler draw 48 µs for
49,152 tokens). `json_schema_to_gbnf`
and `check_grammar` turn a JSON schema into a grammar and ask llama.cpp whether it
accepts it before a response starts. With `engine/backend.py`, the only module that
imports the llama.cpp binding.
"""

from __future__ import annotations

import ctypes
from typing import Any, Protocol

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import SchemaConverter

from warmloop.engine.request import SamplingParams


class GrammarRejected(ValueError):
    """llama.cpp refused a grammar (the message says why)."""


class Sampler(Protocol):
    """Draws a request's tokens from the logits of a batch row; owned by one request,
    freed when it ends."""

    def sample(self, ctx: Any, batch_index: int) -> int: ...

    def free(self) -> None: ...


class RowSampler:
    """Greedy, or a draw from softmax(logits / temperature) over the whole vocabulary:
    the distribution llama.cpp's temperature → dist chain draws from, computed in numpy
    on the row llama.cpp left, with the request's own seeded generator."""

    BLOCK = 256  # tokens per block of the two-level inverse CDF below

    def __init__(self, n_vocab: int, temperature: float, seed: int) -> None:
        self.n_vocab = n_vocab
        self.temperature = temperature
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._starts = np.arange(0, n_vocab, self.BLOCK)

    def sample(self, ctx: Any, batch_index: int) -> int:
        ptr = llama_cpp.llama_get_logits_ith(ctx, batch_index)
        return self.draw(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)))

    def draw(self, logits: np.ndarray[Any, np.dtype[np.float32]]) -> int:
        if self.temperature <= 0.0:
            return int(logits.argmax())  # the first of equal maxima, as llama.cpp's greedy
        weights = logits / np.float32(self.temperature)
        weights -= weights.max()
        np.exp(weights, out=weights)
        # Inverse CDF in two levels: a running sum over all tokens is one sequential scan
        # (a third of a millisecond for 49k tokens); block masses are vectorised, and
        # only the chosen block is scanned.
        blocks = np.add.reduceat(weights, self._starts, dtype=np.float64)
        cumulative = np.cumsum(blocks)
        u = self.rng.random() * cumulative[-1]
        b = min(int(np.searchsorted(cumulative, u, side="right")), len(blocks) - 1)
        start = b * self.BLOCK
        inner = np.cumsum(weights[start : start + self.BLOCK], dtype=np.float64)
        u -= cumulative[b] - blocks[b]
        i = min(int(np.searchsorted(inner, u, side="right")), len(inner) - 1)
        return start + i

    def free(self) -> None:
        pass


class ChainSampler:
    """A llama.cpp sampler chain (grammars, top-p)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def sample(self, ctx: Any, batch_index: int) -> int:
        # llama_sampler_sample also accepts the token into the chain (grammar state).
        return int(llama_cpp.llama_sampler_sample(self._handle, ctx, batch_index))

    def free(self) -> None:
        if self._handle is not None:
            llama_cpp.llama_sampler_free(self._handle)
            self._handle = None


def make_sampler(vocab: Any, params: SamplingParams) -> Sampler:
    """The sampler for `params` over the model's vocabulary; GrammarRejected if its
    grammar does not parse."""
    if params.grammar is None and (params.temperature <= 0.0 or params.top_p >= 1.0):
        n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        return RowSampler(n_vocab, params.temperature, params.seed & 0xFFFFFFFF)
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if params.grammar is not None:
        try:
            grammar = _grammar_sampler(vocab, params.grammar, params.grammar_trigger)
        except GrammarRejected:
            llama_cpp.llama_sampler_free(chain)
            raise
        llama_cpp.llama_sampler_chain_add(chain, grammar)
    if params.temperature <= 0.0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    else:
        if params.top_p < 1.0:
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1)
            )
        llama_cpp.llama_sampler_chain_add(
            chain, llama_cpp.llama_sampler_init_temp(params.temperature)
        )
        llama_cpp.llama_sampler_chain_add(
            chain, llama_cpp.llama_sampler_init_dist(params.seed & 0xFFFFFFFF)
        )
    return ChainSampler(chain)


def check_grammar(vocab: Any, grammar: str, lazy_trigger: str | None) -> None:
    """Raise GrammarRejected if llama.cpp would refuse `grammar`. It only reads the
    vocabulary, so it may run on any thread (like tokenizing)."""
    llama_cpp.llama_sampler_free(_grammar_sampler(vocab, grammar, lazy_trigger))


def _grammar_sampler(vocab: Any, grammar: str, lazy_trigger: str | None) -> Any:
    try:
        text = grammar.encode("utf-8")
        trigger = lazy_trigger.encode("utf-8") if lazy_trigger is not None else None
    except UnicodeEncodeError as exc:
        raise GrammarRejected(f"the grammar is not valid UTF-8 text: {exc.reason}") from None
    if trigger is not None:
        # The grammar applies from the first match of the trigger pattern on.
        patterns = (ctypes.c_char_p * 1)(trigger)
        no_tokens = (llama_cpp.llama_token * 1)()
        g = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
            vocab, text, b"root", patterns, 1, no_tokens, 0
        )
    else:
        g = llama_cpp.llama_sampler_init_grammar(vocab, text, b"root")
    if not g:
        raise GrammarRejected("llama.cpp rejected the grammar")
    return g


class _SchemaConverter(SchemaConverter):
    """llama.cpp's maintained JSON-schema → GBNF converter, with string literals escaped
    fully: 0.3.36 leaves `\\` unescaped, so a `"` inside an enum value, a const or a
    property name produced a grammar llama.cpp rejects."""

    def _format_literal(self, literal: str) -> str:
        escaped = (
            literal.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\r", "\\r")
            .replace("\n", "\\n")
        )
        return f'"{escaped}"'


def json_schema_to_gbnf(schema: dict[str, Any]) -> str:
    """A GBNF grammar (root rule `root`) for JSON values that follow `schema`.

    Pure Python (no model needed); raises on schemas the converter cannot handle.
    """
    converter: Any = _SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    converter.visit(converter.resolve_refs(schema, "request"), "")
    grammar: str = converter.format_grammar()
    return grammar
