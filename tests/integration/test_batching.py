"""Continuous batching: concurrent requests produce their solo outputs, and cancelling one
sequence never disturbs the others. Parallel lanes (`stream_id`) on one socket, and
forks of one lane's chain into another."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
import websockets

from tests.conftest import LiveServer, start_server
from tests.near_tie import assert_same_or_near_tie
from warmloop.protocol.tools import FunctionTool

TERMINAL = ("response.completed", "response.incomplete", "response.failed")
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def batch_server() -> Iterator[LiveServer]:
    s = start_server("--slots", "8", "--ctx", "1024", name="batch")
    yield s
    s.stop()


def requests_mix() -> list[dict[str, Any]]:
    """Eight requests: short and long prompts, a forced tool call, a JSON schema."""
    base = {"model": "default", "temperature": 0, "max_output_tokens": 20}
    long_text = "Summarize this log: " + " ".join(f"line {i} ok;" for i in range(120))
    return [
        base | {"input": "Say hello."},
        base | {"input": long_text},
        base | {"input": "Name three rivers.", "instructions": "Be terse."},
        base
        | {
            "input": "What is the weather in Oslo?",
            "tools": [WEATHER],
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "max_output_tokens": 40,
        },
        base
        | {
            "input": "Invent a person.",
            "text": {"format": {"type": "json_schema", "name": "person", "schema": PERSON}},
            "max_output_tokens": 40,
        },
        base | {"input": "Count from one to ten."},
        base | {"input": long_text.replace("ok", "fail")},
        base | {"input": "What is a compiler?"},
    ]


def output_of(resp: dict[str, Any]) -> str:
    parts = []
    for item in resp["output"]:
        if item["type"] == "message":
            parts += [c["text"] for c in item["content"]]
        elif item["type"] == "function_call":
            parts.append(f"{item['name']}({item['arguments']})")
    return "".join(parts)


def check_same(body: dict[str, Any], solo: dict[str, Any], batched: dict[str, Any]) -> None:
    tools = [
        FunctionTool(t["name"], t["description"], t["parameters"], False)
        for t in body.get("tools", [])
    ]
    cached = batched["usage"]["input_tokens_details"]["cached_tokens"]
    a, b = output_of(batched), output_of(solo)
    if body.get("tools"):  # the text the model wrote is the call's arguments
        a = "".join(i["arguments"] for i in batched["output"] if i["type"] == "function_call")
        b = "".join(i["arguments"] for i in solo["output"] if i["type"] == "function_call")
    assert_same_or_near_tie(body.get("instructions"), [], body["input"], a, b, cached, tools)


async def test_batched_outputs_equal_solo_outputs(batch_server: LiveServer) -> None:
    bodies = requests_mix()
    url = f"{batch_server.base_url}/responses"
    async with httpx.AsyncClient(timeout=300) as client:
        solo = []
        for body in bodies:  # one at a time: nothing else in the batch
            r = await client.post(url, json=body | {"store": False})
            solo.append(r.json())
        batched = await asyncio.gather(
            *(client.post(url, json=body | {"store": False}) for body in bodies)
        )
    for body, s, b in zip(bodies, solo, batched, strict=True):
        resp = b.json()
        assert resp["status"] in ("completed", "incomplete"), resp
        check_same(body, s, resp)
    jsonschema.validate(json.loads(output_of(batched[4].json())), PERSON)
    call = next(i for i in batched[3].json()["output"] if i["type"] == "function_call")
    jsonschema.validate(json.loads(call["arguments"]), WEATHER["parameters"])


async def test_cancel_one_of_eight(batch_server: LiveServer) -> None:
    bodies = [b | {"store": False} for b in requests_mix()]
    url = f"{batch_server.base_url}/responses"
    async with httpx.AsyncClient(timeout=300) as client:
        solo = [(await client.post(url, json=b)).json() for b in bodies]

        async def stream_and_cancel(body: dict[str, Any]) -> str:
            # a streamed request whose client goes away after its first token
            async with client.stream("POST", url, json=body | {"stream": True}) as r:
                async for line in r.aiter_lines():
                    if '"response.output_text.delta"' in line or "function_call_arguments" in line:
                        break
            return "cancelled"

        victim = 1  # the long prompt
        tasks = [
            stream_and_cancel(b) if i == victim else client.post(url, json=b)
            for i, b in enumerate(bodies)
        ]
        results = await asyncio.gather(*tasks)
    for i, (body, s, r) in enumerate(zip(bodies, solo, results, strict=True)):
        if i == victim:
            assert r == "cancelled"
            continue
        assert isinstance(r, httpx.Response)
        check_same(body, s, r.json())
    for _ in range(50):
        if batch_server.health()["slots_busy"] == 0:
            break
        await asyncio.sleep(0.1)
    assert batch_server.health()["slots_busy"] == 0


# ----- lanes ----------------------------------------------------------------------------
async def lane_events(ws: Any, want: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
    """Read events until each lane in `want` has seen that many terminal events."""
    seen: dict[str, list[dict[str, Any]]] = {k: [] for k in want}
    done = dict.fromkeys(want, 0)
    while any(done[k] < want[k] for k in want):
        event = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
        assert event["type"] != "error", event
        sid = event["stream_id"]
        seen[sid].append(event)
        if event["type"] in TERMINAL:
            done[sid] += 1
    return seen


def create(stream_id: str, text: str, prev: str | None = None, n: int = 24) -> str:
    body: dict[str, Any] = {
        "type": "response.create",
        "stream_id": stream_id,
        "model": "default",
        "input": [{"role": "user", "content": text}],
        "temperature": 0,
        "max_output_tokens": n,
        "store": False,
    }
    if prev:
        body["previous_response_id"] = prev
    return json.dumps(body)


async def test_two_lanes_run_concurrently_and_keep_their_chains(batch_server: LiveServer) -> None:
    async with websockets.connect(batch_server.ws_url) as ws:
        await ws.send(create("a", "Tell me about cats."))
        await ws.send(create("b", "Tell me about boats."))
        seen = await lane_events(ws, {"a": 1, "b": 1})
        # interleaved: each lane produced deltas before the other one finished
        assert all(any(e["type"].endswith(".delta") for e in seen[k]) for k in ("a", "b"))
        a1, b1 = seen["a"][-1]["response"], seen["b"][-1]["response"]
        assert all(e["sequence_number"] == i for i, e in enumerate(seen["a"]))
        await ws.send(create("a", "More about cats.", a1["id"]))
        await ws.send(create("b", "More about boats.", b1["id"]))
        seen2 = await lane_events(ws, {"a": 1, "b": 1})
        for first, nxt in ((a1, seen2["a"][-1]["response"]), (b1, seen2["b"][-1]["response"])):
            u = first["usage"]
            assert nxt["usage"]["input_tokens_details"]["cached_tokens"] >= (
                u["input_tokens"] + u["output_tokens"] - 1
            )
            assert nxt["previous_response_id"] == first["id"]


async def test_lanes_interleave(batch_server: LiveServer) -> None:
    async with websockets.connect(batch_server.ws_url) as ws:
        await ws.send(create("x", "Write a long poem about rain.", n=40))
        await ws.send(create("y", "Write a long poem about snow.", n=40))
        events: list[dict[str, Any]] = []
        done = 0
        while done < 2:
            e = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
            events.append(e)
            done += e["type"] in TERMINAL
    deltas = [e["stream_id"] for e in events if e["type"] == "response.output_text.delta"]
    first_x_done = next(i for i, e in enumerate(events) if e["type"] in TERMINAL)
    # both lanes were generating before the first of them finished
    assert {"x", "y"} <= {e["stream_id"] for e in events[:first_x_done]}
    assert deltas.count("x") > 1 and deltas.count("y") > 1


async def test_fork_copies_parent_kv(batch_server: LiveServer, open_server: LiveServer) -> None:
    async with websockets.connect(batch_server.ws_url) as ws:
        await ws.send(create("main", "Plan a trip to Rome.", n=16))
        parent = (await lane_events(ws, {"main": 1}))["main"][-1]["response"]
        await ws.send(create("fork", "Make it cheaper.", parent["id"], n=16))
        await ws.send(create("main", "Make it longer.", parent["id"], n=16))
        seen = await lane_events(ws, {"fork": 1, "main": 1})
    fork = seen["fork"][-1]["response"]
    u = parent["usage"]
    assert fork["usage"]["input_tokens_details"]["cached_tokens"] >= (
        u["input_tokens"] + u["output_tokens"] - 1
    )
    assert fork["warmloop"]["cache_tier"] in ("prefix", "host", "slot")
    # a cold run of the same input gives the same answer
    cold = httpx.post(
        f"{open_server.base_url}/responses",
        json={
            "model": "default",
            "input": [
                {"role": "user", "content": "Plan a trip to Rome."},
                {"role": "assistant", "content": output_of(parent)},
                {"role": "user", "content": "Make it cheaper."},
            ],
            "temperature": 0,
            "max_output_tokens": 16,
        },
        timeout=120,
    ).json()
    assert_same_or_near_tie(
        None,
        [("Plan a trip to Rome.", output_of(parent))],
        "Make it cheaper.",
        output_of(fork),
        output_of(cold),
        fork["usage"]["input_tokens_details"]["cached_tokens"],
    )


async def test_stream_id_errors(batch_server: LiveServer) -> None:
    async with websockets.connect(batch_server.ws_url) as ws:
        await ws.send(create("bad id!", "Hi"))
        err = json.loads(await ws.recv())
        assert err["error"]["code"] == "invalid_stream_id"
        await ws.send(json.dumps({"type": "response.create", "stream_id": 7, "input": "Hi"}))
        assert json.loads(await ws.recv())["error"]["code"] == "invalid_stream_id"
        for k in range(32):
            await ws.send(create(f"lane{k}", "Hi", n=1))
        await ws.send(create("lane32", "Hi", n=1))
        codes = []
        terminals = 0
        while terminals < 32 or not codes:
            e = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
            if e["type"] == "error":
                codes.append(e["error"]["code"])
                assert e.get("stream_id") == "lane32"
            terminals += e["type"] in TERMINAL
        assert codes == ["websocket_stream_limit_reached"]
    health = batch_server.health()
    for _ in range(50):
        if health["slots_busy"] == 0 and health["slots_leased"] == 0:
            break
        await asyncio.sleep(0.1)
        health = batch_server.health()
    assert health["slots_busy"] == 0 and health["slots_leased"] == 0


async def test_sessions_that_start_together_compute_their_instructions_once(
    batch_server: LiveServer,
) -> None:
    """Three cold requests with the same long instructions at once: one computes them,
    the others fork its KV (cached_tokens says so) and answer as they would alone."""
    instructions = "You are a careful agent. " + " ".join(
        f"Rule {k}: check file f{k}.py twice." for k in range(60)
    )
    bodies = [
        {
            "model": "default",
            "temperature": 0,
            "max_output_tokens": 12,
            "instructions": instructions,
            "input": text,
            "store": False,
        }
        for text in ("Fix the parser.", "Rename a variable.", "Write a test.")
    ]
    url = f"{batch_server.base_url}/responses"
    async with httpx.AsyncClient(timeout=300) as client:
        together = await asyncio.gather(*(client.post(url, json=body) for body in bodies))
        alone = [(await client.post(url, json=body)).json() for body in bodies]
    usage = sorted(
        (r.json()["usage"] for r in together),
        key=lambda u: u["input_tokens_details"]["cached_tokens"],
    )
    # The first computed the instructions (a few leading tokens may be other tests').
    assert usage[0]["input_tokens_details"]["cached_tokens"] < 24
    for u in usage[1:]:  # the instructions (all but the last few tokens) came from the first
        assert u["input_tokens_details"]["cached_tokens"] >= u["input_tokens"] - 24
    for body, t, a in zip(bodies, together, alone, strict=True):
        check_same(body, a, t.json())
