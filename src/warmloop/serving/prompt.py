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
from warmloop.protocol.requests import FunctionTool
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
    kept = [
        item
        for item in history[:last]
        if isinstance(item, MessageItem) and item.role in ("user", "system", "developer")
    ]
    return (*kept, *history[last:])
