"""Every event builder's output parses as the official SDK's stream event type, and a
whole response object parses as `openai.types.responses.Response`."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from warmloop.engine.request import SamplingParams
from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.items import CompactionItem, FunctionCallItem, MessageItem, item_to_wire
from warmloop.protocol.requests import parse_create
from warmloop.protocol.tools import FunctionTool
from warmloop.serving import event_builder as ev
from warmloop.serving.families.generic import Generic
from warmloop.serving.output import OutputBuilder, response_object
from warmloop.serving.prepared import CallContext, Prepared
from warmloop.transport.errors import sse_error

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def response(status: str = "completed", **kw: Any) -> dict[str, Any]:
    req = parse_create(
        {
            "model": "default",
            "input": "Hi",
            "instructions": "Be brief.",
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "metadata": {"k": "v"},
        }
    )
    p = Prepared(
        id="resp_1",
        request=req,
        ctx=CallContext(),
        previous=None,
        new_items=(),
        history_in=(),
        prompt_text="",
        tokens=[1, 2, 3],
        delta_only=False,
        params=SamplingParams(max_tokens=8),
        seal=None,
        tools=(),
        parser=lambda: Generic().parser(()),
        shared_prefix=0,
    )

    out = [
        item_to_wire(MessageItem("msg_1", "assistant", "Hello")),
        item_to_wire(FunctionCallItem("fc_1", "call_1", "f", "{}", "ns")),
    ]
    return response_object(p, "SmolLM2", status, out, usage=ev.usage(3, 1, 2), **kw)


@pytest.mark.parametrize(
    "event",
    [
        ev.response_lifecycle("created", response("in_progress")),
        ev.response_lifecycle("in_progress", response("in_progress")),
        ev.response_lifecycle("completed", response()),
        ev.response_lifecycle(
            "incomplete", response("incomplete", incomplete_reason="max_output_tokens")
        ),
        ev.response_lifecycle(
            "failed", response("failed", error={"code": "server_error", "message": "x"})
        ),
        ev.message_added(0, "msg_1"),
        ev.content_part_added(0, "msg_1"),
        ev.text_delta(0, "msg_1", "He"),
        ev.text_done(0, "msg_1", "Hello"),
        ev.content_part_done(0, "msg_1", "Hello"),
        ev.output_item_done(0, item_to_wire(MessageItem("msg_1", "assistant", "Hello"))),
        ev.function_call_added(1, "fc_1", "call_1", "f"),
        ev.function_args_delta(1, "fc_1", "{}"),
        ev.function_args_done(1, "fc_1", "f", "{}"),
        ev.output_item_done(1, item_to_wire(FunctionCallItem("fc_1", "call_1", "f", "{}"))),
        ev.compaction_added(0, "cmp_1"),
        ev.compaction_compacting(0, "cmp_1"),
        ev.output_item_done(0, item_to_wire(CompactionItem("cmp_1", "The task is..."))),
        sse_error(InvalidRequest("bad", param="input")),
    ],
    ids=lambda e: e["type"],
)
def test_events_parse_as_sdk_types(event: dict[str, Any]) -> None:
    seq = ev.Sequencer()
    parsed = EVENTS.validate_python(seq(event))
    assert parsed.type == event["type"]
    assert parsed.sequence_number == 0


def test_response_object_parses() -> None:
    r = Response.model_validate(response())
    assert r.output_text == "Hello"
    assert r.usage is not None and r.usage.input_tokens_details.cached_tokens == 1
    assert r.usage.total_tokens == 5
    call = r.output[1]
    assert call.type == "function_call" and call.namespace == "ns"
    assert r.instructions == "Be brief." and r.metadata == {"k": "v"}
    incomplete = Response.model_validate(
        response("incomplete", incomplete_reason="max_output_tokens")
    )
    assert incomplete.incomplete_details is not None
    assert incomplete.incomplete_details.reason == "max_output_tokens"


def test_sequencer_is_strictly_increasing_from_zero() -> None:
    seq = ev.Sequencer()
    numbers = [seq({"type": "x"})["sequence_number"] for _ in range(5)]
    assert numbers == [0, 1, 2, 3, 4]


def test_usage_numbers() -> None:
    u = ev.usage(100, 60, 7)
    assert u["input_tokens_details"] == {"cached_tokens": 60, "cache_write_tokens": 40}
    assert u["total_tokens"] == 107


# ----- more response objects ---------------------------------------------------------------
def prepared(body: dict[str, Any], *, temperature: float = 0.5) -> Prepared:
    return Prepared(
        id="resp_2",
        request=parse_create(body),
        ctx=CallContext(tenant="t"),
        previous=None,
        new_items=(),
        history_in=(),
        prompt_text="",
        tokens=[1, 2],
        delta_only=False,
        params=SamplingParams(max_tokens=4, temperature=temperature, top_p=0.9),
        seal=None,
        tools=(),
        parser=lambda: Generic().parser(()),
        shared_prefix=0,
        created_at=1_700_000_000.5,
    )


def obj(p: Prepared, status: str = "completed", **kw: Any) -> dict[str, Any]:
    usage = ev.usage(2, 0, 0) if status != "in_progress" else None
    return response_object(p, "SmolLM2-135M", status, [], usage=usage, **kw)


def test_response_object_echoes_the_request() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    p = prepared(
        {
            "input": "x",
            "store": False,
            "previous_response_id": "resp_0",
            "max_output_tokens": 9,
            "max_tool_calls": 2,
            "parallel_tool_calls": False,
            "tools": [
                {"type": "web_search"},
                {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True},
                {
                    "type": "namespace",
                    "name": "ns",
                    "description": "group",
                    "tools": [{"type": "function", "name": "g", "parameters": {"type": "object"}}],
                },
            ],
            "tool_choice": {"type": "function", "name": "ns.g"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": schema}},
            "truncation": "auto",
            "user": "u1",
            "prompt_cache_key": "pk",
        }
    )
    raw = obj(p, extra={"ttft_ms": 1.0})
    r = Response.model_validate(raw)
    assert (r.id, r.model, r.status, r.object) == (
        "resp_2",
        "SmolLM2-135M",
        "completed",
        "response",
    )
    assert r.created_at == 1_700_000_000
    assert r.store is False and r.previous_response_id == "resp_0"
    assert (r.max_output_tokens, r.max_tool_calls, r.parallel_tool_calls) == (9, 2, False)
    assert (r.temperature, r.top_p) == (0.5, 0.9)
    assert [t.type for t in r.tools] == ["function", "namespace"]  # hosted tools not echoed
    assert r.tool_choice.type == "function" and r.tool_choice.name == "ns.g"  # type: ignore[union-attr]
    assert r.text is not None and r.text.format is not None
    assert r.text.format.type == "json_schema"
    assert (r.truncation, r.user, r.prompt_cache_key) == ("auto", "u1", "pk")
    assert r.prompt_cache_retention == "in_memory"  # the Prepared's, normalised
    assert raw["warmloop"] == {"ttft_ms": 1.0}
    assert raw["completed_at"] >= raw["created_at"]


@pytest.mark.parametrize(
    ("status", "kw", "final"),
    [
        ("in_progress", {}, False),
        ("completed", {}, True),
        ("cancelled", {}, True),
        ("incomplete", {"incomplete_reason": "max_output_tokens"}, True),
        ("failed", {"error": {"code": "server_error", "message": "boom"}}, True),
    ],
)
def test_every_status_parses(status: str, kw: dict[str, Any], final: bool) -> None:
    raw = obj(prepared({"input": "x"}), status, **kw)
    r = Response.model_validate(raw)
    assert r.status == status
    assert ("completed_at" in raw) == final
    assert (r.usage is None) == (status == "in_progress")
    assert r.tool_choice == "auto" and r.tools == [] and r.metadata == {}
    assert r.text is not None and r.text.format is not None and r.text.format.type == "text"
    if status == "failed":
        assert r.error is not None and r.error.message == "boom"


# ----- whole streams from the output builder (parser → items → events) -------------------
def stream_events(
    chunks: list[str],
    tools: tuple[str, ...] = ("f", "ns.g"),
    namespaced: frozenset[str] = frozenset({"ns.g"}),
) -> tuple[list[dict[str, Any]], OutputBuilder]:
    seq = ev.Sequencer()
    offered = [FunctionTool(name, "", {"type": "object"}, False) for name in tools]
    out = OutputBuilder(seq, Generic().parser(offered), set(namespaced))
    events: list[dict[str, Any]] = []
    for c in chunks:
        events += out.feed(c)
    events += out.finish()
    return events, out


def call_text(name: str, args: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'


def test_streamed_text_then_call_are_valid_sdk_events_in_order() -> None:
    text = "Let me check." + call_text("f", '{"a": 1}')
    events, out = stream_events([text[i : i + 3] for i in range(0, len(text), 3)])
    parsed = [EVENTS.validate_python(e) for e in events]
    assert [p.sequence_number for p in parsed] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.output_item.added", "response.content_part.added"]
    # the arguments stream as they arrive: one or more deltas
    kinds = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert kinds[-7:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "Let me check."
    msg, call = out.items
    assert isinstance(msg, MessageItem) and (msg.role, msg.text) == ("assistant", "Let me check.")
    assert isinstance(call, FunctionCallItem)
    assert (call.name, call.arguments, call.namespace) == ("f", '{"a": 1}', None)
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert [e["output_index"] for e in done] == [0, 1]
    assert [e["item"]["id"] for e in done] == [msg.id, call.id]
    assert all(
        e["item_id"] == msg.id for e in events if e["type"].startswith("response.output_text")
    )
    response = Response.model_validate(obj(prepared({"input": "x"})) | {"output": out.items_wire()})
    assert response.output_text == "Let me check."


def test_parallel_calls_split_their_namespace() -> None:
    text = call_text("f", "{}") + "\n" + call_text("ns.g", '{"q": "x"}')
    events, out = stream_events(list(text))
    for e in events:
        EVENTS.validate_python(e)
    first, second = out.items
    assert isinstance(first, FunctionCallItem) and isinstance(second, FunctionCallItem)
    assert (first.namespace, first.name) == (None, "f")
    assert (second.namespace, second.name, second.arguments) == ("ns", "g", '{"q": "x"}')
    assert first.call_id != second.call_id
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["name"]) for e in added] == [(0, "f"), (1, "g")]
    assert out.items_wire()[1]["namespace"] == "ns" and "namespace" not in out.items_wire()[0]


def test_pure_tool_call_stream_has_no_message() -> None:
    events, out = stream_events(list(call_text("f", "{}")))
    assert [type(i) for i in out.items] == [FunctionCallItem]
    assert all("output_text" not in e["type"] for e in events)
    for e in events:
        EVENTS.validate_python(e)


def test_text_then_parallel_calls_streamed_token_by_token_has_one_message() -> None:
    text = "Sure." + call_text("f", "{}") + "\n" + call_text("f", "{}")
    _, out = stream_events(list(text))
    assert [type(i) for i in out.items] == [MessageItem, FunctionCallItem, FunctionCallItem]


def test_usage_without_cache() -> None:
    assert ev.usage(5, 0, 0) == {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 5},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 5,
    }


def test_separate_sequencers_number_independently() -> None:
    a, b = ev.Sequencer(), ev.Sequencer()
    assert [a({})["sequence_number"] for _ in range(3)] == [0, 1, 2]
    assert b({})["sequence_number"] == 0
    assert a({})["sequence_number"] == 3
