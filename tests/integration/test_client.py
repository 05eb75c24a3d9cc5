"""`warmloop.client.AgentSession` against live servers: the tool loop, a socket killed
mid-turn (through a TCP proxy that can cut every connection), the connection age limit,
and a refused upgrade (HTTP 426) that falls back to HTTP.

The agent's only tool takes no arguments and counts its calls, so with
`tool_choice: required` every turn's call is fixed by the grammar: an interrupted loop
must end with exactly the same tool runs as an uninterrupted one, and a tool that ran
twice would show up as a skipped step.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.conftest import KEY_A, LiveServer, start_server
from warmloop.client import AgentResult, AgentSession, RetryPolicy, SyncAgentSession

TURNS = 4


class Steps:
    """A tool with a side effect: each call returns the next step number."""

    def __init__(self) -> None:
        self.calls = 0

    def next_step(self) -> str:
        """Return the next step of the plan."""
        self.calls += 1
        return f"step {self.calls}"


class CuttingProxy:
    """A TCP proxy to a server; `cut()` aborts every open connection at once."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.pipes: list[asyncio.StreamWriter] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.pipes += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut(self) -> None:
        for w in self.pipes:
            w.transport.abort()
        self.pipes.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


@contextlib.asynccontextmanager
async def proxy_to(server: LiveServer) -> AsyncIterator[tuple[CuttingProxy, str]]:
    proxy = CuttingProxy(server.port)
    port = await proxy.start()
    try:
        yield proxy, f"http://127.0.0.1:{port}/v1"
    finally:
        await proxy.stop()


def session(base_url: str, steps: Steps, **kwargs: Any) -> AgentSession:
    options: dict[str, Any] = {
        "base_url": base_url,
        "api_key": KEY_A,
        "instructions": "You follow a plan one step at a time using the tool.",
        "tools": [steps.next_step],
        "temperature": 0,
        "max_output_tokens": 48,
        "max_turns": TURNS,
        "parallel_tool_calls": False,
        "retry": RetryPolicy(max_retries=4, initial_delay=0.05, max_delay=0.2),
    }
    return AgentSession(**(options | kwargs))


async def run_loop(s: AgentSession) -> tuple[AgentResult, AgentResult]:
    """TURNS tool-calling turns, then a final answer in a second run."""
    tools = await s.run("Work through the plan.", tool_choice="required")
    final = await s.run("Say that you are done.", tool_choice="none")
    return tools, final


def tool_outputs(result: AgentResult) -> list[str]:
    return [run.output for run in result.tool_runs]


def calls_in(result: AgentResult) -> int:
    return sum(1 for r in result.responses for i in r.output if i.type == "function_call")


async def slots_idle(server: LiveServer) -> None:
    for _ in range(100):
        h = server.health()
        if h["slots_busy"] == 0 and h["responses_running"] == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"slots still busy: {server.health()}")


@pytest.fixture(scope="module")
def reference(server: LiveServer) -> Iterator[tuple[AgentResult, AgentResult]]:
    """The uninterrupted loop over WebSocket."""

    async def go() -> tuple[AgentResult, AgentResult]:
        steps = Steps()
        async with session(server.base_url, steps) as s:
            return await run_loop(s)

    yield asyncio.run(go())


def test_tool_loop_over_websocket_sends_only_the_delta(
    reference: tuple[AgentResult, AgentResult],
) -> None:
    tools, final = reference
    assert tools.stopped == "max_turns" and tools.turns == TURNS
    assert tool_outputs(tools) == [f"step {k}" for k in range(1, TURNS + 1)]
    assert final.stopped == "final_answer" and final.turns == 1 and final.output_text.strip()
    assert (tools.transport, tools.reconnects, tools.replays) == ("websocket", 0, 0)
    # every turn after the first reuses everything the previous turn left in the slot
    responses = tools.responses + final.responses
    for before, after in itertools.pairwise(responses):
        assert before.usage is not None and after.usage is not None
        held = before.usage.input_tokens + before.usage.output_tokens
        assert after.usage.input_tokens_details.cached_tokens >= held - 1
        assert after.usage.input_tokens > held  # the new items were appended


