"""Long sessions that outgrow the context: truncation "auto" over WebSocket
(`client.responses.connect()`) and HTTP with the official SDK, in both KV modes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.responses import Response

from tests.conftest import LiveServer, start_server
from tests.near_tie import assert_items_same_or_near_tie
from warmloop.protocol.items import Item, MessageItem

INSTRUCTIONS = "You are a coding agent. Answer in one short sentence."
CTX = "768"
TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def tool_text(k: int) -> str:
    return f"Tool output {k}: " + " ".join(f"file_{k}_{i}.py ok;" for i in range(12))


def body(text: str, previous: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "model": "default",
        "instructions": INSTRUCTIONS,
        "input": [{"role": "user", "content": text}],
        "previous_response_id": previous,
        "temperature": 0,
        "max_output_tokens": 16,
        "truncation": "auto",
        "store": False,
    } | extra


@pytest.fixture(scope="module")
def recompute_server() -> Iterator[LiveServer]:
    s = start_server("--ctx", CTX, "--compact-summary-tokens", "96", name="truncate")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def shift_server() -> Iterator[LiveServer]:
    s = start_server("--ctx", CTX, "--truncation-kv", "shift", name="shift")
    yield s
    s.stop()


def client(server: LiveServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0)


async def ws_session(server: LiveServer, turns: int) -> list[tuple[Response, list[Item]]]:
    """One socket, `turns` turns of tool output; each response with the items the model
    saw (the conversation after every truncation so far, as the client can track it)."""
    out: list[tuple[Response, list[Item]]] = []
    seen: list[Item] = []
    previous = None
    async with client(server).responses.connect() as conn:
        for k in range(turns):
            text = tool_text(k)
            await conn.send({"type": "response.create", **body(text, previous)})
            async for event in conn:
                assert event.type != "error", event
                if event.type in TERMINAL:
                    response = event.response  # type: ignore[union-attr]
                    break
            assert response.status in ("completed", "incomplete"), response
            seen.append(MessageItem(f"u{k}", "user", text))
            seen = seen[response.warmloop["truncated_items"] :]  # type: ignore[attr-defined]
            out.append((response, list(seen)))
            seen.append(MessageItem(f"a{k}", "assistant", response.output_text))
            previous = response.id
    return out


def computed(r: Response) -> int:
    assert r.usage is not None
    return r.usage.input_tokens - r.usage.input_tokens_details.cached_tokens


async def test_ws_truncation_recomputes_the_kept_turns_exactly(
    recompute_server: LiveServer,
) -> None:
    """The default: once the context fills, the oldest turns go (down to half the
    context), the instructions' KV stays, the kept turns are computed again, and the
    answer is the one a cold server gives for exactly the kept items."""
    turns = await ws_session(recompute_server, 14)
    cut = [k for k, (r, _) in enumerate(turns) if r.warmloop["truncated_items"]]  # type: ignore[attr-defined]
    assert cut, "the context never filled"
    delta = computed(turns[1][0])  # a turn's own new tokens (tool output + template)
    for k in cut:
        r, seen = turns[k]
        assert r.usage is not None and r.usage.input_tokens + 16 <= int(CTX) // 2
        assert r.usage.input_tokens_details.cached_tokens > 0  # the instructions
        assert computed(r) > 2 * delta  # the kept turns: recomputed, not cut from the KV
        async with client(recompute_server) as http:
            cold = await http.responses.create(
                **body("", None, truncation="disabled")
                | {"input": [{"role": i.role, "content": i.text} for i in seen]}  # type: ignore[attr-defined]
            )
        assert_items_same_or_near_tie(
            INSTRUCTIONS,
            seen,
            r.output_text,
            cold.output_text,
            r.usage.input_tokens_details.cached_tokens,
        )
    # The turn after a truncation is a plain delta again.
    after = turns[cut[0] + 1][0]
    assert after.warmloop["delta_only"] and computed(after) <= delta + 8  # type: ignore[attr-defined]


async def test_ws_truncation_with_shift_computes_only_the_delta(shift_server: LiveServer) -> None:
    """--truncation-kv shift: the dropped turns are cut out of the KV and the kept ones
    shifted into place, so a truncated turn computes only its new tool output."""
    turns = await ws_session(shift_server, 14)
    cut = [r for r, _ in turns if r.warmloop["truncated_items"]]  # type: ignore[attr-defined]
    assert cut, "the context never filled"
    plain = [computed(r) for r, _ in turns[1:] if not r.warmloop["truncated_items"]]  # type: ignore[attr-defined]
    for r in cut:
        # No recompute of the conversation: as much as an untruncated turn's new tokens.
        assert r.warmloop["delta_only"] and computed(r) <= max(plain) + 8  # type: ignore[attr-defined]


async def test_http_chain_truncates_and_disabled_still_refuses(shift_server: LiveServer) -> None:
    """Over HTTP (store:true, previous_response_id) the chain truncates the same way;
    with truncation "disabled" the same input is a 400 context_length_exceeded."""
    async with client(shift_server) as http:
        previous = None
        truncated = 0
        for k in range(12):
            r = await http.responses.create(**body(tool_text(k), previous, store=True))
            assert r.status in ("completed", "incomplete")
            truncated += r.warmloop["truncated_items"]  # type: ignore[attr-defined]
            previous = r.id
        assert truncated > 0
        items = await http.responses.input_items.list(previous)
        assert items.data  # the stored response lists what it was given
        long_input = [{"role": "user", "content": tool_text(k)} for k in range(12)]
        with pytest.raises(openai.BadRequestError) as refused:
            await http.responses.create(**body("", None, truncation="disabled", input=long_input))
        assert refused.value.code == "context_length_exceeded"
        ok = await http.responses.create(**body("", None, input=long_input))
        assert ok.warmloop["truncated_items"] > 0  # type: ignore[attr-defined]


def tool_turn(k: int) -> list[dict[str, Any]]:
    """A tool call the agent made and its output, as a client sends them back."""
    call = {"type": "function_call", "call_id": f"call_{k}", "name": "read_file"}
    return [
        call | {"arguments": f'{{"path": "src/module_{k}.py"}}'},
        {"type": "function_call_output", "call_id": f"call_{k}", "output": tool_text(k)},
    ]


async def test_compact_summarizes_a_warm_chain_into_items_for_the_next_input(
    recompute_server: LiveServer,
) -> None:
    """`client.responses.compact(previous_response_id=...)`: the SDK's CompactedResponse
    with every user message and one compaction item; the summary was written on the
    chain's warm KV; the items work as the next `input` and cost far fewer tokens."""
    async with client(recompute_server) as http:
        r = await http.responses.create(
            **body("Fix the failing test in module 2.", None, store=True)
        )
        for k in range(3):
            r = await http.responses.create(**body("", r.id, store=True, input=tool_turn(k)))
        assert r.usage is not None
        chain_tokens = r.usage.input_tokens + r.usage.output_tokens
        compacted = await http.responses.compact(
            model="default", previous_response_id=r.id, instructions=INSTRUCTIONS
        )
        assert compacted.object == "response.compaction"
        assert [item.type for item in compacted.output] == ["message", "compaction"]
        assert compacted.usage.input_tokens_details.cached_tokens >= chain_tokens - 1
        # (The SDK types output messages as the assistant's: its dump warns on input_text.)
        wire = [
            i.model_dump(mode="json", exclude_none=True, warnings=False) for i in compacted.output
        ]
        nxt = await http.responses.create(
            **body("", None, input=[*wire, {"role": "user", "content": "Go on."}])
        )
        assert nxt.status in ("completed", "incomplete") and nxt.usage is not None
        assert nxt.usage.input_tokens < chain_tokens // 2  # the tool outputs are summarized
        # A compaction item this server did not make is refused, with its place named.
        foreign = {"type": "compaction", "encrypted_content": "gAAAA-from-elsewhere"}
        with pytest.raises(openai.BadRequestError) as bad:
            await http.responses.create(**body("", None, input=[foreign]))
        assert bad.value.code == "invalid_encrypted_content"
        assert bad.value.param == "input[0].encrypted_content"
        with pytest.raises(openai.BadRequestError):
            await http.responses.compact(model="default")  # nothing to compact


