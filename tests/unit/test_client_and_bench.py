"""Pure parts of the client and the bench: tool schemas from type hints, tool calls,
retry backoff, workloads and traces, mode parsing and summaries."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Literal

import pytest

from warmloop.bench.cli import parse_modes
from warmloop.bench.report import percentile, ratios, summarize
from warmloop.bench.runner import TurnRecord
from warmloop.bench.workload import Workload, load_trace
from warmloop.client import RetryPolicy, function_tool
from warmloop.client.tools import ToolArgumentsError, as_tools


def read_file(path: str, max_lines: int = 200, mode: Literal["text", "hex"] = "text") -> str:
    """Read a file.

    Longer explanation that is not part of the description.
    """
    return f"{path}:{max_lines}:{mode}"


async def add(a: int, b: int) -> int:
    return a + b


def test_schema_from_type_hints() -> None:
    tool = function_tool(read_file)
    assert tool.to_param() == {
        "type": "function",
        "name": "read_file",
        "description": "Read a file.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "max_lines": {"type": "integer", "default": 200},
                "mode": {"type": "string", "enum": ["text", "hex"], "default": "text"},
            },
            "required": ["path"],
            "additionalProperties": False,
        },
        "strict": False,
    }
    assert function_tool(add, name="plus", description="").name == "plus"


def test_tool_call_validates_arguments() -> None:
    tool = function_tool(read_file)
    assert asyncio.run(tool.call('{"path": "a.txt"}')) == "a.txt:200:text"
    assert asyncio.run(function_tool(add).call('{"a": 2, "b": 3}')) == "5"  # JSON of the result
    for bad in ('{"max_lines": 3}', '{"path": "a", "extra": 1}', "not json", '{"path": 1.5}'):
        with pytest.raises(ToolArgumentsError):
            asyncio.run(tool.call(bad))


def test_tools_need_hints_and_unique_names() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(TypeError):
        function_tool(untyped)
    with pytest.raises(ValueError):
        as_tools([read_file, function_tool(add, name="read_file")])


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(max_retries=5, initial_delay=0.1, max_delay=0.5)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered


def test_synthetic_workload_is_deterministic() -> None:
    a = Workload(sessions=3, turns=4, instruction_words=50, tool_words=10).scripts()
    b = Workload(sessions=3, turns=4, instruction_words=50, tool_words=10).scripts()
    assert a == b
    assert len(a) == 3 and all(len(s.turns) == 4 for s in a)
    assert len({s.instructions for s in a}) == 1  # one agent: shared instructions
    assert len({s.turns[1].text for s in a}) == 3  # each session its own tool outputs
    assert a != Workload(sessions=3, turns=4, instruction_words=50, seed=8).scripts()


def test_trace(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    rows = [
        {"session": "a", "input": "one", "instructions": "be brief"},
        {"session": "b", "input": "uno", "max_output_tokens": 3},
        {"session": "a", "input": "two"},
    ]
    trace.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    a, b = load_trace(trace, default_output_tokens=9)
    assert (a.name, a.instructions, [t.text for t in a.turns]) == ("a", "be brief", ["one", "two"])
    assert [t.max_output_tokens for t in a.turns] == [9, 9]
    assert (b.instructions, b.turns[0].max_output_tokens) == ("", 3)
    trace.write_text('{"session": "a"}\n')
    with pytest.raises(ValueError, match=r"t\.jsonl:1"):
        load_trace(trace)


def test_modes() -> None:
    ws, cold, nobatch = parse_modes("ws,cold,ws@no-batching", target=False)
    assert (ws.protocol, ws.server_flags) == ("ws", ())
    assert (cold.name, cold.protocol, cold.server_flags) == (
        "cold",
        "http-full",
        ("--no-kv-reuse",),
    )
    assert nobatch.server_flags == ("--no-batching",)
    with pytest.raises(ValueError, match="unknown mode"):
        parse_modes("ws,telnet", target=False)
    with pytest.raises(ValueError, match="own server"):
        parse_modes("cold", target=True)


def record(turn: int, cached: int, compute: float | None = 10.0) -> TurnRecord:
    prefill = None if compute is None else 4.0
    return TurnRecord(
        "ws", "s0", turn, 5.0 + turn, 20.0, 100 + turn, 400, 50, cached, 4, compute, prefill
    )


def test_summary_and_ratios() -> None:
    s = summarize("ws", 2.0, [record(0, 0), record(1, 40), record(2, 45)])
    assert s["turns"] == 3 and s["cached_tokens"] == 85 and s["input_tokens"] == 150
    assert s["cached_ratio"] == round(85 / 150, 4) and s["computed_tokens"] == 65
    assert (s["bytes_first_turn"], s["bytes_last_turn"], s["client_bytes_sent"]) == (100, 102, 303)
    assert s["server_compute_s"] == 0.03 and s["overhead_s"] == 0.03
    assert s["ttft_overhead_p50_ms"] == 2.5  # turns 1 and 2: ttft 6 and 7 ms, prefill 4 ms
    chat = summarize("chat", 1.0, [record(0, 0, None), record(1, 0, None)])
    assert chat["server_compute_s"] is None and chat["ttft_overhead_p50_ms"] is None
    assert ratios({"ws": {"end_to_end_s": 2.0}, "cold": {"end_to_end_s": 9.0}}) == {
        "cold_vs_ws": 4.5
    }
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == 4.0 and percentile([7.0], 50) == 7.0


async def test_a_session_routes_by_its_id_then_by_the_worker_of_its_last_response() -> None:
    from warmloop.client import AgentSession
    from warmloop.fleet.keys import response_id

    async with AgentSession(base_url="http://127.0.0.1:9/v1", session_id="s-1") as one:
        assert one.routing_headers() == {"x-session-id": "s-1"}
        one._previous = (response_id("w2"), 1)
        assert one.routing_headers() == {"x-session-id": "s-1", "x-warmloop-worker": "w2"}
        one._previous = ("resp_from_elsewhere", 1)  # not a worker's id: no worker header
        assert one.routing_headers() == {"x-session-id": "s-1"}
    async with (
        AgentSession(base_url="http://127.0.0.1:9/v1") as a,
        AgentSession(base_url="http://127.0.0.1:9/v1") as b,
    ):
        assert a.session_id != b.session_id
