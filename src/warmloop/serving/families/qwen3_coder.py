"""Qwen3-Coder (and Qwen3.5, Nemotron 3 with the same XML calls):

    <tool_call>
    <function=NAME>
    <parameter=P>
    VALUE
    </parameter>
    </function>
    </tool_call>

Values are raw text: a string parameter as it is, anything else as JSON. The arguments
are built as a JSON object, one parameter at a time as each one ends; rendered back, a
string stays text and anything else is written as JSON (the template would write a
Python `True` for a boolean).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from warmloop.protocol.items import FunctionCallItem
from warmloop.protocol.tools import FunctionTool
from warmloop.serving.chat_template import RawArgs
from warmloop.serving.families.base import Family, SchemaGrammar
from warmloop.serving.families.parsing import (
    CallEnd,
    CallReader,
    CallStart,
    NotACall,
    PairwiseReader,
    Segment,
)
from warmloop.serving.gbnf import literal, prefix_rules
from warmloop.serving.lark import input_rules
from warmloop.serving.text_grammar import RAW

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_HEAD = re.compile(r"(?:<tool_call>\s*)?<function=(?P<name>[^>\n]+)>\n?")
_PARAM = re.compile(r"\s*<parameter=(?P<name>[^>\n]+)>\n?")
_VALUE_END = re.compile(r"\n?</parameter>")
_END = re.compile(r"\s*</function>\s*(?:</tool_call>)?")
NL = "\n"
_PARAM_CLOSE = literal("\n</parameter>\n")
# A value is any text without a line that starts with "</" (that would close it).
_TEXT_RULE = 'xml-text ::= ( [^\\n] | "\\n" [^<] | "\\n<" [^/] )*'


def _is_string(schema: Any) -> bool:
    kind = schema.get("type") if isinstance(schema, dict) else None
    return kind == "string" or (isinstance(kind, list) and "string" in kind)


def _text_value(schema: dict[str, Any]) -> str:
    """GBNF for a string parameter's raw text: its enum's values, a bounded run of
    characters on one line for a `maxLength`, else any text (`xml-text`)."""
    if isinstance(schema.get("enum"), list) and all(isinstance(v, str) for v in schema["enum"]):
        return "( " + " | ".join(literal(v) for v in schema["enum"]) + " )"
    most = schema.get("maxLength")
    if isinstance(most, int) and 0 <= most <= 2000:
        least = schema.get("minLength")
        least = least if isinstance(least, int) and 0 <= least <= most else 0
        return f"[^<\\n]{{{least},{most}}}"
    return "xml-text"


class Qwen3CoderReader(PairwiseReader):
    """A call whose arguments are tagged name/value pairs (Qwen3-Coder's; GLM's are a
    subclass): the head names the tool, each pair ends at its value's closing tag, the
    call ends at its closing tag(s)."""

    HEAD_MAX = 256
    head: ClassVar[re.Pattern[str]] = _HEAD
    param: ClassVar[re.Pattern[str]] = _PARAM
    value_end: ClassVar[re.Pattern[str]] = _VALUE_END
    end: ClassVar[re.Pattern[str]] = _END
    named = "<function="  # where the head names the tool
    name_end = ">"  # and what ends that name
    close = CLOSE  # the last closing tag, which the end may still be waiting for

    def __init__(self, tools: Mapping[str, FunctionTool]) -> None:
        self._tools = tools
        self._tool: FunctionTool | None = None
        self._pos = 0
        self._args: dict[str, Any] = {}

    def advance(self, buf: str, final: bool) -> tuple[list[Segment], int | None]:
        out: list[Segment] = []
        if self._tool is None:
            m = self.head.match(buf)
            if m is None:
                named = buf.find(self.named)
                after = buf[named + len(self.named) :] if named >= 0 else ""
                if final or len(buf) > self.HEAD_MAX or self.name_end in after:
                    raise NotACall
                return out, None
            tool = self._tools.get(m.group("name").strip())
            if tool is None:
                raise NotACall
            self._tool, self._pos = tool, m.end()
            out.append(CallStart(tool.qualified))
        while True:
            end = self.end.match(buf, self._pos)
            rest = buf[end.end() :] if end is not None else ""
            done = final or buf.endswith(self.close) or not self.close.startswith(rest)
            if end is not None and done:
                out += self._delta(closed=True)
                out.append(CallEnd(self._text(), True))
                return out, end.end()
            p = self.param.match(buf, self._pos)
            if p is None:
                break
            v = self.value_end.search(buf, p.end())
            if v is None:
                break
            self._args[p.group("name").strip()] = self._value(
                p.group("name"), buf[p.end() : v.start()]
            )
            self._pos = v.end()
            out += self._delta(closed=False)
        if final:
            out += self._delta(closed=True)
            out.append(CallEnd(self._text(), False))
            return out, len(buf)
        return out, None

    def _value(self, name: str, raw: str) -> Any:
        assert self._tool is not None
        schema = (self._tool.parameters.get("properties") or {}).get(name)
        if _is_string(schema):
            return raw
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def _text(self) -> str:
        return json.dumps(self._args, ensure_ascii=False)


class Qwen3Coder(Family):
    name = "qwen3-coder"
    markers: ClassVar[tuple[str, ...]] = (OPEN, "<function=")

    @classmethod
    def detect(cls, template: str) -> bool:
        return "<tool_call>\\n<function=" in template and "<parameter=" in template

    def arguments(self, item: FunctionCallItem) -> Any:
        # the values as text: strings as they are, anything else as JSON
        return {
            k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            for k, v in RawArgs(item.arguments).items()
        }

    def reader(self, tools: Mapping[str, FunctionTool]) -> CallReader:
        return Qwen3CoderReader(tools)

    # the grammar's pieces (GLM's family overrides them)
    text_rule: ClassVar[str] = _TEXT_RULE
    separator: ClassVar[str] = "\n"

    def call_head(self, name: str, *, forced: bool) -> str:
        return literal(f"<function={name}>\n")

    def call_tail(self) -> str:
        return literal("</function>")

    def call_rule(self, *, forced: bool) -> str:
        """`call` from `fn` (one function of the tools). The template wraps it in
        <tool_call>; a model may also write the function bare, and "<function=" is then
        what fires the lazy grammar, which must accept the text from there on (llama.cpp
        aborts the process when the text from a trigger on is not in the grammar)."""
        wrapped = f"{literal(OPEN + NL)} fn {literal(NL + CLOSE)}"
        return f"call ::= {wrapped}" if forced else f"call ::= {wrapped} | fn"

    def pair(self, name: str, value: str) -> str:
        return f"{literal(f'<parameter={name}>' + NL)} {value} {_PARAM_CLOSE}"

    def root(self, more: str, *, forced: bool) -> str:
        return f"root ::= call{more}"

    def grammar(
        self,
        tools: Sequence[FunctionTool],
        *,
        parallel: bool,
        schema: SchemaGrammar,
        forced: bool = False,
    ) -> str:
        rules = [self.text_rule]
        alternatives = []
        for k, tool in enumerate(tools):
            props = tool.parameters.get("properties") or {}
            required = set(tool.parameters.get("required") or ())
            parts = []
            for j, (name, sub) in enumerate(props.items()):
                found = None
                if tool.input_grammar is not None and name == "input":  # a custom tool's text
                    found = input_rules(tool.input_grammar, RAW, f"t{k}in")
                if found is not None:
                    rules += found.rules
                    value = found.start
                elif _is_string(sub):
                    value = _text_value(sub)
                else:
                    where = f"{tool.param}.properties.{name}"
                    sub_schema = sub if isinstance(sub, dict) else {}
                    rules.append(prefix_rules(schema(sub_schema, where), f"t{k}p{j}"))
                    value = f"t{k}p{j}-root"
                one = self.pair(name, value)
                parts.append(one if name in required else f"( {one} )?")
            head = self.call_head(tool.qualified, forced=forced)
            alternatives.append(" ".join([head, *parts, self.call_tail()]))
        more = f" ( {literal(self.separator)} call ){{0,7}}" if parallel else ""
        fn = "fn ::= " + " | ".join(alternatives)
        return "\n".join(
            [self.root(more, forced=forced), self.call_rule(forced=forced), fn, *rules]
        )
