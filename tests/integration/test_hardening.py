"""One test per bug the hardening issue found: each failed before its fix.

Client mistakes are 400s in OpenAI's shape naming the param (HTTP) or nested error
events on a socket that stays open (WS); limits hold under races; DELETE means deleted;
and nothing is left running afterwards (checked on /metrics).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.conftest import KEY_A, KEY_B, LiveServer, start_server
from tests.robustness import leaks

HEADERS = {"Authorization": f"Bearer {KEY_A}"}
TERMINAL = ("response.completed", "response.incomplete", "response.failed")
# A grammar that forces a long answer: the response is surely still running later.
LONG = {
    "type": "json_schema",
    "name": "nums",
    "schema": {
        "type": "object",
        "properties": {"n": {"type": "array", "items": {"type": "integer"}, "minItems": 150}},
        "required": ["n"],
    },
}


@pytest.fixture(scope="module")
def hard() -> Iterator[LiveServer]:
    s = start_server(
        "--api-key",
        KEY_A,
        "--api-key",
        KEY_B,
        "--max-concurrent-per-key",
        "1",
        "--ws-queue-size",
        "3",
        name="hardening",
    )
    yield s
    s.stop()


def post(s: LiveServer, body: Any, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, str | bytes) else json.dumps(body)
    headers = {**HEADERS, "Content-Type": "application/json"}
    kw.setdefault("timeout", 60)
    return httpx.post(f"{s.base_url}/responses", content=content, headers=headers, **kw)


def assert_400(r: httpx.Response, param: str | None, code: str | None = None) -> None:
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err


async def assert_no_leaks(s: LiveServer) -> None:
    await asyncio.to_thread(leaks.assert_no_leaks, s, HEADERS)


async def connect(s: LiveServer) -> ClientConnection:
    return await websockets.connect(s.ws_url, additional_headers=HEADERS, max_size=None)


async def until_done(ws: ClientConnection) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), timeout=90))
        out.append(event)
        if event["type"] in TERMINAL or event["type"] == "error":
            return out


# ----- repro 3: streamed creates that failed while sending locked the key out ----------
async def test_streamed_creates_with_a_lone_surrogate_never_lock_the_key_out(
    hard: LiveServer,
) -> None:
    fmt = {"type": "json_schema", "name": "x", "schema": {"type": "string", "pattern": "^\ud800$"}}
    body = {"input": "hi", "stream": True, "max_output_tokens": 2, "text": {"format": fmt}}
    raw = json.dumps(body)  # ensure_ascii: the surrogate travels as a \\ud800 escape
    for _ in range(18):  # more than --max-concurrent-per-key ever allowed
        assert_400(await asyncio.to_thread(post, hard, raw), "text.format.schema.pattern")
    ok = await asyncio.to_thread(post, hard, {"input": "hi", "max_output_tokens": 1})
    assert ok.status_code == 200, ok.text
    await assert_no_leaks(hard)


# ----- repro 4: HTTP 500 for client mistakes -----------------------------------------
def test_tool_type_of_the_wrong_type_is_a_400(hard: LiveServer) -> None:
    assert_400(post(hard, {"input": "hi", "tools": [{"type": []}]}), "tools[0].type")
    assert_400(post(hard, {"input": "hi", "tools": [{"type": {"a": 1}}]}), "tools[0].type")


def test_a_body_nested_100000_deep_is_a_400(hard: LiveServer) -> None:
    assert_400(post(hard, "[" * 100_000), None, "invalid_json")
    deep = '{"input": "hi", "metadata": ' + '{"a": ' * 200 + "1" + "}" * 200 + "}"
    assert_400(post(hard, deep), "metadata" + ".a" * 63, "invalid_json")


def test_a_lone_surrogate_in_input_is_a_400_naming_it(hard: LiveServer) -> None:
    assert_400(post(hard, '{"input": "\\ud800"}'), "input", "invalid_value")
    bad_item = '{"input": [{"role": "user", "content": "ok \\udfff"}]}'
    assert_400(post(hard, bad_item), "input[0].content", "invalid_value")


# ----- repro 5: dead sockets ---------------------------------------------------------
async def test_bad_frames_get_error_events_and_the_lane_lives_on(hard: LiveServer) -> None:
    async with await connect(hard) as ws:
        await ws.send(json.dumps({"type": []}))
        event = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
        assert event["type"] == "error" and event["error"]["param"] == "type"
        frame = '{"type": "response.create", "input": "\\ud800", "store": false}'
        for _ in range(2):  # the lane that refused it answers the next create too
            await ws.send(frame)
            event = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
            assert event["type"] == "error" and event["error"]["code"] == "invalid_value"
        ok = {"type": "response.create", "input": "hi", "store": False, "max_output_tokens": 1}
        await ws.send(json.dumps(ok))
        assert (await until_done(ws))[-1]["type"] == "response.incomplete"
    await assert_no_leaks(hard)


# ----- repro 6: a schema llama.cpp cannot enforce is the client's 400 ---------------
def test_a_schema_over_the_grammar_repetition_cap_is_a_400(hard: LiveServer) -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 5000}}}
    fmt = {"type": "json_schema", "name": "x", "schema": schema}
    r = post(hard, {"input": "hi", "text": {"format": fmt}})
    assert_400(r, "text.format.schema", "invalid_json_schema")
    tool = {"type": "function", "name": "f", "parameters": schema}
    skipped = {"type": "web_search"}
    r = post(hard, {"input": "hi", "tools": [skipped, tool]})
    assert_400(r, "tools[1].parameters", "invalid_json_schema")


# ----- repro 7: size bounds ----------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("metadata", {f"k{i}": "v" for i in range(17)}),
        ("metadata", {"k" * 65: "v"}),
        ("metadata", {"k": "v" * 513}),
        ("user", "u" * 513),
        ("prompt_cache_key", "p" * 513),
        ("safety_identifier", "s" * 65),
    ],
)
def test_bookkeeping_fields_are_bounded(hard: LiveServer, field: str, value: Any) -> None:
    assert_400(post(hard, {"input": "hi", field: value}), field)


def test_metadata_within_openai_bounds_is_echoed(hard: LiveServer) -> None:
    metadata = {f"k{i:02d}" + "x" * 60: "v" * 512 for i in range(16)}
    r = post(hard, {"input": "hi", "max_output_tokens": 1, "metadata": metadata})
    assert r.status_code == 200, r.text
    assert r.json()["metadata"] == metadata


async def test_queued_creates_are_bounded_per_connection_not_per_lane() -> None:
    """--ws-max-lanes 4 --ws-queue-size 3: with 4 lanes busy, 8 more creates (2 per lane,
    each lane's own queue has room) wait at most 3 in all. Each lane used to queue its
    own, so 32 lanes could hold 9 creates each."""
    with start_server(
        "--api-key", KEY_A, "--ws-max-lanes", "4", "--ws-queue-size", "3", name="ws-queue"
    ) as s:
        async with await connect(s) as ws:
            for k in range(4):  # 2 slots: these keep all 4 lanes busy for a while
                busy = {"type": "response.create", "stream_id": f"lane{k}", "store": False}
                await ws.send(
                    json.dumps({**busy, "input": "Count to fifty.", "max_output_tokens": 60})
                )
            for k in range(8):
                frame = {"type": "response.create", "stream_id": f"lane{k % 4}", "store": False}
                await ws.send(json.dumps({**frame, "input": "hi", "max_output_tokens": 1}))
            refused = answered = 0
            while answered < 4 + 3 or refused < 5:
                event = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
                if event["type"] == "error":
                    assert event["error"]["code"] == "queue_full", event
                    refused += 1
                elif event["type"] in TERMINAL:
                    answered += 1
            assert (refused, answered) == (5, 7)
        await assert_no_leaks(s)


# ----- limits under races --------------------------------------------------------------
async def test_parallel_streamed_creates_respect_the_concurrency_limit(hard: LiveServer) -> None:
    body = {
        "input": "List numbers.",
        "max_output_tokens": 300,
        "stream": True,
        "text": {"format": LONG},
    }

    async def one(client: httpx.AsyncClient) -> int:
        async with client.stream(
            "POST", f"{hard.base_url}/responses", json=body, headers=HEADERS
        ) as r:
            if r.status_code == 200:
                lines = r.aiter_lines()
                async for line in lines:  # hold the stream until every create is in
                    if "response.created" in line:
                        await asyncio.sleep(3)
                        break
            return r.status_code

    async with httpx.AsyncClient(timeout=120) as client:
        codes = await asyncio.gather(*(one(client) for _ in range(6)))
    assert sorted(codes) == [200, 429, 429, 429, 429, 429], codes
    await assert_no_leaks(hard)


# ----- DELETE ------------------------------------------------------------------------
async def test_delete_reaches_the_sockets_cache(hard: LiveServer) -> None:
    async with await connect(hard) as ws:
        create = {"type": "response.create", "input": "hi", "max_output_tokens": 1}
        await ws.send(json.dumps(create))
        rid = (await until_done(ws))[-1]["response"]["id"]
        deleted = await asyncio.to_thread(
            httpx.delete, f"{hard.base_url}/responses/{rid}", headers=HEADERS
        )
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        await ws.send(json.dumps({**create, "previous_response_id": rid}))
        event = (await until_done(ws))[-1]
        assert event["type"] == "error", event
        assert event["error"]["code"] == "previous_response_not_found"
    await assert_no_leaks(hard)


async def test_delete_of_a_running_response_deletes_it(hard: LiveServer) -> None:
    async with await connect(hard) as ws:
        long = {"input": "List numbers.", "max_output_tokens": 300, "text": {"format": LONG}}
        await ws.send(json.dumps({"type": "response.create", **long}))
        created = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
        rid = created["response"]["id"]
        deleted = await asyncio.to_thread(
            httpx.delete, f"{hard.base_url}/responses/{rid}", headers=HEADERS
        )
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        final = (await until_done(ws))[-1]
        assert final["response"]["status"] == "cancelled", final["response"]["status"]
    got = await asyncio.to_thread(httpx.get, f"{hard.base_url}/responses/{rid}", headers=HEADERS)
    assert got.status_code == 404
    await assert_no_leaks(hard)


# ----- /metrics ----------------------------------------------------------------------
def test_metrics_need_a_key_when_keys_are_set(hard: LiveServer) -> None:
    assert httpx.get(f"{hard.url}/metrics").status_code == 401
    bad = httpx.get(f"{hard.url}/metrics", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{hard.url}/metrics", headers=HEADERS).status_code == 200


def test_a_metrics_key_is_the_only_key_for_metrics() -> None:
    with start_server("--api-key", KEY_A, "--metrics-key", "scrape-me", name="metrics") as s:
        assert httpx.get(f"{s.url}/metrics", headers=HEADERS).status_code == 401
        scraper = {"Authorization": "Bearer scrape-me"}
        assert httpx.get(f"{s.url}/metrics", headers=scraper).status_code == 200


# ----- health ------------------------------------------------------------------------
def test_healthz_names_the_parts_it_checked(hard: LiveServer) -> None:
    r = httpx.get(f"{hard.url}/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert "failing" not in r.json()


def test_serve_with_a_model_the_engine_cannot_run_fails_with_one_clear_error(
    tmp_path: Any,
) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(RuntimeError) as err:
        start_server("--model", str(bogus), name="broken-model")
    assert "engine self-test failed" in str(err.value)


async def test_a_client_that_hangs_up_on_a_json_create_stops_its_generation(
    hard: LiveServer,
) -> None:
    """Non-streamed: the server notices the disconnect and cancels the job, instead of
    generating up to 1,500 tokens (half a minute here) for nobody."""
    schema = {
        "type": "object",
        "properties": {"n": {"type": "array", "items": {"type": "integer"}, "minItems": 700}},
        "required": ["n"],
    }
    fmt = {"type": "json_schema", "name": "nums", "schema": schema}
    body = {"input": "List numbers.", "max_output_tokens": 1500, "text": {"format": fmt}}
    with pytest.raises(httpx.ReadTimeout):
        await asyncio.to_thread(post, hard, body, timeout=2)
    await assert_no_leaks(hard)
