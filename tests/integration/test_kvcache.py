"""KV cache manager correctness against live servers (greedy, token-identical outputs).

A chain served warm must equal the same chain served cold (a --no-kv-reuse server
computes every prompt in full): after a slot pin, after a host-RAM snapshot and restore,
after host eviction and recompute, through a shared prefix, and for 16 concurrent
sessions on 2 slots. Divergence is only acceptable at a near-tie, which
`assert_same_or_near_tie` checks with the model itself.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import KEY_A, KEY_B, LiveServer, start_server
from tests.near_tie import assert_same_or_near_tie

TERMINAL = ("response.completed", "response.incomplete", "response.failed")
INSTRUCTIONS = "You are a helpful assistant for a software team. " + (
    "Always answer briefly and precisely, and mention the file you looked at. " * 12
)


@pytest.fixture(scope="module")
def one_slot() -> Iterator[LiveServer]:
    """One slot: every second session must move the first one's chain out of the way."""
    s = start_server("--slots", "1", "--api-key", KEY_A, "--api-key", KEY_B, name="one-slot")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tiny_host() -> Iterator[LiveServer]:
    """One slot and room in host RAM for about one snapshot, so older ones get evicted."""
    s = start_server("--slots", "1", "--kv-host-budget", "9000000", name="tiny-host")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def two_slots() -> Iterator[LiveServer]:
    s = start_server("--slots", "2", "--ctx", "1024", name="two-slots")
    yield s
    s.stop()


class Session:
    """One agent session over one WebSocket: store:false chain, delta-only turns."""

    def __init__(self, server: LiveServer, key: str | None = None, max_tokens: int = 12) -> None:
        self.server = server
        self.key = key
        self.max_tokens = max_tokens
        self.prev: str | None = None
        self.ws: Any = None
        self.outputs: list[str] = []
        self.usages: list[dict[str, Any]] = []

    async def __aenter__(self) -> Session:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        self.ws = await websockets.connect(self.server.ws_url, additional_headers=headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        # wait until the server has processed the close (and released the slot)
        for _ in range(100):
            if self.server.health()["websocket_connections"] == 0:
                break
            await asyncio.sleep(0.05)

    async def turn(self, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "response.create",
            "model": "default",
            "instructions": INSTRUCTIONS,
            "input": [{"role": "user", "content": text}],
            "temperature": 0,
            "max_output_tokens": self.max_tokens,
            "store": False,
        }
        if self.prev:
            body["previous_response_id"] = self.prev
        await self.ws.send(json.dumps(body))
        while True:
            event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=120))
            assert event["type"] != "error", event
            if event["type"] in TERMINAL:
                break
        resp: dict[str, Any] = event["response"]
        self.prev = resp["id"]
        self.outputs.append(output_text(resp))
        self.usages.append(resp["usage"] | {"tier": resp["warmloop"]["cache_tier"]})
        return resp


def output_text(resp: dict[str, Any]) -> str:
    return "".join(
        c["text"] for item in resp["output"] if item["type"] == "message" for c in item["content"]
    )


def cold_outputs(cold: LiveServer, turns: list[str], max_tokens: int = 12) -> list[str]:
    """The same chain on the stateless server: every prompt computed in full."""
    outs: list[str] = []
    prev = None
    for text in turns:
        body: dict[str, Any] = {
            "model": "default",
            "instructions": INSTRUCTIONS,
            "input": [{"role": "user", "content": text}],
            "temperature": 0,
            "max_output_tokens": max_tokens,
        }
        if prev:
            body["previous_response_id"] = prev
        r = httpx.post(f"{cold.base_url}/responses", json=body, timeout=120)
        r.raise_for_status()
        resp = r.json()
        assert resp["usage"]["input_tokens_details"]["cached_tokens"] == 0
        prev = resp["id"]
        outs.append(output_text(resp))
    return outs