@pytest.mark.parametrize("store", [False, True])
async def test_socket_killed_mid_turn_reconnects_with_the_same_result(
    server: LiveServer, reference: tuple[AgentResult, AgentResult], store: bool
) -> None:
    steps = Steps()
    async with proxy_to(server) as (proxy, url):
        created = 0

        def on_event(event: Any) -> None:
            nonlocal created
            if event.type == "response.created":
                created += 1
                if created == 2:  # the second turn is generating: kill its socket
                    proxy.cut()

        async with session(url, steps, store=store, on_event=on_event) as s:
            tools, final = await run_loop(s)
        assert proxy.connections >= 2
    assert tools.reconnects >= 1 and tools.transport == "websocket"
    # store:true continues from the last stored id; store:false replays its context once
    assert tools.replays == (0 if store else 1)
    assert tool_outputs(tools) == tool_outputs(reference[0])
    assert steps.calls == TURNS == calls_in(tools)  # no tool ran twice
    assert (tools.stopped, final.stopped) == ("max_turns", "final_answer")
    await slots_idle(server)


async def test_age_limit_reconnects_and_goes_on() -> None:
    aged = start_server("--api-key", KEY_A, "--ws-max-age", "0.5", name="client-age")
    try:
        steps = Steps()

        async def slow_step() -> str:
            await asyncio.sleep(0.6)  # the tool pause outlives the connection
            return steps.next_step()

        slow_step.__doc__ = "Return the next step of the plan."
        async with session(aged.base_url, steps, tools=[slow_step]) as s:
            tools, final = await run_loop(s)
        assert tools.reconnects >= 1
        assert tool_outputs(tools) == [f"step {k}" for k in range(1, TURNS + 1)]
        assert steps.calls == TURNS and final.stopped == "final_answer"
    finally:
        aged.stop()


async def test_refused_upgrade_falls_back_to_http_at_once(
    reference: tuple[AgentResult, AgentResult],
) -> None:
    no_ws = start_server("--api-key", KEY_A, "--no-websocket", name="client-no-ws")
    try:
        for store in (False, True):
            steps = Steps()
            async with session(no_ws.base_url, steps, store=store) as s:
                tools, final = await run_loop(s)
            assert (tools.transport, tools.reconnects) == ("http", 0)
            assert tool_outputs(tools) == tool_outputs(reference[0])
            assert steps.calls == TURNS and final.stopped == "final_answer"
            if store:  # over HTTP, stored responses continue by id: the prefix is reused
                later = tools.responses[1:] + final.responses
                assert all(
                    r.usage and r.usage.input_tokens_details.cached_tokens > 0 for r in later
                )
    finally:
        no_ws.stop()


def test_sync_session(server: LiveServer) -> None:
    steps = Steps()
    texts: list[str] = []
    with SyncAgentSession(
        base_url=server.base_url,
        api_key=KEY_A,
        tools=[steps.next_step],
        temperature=0,
        max_output_tokens=48,
        max_turns=2,
        parallel_tool_calls=False,  # one call a turn (a cut-off second one is answered)
        on_text=texts.append,
    ) as s:
        first = s.run("Take one step.", tool_choice="required")
        second = s.run("Now say hello.", tool_choice="none")
    assert first.turns == 2 and steps.calls == 2 and first.stopped == "max_turns"
    assert second.stopped == "final_answer" and "".join(texts) == second.output_text


async def test_server_errors_surface_as_response_errors(server: LiveServer) -> None:
    from warmloop.client import ResponseError

    async with AgentSession(base_url=server.base_url, api_key=KEY_A, model="no-such-model") as s:
        with pytest.raises(ResponseError) as err:
            await s.run("hello")
    assert err.value.code == "model_not_found" and err.value.status == 404
