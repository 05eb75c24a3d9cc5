"""Clients that never read: the server's writes block, and after `--write-timeout-s` it
drops them instead of holding a slot, a running response and their buffers forever.

A client socket with a tiny receive buffer and a tiny MSS (so the server's send buffer
cannot autotune to megabytes on loopback) plus long outputs make the server's writes
really block a few hundred tokens in."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import KEY_A, KEY_B, LiveServer, start_server
from tests.robustness.leaks import assert_no_leaks, auth, read_metrics
from tests.robustness.wire import RawSSE, RawWebSocket, drain

A, B = auth(KEY_A), auth(KEY_B)
WRITE_TIMEOUT_S = 2
TINY = {"rcvbuf": 2048, "mss": 256}
LONG = "Write a long story about a dragon who learns to fly."
MEMORY_BOUND = 256 * 1024 * 1024  # growth of the server's RSS while the readers hang


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    s = start_server(
        "--api-key", KEY_A, "--api-key", KEY_B, "--rate-limit-per-minute", "0",
        "--write-timeout-s", str(WRITE_TIMEOUT_S), "--slots", "4",
        "--kv-host-budget", str(128 * 1024 * 1024),
        name="slow-readers",
    )  # fmt: skip
    yield s
    s.stop()


def body(store: bool) -> dict[str, object]:
    # ~1,800 delta events of ~230 bytes: far more than the buffers a tiny window allows
    return {
        "model": "default",
        "input": LONG,
        "temperature": 0,
        "max_output_tokens": 1800,
        "store": store,
    }


def rss(server: LiveServer) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def busy(server: LiveServer) -> dict[str, float]:
    samples = read_metrics(server, A)
    names = ("warmloop_responses_running", "warmloop_websocket_connections")
    return {name: sum(samples.get(name, [0.0])) for name in names}


def wait_until_dropped(server: LiveServer) -> int:
    """Poll until no response runs and no socket is open; returns the peak RSS seen."""
    peak = rss(server)
    deadline = time.monotonic() + 240  # several 1,800-token runs on a busy machine
    while any(busy(server).values()):
        peak = max(peak, rss(server))
        assert time.monotonic() < deadline, f"slow readers never dropped: {busy(server)}"
        time.sleep(0.5)
    return peak


def check_cut_short(server: LiveServer, sock: socket.socket) -> None:
    """The server closed the connection, and gave up on its responses early: what it
    sent stops short of a terminal event, and no response ran to its 1,800 tokens (a
    server that only drops a reader once the response has ended would, with the
    reader blocked ~600 tokens in)."""
    raw, closed = drain(sock, timeout_s=30)
    sock.close()
    assert closed, "the server did not close a connection it gave up on"
    assert b"response.completed" not in raw and b"response.incomplete" not in raw, (
        "a whole response fit into the socket buffers: the writes never blocked, "
        "so this test proved nothing (make the outputs longer)"
    )
    ids = set(re.findall(rb"resp_[0-9a-z-]+_[0-9a-f]{24}", raw))
    assert ids, f"no response was created: {raw[:500]!r}"
    for rid in ids:
        got = httpx.get(f"{server.base_url}/responses/{rid.decode()}", headers=A, timeout=30)
        assert got.status_code in (200, 404), got.text
        if got.status_code == 200:
            response = got.json()
            usage = response.get("usage") or {}
            assert response["status"] not in ("completed", "incomplete"), (
                f"{rid!r} ran to the end ({usage.get('output_tokens')} tokens) although "
                f"its reader stopped reading ~600 tokens in: the write timeout of "
                f"{WRITE_TIMEOUT_S} s did not stop it"
            )


def test_readers_that_never_read_are_dropped(server: LiveServer) -> None:
    baseline = rss(server)
    # three stalled responses on four slots: one slot stays free for everyone else
    sse = [RawSSE(server.port, {**body(True), "stream": True}, A, **TINY) for _ in range(2)]
    ws = RawWebSocket(server.port, A, **TINY)
    ws.send_json({"type": "response.create", **body(True)})

    # while they hang, another tenant is served
    other = httpx.post(
        f"{server.base_url}/responses",
        headers=B,
        json={"model": "default", "input": "Hi", "max_output_tokens": 4, "store": True},
        timeout=120,
    )
    assert other.status_code == 200, other.text

    peak = wait_until_dropped(server)  # nobody reads: the server must give up on them
    assert peak - baseline < MEMORY_BOUND, f"RSS grew by {(peak - baseline) >> 20} MiB"
    for sock in [s.sock for s in sse] + [ws.sock]:
        check_cut_short(server, sock)

    after = httpx.post(
        f"{server.base_url}/responses",
        headers=A,
        json={"model": "default", "input": "Hi", "max_output_tokens": 4, "store": True},
        timeout=120,
    )
    assert after.status_code == 200, after.text
    assert_no_leaks(server, A)


def test_a_socket_with_stalled_lanes_is_dropped(server: LiveServer) -> None:
    """Two lanes of one never-read socket: dropped together; the tenant can reconnect."""
    ws = RawWebSocket(server.port, A, **TINY)
    for lane in ("one", "two"):
        ws.send_json({"type": "response.create", "stream_id": lane, **body(True)})
    wait_until_dropped(server)
    check_cut_short(server, ws.sock)
    fresh = RawWebSocket(server.port, A)
    fresh.send_json(
        {"type": "response.create", "input": "Hi", "max_output_tokens": 2, "store": False}
    )
    events = fresh.read_until(
        lambda es: bool(es) and es[-1].get("type") in ("response.completed", "response.incomplete")
    )
    assert events[0]["type"] == "response.created"
    fresh.close()
    assert_no_leaks(server, A)