def check_chain(session: Session, turns: list[str], cold: list[str]) -> None:
    """Each turn equal to its cold run, or diverging only at a near-tie; after the first
    divergence the two chains have different histories, so the comparison stops there."""
    for i in range(len(turns)):
        history: list[tuple[str, str]] = list(zip(turns[:i], cold[:i], strict=True))
        cached = session.usages[i]["input_tokens_details"]["cached_tokens"]
        assert_same_or_near_tie(
            INSTRUCTIONS, history, turns[i], session.outputs[i], cold[i], cached
        )
        if session.outputs[i] != cold[i]:
            return


def metric(server: LiveServer, name: str, **labels: str) -> float:
    # /metrics needs a key on a server with keys; an open server ignores it
    headers = {"Authorization": f"Bearer {KEY_A}"}
    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", headers=headers).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = (
        rf"^{re.escape(name)}(?:{{{re.escape(want)}}})? (\S+)$"
        if want
        else rf"^{re.escape(name)} (\S+)$"
    )
    m = re.search(pattern, text, re.MULTILINE)
    assert m, f"{name} {labels} not in /metrics"
    return float(m.group(1))


async def test_snapshot_restore_is_delta_only_and_exact(
    one_slot: LiveServer, open_server: LiveServer
) -> None:
    turns_a = ["Which file defines the server?", "And the tests?", "Thanks. Anything else?"]
    turns_b = ["Hello there.", "Bye."]
    snaps_before = metric(one_slot, "warmloop_kv_snapshots_total")
    restores_before = metric(one_slot, "warmloop_kv_restores_total")
    async with Session(one_slot, KEY_A) as a, Session(one_slot, KEY_A) as b:
        await a.turn(turns_a[0])
        await b.turn(turns_b[0])  # takes the only slot: a's chain goes to host RAM
        r = await a.turn(turns_a[1])  # a comes back from host RAM
        assert a.usages[1]["tier"] == "host"
        prev = a.usages[0]
        assert r["usage"]["input_tokens_details"]["cached_tokens"] >= (
            prev["input_tokens"] + prev["output_tokens"] - 1
        )
        await b.turn(turns_b[1])
        await a.turn(turns_a[2])
    assert metric(one_slot, "warmloop_kv_snapshots_total") >= snaps_before + 2
    assert metric(one_slot, "warmloop_kv_restores_total") >= restores_before + 2
    check_chain(a, turns_a, cold_outputs(open_server, turns_a))
    check_chain(b, turns_b, cold_outputs(open_server, turns_b))


async def test_host_eviction_recomputes_correctly(
    tiny_host: LiveServer, open_server: LiveServer
) -> None:
    turns = ["Describe the cache.", "Shorter please."]
    evictions_before = metric(tiny_host, "warmloop_kv_host_evictions_total")
    async with Session(tiny_host) as a, Session(tiny_host) as b, Session(tiny_host) as c:
        await a.turn(turns[0])
        await b.turn("Unrelated question: what is one plus one?")  # a -> host RAM
        await c.turn("Another one: what is two plus two?")  # b -> host RAM, a evicted
        await a.turn(turns[1])
    assert metric(tiny_host, "warmloop_kv_host_evictions_total") > evictions_before
    # a's chain was not held anywhere: only the shared instructions prefix was reused
    prev = a.usages[0]
    assert a.usages[1]["input_tokens_details"]["cached_tokens"] < prev["input_tokens"]
    check_chain(a, turns, cold_outputs(open_server, turns))


async def test_shared_prefix_across_sessions(open_server: LiveServer) -> None:
    """B starts while A still holds its slot: B's slot gets A's instructions by
    `llama_memory_seq_cp` (tier "prefix"), and B's answer equals a cold run's."""
    fresh = start_server(name="prefix-copy")
    try:
        async with Session(fresh) as a:
            first = await a.turn("What does the engine do?")
            async with Session(fresh) as b:
                r = await b.turn("What does the store do?")
        shared = r["usage"]["input_tokens_details"]["cached_tokens"]
        assert shared >= 150  # the instructions are ~200 tokens
        assert shared < first["usage"]["input_tokens"]
        assert b.usages[0]["tier"] == "prefix"
        assert metric(fresh, "warmloop_kv_prefix_copies_total") >= 1
        check_chain(
            b, ["What does the store do?"], cold_outputs(open_server, ["What does the store do?"])
        )
    finally:
        fresh.stop()


