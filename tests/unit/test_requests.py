"""Create-body validation: good bodies parse, every bad one names its `param`."""

from __future__ import annotations

from typing import Any

import pytest

from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.items import (
    FunctionCallItem,
    FunctionCallOutputItem,
    ItemReference,
    MessageItem,
    parse_input,
)
from warmloop.protocol.requests import TextFormat, parse_create
from warmloop.protocol.tools import HOSTED_TOOL_TYPES, FunctionTool


def test_string_input_is_one_user_message() -> None:
    req = parse_create({"model": "default", "input": "Hi"})
    assert len(req.items) == 1
    item = req.items[0]
    assert isinstance(item, MessageItem) and item.role == "user" and item.text == "Hi"
    assert req.store and req.generate and req.tool_choice == "auto"


def test_item_kinds_parse() -> None:
    items = parse_input(
        [
            {"role": "developer", "content": "Be brief."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "a"},
                    {"type": "input_text", "text": "b"},
                ],
            },
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "c"}],
            },
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "f",
                "arguments": "{}",
                "namespace": "ns",
            },
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            {"type": "item_reference", "id": "msg_1"},
        ]
    )
    assert [type(i) for i in items] == [
        MessageItem,
        MessageItem,
        MessageItem,
        FunctionCallItem,
        FunctionCallOutputItem,
        ItemReference,
    ]
    assert isinstance(items[1], MessageItem) and items[1].text == "ab"
    call = items[3]
    assert isinstance(call, FunctionCallItem) and call.qualified == "ns.f"
    out = items[4]
    assert isinstance(out, FunctionCallOutputItem) and out.output == "42"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user"}]}, "input[0].content"),
        ({"input": ["hi", {"role": "user", "content": [{"type": "input_image"}]}]}, "input[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input[0].call_id",
        ),
        ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
        ({"input": [{"type": "web_search_call"}]}, "input[0].type"),
        ({"input": 3}, "input"),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": "x", "top_p": 0}, "top_p"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "tools": [{"type": "computer"}]}, "tools[0].type"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        (
            {"input": "x", "tools": [{"type": "function", "name": "f", "parameters": 3}]},
            "tools[0].parameters",
        ),
        (
            {"input": "x", "tools": [{"type": "namespace", "name": "n", "tools": [{"type": "x"}]}]},
            "tools[0].tools[0].type",
        ),
        ({"input": "x", "tool_choice": "always"}, "tool_choice"),
        ({"input": "x", "tool_choice": "required"}, "tool_choice"),
        ({"input": "x", "tool_choice": {"type": "function", "name": "g"}}, "tool_choice"),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "name": "s"}}},
            "text.format.schema",
        ),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}},
            "text.format.name",
        ),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"input": "x", "text": {"colour": 1}}, "text.colour"),
        ({"input": "x", "background": True, "store": False}, "store"),
        ({"input": "x", "include": ["file_search_call.results"]}, "include[0]"),
        ({}, "input"),
    ],
)
def test_invalid_bodies_name_their_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_create(body)
    assert err.value.param == param
    assert err.value.status == 400


def test_unknown_field_is_named() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_create({"input": "x", "frobnicate": True})
    assert err.value.param == "frobnicate"
    assert err.value.code == "unknown_parameter"


def test_not_an_object() -> None:
    with pytest.raises(InvalidRequest):
        parse_create(["input"])


def test_hosted_tools_are_skipped_and_namespaces_flattened() -> None:
    req = parse_create(
        {
            "input": "x",
            "tools": [
                {"type": "web_search"},
                {"type": "function", "name": "f"},
                {
                    "type": "namespace",
                    "name": "ns",
                    "description": "d",
                    "tools": [{"type": "function", "name": "g", "parameters": {"type": "object"}}],
                },
            ],
            "tool_choice": {"type": "function", "name": "ns.g"},
        }
    )
    assert [t.qualified for t in req.tools] == ["f", "ns.g"]
    assert req.tool_choice == "function:ns.g"


