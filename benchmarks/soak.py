"""Soak benchmark: many WebSocket agent sessions for minutes, plus a fuzzer, on one server.

What it measures, on one `warmloop serve` child (two API keys = two tenants):

- N agent sessions (`--sessions`, default 64) for M minutes (`--minutes`, default 10).
  Each holds one socket and runs agent turns: a `response.create` with instructions,
  tools and a task, then turn after turn `previous_response_id` + only the new item
  (the outputs of the tools the model called, or a tool output sent as a user message),
  temperature 0 and a small `max_output_tokens`. Instructions and tools go with every
  turn, as agent clients send them (they do not carry over by id). Most sessions use
  `store: false`, some (`--store-fraction`) `store: true`. About `--drop-rate` of the
  turns cut the socket abruptly mid-response (TCP abort, no close frame) and reconnect:
  a store:false session starts a fresh chain, a store:true one continues by the last
  completed id. A chain that nears the context starts over.
- a light fuzzer beside them: malformed HTTP bodies and WebSocket frames (wrong types,
  lone surrogates written as JSON escapes, deep nesting, unknown event types, binary
  frames), with a count of every status and error code it gets back.
- the server's RSS (VmRSS of the child) and a few gauges from /metrics every few seconds.
- at the end, once every client has closed, the gauges that must then be 0 (leaks).

It reports requests served, errors by kind, turn latency p50/p95/p99, RSS at start /
after warm-up / end and its slope after warm-up, and the leaks, each beside its goal
(0 5xx, 0 dead sockets, 0 leaks, RSS flat after warm-up). Numbers only: nothing here
fails on timing. Writes benchmarks/results/soak-<timestamp>.json, a PNG (RSS and turn
latency over time) and the server's log beside it.

    .venv/bin/python benchmarks/soak.py                              # 64 sessions, 10 min
    .venv/bin/python benchmarks/soak.py --minutes 0.5 --sessions 8   # a smoke run
    .venv/bin/python benchmarks/soak.py --server-arg=--kv-host-budget=500000000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from warmloop.bench.report import percentile, wide_console
from warmloop.bench.server import LocalServer
from warmloop.bench.workload import WORDS
from warmloop.metrics import LEAK_GAUGES

RESULTS = Path(__file__).resolve().parent / "results"
TENANT_KEYS = ("sk-soak-tenant-a", "sk-soak-tenant-b")
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Sampled over time beside RSS: they explain RSS that grows on purpose (host KV tier).
TRACKED_GAUGES = (
    "warmloop_kv_host_bytes",
    "warmloop_websocket_connections",
    "warmloop_slots_leased",
)
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "read_file",
        "description": "Return the text of a file in the repository.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
            "additionalProperties": False,
        },
    },
    {
        "type": "function",
        "name": "run_tests",
        "description": "Run the test suite and return its summary.",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
]


# ----- configuration and records ---------------------------------------------------------
@dataclass(frozen=True)
class SoakConfig:
    sessions: int = 64
    minutes: float = 10.0
    warmup_minutes: float | None = None  # None: 20 % of the run, at most 2 minutes
    store_fraction: float = 0.25
    drop_rate: float = 0.02
    tool_turn_rate: float = 0.2  # turns that force a tool call (tool_choice: required)
    output_tokens: int = 16
    tool_call_tokens: int = 48  # room for a whole grammar-constrained call
    instruction_words: int = 200
    tool_words: int = 40
    chain_tokens: int = 3000  # start a fresh chain past this many tokens (ctx 4096)
    turn_timeout_s: float = 300.0
    end_grace_s: float = 60.0  # how long a turn still running at the deadline may take
    sample_interval_s: float = 5.0
    fuzz_interval_s: float = 0.5  # 0: no fuzzer
    settle_s: float = 20.0  # how long the gauges may take to reach 0 after the clients
    seed: int = 7

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0

    @property
    def warmup_s(self) -> float:
        if self.warmup_minutes is not None:
            return self.warmup_minutes * 60.0
        return min(120.0, 0.2 * self.duration_s)


@dataclass
class TurnRecord:
    t_s: float  # when the turn was sent, seconds since the start
    session: int
    store: bool
    kind: str  # "task" (a chain's first turn), "tool" (function_call_output), "user"
    latency_ms: float  # send → terminal event
    status: str
    input_tokens: int
    cached_tokens: int
    output_tokens: int


@dataclass
class Stats:
    t0: float = field(default_factory=time.monotonic)
    turns: list[TurnRecord] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    fuzz: Counter[str] = field(default_factory=Counter)
    fuzz_examples: dict[str, str] = field(default_factory=dict)
    fuzz_cases: Counter[str] = field(default_factory=Counter)  # "case -> outcome"
    fuzz_slowest: dict[str, float] = field(default_factory=dict)  # case → worst seconds
    events: Counter[str] = field(default_factory=Counter)  # drops, reconnects, chains...
    rss: list[tuple[float, float]] = field(default_factory=list)  # (s, MB)
    gauges: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    server_exit: int | None = None  # the server's exit code, if it died during the run

    def running(self, stop_at: float) -> bool:
        return self.server_exit is None and time.monotonic() < stop_at

    def now(self) -> float:
        return time.monotonic() - self.t0

    def error(self, kind: str, example: str = "") -> None:
        self.errors[kind] += 1
        self.error_examples.setdefault(kind, example[:400])

    def fuzzed(self, outcome: str, case: str, payload: str | bytes, seconds: float = 0.0) -> None:
        self.fuzz[outcome] += 1
        self.fuzz_cases[f"{case} -> {outcome}"] += 1
        self.fuzz_slowest[case] = round(max(seconds, self.fuzz_slowest.get(case, 0.0)), 3)
        shown = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
        self.fuzz_examples.setdefault(outcome, f"{case}: {shown[:300]}")


def is_5xx(kind: str) -> bool:
    """Error kinds are "<channel> <status> <code>"; a failed response is a server error."""
    parts = kind.split()
    if parts and parts[0] == "response.failed":
        return True
    return any(p.isdigit() and len(p) == 3 and p.startswith("5") for p in parts[1:3])


def is_dead_socket(kind: str) -> bool:
    return "dead socket" in kind


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


# ----- one agent session -----------------------------------------------------------------
class _Dropped(Exception):
    """We cut the socket on purpose."""


class _Closed(Exception):
    """The server closed the socket, or it died: `kind` says which."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class _ErrorEvent(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def close_kind(exc: ConnectionClosed) -> str:
    """Why a socket ended: a close frame from the server, none at all, or our keepalive."""
    if exc.rcvd is None:
        if exc.sent is not None and exc.sent.code == 1011:
            return "dead socket: keepalive ping timeout"
        return "dead socket: no close frame"
    return f"dead socket: close {exc.rcvd.code} {exc.rcvd.reason[:60]}".rstrip()


