"""DeepSeek's tool calls, between its own special tokens:

- V3.1 / V3.2: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{…}<｜tool▁call▁end｜>…
  <｜tool▁calls▁end｜>`;
- R1 distills: the same block, each call `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`
  then the arguments in a ```json fence, calls one per line.

Their templates write an assistant turn of calls with no text when its content is
null (R1's writes a second, empty turn for an empty string), so a turn of calls only
has no content here. A thinking turn's reasoning is dropped by both templates when they
render it back: that costs reuse (docs/models.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

from warmloop.protocol.items import Item
from warmloop.serving.families.base import JsonCallFamily
from warmloop.serving.gbnf import literal

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"


class DeepSeekV3(JsonCallFamily):
    name = "deepseek-v3"
    markers = (CALLS_BEGIN,)
    continuation = CALL_BEGIN
    block_open = CALLS_BEGIN
    block_close = CALLS_END
    separator = ""
    head: ClassVar[re.Pattern[str]] = re.compile(
        "(?:" + re.escape(CALLS_BEGIN) + r")?\s*" + re.escape(CALL_BEGIN)
        + r"(?P<name>[^<｜\s]+)" + re.escape(SEP)
    )  # fmt: skip
    # the block's end, or the next call's start, before the call counts as ended
    tail: ClassVar[re.Pattern[str]] = re.compile(
        re.escape(CALL_END) + "(?:" + re.escape(CALLS_END) + "|(?=" + re.escape(CALL_BEGIN) + "))"
    )

    @classmethod
    def detect(cls, template: str) -> bool:
        return CALLS_BEGIN in template

    def call_rule(self, name: str, args_rule: str) -> str:
        return f"{literal(CALL_BEGIN + name + SEP)} {args_rule} {literal(CALL_END)}"

    def messages(self, system: str | None, items: Sequence[Item]) -> list[dict[str, Any]]:
        out = super().messages(system, items)
        for m in out:
            if m.get("tool_calls") and not m["content"]:
                m["content"] = None
        return out


class DeepSeekR1(DeepSeekV3):
    name = "deepseek-r1"
    separator = "\n"
    space_after_args_is_theirs = False  # the fence's own newline follows them
    head: ClassVar[re.Pattern[str]] = re.compile(
        "(?:" + re.escape(CALLS_BEGIN) + r")?\s*" + re.escape(CALL_BEGIN)
        + "function" + re.escape(SEP) + r"(?P<name>[^\n]+)\n```json\n"
    )  # fmt: skip
    tail: ClassVar[re.Pattern[str]] = re.compile(
        r"\s*```" + re.escape(CALL_END)
        + "(?:" + re.escape(CALLS_END) + r"|(?=\s*" + re.escape(CALL_BEGIN) + "))"
    )  # fmt: skip

    @classmethod
    def detect(cls, template: str) -> bool:
        return CALLS_BEGIN in template and "```json" in template

    def call_rule(self, name: str, args_rule: str) -> str:
        head = literal(f"{CALL_BEGIN}function{SEP}{name}\n```json\n")
        return f"{head} {args_rule} {literal(chr(10) + '```' + CALL_END)}"
