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
from warmloop.protocol.requests import parse_create


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
        ({"input": [{"type": "reasoning"}]}, "input[0].type"),
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
        ({"input": "x", "background": True}, "background"),
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
