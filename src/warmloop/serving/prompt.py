"""Render a conversation into the model's prompt text with the GGUF's own chat template.

Tool calls are rendered as plain text inside assistant turns (`<tool_call>` blocks) and
tool results as `tool` turns, so any template that renders role + content works, and
the rendering of earlier turns never changes when new turns are appended (that is what
lets a continuation tokenize only its delta).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.items import (
    CompactionItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    Item,
    MessageItem,
)
from warmloop.protocol.requests import FunctionTool

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TOOL_CALL_OPEN = "<tool_call>"
SUMMARY_HEADER = "Summary of the conversation so far:\n"
TOOL_CALL_CLOSE = "</tool_call>"


def tool_call_text(name: str, arguments: str) -> str:
    """The exact text of one tool call, as the grammar makes the model write it."""
    call = f'{{"name": {json.dumps(name)}, "arguments": {arguments}}}'
    return f"{TOOL_CALL_OPEN}\n{call}\n{TOOL_CALL_CLOSE}"


def tools_system_text(tools: Sequence[FunctionTool]) -> str:
    specs = "\n".join(
        json.dumps(
            {"name": t.qualified, "description": t.description, "parameters": t.parameters},
            ensure_ascii=False,
        )
        for t in tools
    )
    return (
        "# Tools\n\n"
        "You can call these functions. Each line is one function's JSON signature:\n"
        f"<tools>\n{specs}\n</tools>\n\n"
        "To call a function, answer with one block per call, exactly like this:\n"
        f'{TOOL_CALL_OPEN}\n{{"name": "<function name>", "arguments": <JSON object>}}\n'
        f"{TOOL_CALL_CLOSE}\n"
        "The results come back in a message from the tool."
    )


def _raise(message: str) -> None:
    raise TemplateError(message)


class PromptRenderer:
    def __init__(self, template: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(template or CHATML_TEMPLATE)
        self._bos = bos_token
        self._eos = eos_token

    def messages(self, system: str | None, items: Sequence[Item]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if system:
            out.append({"role": "system", "content": system})
        calls: list[str] = []

        def flush_calls() -> None:
            if calls:
                out.append({"role": "assistant", "content": "\n".join(calls)})
                calls.clear()

        for item in items:
            if isinstance(item, FunctionCallItem):
                calls.append(tool_call_text(item.qualified, item.arguments))
                continue
            flush_calls()
            if isinstance(item, MessageItem):
                role = "system" if item.role == "developer" else item.role
                out.append({"role": role, "content": item.text})
            elif isinstance(item, FunctionCallOutputItem):
                out.append({"role": "tool", "content": item.output})
            elif isinstance(item, CompactionItem):
                out.append({"role": "system", "content": SUMMARY_HEADER + item.summary})
        flush_calls()
        return out

    def render(
        self, system: str | None, items: Sequence[Item], *, add_generation_prompt: bool = True
    ) -> str:
        try:
            return self._template.render(
                messages=self.messages(system, items),
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
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


def system_text(instructions: str | None, tools: Sequence[FunctionTool]) -> str | None:
    parts = [p for p in (instructions, tools_system_text(tools) if tools else None) if p]
    return "\n\n".join(parts) if parts else None
