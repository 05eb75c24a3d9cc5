"""For templates that know no tools (SmolLM2, Gemma 3, plain ChatML): the tools and the
call format are described in the system message, calls are written in Hermes'
`<tool_call>` frame, and rendered back into the assistant's turn as the very text the
grammar made the model write; tool results are `tool` turns."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from warmloop.protocol.items import Item
from warmloop.protocol.tools import FunctionTool
from warmloop.serving.families.base import Family
from warmloop.serving.families.hermes import CLOSE, OPEN, Hermes
from warmloop.serving.families.parsing import THINK_CLOSE, THINK_OPEN


def tool_call_text(name: str, arguments: str) -> str:
    """The exact text of one tool call, as the grammar makes the model write it."""
    return f'{OPEN}\n{{"name": {json.dumps(name)}, "arguments": {arguments}}}\n{CLOSE}'


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
        f'{OPEN}\n{{"name": "<function name>", "arguments": <JSON object>}}\n'
        f"{CLOSE}\n"
        "The results come back in a message from the tool."
    )


class Generic(Hermes):
    name = "generic"

    @classmethod
    def detect(cls, template: str) -> bool:
        return True  # the fallback: the registry asks it last

    def system(self, instructions: str | None, tools: Sequence[FunctionTool]) -> str | None:
        parts = [p for p in (instructions, tools_system_text(tools) if tools else None) if p]
        return "\n\n".join(parts) if parts else None

    def template_tools(self, tools: Sequence[FunctionTool]) -> list[dict[str, Any]] | None:
        return None

    def messages(self, system: str | None, items: Sequence[Item]) -> list[dict[str, Any]]:
        out = Family.messages(self, system, items)
        for m in out:
            reasoning = m.pop("reasoning_content", None)
            m.pop("thinking", None)
            calls = m.pop("tool_calls", None)
            if calls:
                text = "\n".join(
                    tool_call_text(c["function"]["name"], c["function"]["arguments"].raw)
                    for c in calls
                )
                m["content"] = f"{m['content']}\n{text}" if m["content"] else text
            if reasoning is not None:  # as generated: the template knows no reasoning
                m["content"] = f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{m['content']}"
            if m["role"] == "tool":
                del m["tool_call_id"], m["name"]
        return out
