"""Conformance checklist items 9-14 over WebSocket mode, with the official SDK's WebSocket
client (`client.responses.connect()`) and raw `websockets`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.conftest import KEY_A, KEY_B, LiveServer, start_server

TERMINAL = ("response.completed", "response.incomplete", "response.failed")
HEADERS = {"Authorization": f"Bearer {KEY_A}"}


async def until_terminal(conn: Any) -> Any:
    async for event in conn:
        if event.type in TERMINAL:
            return event
        assert event.type != "error", event
    raise AssertionError("socket closed before a terminal event")


async def raw_connect(server: LiveServer, key: str = KEY_A) -> ClientConnection:
    return await websockets.connect(
        server.ws_url, additional_headers={"Authorization": f"Bearer {key}"}, max_size=None
    )


def create_frame(**fields: Any) -> str:
    """A `response.create` frame: the create body's fields beside `type`."""
    return json.dumps({"type": "response.create", **fields})


async def raw_events(ws: ClientConnection) -> list[dict[str, Any]]:
    """Events of one response (or one error), up to and including its last event."""
    out: list[dict[str, Any]] = []
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
        out.append(event)
        if event["type"] in TERMINAL or event["type"] == "error":
            return out


async def test_9_sdk_create_and_continuation(server: LiveServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY_A, max_retries=0)
    async with client.responses.connect() as conn:
        await conn.send(
            {
                "type": "response.create",
                "model": "default",
                "instructions": "You are terse.",
                "input": "Name a planet.",
                "temperature": 0,
                "max_output_tokens": 16,
                "store": False,
            }
        )
        first = (await until_terminal(conn)).response
        prev_total = first.usage.input_tokens + first.usage.output_tokens
        for turn in ("Another one.", "And one more."):
            await conn.send(
                {
                    "type": "response.create",
                    "model": "default",
                    "instructions": "You are terse.",
                    "previous_response_id": first.id,
                    "input": [{"role": "user", "content": turn}],
                    "temperature": 0,
                    "max_output_tokens": 16,
                    "store": False,
                }
            )
            nxt = (await until_terminal(conn)).response
            assert nxt.usage.input_tokens_details.cached_tokens >= prev_total - 1
            assert nxt.warmloop["delta_only"] is True  # type: ignore[attr-defined]
            first, prev_total = nxt, nxt.usage.input_tokens + nxt.usage.output_tokens


async def test_9_event_order_matches_sse(server: LiveServer) -> None:
    ws = await raw_connect(server)
    async with ws:
        await ws.send(
            create_frame(
                model="default", input="Hi", temperature=0, max_output_tokens=6, stream=True
            )
        )
        events = await raw_events(ws)
    types = [e["type"] for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-1] in TERMINAL
    seqs = [e["sequence_number"] for e in events]
    assert seqs == list(range(len(events)))


async def test_10_generate_false_warmup(server: LiveServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY_A, max_retries=0)
    instructions = "You are a careful assistant. " * 20
    async with client.responses.connect() as conn:
        await conn.send(
            {
                "type": "response.create",
                "model": "default",
                "instructions": instructions,
                "input": [],
                "generate": False,
                "store": False,
            }
        )
        warm = (await until_terminal(conn)).response
        assert warm.status == "completed" and warm.output == []
        assert warm.usage.output_tokens == 0 and warm.usage.input_tokens > 100
        await conn.send(
            {
                "type": "response.create",
                "model": "default",
                "instructions": instructions,
                "previous_response_id": warm.id,
                "input": "Hello!",
                "temperature": 0,
                "max_output_tokens": 8,
                "store": False,
            }
        )
        real = (await until_terminal(conn)).response
        assert real.usage.input_tokens_details.cached_tokens >= warm.usage.input_tokens


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("this is not json", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        (json.dumps({"type": "response.frobnicate"}), "unknown_event_type"),
        (json.dumps({"type": "response.create", "input": "x", "temperature": 9}), None),
        (json.dumps({"type": "response.create", "input": "x", "background": True}), None),
        (
            json.dumps({"type": "response.create", "input": "x", "x": "y" * 120_000}),
            "message_too_large",
        ),
    ],
)
async def test_11_errors_are_nested_and_socket_survives(
    server: LiveServer, frame: str, code: str | None
) -> None:
    ws = await raw_connect(server)
    async with ws:
        await ws.send(frame)
        err = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
        assert err["type"] == "error"
        assert isinstance(err["status"], int) and err["status"] >= 400
        assert set(err["error"]) >= {"type", "code", "message", "param"}
        if code is not None:
            assert err["error"]["code"] == code
        # the socket still serves
        await ws.send(create_frame(model="default", input="Hi", temperature=0, max_output_tokens=2))
        events = await raw_events(ws)
        assert events[-1]["type"] in TERMINAL


async def test_11_response_processed_is_ignored(server: LiveServer) -> None:
    ws = await raw_connect(server)
    async with ws:
        await ws.send(json.dumps({"type": "response.processed", "response_id": "resp_x"}))
        await ws.send(create_frame(model="default", input="Hi", temperature=0, max_output_tokens=2))
        events = await raw_events(ws)
        assert events[0]["type"] == "response.created"


async def test_11_sdk_parses_nested_error(server: LiveServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY_A, max_retries=0)
    async with client.responses.connect() as conn:
        await conn.send(
            {
                "type": "response.create",
                "model": "default",
                "previous_response_id": "resp_missing",
                "input": "Hi",
            }
        )
        event = await conn.recv()
        assert event.type == "error"
        assert event.error.code == "previous_response_not_found"  # type: ignore[union-attr]
        assert event.error.param == "previous_response_id"  # type: ignore[union-attr]


