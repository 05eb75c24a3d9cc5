"""Reasoning items, as Codex uses them with a reasoning model: the embedded weights served
with QwQ's template (its generation prompt opens `<think>` when thinking is on), so what
the model writes is reasoning. Codex-shaped requests over WebSocket (`store: false`,
`include: ["reasoning.encrypted_content"]`, the reasoning sent back sealed on the next
turn) and the content form over HTTP; a forged or another tenant's blob is a 400."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import websockets

from tests.conftest import KEY_A, KEY_B, LiveServer, start_server

TEMPLATE = Path(__file__).parent.parent / "data" / "templates" / "Qwen-QwQ-32B.jinja"
DONE = ("response.completed", "response.incomplete", "response.failed")


@pytest.fixture(scope="module")
def qwq() -> Iterator[LiveServer]:
    s = start_server(
        "--chat-template-file",
        str(TEMPLATE),
        "--api-key",
        KEY_A,
        "--api-key",
        KEY_B,
        "--reasoning-key",
        "test-fleet-secret",
        name="qwq",
    )
    yield s
    s.stop()


def codex_turn(**kw: Any) -> dict[str, Any]:
    return {
        "type": "response.create",
        "model": "default",
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"effort": "high", "summary": "auto"},
        "temperature": 0,
        "max_output_tokens": 12,
        **kw,
    }


async def ws_turn(ws: Any, frame: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    await ws.send(json.dumps(frame))
    events = []
    while True:
        event = json.loads(await ws.recv())
        events.append(event)
        if event["type"] in DONE or event["type"] == "error":
            return events, event


def test_codex_reasoning_round_trip_over_websocket(qwq: LiveServer) -> None:
    async def run() -> None:
        headers = {"Authorization": f"Bearer {KEY_A}"}
        async with websockets.connect(qwq.ws_url, additional_headers=headers) as ws:
            user = {"type": "message", "role": "user", "content": "Why is the sky blue?"}
            events, end = await ws_turn(ws, codex_turn(input=[user]))
            first = end["response"]
            reasoning = [o for o in first["output"] if o["type"] == "reasoning"]
            assert len(reasoning) == 1, first["output"]
            item = reasoning[0]
            text = item["content"][0]["text"]
            assert text and item["encrypted_content"].startswith("wlr1.")
            deltas = [e["delta"] for e in events if e["type"] == "response.reasoning_text.delta"]
            assert "".join(deltas) == text
            assert first["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
            assert first["reasoning"]["effort"] == "high"
            # Codex sends it back without id or content: summary + encrypted_content
            back = {
                "type": "reasoning",
                "summary": [],
                "encrypted_content": item["encrypted_content"],
            }
            more = {"type": "message", "role": "user", "content": "Say it shorter."}
            _, end = await ws_turn(ws, codex_turn(input=[user, back, more]))
            assert end["type"] in DONE and end["response"]["status"] != "failed", end
            # a forged blob: a nested error, and the socket goes on
            forged = {**back, "encrypted_content": item["encrypted_content"][:-3] + "AAA"}
            _, end = await ws_turn(ws, codex_turn(input=[user, forged, more]))
            assert end["type"] == "error" and end["status"] == 400
            assert end["error"]["code"] == "invalid_encrypted_content"
            assert end["error"]["param"] == "input[1].encrypted_content"
            _, end = await ws_turn(ws, codex_turn(input=[user]))
            assert end["type"] in DONE

    asyncio.run(run())


def test_reasoning_sent_back_as_content_over_http_and_sealed_for_one_tenant(
    qwq: LiveServer,
) -> None:
    a = openai.OpenAI(base_url=qwq.base_url, api_key=KEY_A)
    first = a.responses.create(
        model="default",
        input="Name a colour.",
        reasoning={"effort": "high"},
        include=["reasoning.encrypted_content"],
        temperature=0,
        max_output_tokens=10,
    )
    item = next(o for o in first.output if o.type == "reasoning")
    assert item.content and item.encrypted_content
    text = item.content[0].text
    as_content = {
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }
    second = a.responses.create(
        model="default",
        input=[{"role": "user", "content": "Name a colour."}, as_content],  # type: ignore[list-item]
        reasoning={"effort": "high"},
        temperature=0,
        max_output_tokens=4,
    )
    assert second.status in ("completed", "incomplete")
    # another API key cannot use this tenant's sealed reasoning
    sealed = {"type": "reasoning", "summary": [], "encrypted_content": item.encrypted_content}
    r = httpx.post(
        f"{qwq.base_url}/responses",
        headers={"Authorization": f"Bearer {KEY_B}"},
        json={"model": "default", "input": [sealed], "max_output_tokens": 4},
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_encrypted_content"
    # a malformed reasoning item is a 400 naming the field
    bad = {"type": "reasoning", "summary": "not a list"}
    r = httpx.post(
        f"{qwq.base_url}/responses",
        headers={"Authorization": f"Bearer {KEY_A}"},
        json={"model": "default", "input": [bad]},
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0].summary"
    bad_effort = {"model": "default", "input": "x", "reasoning": {"effort": "maximal"}}
    r = httpx.post(
        f"{qwq.base_url}/responses",
        headers={"Authorization": f"Bearer {KEY_A}"},
        json=bad_effort,
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "reasoning.effort"


def test_reasoning_history_keep_makes_the_next_turn_a_delta() -> None:
    """QwQ drops every earlier turn's reasoning: by default the next turn recomputes from
    there; with --reasoning-history keep it continues the chain as generated."""
    results = {}
    for mode in ("template", "keep"):
        s = start_server(
            "--chat-template-file", str(TEMPLATE), "--reasoning-history", mode, name=f"qwq-{mode}"
        )
        try:
            client = openai.OpenAI(base_url=s.base_url, api_key="unused")
            common: dict[str, Any] = {
                "model": "default",
                "reasoning": {"effort": "high"},
                "temperature": 0,
                "max_output_tokens": 10,
            }
            first = client.responses.create(input="Name a colour.", **common)
            assert [o.type for o in first.output] == ["reasoning"]
            second = client.responses.create(
                previous_response_id=first.id, input="Another one.", **common
            )
            assert first.usage is not None and second.usage is not None
            assert second.model_extra is not None
            results[mode] = (
                second.model_extra["warmloop"]["delta_only"],
                second.usage.input_tokens_details.cached_tokens,
                first.usage.input_tokens + first.usage.output_tokens,
            )
        finally:
            s.stop()
    delta, cached, chain = results["keep"]
    assert delta is True and cached >= chain - 1  # the cut-off last token was never computed
    delta, cached, chain = results["template"]
    assert delta is False and cached < chain - 1
