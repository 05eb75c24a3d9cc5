"""Gemma's own call notation: Gemma 4 and FunctionGemma (Gemma 3 270M tuned for calls).

    <|tool_call>call:get_weather{city:<|"|>Oslo<|"|>,days:3}<tool_call|>        Gemma 4
    <start_function_call>call:get_weather{city:<escape>Oslo<escape>}<end_function_call>

Arguments are an object in Gemma's notation, not JSON: bare keys, every string between
two quote tokens (`<|"|>`, `<escape>`) with nothing escaped inside, numbers, `true`,
`false`, `null`, `[…]` and `{…}` as in JSON (a bare word where a string belongs is read
as that string, as Google's own parser does). The template writes a call's arguments
back from the object with its keys sorted (Jinja's `dictsort`, case-insensitive), so
the grammar makes the model write them in that order; numbers and `null` go back as the
very text the model wrote (`Bare`), not as Python would print them.

Gemma 4 reasons in `<|channel>thought\n…<channel|>`. With thinking off its generation
prompt ends with an empty thought channel that the template does not render back
(docs/models.md: reuse stops at the model turn's start unless `--reasoning-history keep`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from warmloop.protocol.items import FunctionCallItem
from warmloop.protocol.tools import FunctionTool
from warmloop.serving.families.base import MAX_PARALLEL_CALLS, Family, SchemaGrammar
from warmloop.serving.families.gemma_notation import (
    Bare,
    Broken,
    Incomplete,
    read_pair,
    template_value,
)
from warmloop.serving.families.parsing import (
    THINK_CLOSE,
    THINK_OPEN,
    CallEnd,
    CallReader,
    CallStart,
    NotACall,
    PairwiseReader,
    Segment,
)
from warmloop.serving.gbnf import literal
from warmloop.serving.lark import input_rules
from warmloop.serving.text_grammar import RAW, complement

_NAME = re.compile(r"call:(?P<name>[A-Za-z0-9_.\-]+)\{")


class GemmaCallReader(PairwiseReader):
    """One call: `OPEN call:NAME{pairs}CLOSE`, its arguments sent as JSON one whole
    top-level pair at a time."""

    HEAD_MAX = 256

    def __init__(self, family: GemmaCalls, tools: Mapping[str, FunctionTool]) -> None:
        self._f = family
        self._tools = tools
        self._name: str | None = None
        self._pos = 0
        self._pairs: list[tuple[str, str]] = []

    def advance(self, buf: str, final: bool) -> tuple[list[Segment], int | None]:
        f = self._f
        out: list[Segment] = []
        if self._name is None:
            m = _NAME.match(buf, len(f.call_open))
            if m is None:
                if final or len(buf) > self.HEAD_MAX or "{" in buf:
                    raise NotACall
                return out, None
            if m.group("name") not in self._tools:
                raise NotACall
            self._name, self._pos = m.group("name"), m.end()
            out.append(CallStart(self._name))
        while True:
            try:
                pair, pos = read_pair(buf, self._pos, f.quote, first=not self._pairs)
            except Incomplete:
                if final:
                    return self._end(out, len(buf), complete=False)
                return out, None
            except Broken:  # the call is broken: it ends at its closing tag
                close = buf.find(f.call_close, self._pos)
                if close >= 0 or final:
                    end = close + len(f.call_close) if close >= 0 else len(buf)
                    return self._end(out, end, complete=False)
                return out, None
            if pair is None:
                break
            self._pairs.append(pair)
            self._pos = pos
            out += self._delta(closed=False)
        rest = buf[pos:]
        if rest.startswith(f.call_close):
            return self._end(out, pos + len(f.call_close), complete=True)
        if f.call_close.startswith(rest) and not final:
            return out, None  # the closing tag may still come
        return self._end(out, pos, complete=True)  # closed by its brace alone

    def _text(self) -> str:
        return "{" + ", ".join(f"{k}: {v}" for k, v in self._pairs) + "}"

    def _end(self, out: list[Segment], end: int, *, complete: bool) -> tuple[list[Segment], int]:
        out += self._delta(closed=True)
        out.append(CallEnd.of(self._text(), complete))
        return out, end


class _Notation:
    """GBNF for JSON schemas' values in Gemma's notation, keys in the template's order."""

    def __init__(self, quote: str, prefix: str) -> None:
        self.quote = quote
        self.prefix = prefix
        self.rules: list[str] = []
        self._n = 0

    def rule(self, body: str) -> str:
        self._n += 1
        name = f"{self.prefix}-{self._n}"
        self.rules.append(f"{name} ::= {body}")
        return name

    def value(self, schema: Any) -> str:
        if not isinstance(schema, dict) or not schema:
            return "gm-value"
        choices = schema.get("enum")
        if "const" in schema:
            choices = [schema["const"]]
        if isinstance(choices, list) and choices:
            return "( " + " | ".join(literal(self.write(c)) for c in choices) + " )"
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                return "( " + " | ".join(self.value(s) for s in schema[key]) + " )"
        kind = schema.get("type")
        if isinstance(kind, list):
            return "( " + " | ".join(self.value({**schema, "type": k}) for k in kind) + " )"
        if kind == "string":
            return "gm-string"
        if kind == "integer":
            return "gm-integer"
        if kind == "number":
            return "gm-number"
        if kind == "boolean":
            return '( "true" | "false" )'
        if kind == "null":
            return '"null"'
        if kind == "array":
            item = self.value(schema.get("items"))
            return f'"[" ( {item} ( "," {item} )* )? "]"'
        props = schema.get("properties")
        if kind == "object" or isinstance(props, dict):
            if not isinstance(props, dict) or not props:
                return "gm-object"
            required = schema.get("required")
            return (
                '"{" ' + self.pairs(props, required if isinstance(required, list) else []) + ' "}"'
            )
        return "gm-value"

    def pairs(self, props: dict[str, Any], required: list[Any]) -> str:
        """The pairs of `props` in dictsort's order; any optional one may be left out."""
        keys = sorted(props, key=str.lower)
        kvs = [f"{literal(k + ':')} {self.value(props[k])}" for k in keys]
        need = [k in required for k in keys]
        after: dict[int, str] = {}  # at least one pair from i on, each after a comma

        def rest(i: int) -> str:  # what follows once some pair has been written
            if i == len(keys):
                return ""
            if i not in after:
                after[i] = self.rule(self._chain(i, kvs, need, rest, comma=True))
            return after[i] if any(need[i:]) else f"( {after[i]} )?"

        body = self.rule(self._chain(0, kvs, need, rest, comma=False)) if keys else ""
        return body if any(need) else f"( {body} )?"

    @staticmethod
    def _chain(i: int, kvs: list[str], need: list[bool], rest: Any, *, comma: bool) -> str:
        """Alternatives for the first pair written from i on (up to the first required)."""
        sep = '"," ' if comma else ""
        alts = []
        for j in range(i, len(kvs)):
            alts.append(f"{sep}{kvs[j]} {rest(j + 1)}".strip())
            if need[j]:
                break
        return " | ".join(alts)

    def write(self, value: Any) -> str:
        """A JSON value in the notation, as the template writes it."""
        if isinstance(value, str):
            return f"{self.quote}{value}{self.quote}"
        if isinstance(value, bool):
            return "true" if value else "false"
        if value is None:
            return "null"
        if isinstance(value, dict):
            inner = ",".join(f"{k}:{self.write(value[k])}" for k in sorted(value, key=str.lower))
            return "{" + inner + "}"
        if isinstance(value, list):
            return "[" + ",".join(self.write(v) for v in value) + "]"
        return json.dumps(value)

    def shared(self) -> list[str]:
        q = self.quote
        # any text without the quote token in it (and not ending with its first character)
        inside = " | ".join(
            (f"{literal(q[:i])} " if i else "") + RAW.chars(complement(((ord(c), ord(c)),)))
            for i, c in enumerate(q)
        )
        digits = '"-"? ( [0-9] | [1-9] [0-9]{1,15} )'
        return [
            f"gm-string ::= {literal(q)} ( {inside} )* {literal(q)}",
            f"gm-integer ::= {digits}",
            f'gm-number ::= {digits} ( "." [0-9]{{1,16}} )? ( [eE] [-+]? [0-9]{{1,3}} )?',
            'gm-value ::= gm-string | gm-number | "true" | "false" | "null" | gm-object'
            ' | "[" ( gm-value ( "," gm-value )* )? "]"',
            'gm-object ::= "{" ( gm-key ":" gm-value ( "," gm-key ":" gm-value )* )? "}"',
            "gm-key ::= [A-Za-z_] [A-Za-z0-9_]*",
        ]