class AgentSession:
    """One agent: one socket at a time, turns until the deadline, then a clean close."""

    def __init__(
        self, n: int, cfg: SoakConfig, ws_url: str, instructions: list[str], stats: Stats
    ) -> None:
        self.n = n
        self.cfg = cfg
        self.ws_url = ws_url
        self.key = TENANT_KEYS[n % len(TENANT_KEYS)]
        self.instructions = instructions[n % len(TENANT_KEYS)]
        self.store = int((n + 1) * cfg.store_fraction) > int(n * cfg.store_fraction)
        self.stats = stats
        self.rng = random.Random(cfg.seed * 7919 + n)
        self.ws: ClientConnection | None = None
        self.stop_at = 0.0
        self.previous: str | None = None  # the last completed response of the chain
        self.pending: list[dict[str, Any]] = []  # the next turn's new items
        self.kind = "task"
        self.tasks = 0
        self.step = 0

    def _fresh_chain(self) -> None:
        self.tasks += 1
        self.previous = None
        self.kind = "task"
        self.pending = [self._user(f"Task {self.n}.{self.tasks}: " + words(self.rng, 20))]
        self.stats.events["chains started"] += 1

    def _user(self, text: str) -> dict[str, Any]:
        return {"type": "message", "role": "user", "content": text}

    async def run(self, stop_at: float) -> None:
        self.stop_at = stop_at
        self._fresh_chain()
        try:
            while self.stats.running(stop_at):
                if self.ws is None and not await self._connect():
                    await asyncio.sleep(self.rng.uniform(0.5, 2.0))
                    continue
                await self._turn()
        finally:
            await self._close()

    async def _connect(self) -> bool:
        try:
            self.ws = await connect(
                self.ws_url,
                additional_headers={"Authorization": f"Bearer {self.key}"},
                max_size=None,
                open_timeout=60,
                ping_interval=20,
                ping_timeout=60,
                close_timeout=10,
            )
        except InvalidStatus as exc:
            body = exc.response.body.decode("utf-8", "replace") if exc.response.body else ""
            self.stats.error(f"ws-handshake {exc.response.status_code} {_code(body)}", body)
            return False
        except (OSError, TimeoutError) as exc:
            self.stats.error(f"ws-connect failed {type(exc).__name__}", repr(exc))
            return False
        self.stats.events["connections opened"] += 1
        return True

    async def _close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    def _body(self) -> tuple[dict[str, Any], int]:
        tool_turn = self.rng.random() < self.cfg.tool_turn_rate
        # a named tool without arguments always completes; "required" lets the model pick
        # (and may run out of tokens inside a call's arguments)
        choice: str | dict[str, str] = "auto"
        if tool_turn:
            choice = (
                "required" if self.rng.random() < 0.5 else {"type": "function", "name": "run_tests"}
            )
        body: dict[str, Any] = {
            "type": "response.create",
            "model": "default",
            "instructions": self.instructions,
            "tools": TOOLS,
            "tool_choice": choice,
            "input": self.pending,
            "store": self.store,
            "temperature": 0,
            "max_output_tokens": self.cfg.tool_call_tokens if tool_turn else self.cfg.output_tokens,
        }
        if self.previous is not None:
            body["previous_response_id"] = self.previous
        # cut the socket after 1-6 events: before, during or after the first tokens
        drop = self.rng.randint(1, 6) if self.rng.random() < self.cfg.drop_rate else 0
        return body, drop

    async def _turn(self) -> None:
        assert self.ws is not None
        body, drop = self._body()
        sent_at = self.stats.now()
        start = time.perf_counter()
        left = self.stop_at + self.cfg.end_grace_s - time.monotonic()
        try:
            async with asyncio.timeout(min(self.cfg.turn_timeout_s, max(left, 1.0))):
                response = await self._exchange(self.ws, json.dumps(body), drop)
        except _Dropped:
            self.stats.events["dropped mid-response"] += 1
            await self._after_lost_socket()
            return
        except _Closed as exc:
            self.stats.error(exc.kind, f"session {self.n}: {exc}")
            await self._after_lost_socket()
            return
        except TimeoutError:
            late = time.monotonic() >= self.stop_at
            kind = "turn unfinished at the end" if late else "turn timeout"
            waited = time.perf_counter() - start
            self.stats.error(kind, f"session {self.n}: no terminal event in {waited:.0f} s")
            await self._close()
            await self._after_lost_socket()
            return
        except _ErrorEvent as exc:
            self._after_error(exc)
            return
        latency = (time.perf_counter() - start) * 1000.0
        usage = response.get("usage") or {}
        self.stats.turns.append(
            TurnRecord(
                round(sent_at, 3),
                self.n,
                self.store,
                self.kind,
                round(latency, 2),
                str(response.get("status")),
                int(usage.get("input_tokens", 0)),
                int((usage.get("input_tokens_details") or {}).get("cached_tokens", 0)),
                int(usage.get("output_tokens", 0)),
            )
        )
        self._next(response, int(usage.get("total_tokens", 0)))

    async def _exchange(self, ws: ClientConnection, frame: str, drop: int) -> dict[str, Any]:
        """Send one turn and read to its terminal event (the response); with `drop` > 0,
        cut the socket abruptly after that many events instead."""
        try:
            await ws.send(frame)
            while True:
                event = json.loads(await ws.recv())
                kind = event.get("type")
                drop -= 1
                if drop == 0 and kind not in TERMINAL and kind != "error":
                    ws.transport.abort()  # no close frame: the socket just dies
                    self.ws = None
                    raise _Dropped
                if kind == "error":
                    err = event.get("error") or {}
                    raise _ErrorEvent(
                        int(event.get("status") or 0),
                        str(err.get("code")),
                        str(err.get("message")),
                    )
                if kind in TERMINAL:
                    response: dict[str, Any] = event["response"]
                    if kind == "response.failed":
                        err = response.get("error") or {}
                        raise _ErrorEvent(500, f"failed:{err.get('code')}", str(err))
                    return response
        except ConnectionClosed as exc:
            self.ws = None
            raise _Closed(close_kind(exc), repr(exc)) from exc
        except OSError as exc:
            self.ws = None
            raise _Closed(f"dead socket: {type(exc).__name__}", repr(exc)) from exc

    async def _after_lost_socket(self) -> None:
        await self._close()
        self.stats.events["reconnects"] += 1
        if self.store and self.previous is not None:
            return  # the chain is on the server's disk: resend this turn on a new socket
        self._fresh_chain()  # a store:false chain died with its socket

    def _after_error(self, exc: _ErrorEvent) -> None:
        if exc.code.startswith("failed:"):
            self.stats.error(f"response.failed 500 {exc.code[7:]}", f"session {self.n}: {exc}")
        else:
            self.stats.error(f"ws-error {exc.status} {exc.code}", f"session {self.n}: {exc}")
        if exc.code == "websocket_connection_limit_reached":
            self.ws = None  # the server ends the socket; go on with a new one
            if not self.store:
                self._fresh_chain()
            return
        if exc.status != 429:
            self._fresh_chain()

    def _next(self, response: dict[str, Any], total_tokens: int) -> None:
        self.previous = response["id"]
        if total_tokens > self.cfg.chain_tokens:
            self.stats.events["chains rotated (context)"] += 1
            self._fresh_chain()
            return
        self.step += 1
        calls = [
            item
            for item in response.get("output") or []
            if item.get("type") == "function_call"
            and item.get("status", "completed") != "incomplete"
        ]
        if calls and response.get("status") == "completed":
            self.stats.events["tool calls answered"] += len(calls)
            self.kind = "tool"
            self.pending = [
                {
                    "type": "function_call_output",
                    "call_id": c["call_id"],
                    "output": f"{c.get('name')} output: " + words(self.rng, self.cfg.tool_words),
                }
                for c in calls
            ]
        else:
            self.kind = "user"
            text = f"Tool output {self.step}:\n" + words(self.rng, self.cfg.tool_words)
            self.pending = [self._user(text)]


