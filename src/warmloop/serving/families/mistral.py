"""Mistral's `[TOOL_CALLS]` families. Two syntaxes, told apart by the template:

- Mistral Small 3.2 / Devstral / Magistral (v7+ tokenizers): one
  `[TOOL_CALLS]name[ARGS]{…}` per call, with `[CALL_ID]id` between when the template
  renders ids (Small 3.2); tool results are `[TOOL_RESULTS]…[/TOOL_RESULTS]`.
- Mistral Nemo (v3 tokenizer): `[TOOL_CALLS][{"name": …, "arguments": {…}, "id": …}, …]`.

Both templates demand call ids of exactly 9 letters and digits; the model writes them,
so they are the calls' `call_id`s, and any other id a client sends is mapped to 9
characters the same way for the call and its output.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Sequence
from typing import Any, ClassVar

from warmloop.protocol.items import Item
from warmloop.serving.families.base import JsonCallFamily
from warmloop.serving.gbnf import literal

TOOL_CALLS = "[TOOL_CALLS]"
_ID = re.compile(r"[A-Za-z0-9]{9}")
_ALPHABET = string.ascii_letters + string.digits
ID_RULE = "[a-zA-Z0-9]{9}"
_NEMO_ID_OPEN = literal(', "id": "')
_NEMO_ID_CLOSE = literal('"}')


def id9(call_id: str) -> str:
    """A 9-character id for a template that demands one (stable for one call id)."""
    if _ID.fullmatch(call_id):
        return call_id
    n = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    out = []
    for _ in range(9):
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    return "".join(out)


class MistralArgs(JsonCallFamily):
    """`[TOOL_CALLS]name[ARGS]{…}` (Devstral), `[TOOL_CALLS]name[CALL_ID]id[ARGS]{…}`
    (Small 3.2: `with_ids`). Magistral and Ministral 3 reason in `[THINK]…[/THINK]`,
    which their templates read back from a `thinking` content block."""

    name = "mistral"
    markers = (TOOL_CALLS,)
    think_tags = ("[THINK]", "[/THINK]")
    think_newlines = ""
    separator = ""
    with_ids: ClassVar[bool] = False
    head: ClassVar[re.Pattern[str]] = re.compile(
        r"\[TOOL_CALLS\]\s*(?P<name>[^\[\s]+)\s*(?:\[CALL_ID\](?P<id>[A-Za-z0-9]+))?\s*\[ARGS\]"
    )
    tail: ClassVar[re.Pattern[str]] = re.compile(r"")

    @classmethod
    def detect(cls, template: str) -> bool:
        return TOOL_CALLS in template and "[ARGS]" in template

    def call_id(self, call_id: str) -> str:
        return id9(call_id)

    def messages(self, system: str | None, items: Sequence[Item]) -> list[dict[str, Any]]:
        out = super().messages(system, items)
        for m in out:
            reasoning = m.pop("reasoning_content", None)
            m.pop("thinking", None)
            if reasoning is not None:  # content blocks: the thinking, then the text
                blocks: list[dict[str, Any]] = [{"type": "thinking", "thinking": reasoning}]
                if m["content"]:
                    blocks.append({"type": "text", "text": m["content"]})
                m["content"] = blocks
        return out

    def call_rule(self, name: str, args_rule: str) -> str:
        head = literal(TOOL_CALLS + name)
        if self.with_ids:
            head += f' "[CALL_ID]" {ID_RULE}'
        return f'{head} "[ARGS]" {args_rule}'


class MistralArgsWithIds(MistralArgs):
    name = "mistral-ids"
    with_ids = True

    @classmethod
    def detect(cls, template: str) -> bool:
        return super().detect(template) and "[CALL_ID]" in template


class MistralNemo(JsonCallFamily):
    name = "mistral-nemo"
    markers = (TOOL_CALLS,)
    continuation = ","
    id_after_args = True
    block_open = TOOL_CALLS + "["
    block_close = "]"
    separator = ", "
    head: ClassVar[re.Pattern[str]] = re.compile(
        r'(?:\[TOOL_CALLS\]\s*\[|\s*,)\s*\{\s*"name"\s*:\s*"(?P<name>[^"]+)"\s*,\s*"arguments"\s*:'
    )
    # The block's closing bracket, or the comma of the next call, must be seen before
    # the call counts as ended (a lone "]" is not text).
    tail: ClassVar[re.Pattern[str]] = re.compile(
        r',\s*"id"\s*:\s*"(?P<id>[A-Za-z0-9]*)"\s*\}\s*(?:\]|(?=,))'
    )

    @classmethod
    def detect(cls, template: str) -> bool:
        return TOOL_CALLS in template

    def call_id(self, call_id: str) -> str:
        return id9(call_id)

    def call_rule(self, name: str, args_rule: str) -> str:
        head = literal(f'{{"name": {json.dumps(name)}, "arguments": ')
        return f"{head} {args_rule} {_NEMO_ID_OPEN} {ID_RULE} {_NEMO_ID_CLOSE}"
