"""Structural fuzzing of everything a client can send to `/v1/responses`, on both transports.

Arbitrary JSON in every field of the create body (any type, deep nesting, lone UTF-16
surrogates in strings and keys, NaN and huge numbers, strings and arrays near and over
the body limit), non-object JSON, non-JSON, binary and oversized WebSocket frames and
unknown event types. The oracle for every case: HTTP answers 2xx or 4xx (never 5xx),
a 4xx is JSON in OpenAI's error shape, a stream ends with a terminal event, and a
WebSocket error is a nested `error` event after which the socket still answers.

`WARMLOOP_FUZZ_CASES` (default 2000) is the number of cases across the whole file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import KEY_A, KEY_B, LiveServer, start_server
from tests.robustness.leaks import assert_no_leaks, auth
from tests.robustness.wire import TERMINAL, Closed, RawWebSocket, sse_events

TOTAL_CASES = int(os.environ.get("WARMLOOP_FUZZ_CASES", "2000"))
SHARE = {"http_json": 0.35, "http_sse": 0.15, "ws_create": 0.30, "ws_frames": 0.20}
BODY_LIMIT = 65536  # --max-body-bytes and --ws-max-frame-bytes of the fuzz server
PROBE_LANE = "zz-fuzz-probe"  # a lane no generated frame names
CASES_PER_SOCKET = 150  # reconnect now and then: lanes per socket are limited (32)
A, B = auth(KEY_A), auth(KEY_B)


def cases(kind: str) -> int:
    return max(1, round(TOTAL_CASES * SHARE[kind]))


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[LiveServer]:
    s = start_server(
        "--api-key",
        KEY_A,
        "--api-key",
        KEY_B,
        "--model-alias",
        "gpt-test",
        "--rate-limit-per-minute",
        "0",
        "--max-output-tokens",
        "2",  # every request that gets through generates at most 2 tokens
        "--max-input-tokens",
        "300",
        "--max-body-bytes",
        str(BODY_LIMIT),
        "--ws-max-frame-bytes",
        str(BODY_LIMIT),
        "--max-concurrent-per-key",
        "64",
        name="fuzz-structural",
    )
    yield s
    s.stop()


# ----- strategies ------------------------------------------------------------------------
FIELDS = (
    "model", "input", "instructions", "previous_response_id", "store", "stream", "background",
    "generate", "max_output_tokens", "temperature", "top_p", "seed", "tools", "tool_choice",
    "parallel_tool_calls", "max_tool_calls", "text", "metadata", "prompt_cache_key",
    "prompt_cache_retention", "truncation", "user", "safety_identifier", "include", "reasoning",
    "service_tier", "stream_options", "top_logprobs", "client_metadata", "conversation",
    "context_management",
)  # fmt: skip
ITEM_KEYS = ("type", "role", "content", "call_id", "name", "arguments", "output", "id", "text")

surrogates = st.characters(categories=["Cs"])  # lone UTF-16 halves: never in st.text()
chars = st.one_of(st.characters(), surrogates)
odd_strings = st.sampled_from(
    ["", "\ud800", "\udfff", "a\udc00b", "\x00", "\u202e", "🙂", "default", "gpt-test",
     "resp_", "msg_0", "response.create", "null", "{", "\\", "x" * 300, "\ud800" * 50]
)  # fmt: skip
strings = st.one_of(st.text(chars, max_size=24), odd_strings)
odd_numbers = st.sampled_from(
    [0, -1, 1, 2, 3, 2**31, 2**53 + 1, 2**63, -(2**63) - 1, 10**40, -0.0, 0.5, 1e308, 5e-324,
     float("nan"), float("inf"), float("-inf")]
)  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and ±Infinity included: json.dumps writes them as bare tokens
    odd_numbers,
    strings,
)
keys = st.one_of(strings, st.sampled_from(FIELDS + ITEM_KEYS))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=16,
)
items = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(
            ["message", "function_call", "function_call_output", "item_reference", "bogus"]
        ),
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool", ""]),
        "content": st.one_of(strings, st.lists(json_values, max_size=2), json_values),
        "call_id": scalars,
        "name": scalars,
        "arguments": scalars,
        "output": json_values,
        "id": scalars,
    },
)
# Values that pass validation, so mutated bodies often reach the engine and the stream.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["default", "gpt-test", "nope"]),
    "input": st.one_of(
        strings,
        st.lists(items, max_size=3),
        st.just([{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]),
    ),
    "instructions": strings,
    "previous_response_id": st.sampled_from(["resp_0", "resp_\ud800", ""]),
    "store": st.booleans(),
    "stream": st.booleans(),
    "generate": st.booleans(),
    "max_output_tokens": st.sampled_from([1, 2]),
    "temperature": st.sampled_from([0, 0.7, 2]),
    "top_p": st.sampled_from([0.5, 1]),
    "seed": st.integers(0, 2**32),
    "tools": st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["function", "namespace", "web_search", "bogus"])},
            optional={
                "name": strings,
                "parameters": json_values,
                "tools": json_values,
                "strict": scalars,
            },
        ),
        max_size=2,
    ),
    "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required"]), json_values),
    "text": st.one_of(
        st.just({"format": {"type": "json_object"}}),
        st.just({"format": {"type": "json_schema"}}),
        st.builds(
            lambda schema: {"format": {"type": "json_schema", "name": "x", "schema": schema}},
            json_values,
        ),
    ),
    "metadata": st.dictionaries(strings, strings, max_size=3),
    "include": st.lists(strings, max_size=2),
    "truncation": st.sampled_from(["auto", "disabled", "middle"]),
    "context_management": st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["compaction", "trim"])},
            optional={"compact_threshold": st.one_of(st.integers(-2, 64), json_values)},
        ),
        max_size=2,
    ),
}
field_values = {f: st.one_of(PLAUSIBLE.get(f, json_values), json_values) for f in FIELDS}
mutations = st.lists(st.sampled_from(FIELDS), max_size=4, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({n: field_values[n] for n in names})
)
extra_keys = st.dictionaries(strings, json_values, max_size=2)


@st.composite
def create_bodies(draw: st.DrawFn, stream: bool) -> dict[str, Any]:
    """A valid small create with some fields replaced by anything, sometimes an unknown
    key, sometimes a whole arbitrary object."""
    if draw(st.integers(0, 9)) == 0:
        anything: dict[str, Any] = draw(st.dictionaries(keys, json_values, max_size=6))
        return anything
    body: dict[str, Any] = {
        "model": "default",
        "input": "Hi",
        "max_output_tokens": 1,
        "store": draw(st.booleans()),
    }
    if stream:
        body["stream"] = True
    body |= draw(mutations)
    if draw(st.integers(0, 4)) == 0:
        body |= draw(extra_keys)
    return body


def nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


@dataclass(frozen=True)
class Big:
    """Raw JSON text too big to show in a failure report: deep nesting, or a huge string,
    array or key (kept as this short recipe; `build()` makes the bytes)."""

    kind: str
    size: int
    shape: str
    stream: bool

    def build(self, event_type: str | None = None) -> bytes:
        head = '{"model":"default","max_output_tokens":1,"store":false,'
        if event_type is not None:
            head += f'"type":"{event_type}",'
        if self.stream:
            head += '"stream":true,'
        n = self.size
        if self.kind == "deep":  # `size` is the depth
            return (head + '"input":' + nested(n, self.shape) + "}").encode()
        if self.kind == "string":
            return (head + '"input":"' + "word " * (n // 5) + '"}').encode()
        if self.kind == "surrogates":
            return (head + '"instructions":"' + "\\ud800" * (n // 6) + '","input":"Hi"}').encode()
        if self.kind == "array":
            return (head + '"input":[' + ",".join(["1"] * (n // 2)) + "]}").encode()
        if self.kind == "items":
            item = '{"role":"user","content":"a"}'
            return (head + '"input":[' + ",".join([item] * (n // (len(item) + 1))) + "]}").encode()
        return (head + '"input":"Hi","' + "k" * n + '":1}').encode()


def big_bodies(stream: bool, websocket: bool = False) -> st.SearchStrategy[Big]:
    # A frame over twice the limit may be closed with 1009 ("close only if needed"):
    # keep WebSocket frames under 1.5x the limit, HTTP bodies go to 2x.
    sizes = [BODY_LIMIT // 2, BODY_LIMIT - 200, BODY_LIMIT + 1]
    sizes.append(BODY_LIMIT * 3 // 2 if websocket else BODY_LIMIT * 2)
    depths = [100, 1000, 5000, 15000 if websocket else 50000]
    return st.one_of(
        st.builds(
            Big, st.just("deep"), st.sampled_from(depths), st.sampled_from(SHAPES), st.just(stream)
        ),
        st.builds(
            Big,
            st.sampled_from(["string", "surrogates", "array", "items", "key"]),
            st.sampled_from(sizes),
            st.just(""),
            st.just(stream),
        ),
    )


SHAPES = ["list", "dict"]


@st.composite
def raw_http_bodies(draw: st.DrawFn, stream: bool) -> bytes | Big:
    """Anything as bytes: a (mutated) create, non-object JSON, broken JSON, binary."""
    kind = draw(st.integers(0, 19))
    if kind < 13:
        return json.dumps(draw(create_bodies(stream))).encode()
    if kind < 15:
        return draw(big_bodies(stream))  # built in the test: a short report
    if kind == 15:
        return json.dumps(draw(json_values)).encode()  # a list, number, string, null
    if kind == 16:
        text = json.dumps(draw(create_bodies(stream)))
        return text[: draw(st.integers(0, max(0, len(text) - 1)))].encode()  # cut short
    if kind == 17:
        return draw(st.binary(max_size=64))
    if kind == 18:
        return draw(st.text(chars, max_size=40)).encode("utf-8", "surrogatepass")
    return b""


headers_variants = st.sampled_from(
    [
        {**A, "Content-Type": "application/json"},
        {**A, "Content-Type": "application/json"},
        {**B, "Content-Type": "application/json"},
        {**A, "Content-Type": "application/json", "Accept": "text/event-stream"},
        {**A, "Content-Type": "text/plain"},
        {**A},
        {"Authorization": "Bearer sk-wrong", "Content-Type": "application/json"},
        {"Authorization": "Basic Zm9vOmJhcg==", "Content-Type": "application/json"},
        {"Content-Type": "application/json"},
    ]
)


# ----- the oracle ------------------------------------------------------------------------
def check_error_object(error: Any, where: str) -> None:
    assert isinstance(error, dict), f"{where}: 'error' is not an object: {error!r}"
    missing = {"message", "type", "param", "code"} - set(error)
    assert not missing, f"{where}: error lacks {missing}: {error}"
    assert isinstance(error["message"], str) and error["message"], f"{where}: {error}"
    assert isinstance(error["type"], str), f"{where}: {error}"
    assert error["param"] is None or isinstance(error["param"], str), f"{where}: {error}"
    assert error["code"] is None or isinstance(error["code"], str), f"{where}: {error}"


def check_sse(raw: bytes, sent: bytes) -> None:
    events = sse_events(raw)
    assert events, f"empty SSE stream for {sent[:300]!r}"
    seq = [e["sequence_number"] for e in events if "sequence_number" in e]
    assert seq == sorted(set(seq)), f"sequence numbers not strictly increasing: {seq}"
    last = events[-1]
    assert last.get("type") in (*TERMINAL, "error"), f"stream did not end: {last}"
    assert last["type"] != "response.failed", f"failed on {sent[:300]!r}: {last}"
    if last["type"] == "error":
        assert last.get("message") and last.get("code") not in (None, "server_error"), last
    for line in raw.split(b"\n"):  # each frame's `event:` names its data's type
        if line.startswith(b"event: "):
            assert line[7:].decode() in {e["type"] for e in events}, line


def check_http(client: httpx.Client, body: bytes | Big, headers: dict[str, str]) -> None:
    if isinstance(body, Big):
        body = body.build()
    with client.stream("POST", "/responses", content=body, headers=headers) as r:
        raw = r.read()
    where = f"HTTP {r.status_code} for {body[:300]!r}"
    assert r.status_code < 500, f"{where}: {raw[:500]!r}"
    assert 200 <= r.status_code < 300 or 400 <= r.status_code < 500, where
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        assert r.status_code == 200, where
        check_sse(raw, body)
        return
    assert r.headers.get("content-type", "").startswith("application/json"), (
        f"{where}: {r.headers.get('content-type')}: {raw[:300]!r}"
    )
    answer = json.loads(raw)
    if r.status_code >= 400:
        assert isinstance(answer, dict) and set(answer) == {"error"}, f"{where}: {answer}"
        check_error_object(answer["error"], where)
    else:
        assert answer.get("object") == "response", f"{where}: {answer}"
        # A background create answers at once, queued; any other, once it has ended.
        ended = ("queued",) if answer.get("background") is True else ("completed", "incomplete")
        assert answer["status"] in ended, f"{where}: {answer}"


def check_ws_error(event: dict[str, Any], sent: Any) -> None:
    where = f"WS error for {str(sent)[:300]}"
    assert isinstance(event.get("status"), int) and 400 <= event["status"] < 500, (
        f"{where}: {event}"
    )
    check_error_object(event.get("error"), where)


class SocketPool:
    """A few WebSocket connections reused across cases; a new one every CASES_PER_SOCKET."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.ws: RawWebSocket | None = None
        self.used = 0

    def get(self) -> RawWebSocket:
        if self.ws is None or self.ws.closed or self.used >= CASES_PER_SOCKET:
            if self.ws is not None:
                self.ws.close()
            self.ws = RawWebSocket(self.server.port, A)
            self.used = 0
        self.used += 1
        return self.ws

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None