def _code(body: str) -> str:
    try:
        err = json.loads(body).get("error") or {}
        return str(err.get("code"))
    except (ValueError, AttributeError):
        return "-"


# ----- the fuzzer ------------------------------------------------------------------------
def _nest(depth: int, open_: str, close: str, leaf: str = "1") -> str:
    return open_ * depth + leaf + close * depth


def http_cases(rng: random.Random) -> list[tuple[str, bytes]]:
    """(name, raw body) of malformed or odd `POST /v1/responses` bodies."""
    depth = rng.choice([64, 1_000, 5_000, 100_000])
    cases: list[tuple[str, str | bytes]] = [
        ("input is a number", '{"input": 123}'),
        ("input is an object", '{"input": {"role": "user"}}'),
        ("model is a number", '{"model": 5, "input": "hi", "max_output_tokens": 1}'),
        ("max_output_tokens is a string", '{"input": "hi", "max_output_tokens": "many"}'),
        ("max_output_tokens huge", '{"input": "hi", "max_output_tokens": 1e400}'),
        ("max_output_tokens negative", '{"input": "hi", "max_output_tokens": -3}'),
        ("temperature NaN", '{"input": "hi", "temperature": NaN, "max_output_tokens": 1}'),
        ("store is a string", '{"input": "hi", "store": "yes", "max_output_tokens": 1}'),
        ("tools is a string", '{"input": "hi", "tools": "all"}'),
        ("tool without name", '{"input": "hi", "tools": [{"type": "function"}]}'),
        ("item role is a number", '{"input": [{"type": "message", "role": 7, "content": null}]}'),
        ("item type unknown", '{"input": [{"type": "hologram"}]}'),
        ("previous id is a number", '{"input": "hi", "previous_response_id": 12}'),
        ("previous id unknown", '{"input": "hi", "previous_response_id": "resp_nope"}'),
        ("unknown field", '{"input": "hi", "flux_capacitor": true}'),
        ("top level array", '[{"input": "hi"}]'),
        ("top level null", "null"),
        ("empty body", ""),
        ("truncated JSON", '{"input": "hi", "max_output_tok'),
        ("invalid UTF-8", b'{"input": "\xff\xfe\xed\xa0\x80"}'),
        ("lone surrogate in input", r'{"input": "\ud800", "store": false, "max_output_tokens": 1}'),
        ("lone surrogate in model", r'{"model": "\udfff", "input": "hi", "max_output_tokens": 1}'),
        ("lone surrogate in instructions",
         r'{"instructions": "\ud83d", "input": "hi", "store": false, "max_output_tokens": 1}'),
        ("lone surrogate in previous id", r'{"input": "a", "previous_response_id": "resp_\ud800"}'),
        ("lone surrogate in tool name",
         r'{"input": "hi", "tools": [{"type": "function", "name": "\ud800", "parameters": {}}]}'),
        ("lone surrogate in metadata",
         r'{"input": "hi", "metadata": {"\ud800": "x"}, "store": false, "max_output_tokens": 1}'),
        ("lone surrogate as field name", r'{"input": "hi", "\udc00": 1}'),
        (f"nested arrays {depth}", '{"input": ' + _nest(depth, "[", "]") + "}"),
        (f"nested objects {depth}", '{"metadata": ' + _nest(depth, '{"a":', "}") + "}"),
        (f"nested tool schema {depth}",
         '{"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": '
         + _nest(depth, '{"type": "object", "properties": {"a": ', "}}", '{"type": "string"}')
         + "}], \"max_output_tokens\": 1}"),
        ("stream is a number", '{"input": "hi", "stream": 2, "max_output_tokens": 1}'),
    ]  # fmt: skip
    return [(name, raw if isinstance(raw, bytes) else raw.encode()) for name, raw in cases]


