"""A server as a worker of a fleet (docs/fleet.md): its id is in every response id and
on every answer, and SIGTERM drains it without losing a running response."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import KEY_A, LiveServer, start_server
from warmloop.fleet.keys import WORKER_HEADER, worker_of

AUTH = {"Authorization": f"Bearer {KEY_A}"}
BODY = {"model": "default", "input": "Write a long story about a lighthouse.", "temperature": 0}


@pytest.fixture(scope="module")
def worker() -> Iterator[LiveServer]:
    s = start_server("--api-key", KEY_A, "--worker-id", "w-test", name="worker")
    yield s
    s.stop()


async def test_every_answer_names_the_worker_and_response_ids_carry_it(worker: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=worker.url, headers=AUTH, timeout=60) as http:
        r = await http.post("/v1/responses", json=BODY | {"max_output_tokens": 2})
        assert r.status_code == 200 and r.headers[WORKER_HEADER] == "w-test"
        assert re.fullmatch(r"resp_w-test_[0-9a-f]{24}", r.json()["id"])
        assert worker_of(r.json()["id"]) == "w-test"
        for answer in (
            await http.get("/healthz"),
            await http.get("/no/such/route"),
            await http.post("/v1/responses", json={"input": 5}),
            await http.post("/v1/responses", json=BODY, headers={"Authorization": "Bearer x"}),
        ):
            assert answer.headers[WORKER_HEADER] == "w-test", answer
    async with websockets.connect(worker.ws_url, additional_headers=AUTH) as ws:
        assert ws.response is not None and ws.response.headers[WORKER_HEADER] == "w-test"
    with pytest.raises(websockets.InvalidStatus) as denied:
        async with websockets.connect(worker.ws_url):  # no key: the denial names it too
            pass
    assert denied.value.response.headers[WORKER_HEADER] == "w-test"


async def ws_until_terminal(ws: Any) -> dict[str, Any]:
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
        if event["type"] in ("response.completed", "response.incomplete", "response.failed"):
            return dict(event["response"])
        assert event["type"] != "error", event


async def test_sigterm_drains_running_responses_then_closes_sockets_with_1012() -> None:
    """While draining: /healthz is 503 "draining", a new socket or create is a 503
    server_draining, the running socket response and HTTP stream run to their end, an
    idle socket is closed at once with 1012 and the busy one right after its response;
    then the process exits by itself."""
    s = start_server("--api-key", KEY_A, "--drain-timeout", "120", name="drain")
    try:
        busy = await websockets.connect(s.ws_url, additional_headers=AUTH)
        idle = await websockets.connect(s.ws_url, additional_headers=AUTH)
        create = {"type": "response.create", **BODY, "max_output_tokens": 160, "store": True}
        await busy.send(json.dumps(create))
        assert json.loads(await busy.recv())["type"] == "response.created"
        async with httpx.AsyncClient(base_url=s.url, headers=AUTH, timeout=120) as http:
            body = BODY | {"max_output_tokens": 160, "stream": True}
            async with http.stream("POST", "/v1/responses", json=body) as stream:
                lines = stream.aiter_lines()
                assert "response.created" in await anext(lines)
                s.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                health = await http.get("/healthz")
                assert health.status_code == 503 and "draining" in health.json()["failing"]
                refused = await http.post("/v1/responses", json=BODY)
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "server_draining"
                with pytest.raises(websockets.InvalidStatus) as denied:
                    await websockets.connect(s.ws_url, additional_headers=AUTH)
                assert denied.value.response.status_code == 503
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(idle.recv(), timeout=10)
                assert idle.close_code == 1012
                rest = [line async for line in lines]
            assert any('"response.incomplete"' in line for line in rest), rest[-3:]
        final = await ws_until_terminal(busy)
        assert final["status"] == "incomplete" and final["usage"]["output_tokens"] == 160
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(busy.recv(), timeout=10)
        assert busy.close_code == 1012
        assert await asyncio.to_thread(s.process.wait, 30) == 0
        assert "drained: nothing runs" in s.log()
    finally:
        s.stop()
