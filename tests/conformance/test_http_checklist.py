"""Conformance checklist items 1-8, 14 and 15 (shared/spec/responses-api.md) over HTTP,
driven by the official `openai` SDK against a live server on the embedded model."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from openai.types.responses import Response

from tests.conftest import KEY_A, KEY_B, LiveServer

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY_A, max_retries=0)


@pytest.fixture(scope="module")
def other_client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY_B, max_retries=0)


def test_1_non_stream_create_parses(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model="default", input="Say hello.", temperature=0, max_output_tokens=16
    )
    assert isinstance(r, Response)
    assert r.status in ("completed", "incomplete")
    assert r.output_text
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_1_model_aliases_accepted(client: openai.OpenAI) -> None:
    models = client.models.list()
    model_id = models.data[0].id
    for name in (model_id, "default", "gpt-test"):
        r = client.responses.create(model=name, input="Hi", temperature=0, max_output_tokens=2)
        assert r.model == model_id


def test_2_stream_event_order(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model="default", input="Say hello.", temperature=0, max_output_tokens=12, stream=True
        )
    )
    types = [e.type for e in events]
    seqs = [e.sequence_number for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    first_done = types.index("response.output_text.done")
    assert all(t == "response.output_text.delta" for t in types[4:first_done])
    assert first_done > 4
    assert types[first_done:][:3] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    terminal = [
        t for t in types if t in ("response.completed", "response.incomplete", "response.failed")
    ]
    assert terminal == [types[-1]]
    final = events[-1].response  # type: ignore[union-attr]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert final.output_text == deltas


def test_3_max_output_tokens_incomplete(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model="default",
            input="Write a long story about a dragon.",
            temperature=0,
            max_output_tokens=3,
            stream=True,
        )
    )
    assert events[-1].type == "response.incomplete"
    r = events[-1].response  # type: ignore[union-attr]
    assert r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 3


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "name": "get_weather"}],
)
def test_4_tool_call_arguments_follow_schema(client: openai.OpenAI, tool_choice: object) -> None:
    r = client.responses.create(
        model="default",
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice=tool_choice,  # type: ignore[arg-type]
        parallel_tool_calls=False,
        temperature=0,
        max_output_tokens=60,
    )
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER_TOOL["parameters"])  # type: ignore[arg-type]


def test_4_tool_call_streams_argument_events(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model="default",
            input="Weather in Rome?",
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=0,
            max_output_tokens=60,
            stream=True,
        )
    )
    types = [e.type for e in events]
    i = types.index("response.output_item.added")
    # the arguments stream as the model writes them: several deltas, then done
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 1
    collapsed = [t for k, t in enumerate(types) if k == 0 or t != types[k - 1]]
    j = collapsed.index("response.output_item.added")
    assert collapsed[j : j + 4] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert types[i + 1 : i + 1 + len(deltas)] == ["response.function_call_arguments.delta"] * len(
        deltas
    )
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert "".join(d.delta for d in deltas) == done.arguments
    assert types[-1] == "response.completed"


def test_4_function_call_output_continues(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="default",
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_output_tokens=60,
    )
    call = next(o for o in first.output if o.type == "function_call")
    second = client.responses.create(
        model="default",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="none",
        temperature=0,
        max_output_tokens=24,
    )
    assert second.output_text
    assert second.usage is not None
    assert first.usage is not None
    # The whole first turn (prompt + the call it produced) was reused.
    prev = first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens >= prev - 1


def test_5_json_schema_output_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model="default",
        input="Invent a person with a name and an age.",
        text={
            "format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}
        },
        temperature=0,
        max_output_tokens=60,
    )
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), schema)


def test_5_json_object_output_parses(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model="default",
        input="Give me a JSON object describing a cat.",
        text={"format": {"type": "json_object"}},
        temperature=0,
        max_output_tokens=60,
    )
    if r.status == "completed":
        assert isinstance(json.loads(r.output_text), dict)
    else:  # cut by max_output_tokens: still a JSON prefix that starts an object
        assert r.output_text.lstrip().startswith("{")


def test_6_previous_response_id_continues(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="default", input="My name is Ada. Say hi.", temperature=0, max_output_tokens=12
    )
    second = client.responses.create(
        model="default",
        previous_response_id=first.id,
        input="What is my name?",
        temperature=0,
        max_output_tokens=12,
    )
    assert second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached > 0
    assert cached >= first.usage.input_tokens + first.usage.output_tokens - 1
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


def test_7_unknown_previous_response_id(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="default", previous_response_id="resp_nope", input="Hi")
    body = err.value.body
    assert isinstance(body, dict)
    assert body["code"] == "previous_response_not_found"
    assert body["param"] == "previous_response_id"


def test_8_get_delete_input_items_cancel(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model="default",
        input=[
            {"role": "user", "content": "One."},
            {"role": "user", "content": [{"type": "input_text", "text": "Two."}]},
        ],
        temperature=0,
        max_output_tokens=4,
    )
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    items = client.responses.input_items.list(r.id, order="asc")
    texts = [i.content[0].text for i in items.data]  # type: ignore[union-attr]
    assert texts == ["One.", "Two."]
    page = client.responses.input_items.list(r.id, order="asc", limit=1)
    assert len(page.data) == 1 and page.has_more
    assert page.first_id == page.last_id == items.data[0].id
    rest = client.responses.input_items.list(r.id, order="asc", after=page.last_id)
    assert [i.id for i in rest.data] == [items.data[1].id]
    cancelled = client.responses.cancel(r.id)  # finished: answered as-is, not a 409
    assert cancelled.id == r.id
    deleted = client.responses.delete(r.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(r.id)


def test_8_store_false_is_not_retrievable(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model="default", input="Hi", store=False, temperature=0, max_output_tokens=2
    )
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="default", previous_response_id=r.id, input="Again")


def test_14_tenants_cannot_see_each_other(
    client: openai.OpenAI, other_client: openai.OpenAI
) -> None:
    r = client.responses.create(
        model="default", input="Secret.", temperature=0, max_output_tokens=2
    )
    with pytest.raises(openai.NotFoundError):
        other_client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        other_client.responses.input_items.list(r.id)
    with pytest.raises(openai.NotFoundError):
        other_client.responses.cancel(r.id)
    with pytest.raises(openai.NotFoundError):
        other_client.responses.delete(r.id)
    with pytest.raises(openai.BadRequestError) as err:
        other_client.responses.create(model="default", previous_response_id=r.id, input="Hi")
    assert isinstance(err.value.body, dict)
    assert err.value.body["code"] == "previous_response_not_found"
    assert client.responses.retrieve(r.id).id == r.id  # still there for its owner


def test_14_missing_or_wrong_key(server: LiveServer) -> None:
    for key in ("sk-wrong",):
        bad = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.responses.create(model="default", input="Hi")
    import httpx

    r = httpx.post(f"{server.base_url}/responses", json={"model": "default", "input": "Hi"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_15_cached_answer_equals_fresh_answer(
    client: openai.OpenAI, open_server: LiveServer
) -> None:
    """A chain continued from warm KV yields the same tokens as the full input served cold."""
    turns = ["List three colors.", "Now three animals.", "And three fruits."]
    chain_outputs: list[str] = []
    prev: str | None = None
    history: list[dict[str, str]] = []
    for text in turns:
        r = client.responses.create(
            model="default",
            previous_response_id=prev,
            input=text,
            temperature=0,
            max_output_tokens=24,
        )
        prev = r.id
        chain_outputs.append(r.output_text)
    assert r.usage is not None and r.usage.input_tokens_details.cached_tokens > 0
    cold = openai.OpenAI(base_url=open_server.base_url, api_key="none", max_retries=0)
    for i, text in enumerate(turns):
        history.append({"role": "user", "content": text})
        fresh = cold.responses.create(
            model="default",
            input=history,
            temperature=0,
            max_output_tokens=24,  # type: ignore[arg-type]
        )
        assert fresh.usage is not None and fresh.usage.input_tokens_details.cached_tokens == 0
        assert fresh.output_text == chain_outputs[i]
        history.append({"role": "assistant", "content": chain_outputs[i]})


def test_8_cancel_a_running_response(client: openai.OpenAI, server: LiveServer) -> None:
    """Cancel mid-stream: the stream ends at once as cancelled and the slot is free."""
    long_answer = {  # at least 300 numbers: the answer cannot end before the cancel
        "type": "object",
        "properties": {"n": {"type": "array", "items": {"type": "integer"}, "minItems": 300}},
        "required": ["n"],
    }
    stream = client.responses.create(
        model="default",
        input="List numbers.",
        temperature=0,
        max_output_tokens=1500,
        text={"format": {"type": "json_schema", "name": "numbers", "schema": long_answer}},
        stream=True,
    )
    rid, deltas, last = None, 0, None
    for event in stream:
        if event.type == "response.created":
            rid = event.response.id
        elif event.type == "response.output_text.delta":
            deltas += 1
            if deltas == 3:
                assert rid is not None
                assert client.responses.cancel(rid).status == "cancelled"
        last = event
    assert last is not None and last.type == "response.incomplete"
    assert last.response.status == "cancelled"
    assert last.response.usage is not None and last.response.usage.output_tokens < 100
    assert rid is not None and client.responses.retrieve(rid).status == "cancelled"
    health = server.health()
    assert health["slots_busy"] == 0 and health["responses_running"] == 0
