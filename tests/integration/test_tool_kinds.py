"""Codex-shaped requests over WebSocket mode with every tool kind Codex sends: function,
custom (Lark and regex formats, both enforced), local_shell, shell, apply_patch and a hosted tool. Each
turn forces one kind with tool_choice; the SDK parses each call in its own item shape,
the outputs go back in theirs, and every continuation is a delta."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import LiveServer, start_server

# a small patch language in Lark: rules, a terminal import, alternatives, repetition
EDIT_GRAMMAR = """start: "*** Begin Patch" LF hunk~1..2 "*** End Patch"
hunk: ("*** Add File: " | "*** Delete File: ") PATH LF
PATH: /[a-z]{1,8}/ ".txt"
%import common.LF
"""
EDIT = re.compile(
    r"\*\*\* Begin Patch\n(\*\*\* (Add|Delete) File: [a-z]{1,8}\.txt\n){1,2}\*\*\* End Patch"
)
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "name": "read_file", "parameters": {"type": "object"}},
    {
        "type": "custom",
        "name": "apply_edit",
        "description": "Edit files with a patch.",
        "format": {"type": "grammar", "syntax": "lark", "definition": EDIT_GRAMMAR},
    },
    {
        "type": "custom",
        "name": "ticket",
        "description": "File a ticket by its id.",
        "format": {"type": "grammar", "syntax": "regex", "definition": "[A-Z]{3}-[0-9]{2}"},
    },
    {"type": "local_shell"},
    {"type": "shell"},
    {"type": "apply_patch"},
    {"type": "web_search"},
]
DONE = ("response.completed", "response.incomplete", "response.failed")


@pytest.fixture(scope="module")
def codexish() -> Iterator[LiveServer]:
    s = start_server("--ctx", "4096", name="tool-kinds")
    yield s
    s.stop()


def test_each_codex_tool_kind_round_trips_over_websocket(codexish: LiveServer) -> None:
    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=codexish.base_url, api_key="unused")
        async with client.responses.connect() as conn:

            async def turn(choice: Any, items: Any, prev: Any = None) -> Any:
                await conn.send(
                    {
                        "type": "response.create",
                        "model": "default",
                        "instructions": "You are a coding agent.",
                        "tools": TOOLS,
                        "tool_choice": choice,
                        "parallel_tool_calls": False,
                        "store": False,
                        "include": ["reasoning.encrypted_content"],
                        "temperature": 0,
                        "max_output_tokens": 160,  # apply_edit's grammar allows ~100
                        "input": items,
                        **({"previous_response_id": prev.id} if prev else {}),
                    }
                )
                async for event in conn:
                    if event.type in DONE:
                        response = event.response
                        break
                assert response.status == "completed", response
                if prev is not None:  # a delta: all of the previous turn is reused
                    expected = prev.usage.input_tokens + prev.usage.output_tokens
                    assert response.usage.input_tokens_details.cached_tokens >= expected
                    assert response.model_extra["warmloop"]["delta_only"] is True
                return response

            r = await turn({"type": "shell"}, "List the files with `ls`, then file ticket ABC-12.")
            assert r.model_extra["warmloop"]["tools_not_offered"] == ["web_search"]
            (call,) = r.output
            assert call.type == "shell_call" and all(
                isinstance(c, str) for c in call.action.commands
            )
            shell_out = {
                "type": "shell_call_output",
                "call_id": call.call_id,
                "output": [
                    {"stdout": "a.txt\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}
                ],
            }
            r = await turn({"type": "custom", "name": "ticket"}, [shell_out], r)
            (call,) = r.output
            assert call.type == "custom_tool_call" and call.name == "ticket"
            assert re.fullmatch(r"[A-Z]{3}-[0-9]{2}", call.input)  # the regex format holds
            custom_out = {
                "type": "custom_tool_call_output",
                "call_id": call.call_id,
                "output": "filed",
            }
            r = await turn({"type": "apply_patch"}, [custom_out], r)
            (call,) = r.output
            assert call.type == "apply_patch_call"
            assert call.operation.type in ("create_file", "update_file", "delete_file")
            patch_out = {
                "type": "apply_patch_call_output",
                "call_id": call.call_id,
                "status": "completed",
            }
            r = await turn({"type": "custom", "name": "apply_edit"}, [patch_out], r)
            (call,) = r.output
            assert call.type == "custom_tool_call" and EDIT.fullmatch(call.input), call.input
            edit_out = {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "ok"}
            r = await turn({"type": "local_shell"}, [edit_out], r)
            (call,) = r.output
            assert call.type == "local_shell_call" and call.id == call.call_id
            shell_local_out = {"type": "local_shell_call_output", "id": call.id, "output": "ok"}
            r = await turn("none", [shell_local_out], r)
            assert [o.type for o in r.output] == ["message"]

    asyncio.run(run())
