"""Conversations API bodies and queries, and `conversation` on a create: good ones
parse, every bad one is a 400 naming its `param`."""

from __future__ import annotations

from typing import Any

import pytest

from warmloop.protocol.conversations import (
    ItemsQuery,
    parse_conversation_create,
    parse_include,
    parse_items_create,
    parse_items_query,
    parse_metadata_update,
)
from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.items import FunctionCallItem, MessageItem
from warmloop.protocol.requests import parse_create

TOO_MANY = [{"role": "user", "content": str(k)} for k in range(21)]


def test_a_create_keeps_items_in_order_and_metadata() -> None:
    body = parse_conversation_create(
        {
            "items": [
                {"type": "message", "role": "user", "content": "hi", "id": "msg_a"},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            ],
            "metadata": {"topic": "demo"},
            "safety_identifier": "u1",
        }
    )
    assert body.items[0] == MessageItem("msg_a", "user", "hi")
    assert isinstance(body.items[1], FunctionCallItem) and body.items[1].id.startswith("fc_")
    assert body.metadata == {"topic": "demo"}
    for empty in (None, {}, {"items": None, "metadata": None}):
        got = parse_conversation_create(empty)
        assert got.items == () and got.metadata == {}
    assert len(parse_conversation_create({"items": TOO_MANY[:20]}).items) == 20


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ([], None),
        ("x", None),
        ({"items": TOO_MANY}, "items"),
        ({"items": "hi"}, "items"),
        ({"items": [{"role": "robot", "content": "x"}]}, "items[0].role"),
        ({"items": [{"role": "user"}]}, "items[0].content"),
        ({"items": [{"type": "item_reference", "id": "msg_1"}]}, "items[0].type"),
        ({"items": [{"type": "web_search_call"}]}, "items[0].type"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"metadata": "x"}, "metadata"),
        ({"title": "x"}, "title"),
    ],
)
def test_bad_creates_name_their_param(raw: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_conversation_create(raw)
    assert (err.value.status, err.value.type, err.value.param) == (
        400,
        "invalid_request_error",
        param,
    )


def test_metadata_update_replaces_or_clears() -> None:
    assert parse_metadata_update({"metadata": {"a": "b"}}) == {"a": "b"}
    assert parse_metadata_update({"metadata": None}) == {}
    for raw, param in (
        ({}, "metadata"),
        ({"metadata": {"k": 2}}, "metadata.k"),
        ({"metadata": {}, "items": []}, "items"),
        (None, None),
    ):
        with pytest.raises(InvalidRequest) as err:
            parse_metadata_update(raw)
        assert err.value.param == param


def test_items_create_takes_one_to_twenty() -> None:
    assert [i.id for i in parse_items_create({"items": [{"role": "user", "content": "x"}]})]
    for raw, param in (
        ({}, "items"),
        ({"items": []}, "items"),
        ({"items": TOO_MANY}, "items"),
        ({"items": [{"type": "function_call_output", "call_id": "c"}]}, "items[0].output"),
        ({"items": [{"role": "user", "content": "x"}], "include": []}, "include"),
    ):
        with pytest.raises(InvalidRequest) as err:
            parse_items_create(raw)
        assert err.value.param == param


def test_items_query_defaults_and_bounds() -> None:
    assert parse_items_query(after=None, limit=None, order=None, include=[]) == ItemsQuery()
    q = parse_items_query(
        after="msg_1", limit="100", order="asc", include=["reasoning.encrypted_content"]
    )
    assert q == ItemsQuery("msg_1", 100, "asc", ("reasoning.encrypted_content",))
    assert parse_items_query(after=None, limit="1", order="desc", include=[]).limit == 1


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"order": "newest"}, "order"),
        ({"order": "ASC"}, "order"),
        ({"after": ""}, "after"),
        ({"include": ["message.output_text.logprobs", "file_search_call.results"]}, "include[1]"),
    ],
)
def test_bad_items_queries_name_their_param(kw: dict[str, Any], param: str) -> None:
    args: dict[str, Any] = {"after": None, "limit": None, "order": None, "include": []} | kw
    with pytest.raises(InvalidRequest) as err:
        parse_items_query(**args)
    assert (err.value.status, err.value.param) == (400, param)


def test_include_takes_what_a_create_takes() -> None:
    both = ["message.output_text.logprobs", "reasoning.encrypted_content"]
    assert parse_include(both) == tuple(both)
    with pytest.raises(InvalidRequest):
        parse_include(["nope"])


@pytest.mark.parametrize(
    ("given", "conversation"),
    [("conv_1", "conv_1"), ({"id": "conv_2"}, "conv_2"), (None, None)],
)
def test_a_create_names_its_conversation(given: Any, conversation: str | None) -> None:
    body = {"input": "x"} | ({} if given is None else {"conversation": given})
    assert parse_create(body).conversation == conversation
    assert parse_create(body, websocket=True).conversation == conversation


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"conversation": "conv_1", "previous_response_id": "resp_1"}, "conversation"),
        ({"conversation": ""}, "conversation"),
        ({"conversation": "c" * 257}, "conversation"),
        ({"conversation": 5}, "conversation"),
        ({"conversation": ["conv_1"]}, "conversation"),
        ({"conversation": {}}, "conversation.id"),
        ({"conversation": {"id": 5}}, "conversation.id"),
        ({"conversation": {"id": "conv_1", "name": "x"}}, "conversation.name"),
    ],
)
def test_a_bad_conversation_is_a_400_naming_it(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_create({"input": "x", **body})
    assert (err.value.status, err.value.param) == (400, param)