def test_duplicate_tool_names() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_create({"input": "x", "tools": [{"type": "function", "name": "f"}] * 2})
    assert err.value.param == "tools"


def test_websocket_create_may_omit_input() -> None:
    req = parse_create({"generate": False}, websocket=True)
    assert req.items == [] and not req.generate


# ----- more valid bodies ----------------------------------------------------------------
def test_string_and_part_contents_keep_their_text_and_ids() -> None:
    req = parse_create(
        {
            "model": "gpt-x",
            "input": [
                {"type": "message", "id": "msg_u", "role": "user", "content": "plain"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": "Hello, ", "annotations": []},
                        {"type": "output_text", "text": "world"},
                    ],
                },
                {"role": "system", "content": [{"type": "text", "text": "t"}]},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
            ],
        }
    )
    first, second, third, fourth = req.items
    assert first == MessageItem("msg_u", "user", "plain")
    assert isinstance(second, MessageItem)
    assert (second.role, second.text) == ("assistant", "Hello, world")
    assert second.id.startswith("msg_") and second.id != "msg_u"
    assert isinstance(third, MessageItem) and (third.role, third.text) == ("system", "t")
    assert isinstance(fourth, MessageItem) and fourth.text == "No."
    assert req.body.model == "gpt-x"


def test_function_call_items_keep_every_field() -> None:
    items = parse_input(
        [
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_9",
                "name": "get_weather",
                "arguments": '{"city": "Oslo"}',
                "status": "completed",
            },
            {
                "type": "function_call_output",
                "call_id": "call_9",
                "output": [
                    {"type": "input_text", "text": "Sun"},
                    {"type": "input_text", "text": "ny"},
                ],
            },
            {"type": "item_reference", "id": "fc_1"},
        ]
    )
    assert items[0] == FunctionCallItem("fc_1", "call_9", "get_weather", '{"city": "Oslo"}', None)
    out = items[1]
    assert isinstance(out, FunctionCallOutputItem)
    assert (out.call_id, out.output) == ("call_9", "Sunny") and out.id.startswith("fco_")
    assert items[2] == ItemReference("fc_1")


def test_parse_input_edges() -> None:
    assert parse_input(None) == []
    assert parse_input([]) == []
    [only] = parse_input("Hi")
    assert isinstance(only, MessageItem) and (only.role, only.text) == ("user", "Hi")
    with pytest.raises(InvalidRequest) as err:
        parse_input({"role": "user", "content": "x"})
    assert err.value.param == "input"


def test_defaults_and_echoed_fields() -> None:
    req = parse_create(
        {
            "input": "x",
            "store": False,
            "generate": False,
            "max_output_tokens": 1,
            "temperature": 0,
            "top_p": 1,
            "tool_choice": "none",
            "parallel_tool_calls": False,
            "service_tier": "auto",
            "prompt_cache_key": "k",
            "user": "u",
            "include": ["message.output_text.logprobs", "reasoning.encrypted_content"],
            "text": {"verbosity": "low"},
            "truncation": "auto",
            "background": False,
        }
    )
    assert not req.store and not req.generate
    assert req.body.max_output_tokens == 1 and req.body.temperature == 0.0
    assert req.tool_choice == "none" and req.tools == ()
    assert req.text_format == TextFormat("text")


def test_text_formats_parse() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    req = parse_create(
        {"input": "x", "text": {"format": {"type": "json_schema", "name": "s", "schema": schema}}}
    )
    assert req.text_format == TextFormat("json_schema", "s", schema)
    req = parse_create({"input": "x", "text": {"format": {"type": "json_object"}}})
    assert req.text_format == TextFormat("json_object")
    assert (
        parse_create({"input": "x", "text": {"format": {"type": "text"}}}).text_format.kind
        == "text"
    )