def probe(ws: RawWebSocket, after: Any) -> list[dict[str, Any]]:
    """Prove the socket is alive: a known-bad create on a lane of its own gets its error
    back. Returns the events that came before it."""
    ws.send_json({"type": "response.create", "stream_id": PROBE_LANE, "max_output_tokens": 0})
    events: list[dict[str, Any]] = []
    while True:
        try:
            event = ws.recv_event(timeout_s=60)
        except (Closed, TimeoutError) as exc:
            pytest.fail(f"the socket did not survive {str(after)[:300]}: {exc!r}")
        if event.get("type") == "error" and event.get("stream_id") == PROBE_LANE:
            check_ws_error(event, "the probe")
            return events
        events.append(event)


def is_create(payload: bytes) -> bool:
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError):
        return False
    return isinstance(event, dict) and event.get("type") == "response.create"


def ws_case(ws: RawWebSocket, opcode: int, payload: bytes) -> None:
    """Send one frame. A `response.create` is answered by one error or by a stream that
    ends; anything else by at most error events. Then the socket must still answer."""
    ws.send_frame(opcode, payload)
    shown = payload[:300]
    if is_create(payload):
        while True:
            try:
                event = ws.recv_event(timeout_s=60)
            except (Closed, TimeoutError) as exc:
                pytest.fail(f"no answer to {shown!r}: {exc!r}")
            kind = event.get("type")
            if kind == "error":
                check_ws_error(event, shown)
                break
            if kind in TERMINAL:
                assert kind != "response.failed", f"failed on {shown!r}: {event}"
                break
            assert isinstance(kind, str) and kind.startswith("response."), event
    for event in probe(ws, shown):
        assert event.get("type") == "error", f"{shown!r} got {event}"
        check_ws_error(event, shown)