# (method, path) of odd reads: ids that are not ids, bad query values
HTTP_PATHS = (
    ("GET", "/v1/responses/resp_%ED%A0%80"),
    ("GET", "/v1/responses/" + "x" * 5000),
    ("GET", "/v1/responses/resp_nope/input_items?limit=abc"),
    ("GET", "/v1/responses/resp_nope/input_items?limit=100000&order=sideways"),
    ("DELETE", "/v1/responses/%00"),
    ("POST", "/v1/responses/resp_nope/cancel"),
    ("GET", "/v1/models"),
)


def ws_cases(rng: random.Random) -> list[tuple[str, str | bytes]]:
    """(name, frame): a str goes as a text frame, bytes as a binary frame."""
    depth = rng.choice([64, 1_000, 5_000, 100_000])
    nested = _nest(depth, "[", "]")
    return [
        ("unknown event type", '{"type": "response.teleport"}'),
        ("type is a number", '{"type": 42}'),
        ("no type", '{"input": "hi"}'),
        ("not an object", "[1, 2, 3]"),
        ("a bare string", '"response.create"'),
        ("not JSON", "response.create please"),
        ("create: input is a number", '{"type": "response.create", "input": 5}'),
        ("create: stream_id is an object", '{"type": "response.create", "stream_id": {}}'),
        ("create: unknown field", '{"type": "response.create", "input": "hi", "zzz": 1}'),
        ("create: previous id unknown",
         '{"type": "response.create", "input": "hi", "previous_response_id": "resp_x"}'),
        ("lone surrogate in input",
         r'{"type": "response.create", "input": "\ud800", "store": false, "max_output_tokens": 1}'),
        ("lone surrogate in type", r'{"type": "\ud800"}'),
        ("lone surrogate in stream_id", r'{"type": "response.create", "stream_id": "\udfff"}'),
        ("lone surrogate in model", r'{"type": "response.create", "model": "\ud800", "input": ""}'),
        (f"nested arrays {depth}", '{"type": "response.create", "input": ' + nested + "}"),
        (f"nested objects {depth}", _nest(depth, '{"type": "response.create", "a":', "}")),
        ("binary: random bytes", rng.randbytes(rng.randint(1, 64))),
        ("binary: invalid UTF-8", b"\xed\xa0\x80\xff"),
        ("binary: unknown event", b'{"type": "nope"}'),
        ("empty text frame", ""),
    ]  # fmt: skip


