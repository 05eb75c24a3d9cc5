"""IBM Granite 3.x: `<|tool_call|>[{"name": …, "arguments": {…}}, …]`. Its template
renders an assistant turn's content only (no `tool_calls`), so a turn's calls are
written into its content, as the model wrote them; tool results are `tool` turns."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from warmloop.protocol.items import Item
from warmloop.serving.families.base import JsonCallFamily
from warmloop.serving.gbnf import literal

TOOL_CALL = "<|tool_call|>"


class Granite(JsonCallFamily):
    name = "granite"
    markers = (TOOL_CALL,)
    continuation = ","
    block_open = TOOL_CALL + "["
    block_close = "]"
    separator = ", "
    head: ClassVar[re.Pattern[str]] = re.compile(
        r'(?:<\|tool_call\|>\s*\[|\s*,)\s*\{\s*"name"\s*:\s*"(?P<name>[^"]+)"\s*,\s*"arguments"\s*:'
    )
    # the list's closing bracket, or the next call's comma, ends a call
    tail: ClassVar[re.Pattern[str]] = re.compile(r"\}\s*(?:\]|(?=,))")

    @classmethod
    def detect(cls, template: str) -> bool:
        return TOOL_CALL in template

    def call_rule(self, name: str, args_rule: str) -> str:
        head = literal(f'{{"name": {json.dumps(name)}, "arguments": ')
        return f'{head} {args_rule} "}}"'

    def messages(self, system: str | None, items: Sequence[Item]) -> list[dict[str, Any]]:
        out = super().messages(system, items)
        for m in out:
            calls = m.pop("tool_calls", None)
            if calls:
                block = ", ".join(
                    f'{{"name": {json.dumps(c["function"]["name"])}, "arguments": '
                    f"{c['function']['arguments'].raw}}}"
                    for c in calls
                )
                m["content"] = f"{m['content']}{TOOL_CALL}[{block}]"
        return out
