"""A real fleet (docs/fleet.md): HAProxy, PostgreSQL and two workers with one thread each
(`fleet/local.py: Fleet`), through the generated configuration. Turns of one chain or one
socket stay on one worker (its header and `cached_tokens` show it), two tenants with one
`prompt_cache_key` share no KV, and a killed worker's store:true chain continues
elsewhere while a store:false one gets `previous_response_not_found`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets.sync.client as ws_client

from tests.conftest import KEY_A, KEY_B, LOG_DIR
from warmloop.bench.server import free_port
from warmloop.client import AgentSession
from warmloop.fleet import haproxy
from warmloop.fleet.keys import WORKER_HEADER, worker_of
from warmloop.fleet.local import Fleet
from warmloop.fleet.postgres import missing as postgres_missing

INSTRUCTIONS = "You are a terse assistant for a fleet test. " * 20
BASE = {"model": "default", "temperature": 0, "max_output_tokens": 4, "instructions": INSTRUCTIONS}


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    for why in (
        postgres_missing(),
        None if haproxy.haproxy_binary() else "HAProxy is not installed (apt-get install haproxy)",
    ):
        if why is not None:
            if os.environ.get("CI"):  # .ci/run installs both: a skip would hide a failure
                pytest.fail(why)
            pytest.skip(why)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    shared_kv = tempfile.mkdtemp(prefix="fleet-kv-", dir=LOG_DIR)  # one KV disk for all
    serve = ["--api-key", KEY_A, "--api-key", KEY_B, "--ctx", "2048", "--slots", "2"]
    serve += ["--kv-disk-dir", shared_kv, "--kv-disk-sync", "turn"]
    f = Fleet(workers=2, port=free_port(), serve_args=serve, state_dir=LOG_DIR, drain_timeout=10)
    with f:
        yield f
    shutil.rmtree(shared_kv, ignore_errors=True)


def create(fleet: Fleet, key: str = KEY_A, **body: Any) -> tuple[dict[str, Any], str]:
    r = httpx.post(
        f"{fleet.base_url}/responses",
        json=BASE | body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    return r.json(), r.headers.get(WORKER_HEADER, "")


def cached(response: dict[str, Any]) -> int:
    return int(response["usage"]["input_tokens_details"]["cached_tokens"])


def test_an_http_chain_stays_on_its_worker(fleet: Fleet) -> None:
    first, worker = create(fleet, input="Say one word.", store=True)
    assert worker_of(first["id"]) == worker
    prev = first["id"]
    for turn in range(3):
        r, served = create(fleet, input=f"Another word ({turn}).", previous_response_id=prev)
        assert served == worker and worker_of(r["id"]) == worker
        assert cached(r) > len(INSTRUCTIONS) // 8  # the chain's KV was there
        prev = r["id"]


def test_a_websocket_session_stays_on_one_worker(fleet: Fleet) -> None:
    url = fleet.base_url.replace("http", "ws", 1) + "/responses"
    headers = {"Authorization": f"Bearer {KEY_A}", "x-session-id": "fleet-ws-session"}
    with ws_client.connect(url, additional_headers=headers) as ws:
        assert ws.response is not None
        worker = ws.response.headers[WORKER_HEADER]
        prev = None
        for turn in range(3):
            frame: dict[str, Any] = {"type": "response.create", **BASE, "store": False}
            frame["input"] = f"Word {turn}."
            if prev:
                frame["previous_response_id"] = prev
            ws.send(json.dumps(frame))
            while True:
                event = json.loads(ws.recv(timeout=120))
                assert event["type"] != "error", event
                if event["type"] in ("response.completed", "response.incomplete"):
                    break
            response = event["response"]
            assert worker_of(response["id"]) == worker
            if prev:
                assert cached(response) > 0
            prev = response["id"]


def test_two_tenants_with_one_prompt_cache_key_share_no_kv(fleet: Fleet) -> None:
    text = "Tenant isolation check: " + "alpha beta gamma " * 30
    fresh = {"instructions": "Instructions no tenant has sent before. " * 10}
    a, _ = create(fleet, KEY_A, input=text, prompt_cache_key="shared-repo", **fresh)
    again, _ = create(fleet, KEY_A, input=text, prompt_cache_key="shared-repo", **fresh)
    b, _ = create(fleet, KEY_B, input=text, prompt_cache_key="shared-repo", **fresh)
    # At most the chat template's opening tokens, which tenant A's earlier tests sent.
    assert cached(a) < 8
    assert cached(again) > 100  # one tenant's key meets its own KV
    assert cached(b) < 8, "tenant B reused tenant A's KV"


def test_a_killed_workers_chains_continue_warm_or_say_not_found(fleet: Fleet) -> None:
    """SIGKILL with --kv-disk-sync turn: the store:true chain's KV was written after its
    turn to the shared KV directory, so another worker continues it warm."""
    kept, worker = create(fleet, input="Remember the word plum.", store=True)
    lost, worker2 = create(fleet, input="Remember the word fig.", store=False)
    victim = next(w for w in fleet.local if w.worker.id == worker)
    wait_written(victim.url)
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait()
    deadline = time.monotonic() + 20
    while httpx.get(f"{fleet.url}/healthz").json()["workers_up"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    r, served = create(fleet, input="And now?", previous_response_id=kept["id"])
    assert served != worker and worker_of(r["id"]) == served
    assert r["status"] in ("completed", "incomplete")
    # the items from the shared store, their KV from the shared directory
    assert cached(r) >= kept["usage"]["total_tokens"] - 1
    if worker2 == worker:  # the store:false chain lived on the killed worker
        gone, _ = create(fleet, input="And now?", previous_response_id=lost["id"], store=False)
        assert gone["error"]["code"] == "previous_response_not_found"


def wait_written(worker_url: str) -> None:
    """Until the worker's KV disk writer has nothing queued (its files are on disk)."""
    deadline = time.monotonic() + 60
    auth = {"Authorization": f"Bearer {KEY_A}"}
    while True:
        text = httpx.get(f"{worker_url}/metrics", headers=auth, timeout=10).text
        if "\nwarmloop_kv_disk_pending 0.0" in text:
            return
        assert time.monotonic() < deadline, "the KV disk writer never caught up"
        time.sleep(0.1)


