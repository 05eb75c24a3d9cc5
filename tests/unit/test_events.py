"""Every event builder's output parses as the official SDK's stream event type, and a
whole response object parses as `openai.types.responses.Response`."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from warmloop.config import Config
from warmloop.engine.request import SamplingParams
from warmloop.protocol.items import FunctionCallItem, MessageItem, item_to_wire
from warmloop.protocol.requests import parse_create
from warmloop.serving import event_builder as ev
from warmloop.serving.responses_service import CallContext, Prepared, ResponsesService

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
        tool_names=("f",),
        shared_prefix=0,
    )

    class Stub:
        model_id = "SmolLM2"
        config = Config()

    out = [
        item_to_wire(MessageItem("msg_1", "assistant", "Hello")),
        item_to_wire(FunctionCallItem("fc_1", "call_1", "f", "{}", "ns")),
    ]
    obj: dict[str, Any] = ResponsesService.response_object(
        Stub(),
        p,
        status,
        out,
        ev.usage(3, 1, 2),
        **kw,  # type: ignore[arg-type]
    )
    return obj


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
        ev.sse_error("invalid_request", "bad", "input"),
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
