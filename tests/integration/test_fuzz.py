"""Property-based: malformed create bodies and item lists, over HTTP and WebSocket, only
ever get 4xx errors in the protocol's shape (or a normal response), never a 500, and
leave no slot or running response behind."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import LiveServer, start_server

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
items = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(
            ["message", "function_call", "function_call_output", "item_reference", "bogus"]
        ),
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool", ""]),
        "content": st.one_of(st.text(max_size=20), st.lists(json_values, max_size=2), json_values),
        "call_id": scalars,
        "name": scalars,
        "arguments": scalars,
        "output": json_values,
        "id": scalars,
    },
)
bodies = st.fixed_dictionaries(
    {"max_output_tokens": st.sampled_from([1, 2])},
    optional={
        "model": st.sampled_from(["default", "nope", 3, None]),
        "input": st.one_of(st.text(max_size=20), st.lists(items, max_size=3), json_values),
        "instructions": json_values,
        "temperature": st.one_of(st.floats(-1, 3, allow_nan=False, allow_infinity=False), scalars),
        "tools": st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["function", "x", "namespace"])},
                optional={"name": scalars, "parameters": json_values, "tools": json_values},
            ),
            max_size=2,
        ),
        "tool_choice": json_values,
        "text": json_values,
        "previous_response_id": scalars,
        "store": scalars,
        "metadata": json_values,
        "unknown_field": json_values,
    },
)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[LiveServer]:
    s = start_server("--rate-limit-per-minute", "0", "--max-output-tokens", "2", name="fuzz")
    yield s
    s.stop()


def check_answer(status: int, body: dict[str, Any]) -> None:
    assert status < 500, body
    if status >= 400:
        assert set(body["error"]) >= {"message", "type", "param", "code"}
        assert body["error"]["message"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
def test_http_never_500(fuzz_server: LiveServer, body: dict[str, Any]) -> None:
    r = httpx.post(f"{fuzz_server.base_url}/responses", json=body, timeout=60)
    check_answer(r.status_code, r.json())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
def test_websocket_never_500(fuzz_server: LiveServer, body: dict[str, Any]) -> None:
    async def one() -> None:
        async with websockets.connect(fuzz_server.ws_url) as ws:
            await ws.send(json.dumps({"type": "response.create", **body}))
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
                if event["type"] == "error":
                    check_answer(event["status"], event)
                    return
                if event["type"] in (
                    "response.completed",
                    "response.incomplete",
                    "response.failed",
                ):
                    assert event["type"] != "response.failed", event
                    return

    asyncio.run(one())


def test_nothing_leaked(fuzz_server: LiveServer) -> None:
    health: dict[str, int | str] = {}
    for _ in range(50):  # sockets closed by the last examples finish closing
        health = fuzz_server.health()
        if health["websocket_connections"] == 0:
            break
        time.sleep(0.1)
    assert health["slots_busy"] == 0 and health["responses_running"] == 0
    assert health["slots_leased"] == 0 and health["websocket_connections"] == 0
    assert "Traceback" not in fuzz_server.log()