ODD_EVENT_TYPES = [
    "response.processed", "response.cancel", "session.update", "error", "response.create ",
    "RESPONSE.CREATE", "", None, 1, ["response.create"],
]  # fmt: skip


@st.composite
def ws_frames(draw: st.DrawFn) -> tuple[int, bytes]:
    """Frames that are not a well-formed `response.create`."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return RawWebSocket.TEXT, draw(st.text(chars, max_size=40)).encode("utf-8", "replace")
    if kind == 1:  # valid JSON, not an object
        return RawWebSocket.TEXT, json.dumps(draw(json_values)).encode()
    if kind in (2, 3):  # an object with any `type`
        event = draw(st.dictionaries(keys, json_values, max_size=4))
        event["type"] = draw(st.one_of(st.sampled_from(ODD_EVENT_TYPES), json_values))
        return RawWebSocket.TEXT, json.dumps(event).encode()
    if kind == 4:  # binary frames: JSON, garbage, invalid UTF-8
        payload = draw(
            st.one_of(
                st.binary(max_size=64),
                st.just(b"\xff\xfe\xfd"),
                st.just(b'{"type":"response.create","input":"Hi","max_output_tokens":1}'),
            )
        )
        return RawWebSocket.BINARY, payload
    if kind == 5:  # over the frame limit (and under twice it)
        size = draw(st.sampled_from([BODY_LIMIT + 1, BODY_LIMIT + 5000, BODY_LIMIT * 3 // 2]))
        opcode = draw(st.sampled_from([RawWebSocket.TEXT, RawWebSocket.BINARY]))
        return opcode, ('{"type":"response.create","input":"' + "a" * size + '"}').encode()
    if kind == 6:
        depth = draw(st.sampled_from([100, 1000, 5000, 15000]))
        return RawWebSocket.TEXT, nested(depth, draw(st.sampled_from(["list", "dict"]))).encode()
    if kind == 7:  # broken JSON
        text = json.dumps({"type": "response.create", "input": "Hi"})
        return RawWebSocket.TEXT, text[: draw(st.integers(0, len(text) - 1))].encode()
    if kind == 8:
        return RawWebSocket.TEXT, b""
    return RawWebSocket.TEXT, json.dumps({"type": draw(strings)}).encode()


@st.composite
def ws_creates(draw: st.DrawFn) -> dict[str, Any] | Big:
    body = draw(create_bodies(stream=False))
    frame = {"type": "response.create", **body}
    if draw(st.integers(0, 5)) == 0:
        frame["stream_id"] = draw(
            st.one_of(st.sampled_from(["a", "b", "lane-1", "x" * 65, "", "a b"]), json_values)
        )
    if draw(st.integers(0, 7)) == 0:  # big or deep, within and over the frame limit
        return draw(big_bodies(stream=False, websocket=True))
    return frame


FUZZ = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
    print_blob=True,
)


# ----- the tests -------------------------------------------------------------------------
def test_http_json_bodies(fuzz_server: LiveServer) -> None:
    ran = 0
    with httpx.Client(base_url=fuzz_server.base_url, timeout=60) as client:

        @settings(FUZZ, max_examples=cases("http_json"))
        @given(body=raw_http_bodies(stream=False), headers=headers_variants)
        def case(body: bytes, headers: dict[str, str]) -> None:
            nonlocal ran
            ran += 1
            check_http(client, body, headers)

        case()
    assert ran >= cases("http_json")
    assert_no_leaks(fuzz_server, A)


def test_http_sse_bodies(fuzz_server: LiveServer) -> None:
    ran = 0
    with httpx.Client(base_url=fuzz_server.base_url, timeout=60) as client:

        @settings(FUZZ, max_examples=cases("http_sse"))
        @given(body=raw_http_bodies(stream=True), headers=headers_variants)
        def case(body: bytes, headers: dict[str, str]) -> None:
            nonlocal ran
            ran += 1
            check_http(client, body, headers)

        case()
    assert ran >= cases("http_sse")
    assert_no_leaks(fuzz_server, A)


def test_http_chunked_bodies_over_the_limit(fuzz_server: LiveServer) -> None:
    """No Content-Length: the server must count the bytes itself."""
    body = b'{"model":"default","input":"' + b"a" * (BODY_LIMIT * 2) + b'"}'

    def chunks() -> Iterator[bytes]:
        for k in range(0, len(body), 4096):
            yield body[k : k + 4096]

    with httpx.Client(base_url=fuzz_server.base_url, timeout=60) as client:
        r = client.post("/responses", content=chunks(), headers=A)
    assert 400 <= r.status_code < 500, r.text[:300]
    check_error_object(r.json()["error"], "chunked")
    assert_no_leaks(fuzz_server, A)


def test_websocket_create_frames(fuzz_server: LiveServer) -> None:
    ran = 0
    pool = SocketPool(fuzz_server)
    try:

        @settings(FUZZ, max_examples=cases("ws_create"))
        @given(frame=ws_creates())
        def case(frame: dict[str, Any] | Big) -> None:
            nonlocal ran
            ran += 1
            ws = pool.get()
            if isinstance(frame, Big):
                ws_case(ws, RawWebSocket.TEXT, frame.build(event_type="response.create"))
            else:
                ws_case(ws, RawWebSocket.TEXT, json.dumps(frame).encode())

        case()
    finally:
        pool.close()
    assert ran >= cases("ws_create")
    assert_no_leaks(fuzz_server, A)


def test_websocket_other_frames(fuzz_server: LiveServer) -> None:
    ran = 0
    pool = SocketPool(fuzz_server)
    try:

        @settings(FUZZ, max_examples=cases("ws_frames"))
        @given(frame=ws_frames())
        def case(frame: tuple[int, bytes]) -> None:
            nonlocal ran
            ran += 1
            ws_case(pool.get(), *frame)

        case()
    finally:
        pool.close()
    assert ran >= cases("ws_frames")
    assert_no_leaks(fuzz_server, A)


# Per field, a value of a type it never takes (no lax coercion reaches it).
WRONG_TYPE: dict[str, Any] = {
    **{f: {"\ud800": [1]} for f in FIELDS},
    "input": {"\ud800": [1]},
    "tools": 7,
    "include": 7,
    "metadata": [1, "\ud800"],
    "text": [1],
    "reasoning": [1],
    "stream_options": [1],
    "client_metadata": [1],
    "tool_choice": [1],
}


@pytest.mark.parametrize("transport", ["http", "websocket"])
def test_every_field_of_the_wrong_type_is_a_400_naming_it(
    fuzz_server: LiveServer, transport: str
) -> None:
    """Every create field with a value of the wrong type: a 400 whose `param` names it."""
    failures = []
    ws = RawWebSocket(fuzz_server.port, A) if transport == "websocket" else None
    try:
        for name in FIELDS:
            if ws is not None and name == "stream":
                continue  # implied on a socket, and ignored
            body = {"model": "default", "input": "Hi", "max_output_tokens": 1, "store": False}
            body[name] = WRONG_TYPE[name]
            if ws is None:
                r = httpx.post(
                    f"{fuzz_server.base_url}/responses",
                    content=json.dumps(body),
                    headers={**A, "Content-Type": "application/json"},
                    timeout=60,
                )
                try:
                    status, error = r.status_code, r.json().get("error")
                except ValueError:
                    status, error = r.status_code, r.text[:200]
            else:
                ws.send_json({"type": "response.create", **body})
                events = ws.read_until(
                    lambda es: bool(es) and es[-1].get("type") in (*TERMINAL, "error")
                )
                status, error = events[-1].get("status"), events[-1].get("error")
                probe(ws, body)
            param = (error if isinstance(error, dict) else {}).get("param") or ""
            if status != 400 or not (param == name or param.startswith((f"{name}.", f"{name}["))):
                failures.append(f"{name}: {status} {error}")
    finally:
        if ws is not None:
            ws.close()
    assert not failures, "\n".join(failures)
    assert_no_leaks(fuzz_server, A)


def test_metrics_need_a_key_and_no_tracebacks(fuzz_server: LiveServer) -> None:
    assert httpx.get(f"{fuzz_server.url}/metrics", timeout=10).status_code == 401
    bad = {"Authorization": "Bearer sk-wrong"}
    assert httpx.get(f"{fuzz_server.url}/metrics", headers=bad, timeout=10).status_code == 401
    assert "Traceback" not in fuzz_server.log(), fuzz_server.log()[-5000:]
    assert_no_leaks(fuzz_server, A)
