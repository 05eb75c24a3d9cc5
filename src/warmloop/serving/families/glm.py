"""GLM 4.5 / 4.6 / 4.7: tagged name/value pairs after the tool's name,

    <tool_call>NAME
    <arg_key>K</arg_key>
    <arg_value>V</arg_value>
    </tool_call>

with the reasoning first (`<think>…</think>`: the template writes `<think></think>` for
a turn that did not reason, so a forced call writes that too). Values are raw text for
strings and JSON otherwise, as in Qwen3-Coder's family, whose reader and grammar this
one reuses with GLM's tags.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

from warmloop.protocol.tools import FunctionTool
from warmloop.serving.families.parsing import CallReader
from warmloop.serving.families.qwen3_coder import Qwen3Coder, Qwen3CoderReader
from warmloop.serving.gbnf import literal

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class GlmReader(Qwen3CoderReader):
    head: ClassVar[re.Pattern[str]] = re.compile(r"<tool_call>\s*(?P<name>[^\n<]+?)\s*\n")
    param: ClassVar[re.Pattern[str]] = re.compile(
        r"\s*<arg_key>(?P<name>[^<]+)</arg_key>\s*<arg_value>"
    )
    value_end: ClassVar[re.Pattern[str]] = re.compile(r"</arg_value>")
    end: ClassVar[re.Pattern[str]] = re.compile(r"\s*</tool_call>")
    named = "<tool_call>"
    name_end = "\n"
    close = CLOSE


class Glm(Qwen3Coder):
    name = "glm"
    markers = (OPEN,)
    # A value is any text without "</" in it (that would close it).
    text_rule = 'xml-text ::= ( [^<] | "<" [^/] )*'

    @classmethod
    def detect(cls, template: str) -> bool:
        return "<arg_key>" in template and "<arg_value>" in template

    def reader(self, tools: Mapping[str, FunctionTool]) -> CallReader:
        return GlmReader(tools)

    def call_head(self, name: str, *, forced: bool) -> str:
        return literal(f"{OPEN}{name}\n")

    def call_tail(self) -> str:
        return literal(CLOSE)

    def call_rule(self, *, forced: bool) -> str:
        return "call ::= fn"  # the head and tail are the whole call: one marker

    def pair(self, name: str, value: str) -> str:
        key = literal(f"<arg_key>{name}</arg_key>\n<arg_value>")
        return f'{key} {value} "</arg_value>\\n"'

    def root(self, more: str, *, forced: bool) -> str:
        # forced: from the first token, as the template writes a turn without reasoning
        return f'root ::= "\\n<think></think>\\n" call{more}' if forced else f"root ::= call{more}"
