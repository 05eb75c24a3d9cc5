"""The generated HAProxy configuration: `haproxy -c` accepts it, and a real HAProxy in
front of stub workers (no model) routes exactly as docs/fleet.md says, with the same
choices as the ring model of fleet/ring.py.

HAProxy is required under CI=1 (.ci/run installs it); elsewhere these tests skip
without it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fleet_stub import StubWorker
from warmloop.bench.server import free_port
from warmloop.fleet import haproxy
from warmloop.fleet.haproxy import Settings, Worker, render
from warmloop.fleet.keys import WORKER_HEADER, response_id
from warmloop.fleet.local import Proxy
from warmloop.fleet.ring import Ring, server_ids


@pytest.fixture(scope="module")
def haproxy_bin() -> str:
    binary = haproxy.haproxy_binary()
    if binary is None:
        why = "HAProxy is not installed (apt-get install haproxy)"
        if os.environ.get("CI"):  # .ci/run installs it: a skip there would hide a failure
            pytest.fail(why)
        pytest.skip(why)
    return binary


def workers(n: int = 3) -> list[Worker]:
    return [Worker(f"w{k}", "127.0.0.1", 20000 + k) for k in range(1, n + 1)]


def test_worker_specs() -> None:
    assert Worker.parse("w1=http://10.0.0.5:8000") == Worker("w1", "10.0.0.5", 8000)
    assert Worker.parse("10.0.0.5:8001").id == "10-0-0-5-8001"
    assert Worker.parse("http://gpu-a.internal:8000").id == "gpu-a-internal-8000"
    for bad in ("w1=http://10.0.0.5", "W_1=http://10.0.0.5:8000", "http://h:1/v1"):
        with pytest.raises(ValueError):
            Worker.parse(bad)
    with pytest.raises(ValueError, match="two workers"):
        render([Worker("w1", "a", 1), Worker("w1", "b", 2)])


def test_server_ids_are_stable_as_workers_come_and_go() -> None:
    ten = server_ids(f"w{k}" for k in range(10))
    nine = server_ids(f"w{k}" for k in range(10) if k != 4)
    assert {k: v for k, v in ten.items() if k != "w4"} == nine
    assert len(set(ten.values())) == 10


@pytest.mark.parametrize("roundrobin", [False, True])
def test_haproxy_accepts_the_configuration(haproxy_bin: str, roundrobin: bool) -> None:
    text = render(workers(5), Settings(roundrobin=roundrobin))
    haproxy.validate(text, haproxy_bin)
    assert haproxy.version(haproxy_bin) >= (2, 6)  # type: ignore[operator]
    if roundrobin:
        assert "use-server" not in text and "hash-type" not in text
    else:
        assert text.count("use-server w1 if") == 2  # in both backends
        assert "hash-type consistent" in text and "track affinity/w1" in text


def test_validate_reports_haproxys_words(haproxy_bin: str) -> None:
    with pytest.raises(haproxy.ConfigError, match="unknown keyword"):
        haproxy.validate("frontend x\n    bogus-keyword 1\n", haproxy_bin)


class Stubs:
    """Three stub workers behind a real HAProxy on the generated configuration."""

    def __init__(self, directory: Path, n: int = 3, **settings: object) -> None:
        self.stubs = [StubWorker(f"w{k}") for k in range(1, n + 1)]
        self.workers = [Worker(s.worker_id, "127.0.0.1", s.port) for s in self.stubs]
        port = free_port()
        fast = {"check_inter": "200ms", "fall": 1, "rise": 1, **settings}
        text = render(self.workers, Settings(bind=f"127.0.0.1:{port}", **fast))  # type: ignore[arg-type]
        self.proxy = Proxy(text, directory, port)
        self.proxy.wait_healthy()
        self.client = httpx.Client(base_url=self.proxy.url, timeout=10)

    def post(self, body: dict[str, object], **headers: str) -> str:
        r = self.client.post("/v1/responses", content=json.dumps(body), headers=headers)
        assert r.status_code == 200, r.text
        return r.headers[WORKER_HEADER]

    def wait_up(self, n: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = self.client.get("/healthz")
            if r.status_code == 200 and r.json()["workers_up"] == n:
                return
            time.sleep(0.05)
        raise AssertionError(f"not {n} workers up: {self.client.get('/healthz').text}")

    def close(self) -> None:
        self.client.close()
        self.proxy.stop()
        for s in self.stubs:
            s.stop()


@pytest.fixture
def stubs(haproxy_bin: str, tmp_path: Path) -> Iterator[Stubs]:
    s = Stubs(tmp_path)
    yield s
    s.close()


def test_previous_response_id_goes_to_its_worker_else_falls_back(stubs: Stubs) -> None:
    for wid in ("w1", "w2", "w3", "w2"):
        prev = response_id(wid)
        body = {"model": "m", "previous_response_id": prev, "input": "hi"}
        assert stubs.post(body) == wid
        # whatever the session header says, and with spaces and newlines around the colon
        raw = f'{{"input": "x",\n "previous_response_id" :\n "{prev}"}}'
        r = stubs.client.post("/v1/responses", content=raw, headers={"session_id": "s"})
        assert r.headers[WORKER_HEADER] == wid
    # a quoted key inside a string value is no key
    decoy = {"input": 'see "previous_response_id": "resp_w3_' + "0" * 24 + '"', "x": 1}
    assert stubs.post(decoy, **{"session_id": "decoy"}) == stubs.post({}, session_id="decoy")
    # the id is matched whole: a worker id that is a prefix of another is not enough
    assert stubs.post({"previous_response_id": "resp_w_" + "0" * 24}, session_id="z") == (
        stubs.post({}, session_id="z")
    )
    # the client's hint when there is no previous_response_id (a WebSocket reconnect)
    assert stubs.post({}, **{WORKER_HEADER: "w3", "x-session-id": "abc"}) == "w3"
    # previous_response_id wins over the hint
    assert stubs.post({"previous_response_id": response_id("w1")}, **{WORKER_HEADER: "w3"}) == "w1"

    stubs.stubs[1].draining = True  # w2 drains: /healthz 503, creates 503
    stubs.wait_up(2)
    seen = {stubs.post({"previous_response_id": response_id("w2")}) for _ in range(10)}
    assert seen and "w2" not in seen
    with_session = stubs.post({"previous_response_id": response_id("w2")}, session_id="s-42")
    assert with_session == stubs.post({}, session_id="s-42")  # the session's hash instead


def test_a_draining_workers_503_is_retried_elsewhere(stubs: Stubs) -> None:
    stubs.stubs[0].refusing = True  # before the health check notices: the create gets 503
    landed = stubs.post({"previous_response_id": response_id("w1"), "input": "x"})
    assert landed != "w1"
    assert any(r["worker"] == "w1" for r in stubs.stubs[0].requests)  # it was tried there


def test_session_headers_first_present_wins_and_match_the_ring(stubs: Stubs) -> None:
    ring = Ring(weight=Settings().weight)
    for w in stubs.workers:
        ring.add(w.id, server_ids(x.id for x in stubs.workers)[w.id])
    for k in range(60):
        sid = f"session-{k}"
        got = {stubs.post({}, **{h: sid}) for h in ("session_id", "session-id", "x-session-id")}
        assert got == {ring.lookup(sid)}, sid
        # first present wins: session_id over session-id over x-session-id
        both = {"session_id": sid, "session-id": "other", "x-session-id": "another"}
        assert stubs.post({}, **both) == ring.lookup(sid)
    # a worker down: only its sessions move, as the model says
    before = {f"s{k}": ring.lookup(f"s{k}") for k in range(120)}
    stubs.stubs[2].draining = True
    stubs.wait_up(2)
    ring.set_down("w3")
    for sid, was in before.items():
        now = stubs.post({}, session_id=sid)
        assert now == ring.lookup(sid)
        if was != "w3":
            assert now == was


def test_the_ring_model_matches_haproxy_on_a_larger_fleet(haproxy_bin: str, tmp_path: Path) -> None:
    s = Stubs(tmp_path, n=12)
    try:
        ring = Ring(weight=Settings().weight)
        ids = server_ids(w.id for w in s.workers)
        for w in s.workers:
            ring.add(w.id, ids[w.id])
        for down in (None, "w5"):
            if down is not None:
                s.stubs[4].draining = True
                s.wait_up(11)
                ring.set_down(down)
            for k in range(150):
                sid = f"{k:x}-a7c1e0d2"
                assert s.post({}, **{"x-session-id": sid}) == ring.lookup(sid), (down, sid)
    finally:
        s.close()


def test_prompt_cache_key_hashes_with_the_tenant(stubs: Stubs) -> None:
    ring = Ring(weight=Settings().weight)
    ids = server_ids(w.id for w in stubs.workers)
    for w in stubs.workers:
        ring.add(w.id, ids[w.id])
    placed: dict[str, set[str]] = {}
    for k in range(40):
        for tenant in ("sk-a", "sk-b"):
            body = {"model": "m", "prompt_cache_key": f"repo-{k}", "input": "hi"}
            auth = f"Bearer {tenant}"
            got = {stubs.post(body, authorization=auth) for _ in range(3)}
            assert got == {ring.lookup(f"pck|{auth}|repo-{k}")}
            placed.setdefault(tenant, set()).update(got)
    assert placed["sk-a"] == placed["sk-b"] == {"w1", "w2", "w3"}  # keys spread over all
    # a session header outranks the cache key
    body = {"prompt_cache_key": "repo-1"}
    assert stubs.post(body, session_id="s-7", authorization="Bearer x") == ring.lookup("s-7")


def test_no_key_is_least_connections_and_streams_are_not_buffered(stubs: Stubs) -> None:
    seen = [stubs.post({"input": "hi"}) for _ in range(9)]
    assert set(seen) == {"w1", "w2", "w3"}  # idle servers: leastconn rotates among equals
    t0 = time.monotonic()
    with stubs.client.stream("GET", "/stream?n=5&gap=0.3") as r:
        arrivals = [time.monotonic() - t0 for line in r.iter_lines() if line.startswith("data:")]
    assert len(arrivals) == 5
    assert arrivals[0] < 0.25 < 1.0 < arrivals[-1]  # the first event long before the last


def test_proxy_healthz_follows_the_workers(stubs: Stubs) -> None:
    r = stubs.client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "workers_up": 3}
    for s in stubs.stubs:
        s.draining = True
    deadline = time.monotonic() + 10
    while stubs.client.get("/healthz").status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert stubs.client.get("/healthz").json()["status"] == "unavailable"


def test_roundrobin_baseline_ignores_every_key(haproxy_bin: str, tmp_path: Path) -> None:
    s = Stubs(tmp_path, roundrobin=True)
    try:
        body = {"previous_response_id": response_id("w1")}
        seen = [s.post(body, session_id="same") for _ in range(6)]
        assert set(seen) == {"w1", "w2", "w3"}
    finally:
        s.close()