COMPACT_AT = [{"type": "compaction", "compact_threshold": 400}]


async def agent_turns(send: Any, turns: int) -> list[tuple[Response, list[str]]]:
    """An agent's loop with server-side compaction: a task, then tool turns, each
    continuing the last response; every response with its stream's event types."""
    out: list[tuple[Response, list[str]]] = []
    previous = None
    for k in range(turns):
        items = [{"role": "user", "content": "Fix the failing test."}] if k == 0 else tool_turn(k)
        response, types = await send(
            body("", previous, input=items, context_management=COMPACT_AT, truncation="disabled")
        )
        assert response.status in ("completed", "incomplete"), response.error
        out.append((response, types))
        previous = response.id
    return out


async def test_context_management_compacts_on_the_socket_and_the_chain_goes_on(
    recompute_server: LiveServer,
) -> None:
    """`context_management` with a threshold over `responses.connect()`: the turn whose
    prompt passes it writes a summary on the chain's warm KV (item 0, with compacting
    events; every event parsed by the SDK), answers from the compacted prompt (its
    head's KV kept), and the next turn is a delta on the compacted chain again."""
    async with client(recompute_server).responses.connect() as conn:

        async def send(b: dict[str, Any]) -> tuple[Response, list[str]]:
            await conn.send({"type": "response.create", **b})
            types = []
            async for event in conn:
                assert event.type != "error", event
                types.append(event.type)
                if event.type in TERMINAL:
                    return event.response, types  # type: ignore[union-attr]
            raise AssertionError("the socket closed")

        turns = await agent_turns(send, 6)
    compacting = [i for i, (r, _) in enumerate(turns) if r.output[0].type == "compaction"]
    assert compacting, [r.usage for r, _ in turns]
    k = compacting[0]
    before, (r, types) = turns[k - 1][0], turns[k]
    assert r.usage is not None and before.usage is not None
    assert types[2:4] == ["response.output_item.added", "response.compaction.compacting"]
    assert types.count("response.output_item.done") == len(r.output) == 2
    assert r.output[0].encrypted_content.startswith("wl1.")  # type: ignore[union-attr]
    summary = r.warmloop["compaction"]  # type: ignore[attr-defined]
    chain = before.usage.input_tokens + before.usage.output_tokens
    assert summary["cached_tokens"] >= chain - 1  # the summary continued the warm chain
    prompt = r.usage.input_tokens - summary["input_tokens"]
    cached = r.usage.input_tokens_details.cached_tokens - summary["cached_tokens"]
    assert 0 < cached < prompt < 400  # the head's KV stayed; the compacted prompt fits
    nxt = turns[k + 1][0]
    assert nxt.usage is not None and nxt.output[0].type != "compaction"
    assert nxt.usage.input_tokens_details.cached_tokens >= prompt  # a delta again