class Fuzzer:
    """Light background abuse: one malformed request every `fuzz_interval_s`."""

    def __init__(self, base: str, ws_url: str, cfg: SoakConfig, stats: Stats) -> None:
        self.base = base
        self.ws_url = ws_url
        self.cfg = cfg
        self.stats = stats
        self.rng = random.Random(cfg.seed + 1)
        self.stop_at = 0.0

    async def run(self, stop_at: float) -> None:
        self.stop_at = stop_at
        while self.stats.running(stop_at):
            if self.rng.random() < 0.5:
                await self._http()
            else:
                await self._ws()
            await asyncio.sleep(self.cfg.fuzz_interval_s)

    def _headers(self) -> dict[str, str]:
        key = "sk-wrong" if self.rng.random() < 0.05 else self.rng.choice(TENANT_KEYS)
        return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def _http(self) -> None:
        method, path = "POST", "/v1/responses"
        if self.rng.random() < 0.15:
            method, path = self.rng.choice(HTTP_PATHS)
            name, body = f"{method} {path[:80]}", b""
        else:
            name, body = self.rng.choice(http_cases(self.rng))
        start = time.perf_counter()
        try:
            # a fresh connection per case: a connection the server dropped after one case
            # must not fail the next one
            async with httpx.AsyncClient(timeout=60) as client:
                r = await client.request(
                    method, self.base + path, content=body or None, headers=self._headers()
                )
            outcome = f"http {r.status_code} {_code(r.text)}"
        except httpx.HTTPError as exc:
            outcome = f"http transport-error {type(exc).__name__}"
        self.stats.fuzzed(outcome, name, body, time.perf_counter() - start)
        if outcome.startswith("http 5") or "transport-error" in outcome:
            self.stats.error(f"fuzz {outcome}", f"{name}: {body[:200]!r}")

    async def _ws(self) -> None:
        try:
            ws = await connect(
                self.ws_url,
                additional_headers=self._headers(),
                max_size=None,
                open_timeout=30,
                close_timeout=5,
            )
        except InvalidStatus as exc:
            body = exc.response.body.decode("utf-8", "replace") if exc.response.body else ""
            self.stats.fuzzed(f"ws-handshake {exc.response.status_code} {_code(body)}", "", "")
            return
        except (OSError, TimeoutError) as exc:
            self.stats.fuzzed(f"ws-connect failed {type(exc).__name__}", "", "")
            return
        try:
            for _ in range(self.rng.randint(1, 5)):
                if not self.stats.running(self.stop_at):
                    return
                name, frame = self.rng.choice(ws_cases(self.rng))
                start = time.perf_counter()
                outcome = await self._frame(ws, frame)
                self.stats.fuzzed(outcome, name, frame, time.perf_counter() - start)
                if outcome.startswith("ws-error 5") or outcome.startswith("dead socket"):
                    self.stats.error(f"fuzz {outcome}", f"{name}: {frame[:200]!r}")
                if outcome.startswith("dead socket"):
                    return
        finally:
            with contextlib.suppress(Exception):
                await ws.close()

    async def _frame(self, ws: ClientConnection, frame: str | bytes) -> str:
        """Send a frame; the outcome is its error code, a response's status, or silence."""
        try:
            await ws.send(frame)
            async with asyncio.timeout(30):
                while True:
                    event = json.loads(await ws.recv())
                    if event.get("type") == "error":
                        err = event.get("error") or {}
                        return f"ws-error {event.get('status')} {err.get('code')}"
                    if event.get("type") in TERMINAL:
                        return f"ws-response {event['response'].get('status')}"
        except TimeoutError:
            return "ws no reply"
        except ConnectionClosed as exc:
            return close_kind(exc)


# ----- sampling the server -----------------------------------------------------------------
def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


async def read_gauges(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """Every gauge of /metrics, summed over its labels."""
    r = await client.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TENANT_KEYS[0]}"})
    r.raise_for_status()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        if family.type != "gauge":
            continue
        out[family.name] = sum(s.value for s in family.samples if s.name == family.name)
    return out