def test_function_tools_parse() -> None:
    req = parse_create(
        {
            "input": "x",
            "tools": [
                {
                    "type": "function",
                    "name": "get_weather",
                    "description": "Weather.",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                    "strict": True,
                },
                {"type": "function", "name": "noop"},
            ],
            "tool_choice": "required",
        }
    )
    weather, noop = req.tools
    assert weather == FunctionTool(
        "get_weather",
        "Weather.",
        {"type": "object", "properties": {"city": {"type": "string"}}},
        True,
    )
    assert noop == FunctionTool("noop", "", {"type": "object", "properties": {}}, False)
    assert req.tool_choice == "required"
    named = parse_create(
        {
            "input": "x",
            "tools": [{"type": "function", "name": "noop"}],
            "tool_choice": {"type": "function", "name": "noop"},
        }
    )
    assert named.tool_choice == "function:noop"


@pytest.mark.parametrize("kind", sorted(HOSTED_TOOL_TYPES))
def test_each_hosted_tool_type_is_accepted_and_not_offered(kind: str) -> None:
    req = parse_create(
        {
            "input": "x",
            "tools": [
                {"type": kind, "name": "hosted"},
                {"type": "function", "name": "f"},
                {
                    "type": "namespace",
                    "name": "ns",
                    "tools": [{"type": kind}, {"type": "function", "name": "g"}],
                },
            ],
        }
    )
    assert [t.qualified for t in req.tools] == ["f", "ns.g"]
    assert req.not_offered == (kind,)
    with pytest.raises(InvalidRequest) as err:  # it cannot be forced either
        parse_create({"input": "x", "tools": [{"type": kind}], "tool_choice": {"type": kind}})
    assert err.value.param == "tool_choice"


@pytest.mark.parametrize("kind", ["banana", "computer", None])
def test_unknown_tool_types_are_rejected(kind: str | None) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_create({"input": "x", "tools": [{"type": "function", "name": "f"}, {"type": kind}]})
    assert err.value.param == "tools[1].type"
    assert err.value.code == "invalid_request"


# ----- more invalid bodies: the param names the exact field -----------------------------
@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {
                "input": [
                    {"role": "user", "content": "ok"},
                    {"role": "user", "content": [{"type": "input_audio"}]},
                ]
            },
            "input[1].content[0].type",
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_text", "text": "a"}, {"type": "input_file"}],
                    }
                ]
            },
            "input[0].content[1].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": 1}]}]},
            "input[0].content[0].text",
        ),
        ({"input": [{"role": "user", "content": [5]}]}, "input[0].content[0]"),
        ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "message", "content": "x"}]}, "input[0].role"),
        ({"input": [{"content": "x"}]}, "input[0].type"),
        ({"input": [{"type": "item_reference"}]}, "input[0].id"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
            "input[0].name",
        ),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]},
            "input[0].arguments",
        ),
        (
            {
                "input": [
                    {
                        "type": "function_call",
                        "call_id": "c",
                        "name": "f",
                        "arguments": "{}",
                        "namespace": 3,
                    }
                ]
            },
            "input[0].namespace",
        ),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": 5}]},
            "input[0].output",
        ),
        ({"input": {"role": "user", "content": "x"}}, "input"),
        ({"input": "x", "model": 5}, "model"),
        ({"input": "x", "temperature": -0.1}, "temperature"),
        ({"input": "x", "temperature": 2.5}, "temperature"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
        ({"input": "x", "top_p": 1.5}, "top_p"),
        ({"input": "x", "max_output_tokens": -1}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": 1.5}, "max_output_tokens"),
        ({"input": "x", "max_tool_calls": 0}, "max_tool_calls"),
        ({"input": "x", "top_logprobs": 1}, "top_logprobs"),
        ({"input": "x", "truncation": "sometimes"}, "truncation"),
        ({"input": "x", "context_management": [{"type": "trim"}]}, "context_management[0].type"),
        (
            {"input": "x", "context_management": [{"type": "compaction", "compact_threshold": 0}]},
            "context_management[0].compact_threshold",
        ),
        ({"input": "x", "context_management": {"type": "compaction"}}, "context_management"),
        ({"input": "x", "metadata": {"k": 1}}, "metadata.k"),
        ({"input": "x", "reasoning": "high"}, "reasoning"),
        ({"input": "x", "text": 5}, "text"),
        ({"input": "x", "text": {"format": "json"}}, "text.format.type"),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "name": "s", "schema": []}}},
            "text.format.schema",
        ),
        ({"input": "x", "tools": "f"}, "tools"),
        ({"input": "x", "tools": [1]}, "tools[0]"),
        ({"input": "x", "tools": [{"type": "function", "name": ""}]}, "tools[0].name"),
        ({"input": "x", "tools": [{"type": "function", "name": "x" * 65}]}, "tools[0].name"),
        (
            {"input": "x", "tools": [{"type": "function", "name": "f", "description": 3}]},
            "tools[0].description",
        ),
        (
            {"input": "x", "tools": [{"type": "namespace", "name": "n", "tools": "f"}]},
            "tools[0].tools",
        ),
        ({"input": "x", "tools": [{"type": "namespace", "tools": []}]}, "tools[0].name"),
        (
            {
                "input": "x",
                "tools": [{"type": "namespace", "name": "n", "tools": [{"type": "function"}]}],
            },
            "tools[0].tools[0].name",
        ),
        ({"input": "x", "tool_choice": 3}, "tool_choice"),
        ({"input": "x", "tool_choice": {"type": "allowed_tools", "tools": []}}, "tool_choice"),
        ({"input": "x", "tool_choice": {"type": "function"}}, "tool_choice"),
        (
            {"input": "x", "tools": [{"type": "web_search"}], "tool_choice": "required"},
            "tool_choice",
        ),
        ({"input": "x", "include": ["message.output_text.logprobs", "nope"]}, "include[1]"),
    ],
)
def test_more_invalid_bodies_name_their_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_create(body)
    assert err.value.param == param
    assert (err.value.status, err.value.type) == (400, "invalid_request_error")
    assert err.value.body()["param"] == param


