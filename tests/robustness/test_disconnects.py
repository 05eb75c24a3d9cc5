"""Abrupt disconnects (TCP reset: no FIN, no close frame) at every point of a response's
life, on SSE and WebSocket, with store:true and store:false. After each one the server
still answers, another tenant's store:true creates still complete (a dead store writer
would hang them) and every gauge of work in flight is back to 0."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import KEY_A, KEY_B, LiveServer, start_server
from tests.robustness.leaks import assert_no_leaks, auth
from tests.robustness.wire import TERMINAL, RawSSE, RawWebSocket, count

A, B = auth(KEY_A), auth(KEY_B)
LONG = "Write a long story about a dragon who learns to fly."
Events = list[dict[str, Any]]


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    s = start_server(
        "--api-key", KEY_A, "--api-key", KEY_B, "--rate-limit-per-minute", "0",
        name="disconnects",
    )  # fmt: skip
    yield s
    s.stop()


def body(store: bool, max_output_tokens: int = 200, **extra: Any) -> dict[str, Any]:
    return {
        "model": "default",
        "input": LONG,
        "temperature": 0,
        "max_output_tokens": max_output_tokens,
        "store": store,
        **extra,
    }


def first(kind: str) -> Callable[[Events], bool]:
    return count(kind)


def at_store_write(events: Events) -> bool:
    """The last output item is done: the server is writing the record, then `completed`."""
    return any(e.get("type") == "response.output_item.done" for e in events)


# point -> (max_output_tokens, predicate to read up to before the reset; None: no read)
POINTS: dict[str, tuple[int, Callable[[Events], bool] | None]] = {
    "before_created": (200, None),
    "after_created": (200, first("response.created")),
    "mid_stream": (200, count("response.output_text.delta", 3)),
    "at_store_write": (6, at_store_write),
}


def healthy_afterwards(server: LiveServer, seen_completed: Events | None = None) -> None:
    """The server answers, another tenant's store:true create completes and is stored,
    responses the client saw complete are stored, and nothing leaked."""
    r = httpx.get(f"{server.url}/healthz", timeout=10)
    assert r.status_code == 200, r.text
    other = httpx.post(
        f"{server.base_url}/responses",
        headers=B,
        json={"model": "default", "input": "Hi", "max_output_tokens": 2, "store": True},
        timeout=60,
    )
    assert other.status_code == 200, other.text
    got = httpx.get(f"{server.base_url}/responses/{other.json()['id']}", headers=B, timeout=30)
    assert got.status_code == 200, got.text
    for response in seen_completed or []:
        got = httpx.get(f"{server.base_url}/responses/{response['id']}", headers=A, timeout=30)
        assert got.status_code == 200, f"completed {response['id']} not stored: {got.text}"
        assert got.json()["output"] == response["output"]
    assert_no_leaks(server, A)


def check_maybe_stored(server: LiveServer, events: Events) -> None:
    """A response cut off before `completed` may or may not be stored, but a lookup is
    a clean 200 or 404, and a stored one is whole."""
    created = [e for e in events if e.get("type") == "response.created"]
    if not created:
        return
    rid = created[0]["response"]["id"]
    got = httpx.get(f"{server.base_url}/responses/{rid}", headers=A, timeout=30)
    assert got.status_code in (200, 404), got.text
    if got.status_code == 200:
        assert got.json()["status"] in ("in_progress", "completed", "incomplete", "cancelled")


@pytest.mark.parametrize("store", [True, False], ids=["store", "nostore"])
@pytest.mark.parametrize("point", ["mid_request", *POINTS])
def test_sse_reset(server: LiveServer, point: str, store: bool) -> None:
    if point == "mid_request":  # half a body, then gone
        RawSSE(server.port, body(store, stream=True), A, send_body=False).reset()
        healthy_afterwards(server)
        return
    max_out, until = POINTS[point]
    sse = RawSSE(server.port, body(store, max_out, stream=True), A)
    events: Events = []
    if until is not None:
        events = sse.read_until(until)
    sse.reset()
    check_maybe_stored(server, events)
    healthy_afterwards(server)


@pytest.mark.parametrize("store", [True, False], ids=["store", "nostore"])
@pytest.mark.parametrize("point", list(POINTS))
def test_websocket_reset(server: LiveServer, point: str, store: bool) -> None:
    max_out, until = POINTS[point]
    ws = RawWebSocket(server.port, A)
    ws.send_json({"type": "response.create", **body(store, max_out)})
    events: Events = []
    if until is not None:
        events = ws.read_until(until)
    ws.reset()
    check_maybe_stored(server, events)
    healthy_afterwards(server)


@pytest.mark.parametrize("store", [True, False], ids=["store", "nostore"])
def test_websocket_reset_at_first_completed_while_other_lanes_run(
    server: LiveServer, store: bool
) -> None:
    ws = RawWebSocket(server.port, A)
    ws.send_json({"type": "response.create", "stream_id": "short", **body(store, 3)})
    for lane in ("long-1", "long-2"):
        ws.send_json({"type": "response.create", "stream_id": lane, **body(store, 300)})
    events = ws.read_until(lambda es: any(e.get("type") in TERMINAL for e in es))
    ws.reset()
    done = [e for e in events if e.get("type") in TERMINAL]
    assert done[0]["type"] != "response.failed", done[0]
    assert done[0].get("stream_id") == "short", done[0]
    running = {e.get("stream_id") for e in events if e.get("type") == "response.created"}
    assert running & {"long-1", "long-2"}, "no other lane was in flight at the reset"
    # the client saw it complete: with store:true it must be stored
    healthy_afterwards(server, [done[0]["response"]] if store else [])


def test_many_resets_at_once(server: LiveServer) -> None:
    """Resets at every point on both transports at the same time."""
    sockets: list[RawSSE | RawWebSocket] = []
    for store in (True, False):
        for _ in range(2):
            sockets.append(RawSSE(server.port, body(store, stream=True), A))
            ws = RawWebSocket(server.port, A)
            ws.send_json({"type": "response.create", **body(store)})
            ws.send_json({"type": "response.create", "stream_id": "b", **body(store)})
            sockets.append(ws)
    sockets[0].read_until(count("response.output_text.delta", 2))
    for sock in sockets:
        sock.reset()
    healthy_afterwards(server)
