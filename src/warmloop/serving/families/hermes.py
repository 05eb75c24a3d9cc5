"""Hermes 2 Pro / 3, Qwen2.5, Qwen3 and the many ChatML models trained on their format:
`<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>`, calls one per line; tool
results come back inside `<tool_response>` (the template writes that)."""

from __future__ import annotations

import json
import re
from typing import ClassVar

from warmloop.serving.families.base import JsonCallFamily
from warmloop.serving.gbnf import literal

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


class Hermes(JsonCallFamily):
    name = "hermes"
    markers = (OPEN,)
    head: ClassVar[re.Pattern[str]] = re.compile(
        r'<tool_call>\s*\{\s*"name"\s*:\s*"(?P<name>[^"]+)"\s*,\s*"arguments"\s*:'
    )
    tail: ClassVar[re.Pattern[str]] = re.compile(r"\}\s*</tool_call>")

    @classmethod
    def detect(cls, template: str) -> bool:
        return OPEN in template and '"arguments"' in template

    def call_rule(self, name: str, args_rule: str) -> str:
        head = f'{OPEN}\n{{"name": {json.dumps(name)}, "arguments": '
        return f"{literal(head)} {args_rule} {literal('}' + chr(10) + CLOSE)}"
