"""Tool loops under each family's real template (the embedded SmolLM2 weights served with
`--chat-template-file`, `tool_choice: "required"`, so the family's syntax is written as
text): the official SDK over HTTP and `responses.connect()` gets `function_call` items
with arguments streamed as deltas, and the turn that sends their outputs back is a delta:
every token of the first turn's prompt and output is reused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import LiveServer, start_server

TEMPLATES = Path(__file__).parent.parent / "data" / "templates"
FAMILIES = {
    "hermes": "Qwen-Qwen2.5-7B-Instruct",
    "qwen3-coder": "Qwen3-Coder",
    "llama3": "meta-llama-Llama-3.1-8B-Instruct",
    "mistral-ids": "Mistral-Small-3.2-24B-Instruct-2506",
    "mistral": "unsloth-mistral-Devstral-Small-2507",
    "mistral-nemo": "mistralai-Mistral-Nemo-Instruct-2407",
    "harmony": "openai-gpt-oss-120b",
    "deepseek-v3": "deepseek-ai-DeepSeek-V3.1",
    "granite": "ibm-granite-granite-3.3-2B-Instruct",
    "glm": "GLM-4.6",
    "gemma": "google-gemma-4-31B-it",
    "generic": "",  # the GGUF's own template (SmolLM2: no tools)
}
# Gemma 4's template drops the empty thought channel its generation prompt opens:
# keeping the chain as generated is what keeps its tool loop a delta (docs/models.md).
EXTRA = {"gemma": ["--reasoning-history", "keep"]}
TOOLS = [
    {
        "type": "function",
        "name": "read_file",
        "description": "Read a file.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string", "maxLength": 24}},
            "required": ["path"],
        },
    }
]
TASK = "Read the file notes.txt."
DONE = ("response.completed", "response.incomplete", "response.failed")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, LiveServer]]:
    family = request.param
    template = FAMILIES[family]
    args = ["--chat-template-file", str(TEMPLATES / f"{template}.jinja")] if template else []
    args += EXTRA.get(family, [])
    s = start_server(*args, "--ctx", "4096", name=f"family-{family}")
    yield family, s
    s.stop()


def _instructions(family: str) -> str | None:
    # Nemo writes the system prompt into the last user message only while it is the
    # last message: a tool loop there has no instructions to keep (docs/models.md).
    return None if family == "mistral-nemo" else "You are a careful agent. Use the tools."


def _create(**kw: Any) -> dict[str, Any]:
    return {
        "model": "default",
        "tools": TOOLS,
        "temperature": 0,
        # DeepSeek's markers are ~40 of the embedded model's tokens
        "max_output_tokens": 200,
        "parallel_tool_calls": False,  # parallel calls: tests/unit/test_families.py
        **kw,
    }


def test_http_tool_loop_is_delta_only(family_server: tuple[str, LiveServer]) -> None:
    family, server = family_server
    client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    first = client.responses.create(
        **_create(input=TASK, instructions=_instructions(family), tool_choice="required")
    )
    assert first.status == "completed", first.output
    calls = [o for o in first.output if o.type == "function_call"]
    assert calls and all(c.name == "read_file" for c in calls), first.output
    for c in calls:
        assert isinstance(json.loads(c.arguments)["path"], str)
    assert first.usage is not None
    outputs = [
        {"type": "function_call_output", "call_id": c.call_id, "output": "buy milk"} for c in calls
    ]
    second = client.responses.create(
        **_create(previous_response_id=first.id, input=outputs, instructions=_instructions(family))
    )
    assert second.usage is not None and second.model_extra is not None
    reused = second.usage.input_tokens_details.cached_tokens
    assert second.model_extra["warmloop"]["delta_only"] is True
    assert reused == first.usage.input_tokens + first.usage.output_tokens


def test_websocket_tool_loop_streams_arguments_and_is_delta_only(
    family_server: tuple[str, LiveServer],
) -> None:
    family, server = family_server

    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused")
        async with client.responses.connect() as conn:
            await conn.send(
                {
                    "type": "response.create",
                    **_create(
                        input=TASK,
                        instructions=_instructions(family),
                        tool_choice="required",
                        store=False,
                    ),
                }
            )
            deltas: dict[str, str] = {}
            async for event in conn:
                if event.type == "response.function_call_arguments.delta":
                    deltas[event.item_id] = deltas.get(event.item_id, "") + event.delta
                if event.type in DONE:
                    first = event.response
                    break
            assert first.status == "completed", first.output
            calls = [o for o in first.output if o.type == "function_call"]
            assert calls and {c.id: c.arguments for c in calls} == deltas
            assert first.usage is not None
            await conn.send(
                {
                    "type": "response.create",
                    **_create(
                        previous_response_id=first.id,
                        instructions=_instructions(family),
                        store=False,
                        input=[
                            {"type": "function_call_output", "call_id": c.call_id, "output": "ok"}
                            for c in calls
                        ],
                    ),
                }
            )
            async for event in conn:
                if event.type in DONE:
                    second = event.response
                    break
            assert second.usage is not None
            expected = first.usage.input_tokens + first.usage.output_tokens
            # more when the HTTP test's chain of the same text is found too
            assert second.usage.input_tokens_details.cached_tokens >= expected
            assert second.model_extra is not None
            assert second.model_extra["warmloop"]["delta_only"] is True

    asyncio.run(run())
