"""One owner per piece of state, checked under a race: DELETE, cancel and continuations
of the same response, sent at once, many times, with the response finished or still
running. Whatever order they land in, afterwards the response is gone (GET is a 404 and
no socket or request can continue it), every answer was one the protocol defines (never
a 500 or a dead socket), and nothing is left running or reserved."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import LiveServer, start_server
from tests.robustness import leaks

ROUNDS = 12
DONE = ("response.completed", "response.incomplete", "response.failed")


@pytest.fixture(scope="module")
def racer() -> Iterator[LiveServer]:
    s = start_server("--slots", "3", name="ownership")
    yield s
    s.stop()


def body(**kw: Any) -> dict[str, Any]:
    return {"model": "default", "temperature": 0, "max_output_tokens": 12, **kw}


async def ws_turn(conn: Any, **kw: Any) -> dict[str, Any]:
    """One create over the socket: its final response, or the error event it got."""
    await conn.send({"type": "response.create", **body(**kw)})
    async for event in conn:
        if event.type in DONE:
            return {"response": event.response.model_dump()}
        if event.type == "error":
            return {"error": event.error.model_dump()}
    raise AssertionError("the socket closed")


async def start_streaming(http: httpx.AsyncClient) -> tuple[str, asyncio.Task[list[str]]]:
    """An SSE create that is still running: its id, and the task reading the rest."""
    request = http.build_request(
        "POST",
        "/v1/responses",
        json=body(input="Count from one to fifty in words.", stream=True, max_output_tokens=64),
    )
    response = await http.send(request, stream=True)
    assert response.status_code == 200
    lines = response.aiter_lines()
    response_id = None
    async for line in lines:
        if not line.startswith("data: "):
            continue
        event = json.loads(line[6:])
        if event["type"] == "response.created":
            response_id = event["response"]["id"]
        if event["type"] == "response.output_text.delta":
            break  # it runs
    assert response_id is not None

    async def rest() -> list[str]:
        types = []
        async for line in lines:
            if line.startswith("data: "):
                types.append(json.loads(line[6:])["type"])
        await response.aclose()
        return types

    return response_id, asyncio.create_task(rest())


async def after(delay: float, coro: Any) -> Any:
    await asyncio.sleep(delay)
    return await coro


def test_delete_cancel_and_continuations_race_and_leave_consistent_state(
    racer: LiveServer,
) -> None:
    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=racer.base_url, api_key="unused")
        rng = random.Random(7)
        async with (
            httpx.AsyncClient(base_url=racer.url, timeout=60) as http,
            client.responses.connect() as conn,
        ):
            for k in range(ROUNDS):
                stream: asyncio.Task[list[str]] | None = None
                if k % 2 == 0:  # finished, on this socket's chain
                    first = await ws_turn(conn, input=f"Say hi ({k}).", store=True)
                    rid = first["response"]["id"]
                else:  # still running, over HTTP
                    rid, stream = await start_streaming(http)
                jitter = [rng.uniform(0, 0.05) for _ in range(4)]
                deleted, cancelled, over_http, over_ws = await asyncio.gather(
                    after(jitter[0], http.delete(f"/v1/responses/{rid}")),
                    after(jitter[1], http.post(f"/v1/responses/{rid}/cancel")),
                    after(
                        jitter[2],
                        http.post(
                            "/v1/responses",
                            json=body(previous_response_id=rid, input="And again."),
                        ),
                    ),
                    after(jitter[3], ws_turn(conn, previous_response_id=rid, input="More.")),
                )
                if stream is not None:
                    types = await stream
                    assert types and types[-1] in (*DONE, "response.cancelled"), types
                assert deleted.status_code in (200, 404), deleted.text
                assert cancelled.status_code in (200, 404), cancelled.text
                # a continuation may win the race (it started before the delete) or lose
                # it with the protocol's answer; never a server error
                assert over_http.status_code in (200, 400, 404), over_http.text
                if "error" in over_ws:
                    assert over_ws["error"]["code"] in (
                        "previous_response_not_found",
                        "invalid_request_error",
                        None,
                    ), over_ws
                # afterwards the response is gone for everyone
                got = await http.get(f"/v1/responses/{rid}")
                assert got.status_code == 404, (k, got.text)
                again = await http.post(
                    "/v1/responses", json=body(previous_response_id=rid, input="Hi.")
                )
                assert again.status_code in (400, 404), again.text
                assert again.json()["error"]["code"] == "previous_response_not_found"
                ws_again = await ws_turn(conn, previous_response_id=rid, input="Hi.")
                assert ws_again.get("error", {}).get("code") == "previous_response_not_found"
        await asyncio.to_thread(leaks.assert_no_leaks, racer, {})

    asyncio.run(run())


def test_a_response_whose_client_leaves_is_logged_and_counted(racer: LiveServer) -> None:
    """A client that closes its stream mid-response (SSE, then WebSocket) leaves one log
    line and one `client_left` count, like any response that ends."""

    def counted() -> float:
        text = httpx.get(f"{racer.url}/metrics", timeout=10).text
        m = re.search(r'warmloop_responses_total\{status="client_left"\} ([0-9.e+]+)', text)
        return float(m.group(1)) if m else 0.0

    async def run() -> None:
        before = counted()
        async with httpx.AsyncClient(base_url=racer.url, timeout=60) as http:
            rid, rest = await start_streaming(http)
            rest.cancel()  # the client goes away mid-stream
            with contextlib.suppress(asyncio.CancelledError):
                await rest
        client = openai.AsyncOpenAI(base_url=racer.base_url, api_key="unused")
        async with client.responses.connect() as conn:
            await conn.send(
                {"type": "response.create", **body(input="Count to fifty.", max_output_tokens=64)}
            )
            async for event in conn:
                if event.type == "response.output_text.delta":
                    ws_id = event.item_id
                    break
        for _ in range(100):  # the server notices the closed socket
            if counted() >= before + 2 and f"id={rid} " in racer.log():
                break
            await asyncio.sleep(0.1)
        assert counted() >= before + 2
        line = next(x for x in racer.log().splitlines() if f"response id={rid} " in x)
        assert "status=client_left" in line
        assert ws_id
        await asyncio.to_thread(leaks.assert_no_leaks, racer, {})

    asyncio.run(run())
