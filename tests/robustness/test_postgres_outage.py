"""PostgreSQL dies under a burst of store:true creates (`pg_ctl -m immediate stop`) and
comes back. While it is down every create and lookup fails clearly (HTTP 503
`store_unavailable`, `response.failed` in a stream, a nested error on a socket that
stays open), never a hang, a 500 or a dead socket; `/healthz` says so. Afterwards the
server recovers by itself, and nothing a client saw complete is lost."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conftest import KEY_A, KEY_B, LiveServer, PostgresInstance, start_postgres, start_server
from tests.robustness.leaks import assert_no_leaks, auth
from tests.robustness.wire import TERMINAL, Closed, RawSSE, RawWebSocket

A, B = auth(KEY_A), auth(KEY_B)
KEYS = ("--api-key", KEY_A, "--api-key", KEY_B, "--rate-limit-per-minute", "0")
REQUEST_TIMEOUT_S = 60  # longer than this is a hang


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresInstance]:
    """A PostgreSQL of this module's own: the session's `postgres_dsn` keeps running."""
    instance = start_postgres()
    yield instance
    instance.destroy()


@dataclass
class Outcomes:
    completed: list[dict[str, Any]] = field(default_factory=list)  # responses seen complete
    clear_errors: list[str] = field(default_factory=list)  # store_unavailable, as promised
    bad: list[str] = field(default_factory=list)  # anything else
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, what: Any) -> None:
        with self.lock:
            getattr(self, kind).append(what)


def create_body(k: int) -> dict[str, Any]:
    return {
        "model": "default",
        "input": f"Say the number {k}.",
        "temperature": 0,
        "max_output_tokens": 3,
        "store": True,
    }


def names_the_store(error: dict[str, Any]) -> bool:
    return error.get("code") == "store_unavailable" and "store" in str(error.get("message"))


def http_once(server: LiveServer, k: int, out: Outcomes) -> None:
    try:
        r = httpx.post(
            f"{server.base_url}/responses",
            json=create_body(k),
            headers=A,
            timeout=REQUEST_TIMEOUT_S,
        )
    except httpx.TimeoutException:
        out.add("bad", f"HTTP create {k}: no answer in {REQUEST_TIMEOUT_S} s")
        return
    try:
        answer = r.json()
    except ValueError:
        out.add("bad", f"HTTP create {k}: {r.status_code} {r.headers.get('content-type')} {r.text[:200]}")  # fmt: skip
        return
    if r.status_code == 200 and answer.get("status") in ("completed", "incomplete"):
        out.add("completed", answer)
    elif r.status_code == 503 and names_the_store(answer.get("error") or {}):
        out.add("clear_errors", f"HTTP {k}")
    else:
        out.add("bad", f"HTTP create {k}: {r.status_code} {answer}")


def sse_once(server: LiveServer, k: int, out: Outcomes) -> None:
    sse = RawSSE(server.port, {**create_body(k), "stream": True}, A)
    try:
        sse.read_until(
            lambda es: (
                any(e.get("type") in (*TERMINAL, "error") for e in es)
                or (sse.status() not in (0, 200) and sse.raw.endswith(b"}"))
            ),
            timeout_s=REQUEST_TIMEOUT_S,
        )
    except (AssertionError, Closed) as exc:
        if sse.status() == 503 and b"store_unavailable" in sse.raw:
            out.add("clear_errors", f"SSE {k}: 503 before the stream")
            return
        out.add("bad", f"SSE create {k}: {exc}")
        return
    finally:
        sse.sock.close()
    if sse.status() == 503 and b"store_unavailable" in sse.raw:
        out.add("clear_errors", f"SSE {k}: 503 before the stream")
        return
    last = sse.events()[-1] if sse.events() else {}
    if last.get("type") in ("response.completed", "response.incomplete"):
        out.add("completed", last["response"])
    elif last.get("type") == "response.failed" and names_the_store(
        last["response"].get("error") or {}
    ):
        out.add("clear_errors", f"SSE {k}: response.failed")
    elif last.get("type") == "error" and names_the_store(last):
        out.add("clear_errors", f"SSE {k}: error event")
    else:
        out.add("bad", f"SSE create {k}: {sse.status()} {last or sse.raw[:300]!r}")


def ws_once(ws: RawWebSocket, k: int, out: Outcomes) -> None:
    """One create on a long-lived socket; the socket must outlive the outage."""
    ws.send_json({"type": "response.create", **create_body(k)})
    try:
        events = ws.read_until(
            lambda es: bool(es) and es[-1].get("type") in (*TERMINAL, "error"),
            timeout_s=REQUEST_TIMEOUT_S,
        )
    except (Closed, TimeoutError) as exc:
        out.add("bad", f"WS create {k}: {exc!r}")
        raise
    last = events[-1]
    if last["type"] in ("response.completed", "response.incomplete"):
        out.add("completed", last["response"])
    elif last["type"] == "response.failed" and names_the_store(last["response"].get("error") or {}):
        out.add("clear_errors", f"WS {k}: response.failed")
    elif last["type"] == "error" and last.get("status") == 503 and names_the_store(last["error"]):
        out.add("clear_errors", f"WS {k}: error event")
    else:
        out.add("bad", f"WS create {k}: {last}")


def poll(
    check: Callable[[], bool], timeout_s: float, what: str, out: Outcomes | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        bad = "\n".join(out.bad[:10]) if out else ""
        assert time.monotonic() < deadline, f"timed out waiting for {what}; failures:\n{bad}"
        time.sleep(0.25)


def health(server: LiveServer) -> httpx.Response:
    return httpx.get(f"{server.url}/healthz", timeout=REQUEST_TIMEOUT_S)


def test_postgres_outage_mid_burst(pg: PostgresInstance) -> None:
    server = start_server(*KEYS, "--store", pg.dsn, "--slots", "2", name="pg-outage")
    ws_sockets: list[RawWebSocket] = []
    try:
        assert health(server).status_code == 200
        before = httpx.post(
            f"{server.base_url}/responses", json=create_body(0), headers=A, timeout=60
        )
        assert before.status_code == 200, before.text

        out = Outcomes()
        stop = threading.Event()
        down = threading.Event()
        during: list[int] = []  # creates sent while PostgreSQL was down
        counter = iter(range(1, 10**6))
        lock = threading.Lock()

        def next_k() -> int:
            with lock:
                k = next(counter)
                if down.is_set():
                    during.append(k)
                return k

        def worker(transport: str) -> None:
            ws = RawWebSocket(server.port, A) if transport == "ws" else None
            if ws is not None:
                ws_sockets.append(ws)
            while not stop.is_set():
                k = next_k()
                if transport == "http":
                    http_once(server, k, out)
                elif transport == "sse":
                    sse_once(server, k, out)
                else:
                    assert ws is not None
                    try:
                        ws_once(ws, k, out)
                    except (Closed, TimeoutError):
                        return  # recorded as bad

        threads = [
            threading.Thread(target=worker, args=(t,), daemon=True)
            for t in ("http", "sse", "ws", "http", "ws")
        ]
        for t in threads:
            t.start()
        poll(lambda: len(out.completed) >= 6, 120, "6 creates to complete before the outage", out)

        pg.stop("immediate")
        down.set()
        poll(lambda: health(server).status_code == 503, 60, "/healthz to say 503")
        h = health(server)
        assert h.json().get("status") == "unavailable" and h.json().get("failing"), h.text
        poll(lambda: len(out.clear_errors) >= 6, 90, "6 clear store errors while it is down", out)
        # lookups while it is down: a clear 503, never a 500 or a hang
        gone = httpx.get(f"{server.base_url}/responses/resp_0000", headers=A, timeout=60)
        assert gone.status_code == 503, gone.text
        assert gone.json()["error"]["code"] == "store_unavailable", gone.text

        pg.start()
        down.clear()
        poll(lambda: health(server).status_code == 200, 90, "/healthz to say 200 again")
        mark = len(out.completed)
        poll(lambda: len(out.completed) >= mark + 6, 120, "creates to complete after recovery", out)
        stop.set()
        for t in threads:
            t.join(timeout=REQUEST_TIMEOUT_S + 10)

        assert during, "no create was sent while PostgreSQL was down"
        assert not out.bad, "unclear failures:\n" + "\n".join(out.bad[:20])
        for ws in ws_sockets:  # sockets that lived through the outage still work
            ws_once(ws, 0, out)
            assert out.completed[-1]["status"] in ("completed", "incomplete")
            ws.close()

        # full recovery: create, continue, look up
        first = httpx.post(
            f"{server.base_url}/responses", json=create_body(1), headers=B, timeout=60
        )
        assert first.status_code == 200, first.text
        second = httpx.post(
            f"{server.base_url}/responses",
            json={**create_body(2), "previous_response_id": first.json()["id"]},
            headers=B,
            timeout=60,
        )
        assert second.status_code == 200, second.text
        got = httpx.get(f"{server.base_url}/responses/{second.json()['id']}", headers=B)
        assert got.status_code == 200, got.text
        assert_no_leaks(server, A)
    finally:
        for ws in ws_sockets:
            ws.close()
        server.stop()

    # nothing the client saw complete is lost: a fresh process (no in-memory cache) has all
    completed = [before.json(), *out.completed, first.json(), second.json()]
    fresh = start_server(*KEYS, "--store", pg.dsn, name="pg-after-outage")
    try:
        lost = []
        for response in completed:
            headers = B if response["id"] in (first.json()["id"], second.json()["id"]) else A
            got = httpx.get(f"{fresh.base_url}/responses/{response['id']}", headers=headers)
            if got.status_code != 200 or got.json()["output"] != response["output"]:
                lost.append(f"{response['id']}: {got.status_code} {got.text[:200]}")
        assert not lost, f"{len(lost)} of {len(completed)} completed responses lost:\n" + "\n".join(lost)  # fmt: skip
        assert_no_leaks(fresh, A)
    finally:
        fresh.stop()


def test_healthz_and_store_errors_with_postgres_down_from_the_start(
    pg: PostgresInstance,
) -> None:
    """Down before any traffic (no cached connection state): clear errors everywhere, a
    socket that stays open, and recovery without a restart."""
    server = start_server(*KEYS, "--store", pg.dsn, name="pg-down")
    try:
        pg.stop("immediate")
        try:
            poll(lambda: health(server).status_code == 503, 60, "/healthz to say 503")
            r = httpx.post(
                f"{server.base_url}/responses", json=create_body(1), headers=A, timeout=60
            )
            assert r.status_code == 503, r.text
            assert names_the_store(r.json()["error"]), r.text
            out = Outcomes()
            sse_once(server, 2, out)
            ws = RawWebSocket(server.port, A)
            ws_once(ws, 3, out)
            assert not out.bad and not out.completed, out
            assert len(out.clear_errors) == 2, out
        finally:
            pg.start()
        poll(lambda: health(server).status_code == 200, 90, "/healthz to say 200 again")
        ws_once(ws, 5, out)  # the same socket, after the outage
        assert len(out.completed) == 1, out
        ws.close()
        got = httpx.get(f"{server.base_url}/responses/{out.completed[0]['id']}", headers=A)
        assert got.status_code == 200, got.text
        assert json.loads(got.text)["output"] == out.completed[0]["output"]
        assert_no_leaks(server, A)
    finally:
        server.stop()