async def test_store_false_chain_is_connection_scoped(server: LiveServer) -> None:
    ws1 = await raw_connect(server)
    async with ws1:
        await ws1.send(
            create_frame(
                model="default", input="Hi", temperature=0, max_output_tokens=2, store=False
            )
        )
        rid = (await raw_events(ws1))[-1]["response"]["id"]
        ws2 = await raw_connect(server)
        async with ws2:
            await ws2.send(create_frame(model="default", previous_response_id=rid, input="More"))
            err = (await raw_events(ws2))[-1]
            assert err["error"]["code"] == "previous_response_not_found"


async def test_store_true_chain_loads_from_store_on_new_socket(server: LiveServer) -> None:
    ws1 = await raw_connect(server)
    async with ws1:
        await ws1.send(
            create_frame(
                model="default", input="Hi", temperature=0, max_output_tokens=2, store=True
            )
        )
        rid = (await raw_events(ws1))[-1]["response"]["id"]
    ws2 = await raw_connect(server)
    async with ws2:
        await ws2.send(
            create_frame(
                model="default",
                previous_response_id=rid,
                input="More",
                temperature=0,
                max_output_tokens=2,
            )
        )
        final = (await raw_events(ws2))[-1]
        assert final["type"] in TERMINAL
        assert final["response"]["previous_response_id"] == rid
    # another tenant cannot continue it over WS either
    ws3 = await raw_connect(server, KEY_B)
    async with ws3:
        await ws3.send(create_frame(model="default", previous_response_id=rid, input="More"))
        assert (await raw_events(ws3))[-1]["error"]["code"] == "previous_response_not_found"


async def test_failed_continuation_evicts_parent(server: LiveServer) -> None:
    ws = await raw_connect(server)
    async with ws:
        await ws.send(
            create_frame(
                model="default", input="Hi", temperature=0, max_output_tokens=2, store=False
            )
        )
        rid = (await raw_events(ws))[-1]["response"]["id"]
        # a continuation that fails (context overflow) ...
        await ws.send(
            create_frame(
                model="default",
                previous_response_id=rid,
                input="x",
                max_output_tokens=100_000,
                store=False,
            )
        )
        assert (await raw_events(ws))[-1]["type"] == "error"
        # ... evicts its parent: a retry cannot build on it
        await ws.send(
            create_frame(model="default", previous_response_id=rid, input="x", store=False)
        )
        assert (await raw_events(ws))[-1]["error"]["code"] == "previous_response_not_found"


async def test_queue_full_is_an_error_not_a_hang(server: LiveServer) -> None:
    # the test server queues at most 2 creates per connection
    ws = await raw_connect(server)
    async with ws:
        create = create_frame(
            model="default", input="Count to ten.", temperature=0, max_output_tokens=12
        )
        for _ in range(6):
            await ws.send(create)
        terminals, errors = 0, 0
        while terminals + errors < 6:
            event = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
            if event["type"] in TERMINAL:
                terminals += 1
            elif event["type"] == "error":
                assert event["error"]["code"] == "queue_full"
                errors += 1
        # two queued (plus possibly one already picked up by the worker) run; the rest are refused
        assert terminals >= 2 and errors >= 1


async def test_12_disconnect_cancels_and_frees_slot(server: LiveServer) -> None:
    for _ in range(100):
        ws = await raw_connect(server)
        await ws.send(
            create_frame(
                model="default",
                input="Write a very long essay about the sea.",
                temperature=0,
                max_output_tokens=400,
            )
        )
        while json.loads(await ws.recv())["type"] != "response.output_text.delta":
            pass
        ws.transport.abort()  # abrupt: no close frame
    for _ in range(100):
        health = server.health()
        if (
            health["slots_busy"] == 0
            and health["slots_leased"] == 0
            and health["websocket_connections"] == 0
        ):
            break
        await asyncio.sleep(0.1)
    assert health["slots_busy"] == 0
    assert health["slots_leased"] == 0
    assert health["responses_running"] == 0
    assert health["websocket_connections"] == 0
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY_A, max_retries=0)
    r = await client.responses.create(
        model="default", input="Hi", temperature=0, max_output_tokens=2
    )
    assert r.status in ("completed", "incomplete")


async def test_13_connection_age_limit() -> None:
    s = start_server("--ws-max-age", "1.5", name="age")
    try:
        ws = await websockets.connect(s.ws_url)
        async with ws:
            event = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
            assert event["type"] == "error"
            assert event["error"]["code"] == "websocket_connection_limit_reached"
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), timeout=10)
    finally:
        s.stop()


async def test_14_upgrade_refused_without_key(server: LiveServer) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        with pytest.raises(websockets.InvalidStatus) as err:
            await websockets.connect(server.ws_url, additional_headers=headers)
        assert err.value.response.status_code == 401


async def test_426_when_websocket_disabled_or_full() -> None:
    s = start_server("--no-websocket", name="nows")
    try:
        with pytest.raises(websockets.InvalidStatus) as err:
            await websockets.connect(s.ws_url)
        assert err.value.response.status_code == 426
        # HTTP still works
        r = httpx.post(f"{s.base_url}/responses", json={"input": "Hi", "max_output_tokens": 1})
        assert r.status_code == 200
    finally:
        s.stop()
    s = start_server("--max-connections", "1", name="onews")
    try:
        first = await websockets.connect(s.ws_url)
        async with first:
            with pytest.raises(websockets.InvalidStatus) as err:
                await websockets.connect(s.ws_url)
            assert err.value.response.status_code == 426
    finally:
        s.stop()