class GemmaCalls(Family):
    name = "gemma"
    call_open: ClassVar[str] = "<|tool_call>"
    call_close: ClassVar[str] = "<tool_call|>"
    quote: ClassVar[str] = '<|"|>'
    markers: ClassVar[tuple[str, ...]] = (call_open,)
    think_tags = ("<|channel>thought", "<channel|>")

    @classmethod
    def detect(cls, template: str) -> bool:
        return f"'{cls.call_open}call:'" in template

    def arguments(self, item: FunctionCallItem) -> Any:
        try:
            value = json.loads(item.arguments, parse_int=Bare, parse_float=Bare)
        except ValueError:
            return item.arguments
        return template_value(value) if isinstance(value, dict) else item.arguments

    def reader(self, tools: Mapping[str, FunctionTool]) -> CallReader:
        return GemmaCallReader(self, tools)

    def grammar(
        self,
        tools: Sequence[FunctionTool],
        *,
        parallel: bool,
        schema: SchemaGrammar,
        forced: bool = False,
    ) -> str:
        rules: list[str] = []
        alternatives = []
        notation = _Notation(self.quote, "gm")
        for k, tool in enumerate(tools):
            notation.prefix = f"t{k}"
            props = tool.parameters.get("properties")
            required = tool.parameters.get("required")
            found = None
            if tool.input_grammar is not None:  # a custom tool's text, in its grammar
                found = input_rules(tool.input_grammar, RAW, f"t{k}in")
            if found is not None:
                rules += found.rules
                quote = literal(self.quote)
                body = f"{literal('input:')} {quote} {found.start} {quote}"
            elif isinstance(props, dict) and props:
                body = notation.pairs(props, required if isinstance(required, list) else [])
            else:
                body = '( gm-key ":" gm-value ( "," gm-key ":" gm-value )* )?'
            head = literal(f"{self.call_open}call:{tool.qualified}{{")
            alternatives.append(f"{head} {body} {literal('}' + self.call_close)}")
        rules += notation.rules
        more = f" call{{0,{MAX_PARALLEL_CALLS - 1}}}" if parallel and self.parallel else ""
        return "\n".join(
            [
                f"root ::= call{more}",
                "call ::= " + " | ".join(alternatives),
                *rules,
                *notation.shared(),
            ]
        )


class FunctionGemma(GemmaCalls):
    """FunctionGemma (google/functiongemma-270m-it): the same notation with its own
    tokens; it does not reason."""

    name = "function-gemma"
    call_open = "<start_function_call>"
    call_close = "<end_function_call>"
    quote = "<escape>"
    markers = (call_open,)
    think_tags = (THINK_OPEN, THINK_CLOSE)  # which it never writes

    @classmethod
    def detect(cls, template: str) -> bool:
        return cls.call_open in template