def revive(fleet: Fleet) -> None:
    """Start again any worker an earlier test stopped, on its port, and wait until the
    proxy counts it up."""
    for k, w in enumerate(fleet.local):
        if w.process.poll() is not None:
            fleet.local[k] = fleet.start_worker(w.worker.id, w.worker.port)
    wait_up(fleet, len(fleet.local))


def wait_up(fleet: Fleet, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{fleet.url}/healthz", timeout=5).json().get("workers_up") == n:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"the proxy never saw {n} workers up"
        time.sleep(0.2)


def session(fleet: Fleet, store: bool) -> AgentSession:
    return AgentSession(
        base_url=fleet.base_url, api_key=KEY_A, instructions=INSTRUCTIONS, store=store,
        temperature=0, max_output_tokens=4,
    )  # fmt: skip


async def test_agent_sessions_recover_when_their_worker_is_killed(fleet: Fleet) -> None:
    """SIGKILL the worker under a WebSocket session: a store:true session reconnects and
    continues its chain by id on another worker (from the shared store); a store:false
    one replays its conversation once there."""
    for store in (True, False):
        revive(fleet)
        async with session(fleet, store) as s:
            first = await s.run("Remember the word plum.")
            worker = worker_of(first.responses[-1].id)
            victim = next(w for w in fleet.local if w.worker.id == worker)
            victim.process.kill()
            victim.process.wait()
            wait_up(fleet, len(fleet.local) - 1)
            after = await s.run("Which word?")
        moved = after.responses[-1]
        assert after.transport == "websocket" and after.reconnects >= 1
        assert worker_of(moved.id) not in (worker, None)
        assert after.replays == (0 if store else 1)
        assert moved.previous_response_id == (first.responses[-1].id if store else None)


async def test_a_drained_worker_finishes_what_runs_and_its_sessions_move_on(fleet: Fleet) -> None:
    """SIGTERM a worker while it streams a long response and holds an idle socket: the
    response runs to its end through the proxy, the socket is closed with 1012, the
    session reconnects (still WebSocket) and continues on another worker, and the
    worker exits by itself."""
    revive(fleet)
    async with session(fleet, store=True) as s, httpx.AsyncClient(timeout=300) as http:
        first = await s.run("Remember the word plum.")
        worker = worker_of(first.responses[-1].id)
        victim = next(w for w in fleet.local if w.worker.id == worker)
        long_body = BASE | {
            "input": "Write a long story about a lighthouse.",
            "max_output_tokens": 160,
            "previous_response_id": first.responses[-1].id,
        }
        headers = {"Authorization": f"Bearer {KEY_A}"}
        running = asyncio.create_task(
            http.post(f"{fleet.base_url}/responses", json=long_body, headers=headers)
        )
        await asyncio.sleep(1.0)
        victim.process.send_signal(signal.SIGTERM)
        long = await running
        assert long.headers[WORKER_HEADER] == worker, "the long response was not on it"
        assert long.json()["usage"]["output_tokens"] == 160  # it ran to its end
        assert await asyncio.to_thread(victim.process.wait, 60) == 0
        after = await s.run("Which word?")
    assert after.transport == "websocket" and after.reconnects >= 1 and after.replays == 0
    assert worker_of(after.responses[-1].id) not in (worker, None)
    # The drain wrote the chain (the long response's, which extends the session's) to the
    # shared KV directory: the new worker computes only the new turn.
    assert first.responses[-1].usage is not None and after.responses[-1].usage is not None
    before = first.responses[-1].usage.total_tokens
    assert after.responses[-1].usage.input_tokens_details.cached_tokens >= before - 1
