"""Drive sessions against a server in one mode and record every turn.

Modes (how the client talks; the server is the same):
  ws         WebSocket mode: `previous_response_id` + only the new item each turn
  http-prev  HTTP + SSE, `previous_response_id` (store: true) + only the new item
  http-full  HTTP + SSE, the whole conversation every turn (store: false): a stateless client
  chat       `/v1/chat/completions`, whole conversation every turn: any OpenAI-compatible
             server (llama.cpp server, vLLM, SGLang)

The clients are raw `websockets` and `httpx`, so the bytes counted are exactly the bytes
of the requests, and timings include nothing but the protocol and the server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets

from warmloop.bench.workload import SessionScript
from warmloop.protocol.events import TERMINAL_EVENTS, output_text

PROTOCOLS = ("ws", "http-prev", "http-full", "chat")


class BenchError(RuntimeError):
    """The server answered a turn with an error: the run is not a valid measurement."""


@dataclass
class TurnRecord:
    mode: str
    session: str
    turn: int
    ttft_ms: float
    latency_ms: float
    sent_bytes: int
    received_bytes: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    # The server's own compute for this turn (prefill + decode), when it reports it.
    server_compute_ms: float | None
    server_prefill_ms: float | None = None
    # Milliseconds between consecutive streamed text deltas (what a reader of the stream
    # waits between tokens).
    gaps_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # http://host:port/v1
    api_key: str
    model: str = "default"

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url.removeprefix("http") + "/responses"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}


OnTurn = Callable[[TurnRecord], None]


class _Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.gaps_ms: list[float] = []

    def token(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        if self.last is not None:
            self.gaps_ms.append((now - self.last) * 1000.0)
        self.last = now

    def done(self) -> tuple[float, float]:
        now = time.perf_counter()
        return ((self.first or now) - self.t0) * 1000.0, (now - self.t0) * 1000.0


def _record(
    mode: str,
    script: SessionScript,
    turn: int,
    timer: _Timer,
    sent: int,
    received: int,
    response: dict[str, Any],
) -> TurnRecord:
    ttft, latency = timer.done()
    usage = response.get("usage") or {}
    details = usage.get("input_tokens_details") or {}
    extra = response.get("warmloop") or {}
    compute = prefill = None
    if "prefill_ms" in extra:
        prefill = float(extra["prefill_ms"])
        compute = prefill + float(extra.get("decode_ms", 0.0))
    return TurnRecord(
        mode,
        script.name,
        turn,
        ttft,
        latency,
        sent,
        received,
        int(usage.get("input_tokens", 0)),
        int(details.get("cached_tokens", 0)),
        int(usage.get("output_tokens", 0)),
        compute,
        prefill,
        timer.gaps_ms,
    )


def _message(role: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": text}


def _final(event: dict[str, Any]) -> dict[str, Any]:
    if event["type"] == "response.failed":
        raise BenchError(f"response failed: {event['response'].get('error')}")
    response: dict[str, Any] = event["response"]
    return response


async def ws_session(
    ep: Endpoint, script: SessionScript, mode: str, on_turn: OnTurn
) -> list[TurnRecord]:
    records: list[TurnRecord] = []
    async with websockets.connect(
        ep.ws_url, additional_headers={"Authorization": f"Bearer {ep.api_key}"}, max_size=None
    ) as ws:
        previous: str | None = None
        for n, turn in enumerate(script.turns):
            await asyncio.sleep(turn.pause_s)  # the agent runs its tool
            body: dict[str, Any] = {
                "type": "response.create",
                "model": ep.model,
                "instructions": script.instructions,
                "input": [_message("user", turn.text)],
                "temperature": 0,
                "max_output_tokens": turn.max_output_tokens,
                "store": False,
            }
            if previous is not None:
                body["previous_response_id"] = previous
            frame = json.dumps(body)
            timer = _Timer()
            await ws.send(frame)
            received = 0
            while True:
                raw = await ws.recv()
                received += len(raw)
                event = json.loads(raw)
                if event["type"] == "response.output_text.delta":
                    timer.token()
                elif event["type"] == "error":
                    raise BenchError(f"server error: {event.get('error', event)}")
                elif event["type"] in TERMINAL_EVENTS:
                    response = _final(event)
                    break
            previous = response["id"]
            records.append(_record(mode, script, n, timer, len(frame), received, response))
            on_turn(records[-1])
    return records


async def _sse(
    client: httpx.AsyncClient, url: str, payload: bytes, headers: dict[str, str], timer: _Timer
) -> tuple[list[dict[str, Any]], int]:
    """POST and read an SSE stream; the decoded `data:` events and the bytes received."""
    events: list[dict[str, Any]] = []
    received = 0
    async with client.stream("POST", url, content=payload, headers=headers) as r:
        if r.status_code != 200:
            raise BenchError(f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')}")
        async for line in r.aiter_lines():
            received += len(line) + 1
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("type") == "response.output_text.delta" or _chat_text(event):
                timer.token()
            if event.get("type") == "error":
                raise BenchError(f"server error: {event}")
            events.append(event)
    return events, received


def _chat_text(event: dict[str, Any]) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    return str((choices[0].get("delta") or {}).get("content") or "")


async def http_session(
    ep: Endpoint, script: SessionScript, mode: str, protocol: str, on_turn: OnTurn
) -> list[TurnRecord]:
    records: list[TurnRecord] = []
    history: list[dict[str, Any]] = []
    previous: str | None = None
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0)) as client:
        for n, turn in enumerate(script.turns):
            await asyncio.sleep(turn.pause_s)
            user = _message("user", turn.text)
            body: dict[str, Any] = {
                "model": ep.model,
                "instructions": script.instructions,
                "temperature": 0,
                "max_output_tokens": turn.max_output_tokens,
                "stream": True,
            }
            if protocol == "http-prev":
                body.update(store=True, input=[user])
                if previous is not None:
                    body["previous_response_id"] = previous
            else:
                body.update(store=False, input=[*history, user])
            payload = json.dumps(body).encode()
            timer = _Timer()
            events, received = await _sse(
                client, f"{ep.base_url}/responses", payload, ep.headers, timer
            )
            final = next((e for e in events if e.get("type") in TERMINAL_EVENTS), None)
            if final is None:
                raise BenchError("the stream ended without a final event")
            response = _final(final)
            previous = response["id"]
            history += [user, _message("assistant", output_text(response))]
            records.append(_record(mode, script, n, timer, len(payload), received, response))
            on_turn(records[-1])
    return records


async def chat_session(
    ep: Endpoint, script: SessionScript, mode: str, on_turn: OnTurn
) -> list[TurnRecord]:
    records: list[TurnRecord] = []
    messages: list[dict[str, str]] = []
    if script.instructions:
        messages.append({"role": "system", "content": script.instructions})
    # A new connection per request: llama-server may close a kept-alive connection just as
    # the next request goes out on it (httpx: "Server disconnected without a response").
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=no_reuse) as client:
        for n, turn in enumerate(script.turns):
            await asyncio.sleep(turn.pause_s)
            messages.append({"role": "user", "content": turn.text})
            body = {
                "model": ep.model,
                "messages": messages,
                "temperature": 0,
                "max_tokens": turn.max_output_tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            payload = json.dumps(body).encode()
            timer = _Timer()
            events, received = await _sse(
                client, f"{ep.base_url}/chat/completions", payload, ep.headers, timer
            )
            text = "".join(_chat_text(e) for e in events)
            usage: dict[str, Any] = next(
                (e["usage"] for e in reversed(events) if e.get("usage")), {}
            )
            details = usage.get("prompt_tokens_details") or {}
            # llama.cpp's server reports reuse in `timings.cache_n` instead
            timings: dict[str, Any] = next(
                (e["timings"] for e in reversed(events) if e.get("timings")), {}
            )
            cached = details.get("cached_tokens", timings.get("cache_n", 0)) or 0
            response = {
                "usage": {
                    "input_tokens": usage.get("prompt_tokens", 0),
                    "input_tokens_details": {"cached_tokens": cached},
                    "output_tokens": usage.get("completion_tokens", 0),
                }
            }
            messages.append({"role": "assistant", "content": text})
            records.append(_record(mode, script, n, timer, len(payload), received, response))
            on_turn(records[-1])
    return records


async def run_mode(
    ep: Endpoint, protocol: str, mode: str, scripts: list[SessionScript], on_turn: OnTurn
) -> tuple[float, list[TurnRecord]]:
    """Run every session at once; (end-to-end seconds, records)."""
    if protocol == "ws":
        coros = [ws_session(ep, s, mode, on_turn) for s in scripts]
    elif protocol == "chat":
        coros = [chat_session(ep, s, mode, on_turn) for s in scripts]
    else:
        coros = [http_session(ep, s, mode, protocol, on_turn) for s in scripts]
    t0 = time.perf_counter()
    per_session = await asyncio.gather(*coros)
    return time.perf_counter() - t0, [r for records in per_session for r in records]