async def sampler(server: LocalServer, stats: Stats, interval: float, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            code = server.process.poll()
            if code is not None and stats.server_exit is None:
                stats.server_exit = code
                stats.error(f"server exited {code}", server.log()[-400:])
            rss = rss_mb(server.process.pid)
            gauges: dict[str, float] = {}
            with contextlib.suppress(httpx.HTTPError):
                gauges = await read_gauges(client, server.url)
            if rss is not None:
                now = round(stats.now(), 2)
                stats.rss.append((now, round(rss, 2)))
                stats.gauges.append((now, {k: gauges[k] for k in TRACKED_GAUGES if k in gauges}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
                return


async def progress(stats: Stats, console: Console, stop: asyncio.Event) -> None:
    shown = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 30)
        recent = [t.latency_ms for t in stats.turns[shown:]]
        shown = len(stats.turns)
        rss = f"{stats.rss[-1][1]:,.0f} MB" if stats.rss else "-"
        p50 = f"{statistics.median(recent) / 1000:.2f} s" if recent else "-"
        console.print(
            f"[{stats.now() / 60:5.1f} min] turns {len(stats.turns):,} (+{len(recent)}, "
            f"p50 {p50}), errors {sum(stats.errors.values())}, fuzz {sum(stats.fuzz.values())}, "
            f"RSS {rss}"
        )


async def settle_leaks(url: str, settle_s: float) -> tuple[dict[str, float | None], float]:
    """The leak gauges once they reach 0 (or after `settle_s`), and how long that took."""
    start = time.monotonic()
    values: dict[str, float | None] = dict.fromkeys(LEAK_GAUGES)
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                gauges = await read_gauges(client, url)
                values = {name: gauges.get(name) for name in LEAK_GAUGES}
            if all(not v for v in values.values()) or time.monotonic() - start > settle_s:
                return values, time.monotonic() - start
            await asyncio.sleep(1.0)


# ----- the run -----------------------------------------------------------------------------
async def soak(server: LocalServer, cfg: SoakConfig, console: Console) -> dict[str, Any]:
    stats = Stats()
    rng = random.Random(cfg.seed)
    # one agent per tenant: its sessions share instructions (and the prefix index)
    instructions = [
        f"You are coding agent {name}. Follow these rules. " + words(rng, cfg.instruction_words)
        for name in ("A", "B")
    ]
    stop = asyncio.Event()
    background = [
        asyncio.create_task(sampler(server, stats, cfg.sample_interval_s, stop)),
        asyncio.create_task(progress(stats, console, stop)),
    ]
    stop_at = time.monotonic() + cfg.duration_s
    sessions = [
        AgentSession(n, cfg, server.ws_url, instructions, stats) for n in range(cfg.sessions)
    ]
    work = [asyncio.create_task(s.run(stop_at)) for s in sessions]
    if cfg.fuzz_interval_s > 0:
        work.append(asyncio.create_task(Fuzzer(server.url, server.ws_url, cfg, stats).run(stop_at)))
    for result in await asyncio.gather(*work, return_exceptions=True):
        if isinstance(result, BaseException):
            stats.error(f"client crash {type(result).__name__}", repr(result))
    ended_s = stats.now()
    leaks, settled_s = await settle_leaks(server.url, cfg.settle_s)
    final_rss = rss_mb(server.process.pid)
    if final_rss is not None:
        stats.rss.append((round(stats.now(), 2), round(final_rss, 2)))
    stop.set()
    await asyncio.gather(*background, return_exceptions=True)
    return summarize(cfg, stats, ended_s, leaks, settled_s, server)


def rss_slope(samples: list[tuple[float, float]], after_s: float) -> float | None:
    """Least-squares slope of RSS in MB per minute over the samples after `after_s`."""
    pts = [(t / 60.0, mb) for t, mb in samples if t >= after_s]
    if len(pts) < 3:
        return None
    mean_t = statistics.fmean(t for t, _ in pts)
    mean_m = statistics.fmean(m for _, m in pts)
    var = sum((t - mean_t) ** 2 for t, _ in pts)
    if var == 0:
        return None
    return sum((t - mean_t) * (m - mean_m) for t, m in pts) / var


def summarize(
    cfg: SoakConfig,
    stats: Stats,
    ended_s: float,
    leaks: dict[str, float | None],
    settled_s: float,
    server: LocalServer,
) -> dict[str, Any]:
    lat = [t.latency_ms for t in stats.turns]
    after = [t.latency_ms for t in stats.turns if t.t_s >= cfg.warmup_s]
    warm = next((mb for t, mb in stats.rss if t >= cfg.warmup_s), None)
    slope = rss_slope(stats.rss, cfg.warmup_s)
    # RSS less the KV snapshots kept in host RAM on purpose (bounded by --kv-host-budget)
    host = [
        (t, mb - g["warmloop_kv_host_bytes"] / 2**20)
        for (t, mb), (_, g) in zip(stats.rss, stats.gauges, strict=False)
        if "warmloop_kv_host_bytes" in g
    ]
    slope_no_kv = rss_slope(host, cfg.warmup_s)
    prompt = sum(t.input_tokens for t in stats.turns)
    cached = sum(t.cached_tokens for t in stats.turns)

    def pct(values: list[float], p: float) -> float | None:
        return round(percentile(values, p), 1) if values else None

    errors = dict(stats.errors.most_common())
    return {
        "title": f"warmloop soak: {cfg.sessions} WebSocket sessions, {cfg.minutes:g} min",
        "config": asdict(cfg),
        "server": {"exit_code": server.process.poll(), "log": str(server.log_path)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "summary": {
            "run_s": round(ended_s, 1),
            "turns_served": len(stats.turns),
            "turns_per_minute": round(len(stats.turns) / max(ended_s / 60.0, 1e-9), 1),
            "turns_by_status": dict(Counter(t.status for t in stats.turns)),
            "turns_by_kind": dict(Counter(t.kind for t in stats.turns)),
            "fuzz_requests": sum(stats.fuzz.values()),
            "turn_p50_ms": pct(lat, 50),
            "turn_p95_ms": pct(lat, 95),
            "turn_p99_ms": pct(lat, 99),
            "turn_p50_after_warmup_ms": pct(after, 50),
            "turn_p99_after_warmup_ms": pct(after, 99),
            "cached_ratio": round(cached / prompt, 4) if prompt else None,
            "errors_5xx": sum(n for k, n in errors.items() if is_5xx(k)),
            "dead_sockets": sum(n for k, n in errors.items() if is_dead_socket(k)),
            "leaks": sum(1 for v in leaks.values() if v),
            "leaks_settled_s": round(settled_s, 1),
            "rss_start_mb": stats.rss[0][1] if stats.rss else None,
            "rss_after_warmup_mb": warm,
            "rss_end_mb": stats.rss[-1][1] if stats.rss else None,
            "rss_slope_mb_per_min": None if slope is None else round(slope, 3),
            "rss_less_kv_host_slope_mb_per_min": (
                None if slope_no_kv is None else round(slope_no_kv, 3)
            ),
        },
        "events": dict(stats.events),
        "errors": errors,
        "error_examples": stats.error_examples,
        "leak_gauges": leaks,
        "fuzz": dict(stats.fuzz.most_common()),
        "fuzz_examples": stats.fuzz_examples,
        "fuzz_cases": dict(sorted(stats.fuzz_cases.items())),
        "fuzz_slowest_s": dict(sorted(stats.fuzz_slowest.items(), key=lambda kv: -kv[1])[:10]),
        "rss_samples": stats.rss,
        "gauge_samples": stats.gauges,
        "turns": [asdict(t) for t in stats.turns],
    }


# ----- output ------------------------------------------------------------------------------
def _num(value: Any, fmt: str = "{:,}") -> str:
    return "not measured" if value is None else fmt.format(value)


def print_report(report: dict[str, Any], console: Console) -> None:
    s = report["summary"]
    flat = s["rss_slope_mb_per_min"]
    goals = Table(title=report["title"])
    for col in ("measure", "value", "goal", "met"):
        goals.add_column(col, justify="left" if col == "measure" else "right")

    def row(name: str, value: str, goal: str = "", met: bool | None = None) -> None:
        mark = "" if met is None else ("[green]yes[/]" if met else "[red]NO[/]")
        goals.add_row(name, value, goal, mark)

    row("turns served", f"{s['turns_served']:,} ({s['turns_per_minute']:,}/min)")
    row("fuzz requests", f"{s['fuzz_requests']:,}")
    row("turn p50 / p95 / p99", " / ".join(_num(s[k], "{:,.0f} ms") for k in (
        "turn_p50_ms", "turn_p95_ms", "turn_p99_ms")))  # fmt: skip
    row("prompt tokens cached", _num(s["cached_ratio"], "{:.1%}"))
    row("5xx (agents + fuzzer)", f"{s['errors_5xx']}", "0", s["errors_5xx"] == 0)
    row("dead sockets", f"{s['dead_sockets']}", "0", s["dead_sockets"] == 0)
    row("leaked gauges", f"{s['leaks']}", "0", s["leaks"] == 0)
    row(
        "RSS start / warm / end",
        " / ".join(_num(s[k], "{:,.0f} MB") for k in ("rss_start_mb", "rss_after_warmup_mb",
                                                       "rss_end_mb")),
    )  # fmt: skip
    row(
        "RSS slope after warm-up",
        _num(flat, "{:+.2f} MB/min"),
        "flat (|slope| < 1)",
        None if flat is None else abs(flat) < 1.0,
    )
    row(
        "  the same, less KV snapshots in host RAM",
        _num(s["rss_less_kv_host_slope_mb_per_min"], "{:+.2f} MB/min"),
    )
    console.print(goals)

    errors = Table(title="errors by kind")
    errors.add_column("kind")
    errors.add_column("count", justify="right")
    errors.add_column("first example", overflow="fold", max_width=80)
    for kind, n in report["errors"].items():
        errors.add_row(kind, f"{n:,}", report["error_examples"].get(kind, ""))
    if not report["errors"]:
        errors.add_row("none", "0", "")
    console.print(errors)

    leaks = Table(title=f"gauges after all clients closed ({s['leaks_settled_s']} s to settle)")
    leaks.add_column("gauge")
    leaks.add_column("value", justify="right")
    for name, value in report["leak_gauges"].items():
        leaks.add_row(name, "not reported" if value is None else f"{value:g}")
    console.print(leaks)

    fuzz = Table(title="fuzzer outcomes")
    fuzz.add_column("outcome")
    fuzz.add_column("count", justify="right")
    fuzz.add_column("first case", overflow="fold", max_width=80)
    for outcome, n in report["fuzz"].items():
        fuzz.add_row(outcome, f"{n:,}", report["fuzz_examples"].get(outcome, ""))
    console.print(fuzz)
    console.print("events: " + ", ".join(f"{k} {v:,}" for k, v in report["events"].items()))


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = SoakConfig(**report["config"])
    warmup_min = cfg.warmup_s / 60.0
    fig, (ax_rss, ax_lat) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    rss = report["rss_samples"]
    ax_rss.plot([t / 60 for t, _ in rss], [mb for _, mb in rss], color="C0", label="server RSS")
    host = [(t, g["warmloop_kv_host_bytes"]) for t, g in report["gauge_samples"]
            if "warmloop_kv_host_bytes" in g]  # fmt: skip
    if host:
        ax_rss.plot([t / 60 for t, _ in host], [b / 2**20 for _, b in host], color="C2",
                    label="KV snapshots in host RAM")  # fmt: skip
    ax_rss.axvline(warmup_min, color="grey", ls="--", lw=1, label="end of warm-up")
    ax_rss.set(ylabel="MB", title="Server memory")
    ax_rss.grid(alpha=0.3)
    ax_rss.legend(loc="upper left")

    turns = report["turns"]
    xs = [t["t_s"] / 60 for t in turns]
    ys = [t["latency_ms"] / 1000 for t in turns]
    ax_lat.scatter(xs, ys, s=6, alpha=0.4, color="C1", label="turn (by send time)")
    windows = _windows(turns, 30.0)
    if windows:
        mids = [m / 60 for m, _, _ in windows]
        p50s = [p50 for _, p50, _ in windows]
        p95s = [p95 for _, _, p95 in windows]
        ax_lat.plot(mids, p50s, color="C3", marker="o", ms=3, label="p50 (30 s windows)")
        ax_lat.plot(mids, p95s, color="C4", marker="o", ms=3, label="p95 (30 s windows)")
    ax_lat.axvline(warmup_min, color="grey", ls="--", lw=1)
    ax_lat.set(xlabel="minutes", ylabel="seconds (send → terminal event)", title="Turn latency")
    ax_lat.grid(alpha=0.3)
    ax_lat.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _windows(turns: list[dict[str, Any]], width_s: float) -> list[tuple[float, float, float]]:
    """(window middle s, p50 s, p95 s) per window of turns by send time."""
    buckets: dict[int, list[float]] = {}
    for t in turns:
        buckets.setdefault(int(t["t_s"] // width_s), []).append(t["latency_ms"] / 1000)
    return [
        ((k + 0.5) * width_s, statistics.median(v), percentile(v, 95))
        for k, v in sorted(buckets.items())
    ]


# ----- command line --------------------------------------------------------------------------
def server_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--slots", str(args.slots), "--ctx", str(args.ctx), "--threads", str(args.threads)]
    flags += ["--max-connections", "96", "--max-connections-per-key", "96"]
    flags += ["--max-concurrent-per-key", "128", "--rate-limit-per-minute", "0"]
    for key in TENANT_KEYS:
        flags += ["--api-key", key]
    flags += ["--log-level", "warning"]
    if args.model is not None:
        flags += ["--model", str(args.model)]
    return flags + list(args.server_arg)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = SoakConfig()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sessions", type=int, default=d.sessions, help="WebSocket agent sessions")
    p.add_argument("--minutes", type=float, default=d.minutes, help="how long they run")
    p.add_argument(
        "--warmup-minutes",
        type=float,
        default=None,
        help="RSS is judged after this (default: 20%% of the run, at most 2)",
    )
    p.add_argument("--store-fraction", type=float, default=d.store_fraction,
                   help="sessions with store: true")  # fmt: skip
    p.add_argument("--drop-rate", type=float, default=d.drop_rate,
                   help="turns cut off mid-response by an abrupt disconnect")  # fmt: skip
    p.add_argument("--tool-turn-rate", type=float, default=d.tool_turn_rate,
                   help="turns with tool_choice: required")  # fmt: skip
    p.add_argument("--output-tokens", type=int, default=d.output_tokens)
    p.add_argument("--tool-call-tokens", type=int, default=d.tool_call_tokens)
    p.add_argument("--instruction-words", type=int, default=d.instruction_words)
    p.add_argument("--tool-words", type=int, default=d.tool_words)
    p.add_argument("--chain-tokens", type=int, default=d.chain_tokens,
                   help="start a fresh chain past this many tokens")  # fmt: skip
    p.add_argument("--turn-timeout", type=float, default=d.turn_timeout_s)
    p.add_argument("--end-grace", type=float, default=d.end_grace_s,
                   help="seconds a turn running at the deadline may still take")  # fmt: skip
    p.add_argument("--sample-interval", type=float, default=d.sample_interval_s,
                   help="seconds between RSS samples")  # fmt: skip
    p.add_argument("--fuzz-interval", type=float, default=d.fuzz_interval_s,
                   help="seconds between fuzz cases (0: no fuzzer)")  # fmt: skip
    p.add_argument("--settle", type=float, default=d.settle_s,
                   help="seconds the gauges get to reach 0 after the clients close")  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--model", type=Path, default=None, help="GGUF (default: embedded model)")
    p.add_argument("--server-arg", action="append", default=[], metavar="FLAG",
                   help="extra flag for the server, e.g. --server-arg=--ws-max-age=60")  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> SoakConfig:
    return SoakConfig(
        sessions=args.sessions,
        minutes=args.minutes,
        warmup_minutes=args.warmup_minutes,
        store_fraction=args.store_fraction,
        drop_rate=args.drop_rate,
        tool_turn_rate=args.tool_turn_rate,
        output_tokens=args.output_tokens,
        tool_call_tokens=args.tool_call_tokens,
        instruction_words=args.instruction_words,
        tool_words=args.tool_words,
        chain_tokens=args.chain_tokens,
        turn_timeout_s=args.turn_timeout,
        end_grace_s=args.end_grace,
        sample_interval_s=args.sample_interval,
        fuzz_interval_s=args.fuzz_interval,
        settle_s=args.settle,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = config_from(args)
    console = Console(stderr=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = args.out / f"soak-{stamp}"
    log_path = stem.with_suffix(".log")
    flags = server_flags(args)
    console.print(f"starting warmloop serve {' '.join(flags)} (log: {log_path})")
    with LocalServer(flags, log_path=log_path) as server:
        console.print(
            f"{cfg.sessions} sessions for {cfg.minutes:g} min on {server.ws_url} "
            f"(warm-up {cfg.warmup_s / 60:.1f} min)"
        )
        report = asyncio.run(soak(server, cfg, console))
    report["server"]["flags"] = flags
    path = stem.with_suffix(".json")
    path.write_text(json.dumps(report, indent=2))
    print_report(report, wide_console())
    written = [path, log_path]
    if not args.no_plot:
        written.append(plot(report, stem.with_suffix(".png")))
    console.print("wrote " + ", ".join(str(p) for p in written))
    return report


if __name__ == "__main__":
    main()
