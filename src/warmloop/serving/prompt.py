"""Render a conversation into the model's prompt text with the GGUF's own chat template
(or `--chat-template-file`), in the shape of the model's family (`serving/families`):
native `tools`, assistant `tool_calls` and `tool` messages where the template knows
them, the generic frame in the system message where it does not. Earlier turns render
to the same text whatever is appended, which is what lets a continuation tokenize only
its delta.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jinja2.exceptions import TemplateError

from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.items import CompactionItem, Item, MessageItem
from warmloop.protocol.tools import FunctionTool
from warmloop.serving.chat_template import CHATML_TEMPLATE, ChatTemplate
from warmloop.serving.families import Family, family_for


@dataclass(frozen=True)
class Head:
    """What every prompt of one request starts from: the system text (the instructions,
    and the tools where the family describes them there) and the tools."""

    system: str | None
    tools: tuple[FunctionTool, ...] = ()
    knobs: tuple[tuple[str, Any], ...] = ()  # the template's own (enable_thinking, …)


class PromptRenderer:
    def __init__(
        self,
        template: str | None,
        *,
        family: Family | None = None,
        bos_token: str = "",
        eos_token: str = "",
    ) -> None:
        source = template or CHATML_TEMPLATE
        self.template = ChatTemplate(source, bos_token=bos_token, eos_token=eos_token)
        self.family = family or family_for(source)
        self.system_role = self._has_system_role()

    def _has_system_role(self) -> bool:
        """Whether the template renders a system message (Gemma 2's refuses one: its
        authors put system text at the start of the first user turn instead)."""
        probe = [{"role": "system", "content": "\x01"}, {"role": "user", "content": "u"}]
        try:
            return "\x01" in self.template.render(probe)
        except TemplateError:
            return False

    def head(
        self,
        instructions: str | None,
        tools: Sequence[FunctionTool],
        knobs: tuple[tuple[str, Any], ...] = (),
    ) -> Head:
        return Head(self.family.system(instructions, tools), tuple(tools), knobs)

    def render(
        self, head: Head | None, items: Sequence[Item], *, add_generation_prompt: bool = True
    ) -> str:
        head = head or Head(None)
        messages = self.family.messages(head.system, items)
        if not self.system_role and messages and messages[0]["role"] == "system":
            first, *messages = messages
            if messages:
                messages[0] = {
                    **messages[0],
                    "content": f"{first['content']}\n\n{messages[0]['content']}",
                }
            else:
                messages = [{"role": "user", "content": first["content"]}]
        try:
            return self.template.render(
                messages,
                tools=self.family.template_tools(head.tools),
                add_generation_prompt=add_generation_prompt,
                **dict(head.knobs),
            )
        except TemplateError as exc:
            raise InvalidRequest(
                f"The model's chat template rejected the input: {exc}", param="input"
            ) from exc


def compacted(history: Sequence[Item]) -> tuple[Item, ...]:
    """What the model sees of a history that holds compaction items: the latest one
    stands for everything before it except the messages of the user, system and
    developer, which stay verbatim (the shape `POST /v1/responses/compact` returns).
    So a client may send the full list or drop what precedes the compaction item: the
    prompt is the same. A history without one is returned as it is."""
    marks = [i for i, item in enumerate(history) if isinstance(item, CompactionItem)]
    if not marks:
        return tuple(history)
    last = marks[-1]
    return (*[i for i in history[:last] if compaction_keeps(i)], *history[last:])


def compaction_keeps(item: Item) -> bool:
    """The one rule for what a compaction keeps verbatim beside its summary (the
    endpoint's answer and `context_management` alike): the messages of the user, the
    system and the developer."""
    return isinstance(item, MessageItem) and item.role in ("user", "system", "developer")


def kept_reasoning(
    text: str, chain_text: str, reasonings: Sequence[str], markup: Sequence[str]
) -> str | None:
    """`--reasoning-history keep`: the text that continues `chain_text` (the previous
    prompt and what the model generated) when the template's rendering `text` differs
    from it only by reasoning it dropped: `text` is P + S + R and the chain P + D + S,
    where D is nothing but some of `reasonings` in the family's `markup` (its think tags)
    and whitespace, and R is what is new; the kept prompt is the chain + R. None when
    the difference is anything else (then the template's text is used)."""
    shared = 0
    for a, b in zip(text, chain_text, strict=False):
        if a != b:
            break
        shared += 1
    # The first difference may fall inside a tag both have ("<think>" / "<|im_end|>"):
    # back off a little to where the dropped part starts.
    for start in range(shared, max(shared - 32, 0) - 1, -1):
        rest, tail = text[start:], chain_text[start:]
        m = _overlap(tail, rest)  # S: the longest end of the chain that `rest` starts with
        residue = tail[: len(tail) - m]
        found = False
        for r in reasonings:
            if r.strip() and r.strip() in residue:
                residue, found = residue.replace(r.strip(), "", 1), True
        for tag in markup:
            found = found or tag in residue  # an empty block the template dropped
            residue = residue.replace(tag, "")
        if found and not residue.strip():
            return rest[m:]
    return None


def _overlap(a: str, b: str) -> int:
    """The length of the longest suffix of `a` that is a prefix of `b` (linear: the
    prefix function of b + a separator + a)."""
    s = b + "\x00" + a
    pi = [0] * len(s)
    for i in range(1, len(s)):
        k = pi[i - 1]
        while k and s[i] != s[k]:
            k = pi[k - 1]
        if s[i] == s[k]:
            k += 1
        pi[i] = k
    return min(pi[-1], len(a), len(b)) if s else 0