async def test_tenants_never_share_prefixes(one_slot: LiveServer) -> None:
    async with Session(one_slot, KEY_A) as a:
        await a.turn("Tenant A asks a question.")
    async with Session(one_slot, KEY_B) as b:
        r = await b.turn("Tenant B asks a question.")
    assert r["usage"]["input_tokens_details"]["cached_tokens"] == 0
    assert b.usages[0]["tier"] == "none"
    # while tenant A's next session does find its own prefix
    async with Session(one_slot, KEY_A) as a2:
        r2 = await a2.turn("Tenant A asks again.")
    assert r2["usage"]["input_tokens_details"]["cached_tokens"] > 100


async def test_sixteen_sessions_on_two_slots(
    two_slots: LiveServer, open_server: LiveServer
) -> None:
    rng = random.Random(1234)
    scripts = [
        [f"Session {s}: step {t}, check item {rng.randint(1, 99)}." for t in range(3)]
        for s in range(16)
    ]
    pauses = [[rng.uniform(0.0, 0.3) for _ in range(3)] for _ in range(16)]

    async def run(s: int) -> Session:
        async with Session(two_slots, max_tokens=8) as sess:
            for t, text in enumerate(scripts[s]):
                await asyncio.sleep(pauses[s][t])  # the client "runs a tool"
                await sess.turn(text)
            return sess

    sessions = await asyncio.gather(*(run(s) for s in range(16)))
    for s, sess in enumerate(sessions):
        # every later turn reused at least the whole previous turn
        for t in range(1, 3):
            prev = sess.usages[t - 1]
            assert sess.usages[t]["input_tokens_details"]["cached_tokens"] >= (
                prev["input_tokens"] + prev["output_tokens"] - 1
            ), (s, t, sess.usages)
        check_chain(sess, scripts[s], cold_outputs(open_server, scripts[s], max_tokens=8))
    health = two_slots.health()
    assert health["slots_busy"] == 0


def test_metrics_move(two_slots: LiveServer) -> None:
    before = metric(two_slots, "warmloop_prompt_tokens_computed_total")
    reused_before = metric(two_slots, "warmloop_prompt_tokens_reused_total", tier="slot")
    body = {
        "model": "default",
        "input": "Hi",
        "instructions": INSTRUCTIONS,
        "temperature": 0,
        "max_output_tokens": 2,
    }
    first = httpx.post(f"{two_slots.base_url}/responses", json=body, timeout=60).json()
    body2 = body | {"previous_response_id": first["id"], "input": "Again"}
    second = httpx.post(f"{two_slots.base_url}/responses", json=body2, timeout=60).json()
    assert metric(two_slots, "warmloop_prompt_tokens_computed_total") > before
    # one structured log line per response: its cached and computed tokens and their tier
    usage = second["usage"]
    cached = usage["input_tokens_details"]["cached_tokens"]
    line = next(x for x in two_slots.log().splitlines() if f"id={second['id']} " in x)
    assert f"input={usage['input_tokens']} cached={cached} " in line
    assert f"computed={usage['input_tokens'] - cached} " in line
    assert f"tier={second['warmloop']['cache_tier']} " in line and cached > 0
    total_reused = sum(
        metric(two_slots, "warmloop_prompt_tokens_reused_total", tier=t)
        for t in ("slot", "prefix", "host")
    )
    assert total_reused > reused_before
    text = httpx.get(f"http://127.0.0.1:{two_slots.port}/metrics").text
    for name in (
        "warmloop_ttft_seconds_bucket",
        "warmloop_time_per_output_token_seconds_bucket",
        "warmloop_slots_in_use",
        "warmloop_kv_host_bytes",
        "warmloop_websocket_connections",
        'warmloop_kv_lookups_total{tier="none"}',
    ):
        assert name in text
