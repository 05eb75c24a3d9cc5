"""Sampling on llama.cpp: the sampler chain (grammar → top-p → temperature → seeded
draw, or greedy) a response's `SamplingParams` (engine/request.py) become.

`make_sampler`
builds the chain; `json_schema_to_gbnf` and `check_grammar` turn a JSON schema into a
grammar and ask llama.cpp whether it accepts it before a response starts. With
`engine/backend.py`, the only module that imports the llama.cpp binding.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import SchemaConverter

from warmloop.engine.request import SamplingParams


class GrammarRejected(ValueError):
    """llama.cpp refused a grammar (the message says why)."""


class Sampler:
    """A llama.cpp sampler chain; owned by one request, freed when it ends."""

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
    """The chain for `params` over the model's vocabulary; GrammarRejected if its grammar
    does not parse."""
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
    return Sampler(chain)


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