@pytest.mark.parametrize("field", ["foo", "input_items", "Model", "stream_option"])
def test_any_unknown_top_level_field_is_unknown_parameter(field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_create({"input": "x", field: 1})
    assert (err.value.param, err.value.code) == (field, "unknown_parameter")
    assert field in err.value.message


def test_background_is_for_stored_http_responses() -> None:
    assert parse_create({"input": "x", "background": True}).body.background is True
    with pytest.raises(InvalidRequest) as err:
        parse_create({"input": "x", "background": True}, websocket=True)
    assert (err.value.param, err.value.code) == ("background", "invalid_request")
    with pytest.raises(InvalidRequest) as err:
        parse_create({"input": "x", "background": True, "store": False})
    assert err.value.param == "store"


def test_max_output_tokens_zero() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_create({"input": "x", "max_output_tokens": 0})
    assert err.value.param == "max_output_tokens"
    assert "greater than or equal to 1" in err.value.message


def test_websocket_create_without_input_still_needs_it_over_http() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_create({"generate": False})
    assert err.value.param == "input"
    assert parse_create({}, websocket=True).items == []


def test_bad_part_in_function_call_output_names_the_output_field() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_input(
            [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image"}]}]
        )
    assert err.value.param == "input[0].output[0].type"


def test_non_boolean_strict_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_create(
            {"input": "x", "tools": [{"type": "function", "name": "f", "strict": "false"}]}
        )
    assert err.value.param == "tools[0].strict"


@pytest.mark.parametrize(
    ("given", "kept"),
    [("in_memory", "in_memory"), ("in-memory", "in_memory"), ("24h", "24h"), (None, None)],
)
def test_prompt_cache_retention_is_normalised(given: str | None, kept: str | None) -> None:
    body = {"input": "x"} | ({} if given is None else {"prompt_cache_retention": given})
    assert parse_create(body).body.prompt_cache_retention == kept


@pytest.mark.parametrize("bad", ["1h", "in memory", "IN_MEMORY", "", 24, ["24h"]])
def test_another_prompt_cache_retention_is_a_400_naming_it(bad: Any) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_create({"input": "x", "prompt_cache_retention": bad})
    assert (err.value.status, err.value.param) == (400, "prompt_cache_retention")
    assert "in_memory" in err.value.message and "24h" in err.value.message
