"""The Conversations API and `conversation` on responses.create, against a live server
with the official SDK (HTTP, SSE and `client.responses.connect()`), raw HTTP for the
errors, and openai-agents' `OpenAIConversationsSession`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.conversations import Conversation, ConversationDeletedResource
from openai.types.responses import Response

from tests.conftest import KEY_A, KEY_B, LiveServer, fresh_store, start_server
from tests.robustness import leaks

AUTH = {"Authorization": f"Bearer {KEY_A}"}
OTHER = {"Authorization": f"Bearer {KEY_B}"}
TERMINAL = ("response.completed", "response.incomplete", "response.failed")
TURN = {"model": "default", "temperature": 0, "max_output_tokens": 12}


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY_A, max_retries=0)


@pytest.fixture(scope="module")
def other(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY_B, max_retries=0)


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text}


def texts(items: Any) -> list[str]:
    return [i.content[0].text for i in items]


def test_sdk_create_retrieve_update_delete(client: openai.OpenAI) -> None:
    conv = client.conversations.create(items=[user("one"), user("two")], metadata={"topic": "demo"})
    assert isinstance(conv, Conversation) and conv.id.startswith("conv_")
    assert conv.object == "conversation" and conv.metadata == {"topic": "demo"}
    got = client.conversations.retrieve(conv.id)
    assert (got.id, got.created_at, got.metadata) == (conv.id, conv.created_at, {"topic": "demo"})
    updated = client.conversations.update(conv.id, metadata={"topic": "other", "n": "2"})
    assert updated.metadata == {"topic": "other", "n": "2"}
    assert client.conversations.retrieve(conv.id).metadata == {"topic": "other", "n": "2"}
    gone = client.conversations.delete(conv.id)
    assert isinstance(gone, ConversationDeletedResource)
    assert (gone.id, gone.object, gone.deleted) == (conv.id, "conversation.deleted", True)
    with pytest.raises(openai.NotFoundError) as err:
        client.conversations.retrieve(conv.id)
    assert err.value.code == "conversation_not_found"
    with pytest.raises(openai.NotFoundError):
        client.conversations.delete(conv.id)
    empty = client.conversations.create()
    assert empty.metadata == {} and list(client.conversations.items.list(empty.id)) == []


def test_sdk_items_create_list_retrieve_delete(client: openai.OpenAI) -> None:
    conv = client.conversations.create(items=[user("one"), user("two")])
    added = client.conversations.items.create(
        conv.id,
        items=[
            user("three"),
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "four"},
        ],
    )
    assert added.object == "list" and len(added.data) == 3 and not added.has_more
    assert [i.type for i in added.data] == ["message", "function_call", "function_call_output"]
    ids = [i.id for i in added.data]
    assert ids[0].startswith("msg_") and ids[1].startswith("fc_") and len(set(ids)) == 3
    assert (added.first_id, added.last_id) == (ids[0], ids[2])
    # auto-pagination (after = the previous page's last id) walks every item once, in order
    every = list(client.conversations.items.list(conv.id, order="asc", limit=2))
    assert [i.type for i in every][:3] == ["message"] * 3
    assert texts(every[:3]) == ["one", "two", "three"] and [i.id for i in every[2:]] == ids
    newest_first = list(client.conversations.items.list(conv.id, limit=4))
    assert [i.id for i in newest_first] == [i.id for i in reversed(every)]
    page = client.conversations.items.list(conv.id, limit=2)
    assert page.has_more and [i.id for i in page.data] == [ids[2], ids[1]]
    after = client.conversations.items.list(conv.id, limit=2, after=ids[1], order="asc")
    assert [i.id for i in after.data] == [ids[2]] and after.has_more is False
    call = client.conversations.items.retrieve(ids[1], conversation_id=conv.id)
    assert call.type == "function_call" and call.call_id == "call_1" and call.name == "f"  # type: ignore[union-attr]
    back = client.conversations.items.delete(ids[0], conversation_id=conv.id)
    assert isinstance(back, Conversation) and back.id == conv.id
    left = list(client.conversations.items.list(conv.id, order="asc"))
    assert texts(left[:2]) == ["one", "two"] and ids[0] not in [i.id for i in left]
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(ids[0], conversation_id=conv.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.delete(ids[0], conversation_id=conv.id)


def test_bad_requests_get_clear_errors(server: LiveServer) -> None:
    base = server.base_url
    conv = httpx.post(f"{base}/conversations", json={"items": [user("x")]}, headers=AUTH).json()
    cid = conv["id"]
    item_id = httpx.get(f"{base}/conversations/{cid}/items", headers=AUTH).json()["first_id"]
    many = [user(str(k)) for k in range(21)]
    cases: list[tuple[str, str, Any, int, str | None]] = [
        ("POST", "/conversations", b"{not json", 400, None),
        ("POST", "/conversations", [1], 400, None),
        ("POST", "/conversations", {"items": many}, 400, "items"),
        (
            "POST",
            "/conversations",
            {"metadata": {f"k{i}": "v" for i in range(17)}},
            400,
            "metadata",
        ),
        ("POST", "/conversations", {"metadata": {"k": "v" * 513}}, 400, "metadata"),
        ("POST", "/conversations", {"items": [{"role": "user"}]}, 400, "items[0].content"),
        ("POST", f"/conversations/{cid}", {"metadata": {"k": 1}}, 400, "metadata.k"),
        ("POST", f"/conversations/{cid}", {}, 400, "metadata"),
        ("POST", f"/conversations/{cid}/items", {"items": many}, 400, "items"),
        ("POST", f"/conversations/{cid}/items", {"items": []}, 400, "items"),
        ("POST", f"/conversations/{cid}/items", b"", 400, None),
        ("GET", f"/conversations/{cid}/items?limit=0", None, 400, "limit"),
        ("GET", f"/conversations/{cid}/items?limit=101", None, 400, "limit"),
        ("GET", f"/conversations/{cid}/items?limit=x", None, 400, "limit"),
        ("GET", f"/conversations/{cid}/items?order=up", None, 400, "order"),
        ("GET", f"/conversations/{cid}/items?after=msg_nope", None, 400, "after"),
        ("GET", f"/conversations/{cid}/items?include=nope", None, 400, "include[0]"),
        ("GET", f"/conversations/{cid}/items/msg_nope", None, 404, "item_id"),
        ("DELETE", f"/conversations/{cid}/items/msg_nope", None, 404, "item_id"),
        ("GET", "/conversations/conv_nope", None, 404, "conversation_id"),
        ("GET", "/conversations/conv_nope/items", None, 404, "conversation_id"),
        ("POST", "/conversations/conv_nope/items", {"items": [user("x")]}, 404, "conversation_id"),
        ("GET", f"/conversations/conv_nope/items/{item_id}", None, 404, "conversation_id"),
        ("DELETE", f"/conversations/conv_nope/items/{item_id}", None, 404, "conversation_id"),
    ]
    for method, path, body, status, param in cases:
        kw: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = httpx.request(method, base + path, headers=AUTH, **kw)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"], (path, error)
        assert error["param"] == param, (method, path, error)
    no_key = httpx.get(f"{base}/conversations/{cid}")
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    # a deleted conversation is gone for every route, and for responses
    assert httpx.delete(f"{base}/conversations/{cid}", headers=AUTH).status_code == 200
    for method, path, body in [
        ("GET", f"/conversations/{cid}", None),
        ("POST", f"/conversations/{cid}", {"metadata": {}}),
        ("DELETE", f"/conversations/{cid}", None),
        ("GET", f"/conversations/{cid}/items", None),
        ("POST", f"/conversations/{cid}/items", {"items": [user("x")]}),
        ("GET", f"/conversations/{cid}/items/{item_id}", None),
        ("DELETE", f"/conversations/{cid}/items/{item_id}", None),
        ("POST", "/responses", {**TURN, "input": "x", "conversation": cid}),
    ]:
        r = httpx.request(method, base + path, headers=AUTH, json=body, timeout=60)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "conversation_not_found"


def test_one_key_cannot_touch_another_keys_conversation(
    client: openai.OpenAI, other: openai.OpenAI
) -> None:
    conv = client.conversations.create(items=[user("secret")], metadata={"owner": "a"})
    item = next(iter(client.conversations.items.list(conv.id)))
    attempts = [
        lambda: other.conversations.retrieve(conv.id),
        lambda: other.conversations.update(conv.id, metadata={"owner": "b"}),
        lambda: other.conversations.items.list(conv.id),
        lambda: other.conversations.items.create(conv.id, items=[user("mine now")]),
        lambda: other.conversations.items.retrieve(item.id, conversation_id=conv.id),
        lambda: other.conversations.items.delete(item.id, conversation_id=conv.id),
        lambda: other.conversations.delete(conv.id),
        lambda: other.responses.create(**TURN, input="continue", conversation=conv.id),
    ]
    for attempt in attempts:
        with pytest.raises(openai.NotFoundError) as err:
            attempt()
        assert err.value.code == "conversation_not_found"
    # the owner's conversation is as it was
    assert client.conversations.retrieve(conv.id).metadata == {"owner": "a"}
    assert texts(client.conversations.items.list(conv.id)) == ["secret"]


def test_responses_on_a_conversation_over_http_json_and_sse(client: openai.OpenAI) -> None:
    conv = client.conversations.create(items=[user("My name is Ada.")])
    first = client.responses.create(
        **TURN, instructions="Be brief.", input="What is my name?", conversation=conv.id
    )
    assert first.conversation is not None and first.conversation.id == conv.id
    assert first.prompt_cache_retention == "in_memory"
    assert first.usage is not None
    stream = client.responses.create(
        **TURN,
        instructions="Be brief.",
        input=[user("Say it again.")],
        conversation={"id": conv.id},
        prompt_cache_retention="in-memory",  # type: ignore[arg-type]  # older SDKs' spelling
        stream=True,
    )
    done = [e for e in stream if e.type in TERMINAL]
    assert len(done) == 1 and done[0].type != "response.failed"  # incomplete: 12 tokens
    second: Response = done[0].response  # type: ignore[union-attr]
    assert second.conversation is not None and second.conversation.id == conv.id
    assert second.prompt_cache_retention == "in_memory"
    assert second.usage is not None
    # the 2nd turn computes only its delta: the 1st turn's prompt and output are cached
    before = first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens >= before - 1
    assert second.usage.input_tokens > before
    assert second.warmloop["delta_only"] is True  # type: ignore[attr-defined]
    # the conversation holds both turns, in order: input, then output
    items = list(client.conversations.items.list(conv.id, order="asc"))
    assert [(i.type, i.role) for i in items] == [  # type: ignore[union-attr]
        ("message", "user"),
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
        ("message", "assistant"),
    ]
    said = texts(items)
    assert [said[0], said[1], said[3]] == ["My name is Ada.", "What is my name?", "Say it again."]
    assert [items[2].id, items[4].id] == [first.output[0].id, second.output[0].id]
    assert texts(items)[2] == first.output_text and texts(items)[4] == second.output_text


def test_conversation_with_previous_response_id_is_a_400(client: openai.OpenAI) -> None:
    conv = client.conversations.create()
    prev = client.responses.create(**TURN, input="Hi")
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(
            **TURN, input="x", conversation=conv.id, previous_response_id=prev.id
        )
    assert err.value.param == "conversation"  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(**TURN, input="x", conversation="conv_missing")
    assert missing.value.code == "conversation_not_found"
    assert list(client.conversations.items.list(conv.id)) == []  # nothing was added


def test_items_added_or_deleted_between_turns(client: openai.OpenAI) -> None:
    """Items the client adds go after the last turn, so the next turn is still a delta
    (and sees them); deleting one changes the history, so the next turn is rendered and
    tokenized whole (its chain is gone), and is still served."""
    conv = client.conversations.create()
    first = client.responses.create(**TURN, input="Count to three.", conversation=conv.id)
    assert first.usage is not None
    client.conversations.items.create(conv.id, items=[user("Now count to four.")])
    second = client.responses.create(**TURN, input=[user("Go on.")], conversation=conv.id)
    assert second.usage is not None and second.warmloop["delta_only"] is True  # type: ignore[attr-defined]
    before = first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens >= before - 1
    listed = list(client.conversations.items.list(conv.id, order="asc"))
    assert texts(listed)[:2] == ["Count to three.", first.output_text]
    assert texts(listed)[2:4] == ["Now count to four.", "Go on."]
    client.conversations.items.delete(listed[2].id, conversation_id=conv.id)
    third = client.responses.create(**TURN, input="Again.", conversation=conv.id)
    assert third.usage is not None and third.warmloop["delta_only"] is False  # type: ignore[attr-defined]
    assert "Now count to four." not in texts(client.conversations.items.list(conv.id))


async def test_one_response_at_a_time_per_conversation(server: LiveServer) -> None:
    base = server.base_url
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=120) as http:
        cid = (await http.post("/conversations", json={})).json()["id"]
        body = {**TURN, "input": "Count from one to forty.", "max_output_tokens": 64}
        async with http.stream(
            "POST", "/responses", json={**body, "conversation": cid, "stream": True}
        ) as running:
            lines = running.aiter_lines()
            async for line in lines:
                if line.startswith("data: "):
                    break  # response.created: it runs
            busy = await http.post("/responses", json={**TURN, "input": "x", "conversation": cid})
            assert busy.status_code == 400, busy.text
            assert busy.json()["error"]["code"] == "conversation_locked"
            assert busy.json()["error"]["param"] == "conversation"
            other = (await http.post("/conversations", json={})).json()["id"]
            free = await http.post("/responses", json={**TURN, "input": "x", "conversation": other})
            assert free.status_code == 200, free.text  # another conversation is not held
            async for _ in lines:
                pass
        after = await http.post("/responses", json={**TURN, "input": "Hi", "conversation": cid})
        assert after.status_code == 200, after.text  # released once it ended
        items = (await http.get(f"/conversations/{cid}/items")).json()["data"]
        assert len(items) == 4  # two turns, input and output each; the refused one added none
    leaks.assert_no_leaks(server, AUTH)


async def test_responses_on_a_conversation_over_websocket(server: LiveServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY_A, max_retries=0)
    conv = await client.conversations.create(items=[user("Remember the number 7.")])
    async with client.responses.connect() as ws:

        async def turn(**fields: Any) -> Any:
            await ws.send({"type": "response.create", **TURN, **fields})
            async for event in ws:
                if event.type in TERMINAL or event.type == "error":
                    return event
            raise AssertionError("the socket closed")

        missing = await turn(input="x", conversation="conv_missing")
        assert missing.type == "error" and missing.error.code == "conversation_not_found"
        first = (await turn(input="What number?", conversation=conv.id)).response
        assert first.conversation.id == conv.id
        second = (await turn(input="And doubled?", conversation=conv.id)).response
        before = first.usage.input_tokens + first.usage.output_tokens
        assert second.usage.input_tokens_details.cached_tokens >= before - 1
        assert second.warmloop["delta_only"] is True
    items = [i async for i in client.conversations.items.list(conv.id, order="asc")]
    assert [i.role for i in items] == ["user", "user", "assistant", "user", "assistant"]  # type: ignore[union-attr]
    assert items[4].id == second.output[0].id


@pytest.fixture
def agents_client(server: LiveServer) -> Iterator[openai.AsyncOpenAI]:
    import agents  # a dev dependency: `make test` installs it, so a skip would hide a failure

    agents.set_tracing_disabled(True)
    yield openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY_A, max_retries=0)


@pytest.mark.parametrize("transport", ["http", "websocket"])
async def test_openai_agents_conversations_session(
    agents_client: openai.AsyncOpenAI, server: LiveServer, transport: str
) -> None:
    """`OpenAIConversationsSession` keeps an agent's history in a warmloop conversation:
    the second run's model call gets the first run's items (from `items.list`), and both
    runs' items are added (`items.create`); the agent's model calls go over HTTP or over
    the Responses WebSocket mode (`OpenAIResponsesWSModel`)."""
    from agents import Agent, ModelSettings, OpenAIConversationsSession, Runner
    from agents.models.openai_responses import OpenAIResponsesModel, OpenAIResponsesWSModel

    model_class = OpenAIResponsesModel if transport == "http" else OpenAIResponsesWSModel

    conv = await agents_client.conversations.create()
    session = OpenAIConversationsSession(conversation_id=conv.id, openai_client=agents_client)
    agent = Agent(
        name="assistant",
        instructions="Answer in a few words.",
        model=model_class(model="default", openai_client=agents_client),
        # the agent treats `incomplete` as an error: room for the whole answer
        model_settings=ModelSettings(temperature=0, max_tokens=96),
    )
    one = await Runner.run(agent, "My name is Ada.", session=session)
    after_one = await session.get_items()
    assert [i.get("role") for i in after_one] == ["user", "assistant"]
    assert after_one[1]["content"][0]["text"] == one.final_output  # type: ignore[index]
    two = await Runner.run(agent, "What is my name?", session=session)
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as http:
        gauges = (await http.get("/metrics")).text
    sockets = float(gauges.split("\nwarmloop_websocket_connections ", 1)[1].split()[0])
    assert (sockets >= 1) == (transport == "websocket")  # the WS model keeps its socket open
    # the second run's request carried the first run's items before its own input
    response_id = two.raw_responses[0].response_id
    async with httpx.AsyncClient(base_url=server.base_url, headers=AUTH) as http:
        sent = (await http.get(f"/responses/{response_id}/input_items?order=asc")).json()
    assert [i["content"][0]["text"] for i in sent["data"]] == [
        "My name is Ada.",
        one.final_output,
        "What is my name?",
    ]
    items = [i async for i in agents_client.conversations.items.list(conv.id, order="asc")]
    assert [i.role for i in items] == ["user", "assistant", "user", "assistant"]  # type: ignore[union-attr]
    assert items[3].content[0].text == two.final_output  # type: ignore[union-attr]
    # `conversation_id=` runs the agent on the conversation server-side instead
    three = await Runner.run(agent, "Thanks.", conversation_id=conv.id)
    resp = three.raw_responses[0]
    assert resp.usage.input_tokens_details.cached_tokens > 0
    items = [i async for i in agents_client.conversations.items.list(conv.id, order="asc")]
    assert len(items) == 6 and items[4].content[0].text == "Thanks."  # type: ignore[union-attr]
    await session.clear_session()
    with pytest.raises(openai.NotFoundError):
        await agents_client.conversations.retrieve(conv.id)


@pytest.fixture(params=["sqlite", "postgres"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_store(request, tmp_path)


def test_conversations_survive_a_restart(store_at: str) -> None:
    """A conversation, its metadata and its items (added directly and by responses) are
    durable; after a restart a turn continues it from the store (no chain in memory:
    tokenized whole), and deletions are durable too."""
    keys = ("--api-key", KEY_A, "--api-key", KEY_B)
    s = start_server(*keys, "--store", store_at, name="conv1")
    try:
        client = openai.OpenAI(base_url=s.base_url, api_key=KEY_A, max_retries=0)
        conv = client.conversations.create(items=[user("My name is Ada.")], metadata={"k": "v"})
        client.conversations.items.create(conv.id, items=[user("I live in London.")])
        first = client.responses.create(**TURN, input="Where do I live?", conversation=conv.id)
        before = [i.model_dump() for i in client.conversations.items.list(conv.id, order="asc")]
        assert len(before) == 4
    finally:
        s.stop()
    s = start_server(*keys, "--store", store_at, "--prompt-cache-retention", "24h", name="conv2")
    try:
        client = openai.OpenAI(base_url=s.base_url, api_key=KEY_A, max_retries=0)
        got = client.conversations.retrieve(conv.id)
        assert (got.created_at, got.metadata) == (conv.created_at, {"k": "v"})
        after = [i.model_dump() for i in client.conversations.items.list(conv.id, order="asc")]
        assert after == before
        assert after[3]["id"] == first.output[0].id
        page = client.conversations.items.list(conv.id, limit=3, after=after[3]["id"])
        assert [i.id for i in page.data] == [after[2]["id"], after[1]["id"], after[0]["id"]]
        assert page.has_more is False
        with pytest.raises(openai.NotFoundError):
            openai.OpenAI(base_url=s.base_url, api_key=KEY_B).conversations.retrieve(conv.id)
        second = client.responses.create(**TURN, input="And my name?", conversation=conv.id)
        assert second.usage is not None and first.usage is not None
        assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
        assert second.prompt_cache_retention == "24h"  # the server's default now
        named = client.responses.create(
            **TURN, input="x", store=False, prompt_cache_retention="in_memory"
        )
        assert named.prompt_cache_retention == "in_memory"
        client.conversations.items.delete(after[1]["id"], conversation_id=conv.id)
        doomed = client.conversations.create(items=[user("bye")])
        client.conversations.delete(doomed.id)
    finally:
        s.stop()
    s = start_server(*keys, "--store", store_at, name="conv3")
    try:
        client = openai.OpenAI(base_url=s.base_url, api_key=KEY_A, max_retries=0)
        kept = list(client.conversations.items.list(conv.id, order="asc"))
        assert len(kept) == 5 and after[1]["id"] not in [i.id for i in kept]
        assert texts(kept)[:3] == ["My name is Ada.", "Where do I live?", first.output_text]
        with pytest.raises(openai.NotFoundError):
            client.conversations.retrieve(doomed.id)
    finally:
        s.stop()


def test_conversations_in_memory_store() -> None:
    """`--store memory`: the same API and delta turns, with nothing on disk (a restart
    forgets the conversation)."""
    s = start_server("--api-key", KEY_A, "--store", "memory", name="conv-memory")
    try:
        client = openai.OpenAI(base_url=s.base_url, api_key=KEY_A, max_retries=0)
        conv = client.conversations.create(items=[user("My name is Ada.")], metadata={"m": "1"})
        first = client.responses.create(**TURN, input="What is my name?", conversation=conv.id)
        second = client.responses.create(**TURN, input="Again.", conversation=conv.id)
        assert first.usage is not None and second.usage is not None
        before = first.usage.input_tokens + first.usage.output_tokens
        assert second.usage.input_tokens_details.cached_tokens >= before - 1
        items = list(client.conversations.items.list(conv.id, order="asc"))
        assert len(items) == 5 and items[4].id == second.output[0].id
        assert client.conversations.retrieve(conv.id).metadata == {"m": "1"}
    finally:
        s.stop()
    s = start_server("--api-key", KEY_A, "--store", "memory", name="conv-memory2")
    try:
        client = openai.OpenAI(base_url=s.base_url, api_key=KEY_A, max_retries=0)
        with pytest.raises(openai.NotFoundError):
            client.conversations.retrieve(conv.id)
    finally:
        s.stop()
