"""Llama 3.1 / 3.2 / 3.3: a call is the whole assistant turn, one JSON object
`{"name": …, "parameters": {…}}` (one call per turn: the template refuses two); tool
results come back as `ipython` turns. The models sometimes open a call with
`<|python_tag|>`, which the parser accepts; the grammar writes the template's form."""

from __future__ import annotations

import json
import re
from typing import ClassVar

from warmloop.serving.families.base import JsonCallFamily
from warmloop.serving.gbnf import literal

PYTHON_TAG = "<|python_tag|>"


class Llama3(JsonCallFamily):
    name = "llama3"
    markers = ('{"name"', PYTHON_TAG)
    calls_open_message_only = True
    parallel = False
    head: ClassVar[re.Pattern[str]] = re.compile(
        r'(?:<\|python_tag\|>)?\s*\{\s*"name"\s*:\s*"(?P<name>[^"]+)"\s*,\s*'
        r'"(?:parameters|arguments)"\s*:'
    )
    tail: ClassVar[re.Pattern[str]] = re.compile(r"\}")

    @classmethod
    def detect(cls, template: str) -> bool:
        return "<|start_header_id|>" in template and '"parameters": ' in template

    def trigger(self) -> str:
        return r"\s*(" + re.escape('{"name"') + r")[\s\S]*"

    def call_rule(self, name: str, args_rule: str) -> str:
        head = f'{{"name": {json.dumps(name)}, "parameters": '
        return f"{literal(head)} {args_rule} {literal('}')}"