async def test_context_management_over_http_is_the_same_whether_the_client_chains_or_resends(
    recompute_server: LiveServer,
) -> None:
    """HTTP, store:true with previous_response_id, against a client that resends every
    item with the outputs appended (the compaction item among them): after the
    compaction both prompts are the same, token for token."""
    async with client(recompute_server) as http:

        async def send(b: dict[str, Any]) -> tuple[Response, list[str]]:
            return await http.responses.create(**b | {"store": True}), []

        turns = await agent_turns(send, 5)
        k = next(i for i, (r, _) in enumerate(turns) if r.output[0].type == "compaction")
        chained = await http.responses.create(
            **body("", turns[k][0].id, input=tool_turn(9), store=True)
        )
        resent: list[Any] = []
        for r, _ in turns[: k + 1]:
            sent = await http.responses.input_items.list(r.id, order="asc")
            resent += [x.model_dump(exclude_none=True, warnings=False) for x in sent.data]
            resent += [x.model_dump(exclude_none=True, warnings=False) for x in r.output]
        stateless = await http.responses.create(**body("", None, input=[*resent, *tool_turn(9)]))
    assert chained.usage is not None and stateless.usage is not None
    assert stateless.usage.input_tokens == chained.usage.input_tokens
    assert stateless.output[0].type != "compaction"
