"""`AgentSession`: a tool-calling loop over WebSocket mode, with reconnect and HTTP fallback.

Each turn sends only what is new (the user's message, or the outputs of the tools the
model called) with `previous_response_id`, so the server computes only those tokens.
The session keeps the whole conversation as input items too, because it may need them:

- the socket drops, or the server ends it (`websocket_connection_limit_reached`):
  reconnect with backoff and jitter. With `store=True` the next turn continues from the
  last response id (the server has it on disk); with `store=False` that response died
  with its socket, so the turn replays the full conversation on the new socket once,
  and continues delta-only from there.
- the server refuses WebSocket mode (HTTP 426, or the upgrade fails): switch to HTTP
  at once. Over HTTP, `store=True` continues by id; `store=False` sends the full
  conversation each turn (there is nothing on the server to continue from).

A turn that was cut off is re-sent; tools only ever run for responses that completed,
and each `call_id` runs once, so a reconnect never runs a tool twice.

Behind a fleet's proxy (docs/fleet.md), every request carries the session's
`x-session-id` (one per session, so all its turns and sockets hash to one worker) and,
once there is a response, `x-warmloop-worker` naming the worker that made it, so a
reconnect lands where the chain's KV is warm. A worker that is gone or draining makes
the proxy pick another: a store:true chain continues there from the shared store; a
store:false one answers `previous_response_not_found` and the turn is replayed once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import openai
from openai.types.responses import Response, ResponseFunctionToolCall

from warmloop.client.accumulator import EventCallback, ResponseAccumulator, TextCallback
from warmloop.client.tools import Tool, ToolArgumentsError, as_tools
from warmloop.client.transports import (
    ConnectionLost,
    HTTPTransport,
    ResponseError,
    Transport,
    UpgradeRefused,
    WebSocketTransport,
)
from warmloop.fleet.keys import WORKER_HEADER, worker_of

log = logging.getLogger("warmloop.client")

TransportName = Literal["websocket", "http"]
ToolCallback = Callable[[str, str, str], Any]  # (name, arguments, output)
ToolChoice = str | dict[str, Any]  # "auto" | "none" | "required" | {"type": "function", ...}

CUT_OFF = "error: cut off by max_output_tokens, not run"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter, for lost connections."""

    max_retries: int = 5
    initial_delay: float = 0.2
    max_delay: float = 5.0

    def delay(self, attempt: int) -> float:
        base = min(self.max_delay, self.initial_delay * 2.0 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)


@dataclass
class ToolRun:
    call_id: str
    name: str
    arguments: str
    output: str


@dataclass
class AgentResult:
    output_text: str
    stopped: Literal["final_answer", "incomplete", "max_turns"]
    responses: list[Response] = field(default_factory=list)
    tool_runs: list[ToolRun] = field(default_factory=list)
    transport: str = "websocket"
    reconnects: int = 0
    replays: int = 0  # turns that had to resend the whole conversation

    @property
    def turns(self) -> int:
        return len(self.responses)

    @property
    def input_tokens(self) -> int:
        return sum(r.usage.input_tokens for r in self.responses if r.usage)

    @property
    def cached_tokens(self) -> int:
        return sum(r.usage.input_tokens_details.cached_tokens for r in self.responses if r.usage)

    @property
    def output_tokens(self) -> int:
        return sum(r.usage.output_tokens for r in self.responses if r.usage)


class AgentSession:
    """An agent conversation on one server. Use `async with`, then `await run(...)`.

    `run` may be called again to go on with the same conversation (and the same socket).
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: openai.AsyncOpenAI | None = None,
        model: str = "default",
        instructions: str | None = None,
        tools: Iterable[Callable[..., Any] | Tool] = (),
        store: bool = False,
        transport: TransportName = "websocket",
        max_turns: int = 20,
        temperature: float | None = None,
        max_output_tokens: int | None = None,
        parallel_tool_calls: bool = True,
        retry: RetryPolicy | None = None,
        on_text: TextCallback | None = None,
        on_event: EventCallback | None = None,
        on_tool_call: ToolCallback | None = None,
        extra_body: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> None:
        self.client = client or openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "unused", max_retries=0
        )
        self.tools = as_tools(list(tools))
        self.store = store
        self.max_turns = max_turns
        self.retry = retry or RetryPolicy()
        self.on_text = on_text
        self.on_event = on_event
        self.on_tool_call = on_tool_call
        self.extra_body = dict(extra_body or {})
        self.session_id = session_id or uuid.uuid4().hex
        self.transport: Transport = (
            WebSocketTransport(self.client, self.routing_headers)
            if transport == "websocket"
            else HTTPTransport(self.client, self.routing_headers)
        )
        # What every turn's request carries, whatever its input.
        self._fixed: dict[str, Any] = {"model": model, "store": store, **self.extra_body}
        if instructions is not None:
            self._fixed["instructions"] = instructions
        if self.tools:
            self._fixed["tools"] = [t.to_param() for t in self.tools.values()]
            self._fixed["parallel_tool_calls"] = parallel_tool_calls
        if temperature is not None:
            self._fixed["temperature"] = temperature
        if max_output_tokens is not None:
            self._fixed["max_output_tokens"] = max_output_tokens
        self.history: list[dict[str, Any]] = []  # the conversation as input items
        self._tool_outputs: dict[str, str] = {}  # call_id → output: each call runs once
        self._previous: tuple[str, int] | None = None  # (response id, transport generation)
        self._unsent: list[dict[str, Any]] = []  # tool outputs not yet sent to the model

    def routing_headers(self) -> dict[str, str]:
        """What a fleet's proxy routes by: this session, and the worker of its last
        response (where its chain's KV is)."""
        headers = {"x-session-id": self.session_id}
        worker = worker_of(self._previous[0]) if self._previous else None
        if worker is not None:
            headers[WORKER_HEADER] = worker
        return headers

    async def __aenter__(self) -> AgentSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.transport.close()

    # ----- the loop --------------------------------------------------------------------
    async def run(
        self, user_input: str | list[dict[str, Any]], *, tool_choice: ToolChoice | None = None
    ) -> AgentResult:
        """Send `user_input`, run the tools the model calls, until a final answer or
        `max_turns` responses. `tool_choice` (e.g. "required", "none") holds for this run."""
        if isinstance(user_input, str):
            user_input = [{"type": "message", "role": "user", "content": user_input}]
        # Outputs of tools called in the last turn of a run that hit max_turns go first.
        pending, self._unsent = [*self._unsent, *user_input], []
        result = AgentResult(output_text="", stopped="max_turns")
        for _ in range(self.max_turns):
            response = await self._turn(pending, result, tool_choice)
            result.responses.append(response)
            self.history.extend(pending)
            self.history.extend(
                item.model_dump(mode="json", exclude_none=True) for item in response.output
            )
            calls = [i for i in response.output if isinstance(i, ResponseFunctionToolCall)]
            if not calls:
                result.output_text = response.output_text
                # cut short (max_output_tokens): an answer, but maybe not the whole of it
                result.stopped = "incomplete" if response.status == "incomplete" else "final_answer"
                break
            pending = await self._run_tools(calls, result)
        else:
            self._unsent = pending
        result.transport = self.transport.name
        return result

    async def _run_tools(
        self, calls: list[ResponseFunctionToolCall], result: AgentResult
    ) -> list[dict[str, Any]]:
        for c in calls:  # cut off by max_output_tokens: answered, never run
            if c.status == "incomplete" and c.call_id not in self._tool_outputs:
                self._tool_outputs[c.call_id] = CUT_OFF
        todo = [c for c in calls if c.call_id not in self._tool_outputs]
        outputs = await asyncio.gather(*(self._call(c) for c in todo))
        for call, output in zip(todo, outputs, strict=True):
            self._tool_outputs[call.call_id] = output
            result.tool_runs.append(ToolRun(call.call_id, call.name, call.arguments, output))
            if self.on_tool_call is not None:
                self.on_tool_call(call.name, call.arguments, output)
        return [
            {
                "type": "function_call_output",
                "call_id": c.call_id,
                "output": self._tool_outputs[c.call_id],
            }
            for c in calls
        ]

    async def _call(self, call: ResponseFunctionToolCall) -> str:
        tool = self.tools.get(call.name)
        if tool is None:
            return f"error: there is no tool named '{call.name}'"
        try:
            return await tool.call(call.arguments)
        except ToolArgumentsError as exc:
            return f"error: {exc}"
        except Exception as exc:  # a tool's failure is the model's to handle, not the loop's
            log.warning("tool %s failed: %r", call.name, exc)
            return f"error: {type(exc).__name__}: {exc}"

    # ----- one turn, resilient -----------------------------------------------------------
    async def _turn(
        self, pending: list[dict[str, Any]], result: AgentResult, tool_choice: ToolChoice | None
    ) -> Response:
        attempt = 0
        while True:
            body = self._body(pending, result, tool_choice)
            try:
                response = await self._stream(body)
            except UpgradeRefused as exc:
                if isinstance(self.transport, HTTPTransport):
                    raise
                log.info("falling back to HTTP: %s", exc)
                await self.transport.close()
                self.transport = HTTPTransport(self.client, self.routing_headers)
                continue
            except ConnectionLost as exc:
                attempt += 1
                if attempt > self.retry.max_retries:
                    raise
                result.reconnects += 1
                delay = self.retry.delay(attempt)
                log.info("connection lost (%s); reconnecting in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            except ResponseError as exc:
                if exc.code == "previous_response_not_found" and self._previous is not None:
                    # The server no longer holds our chain (restarted, or it evicted it):
                    # resend the whole conversation instead.
                    self._previous = None
                    continue
                raise
            self._previous = (response.id, self.transport.generation)
            return response

    def _body(
        self, pending: list[dict[str, Any]], result: AgentResult, tool_choice: ToolChoice | None
    ) -> dict[str, Any]:
        body = dict(self._fixed)
        if tool_choice is not None and self.tools:
            body["tool_choice"] = tool_choice
        prev = self._previous
        same_connection = prev is not None and prev[1] == self.transport.generation
        continuable = self.transport.can_continue(self.store) and (self.store or same_connection)
        if prev is not None and continuable:
            body["previous_response_id"] = prev[0]
            body["input"] = pending
        else:
            if self.history:
                result.replays += 1
            body["input"] = self.history + pending
        return body

    async def _stream(self, body: dict[str, Any]) -> Response:
        acc = ResponseAccumulator(on_text=self.on_text, on_event=self.on_event)
        async for event in self.transport.stream(body):
            final = acc.feed(event)
            if final is not None:
                return final
        raise ConnectionLost("the stream ended without a final response")


class SyncAgentSession:
    """`AgentSession` for synchronous code: one event loop kept for the session's life."""

    def __init__(self, **kwargs: Any) -> None:
        self._runner = asyncio.Runner()
        self._session = self._runner.run(_make_session(kwargs))

    @property
    def session(self) -> AgentSession:
        return self._session

    def run(
        self, user_input: str | list[dict[str, Any]], *, tool_choice: ToolChoice | None = None
    ) -> AgentResult:
        return self._runner.run(self._session.run(user_input, tool_choice=tool_choice))

    def close(self) -> None:
        try:
            self._runner.run(self._session.close())
        finally:
            self._runner.close()

    def __enter__(self) -> SyncAgentSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _make_session(kwargs: dict[str, Any]) -> AgentSession:
    # Built inside the runner's loop so the SDK client binds to it.
    return AgentSession(**kwargs)
