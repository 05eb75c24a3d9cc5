"""`warmloop bench` and `warmloop demo` with tiny parameters: the JSON's shape and the
cached-token growth, never timings."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import KEY_A, LOG_DIR, LiveServer
from warmloop.bench import cli as bench
from warmloop.bench.server import free_port
from warmloop.config import embedded_model_path
from warmloop.engine import cpu

TINY = ["--turns", "3", "--instruction-words", "40", "--tool-words", "12", "--output-tokens", "4"]
SUMMARY_KEYS = {
    "end_to_end_s", "turns", "ttft_p50_ms", "ttft_p95_ms", "turn_p50_ms", "turn_p95_ms",
    "client_bytes_sent", "client_bytes_received", "bytes_first_turn", "bytes_last_turn",
    "input_tokens", "cached_tokens", "computed_tokens", "cached_ratio", "output_tokens",
    "server_compute_s", "overhead_s", "ttft_overhead_p50_ms",
}  # fmt: skip


def records(report: dict[str, Any], mode: str, session: str = "s0") -> list[dict[str, Any]]:
    rows = [r for r in report["records"] if r["mode"] == mode and r["session"] == session]
    return sorted(rows, key=lambda r: r["turn"])


def load(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    return data


def test_bench_against_a_target(server: LiveServer, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = ["--target", server.base_url, "--api-key", KEY_A, "--sessions", "2", *TINY]
    bench.main([*args, "--out", str(out), "--no-progress"])
    report = load(out)
    assert list(report["modes"]) == ["ws", "http-prev", "http-full"]
    for mode, summary in report["modes"].items():
        assert set(summary) >= SUMMARY_KEYS and summary["mode"] == mode
        assert summary["turns"] == 6 and summary["server_compute_s"] is not None
    assert set(report["ratios"]) == {"http-prev_vs_ws", "http-full_vs_ws"}
    assert report["workload"]["sessions"] == 2 and len(report["records"]) == 18
    for session in ("s0", "s1"):
        for mode in ("ws", "http-prev"):  # continuations: each turn reuses the last one
            turns = records(report, mode, session)
            for before, after in itertools.pairwise(turns):
                held = before["input_tokens"] + before["output_tokens"]
                assert after["cached_tokens"] >= held - 1
    ws, full = records(report, "ws"), records(report, "http-full")
    assert ws[-1]["sent_bytes"] < full[-1]["sent_bytes"]  # only the delta on the wire
    assert [r["input_tokens"] for r in ws] == [r["input_tokens"] for r in full]
    for png in ("ttft_by_turn.png", "end_to_end.png", "bytes_per_turn.png"):
        assert (out / png).stat().st_size > 1000


def test_bench_own_servers_trace_and_cold_baseline(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    lines = [{"session": "x", "input": f"Tool output {k}: ok", "instructions": "Be brief."}
             for k in range(3)]  # fmt: skip
    trace.write_text("\n".join(json.dumps(line) for line in lines))
    out = tmp_path / "own"
    cmd = [sys.executable, "-m", "warmloop.cli", "bench", "--trace", str(trace), "--modes",
           "ws,cold", "--slots", "1", "--ctx", "1024", "--threads", "2", "--output-tokens", "4",
           "--out", str(out), "--no-plots", "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "cold_vs_ws" in done.stdout  # the table and ratios went to the terminal
    report = load(out)
    assert report["workload"] == {"trace": str(trace)}
    ws, cold = records(report, "ws", "x"), records(report, "cold", "x")
    assert [r["cached_tokens"] for r in cold] == [0, 0, 0]  # --no-kv-reuse: all computed
    assert ws[0]["cached_tokens"] == 0 and all(r["cached_tokens"] > 0 for r in ws[1:])
    assert not (out / "end_to_end.png").exists()


def test_bench_chat_api_against_llama_cpp_python_server(tmp_path: Path) -> None:
    """`--api chat` against another OpenAI-compatible server: llama-cpp-python's own."""
    pytest.importorskip("sse_starlette", reason="needs llama-cpp-python[server]")
    port = free_port()
    log = (LOG_DIR / f"llama-cpp-server-{port}.log").open("wb")
    # The engine wheel's CPU backend is a module warmloop loads itself (engine/cpu.py);
    # llama-cpp-python on its own is pointed at the AVX2 baseline.
    lib = cpu.library_dir()
    assert lib is not None
    env = {**os.environ, "GGML_BACKEND_PATH": str(lib / "libggml-cpu.so")}
    peer = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()),
         "--port", str(port), "--n_ctx", "1024", "--n_threads", "2"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                assert peer.poll() is None, "llama_cpp.server exited"
                time.sleep(0.2)
        out = tmp_path / "chat"
        args = ["--target", f"http://127.0.0.1:{port}/v1", "--api", "chat", *TINY]
        report = bench.main([*args, "--out", str(out), "--no-progress", "--no-plots"])
    finally:
        peer.terminate()
        peer.wait(timeout=30)
        log.close()
    assert list(report["modes"]) == ["chat"]
    turns = records(load(out), "chat")
    assert len(turns) == 3 and all(r["server_compute_ms"] is None for r in turns)
    assert turns[0]["sent_bytes"] < turns[-1]["sent_bytes"]  # the whole history, each turn


def test_demo(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    cmd = [sys.executable, "-m", "warmloop.cli", "demo", "--turns", "2", "--ctx", "2048",
           "--threads", "2", "--json", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "speed-up" in done.stdout and "list_files" in done.stdout
    rows = {r["mode"]: r for r in json.loads(out.read_text())}
    assert list(rows) == ["WebSocket", "HTTP", "HTTP, no cache"]
    for row in rows.values():  # the same work each way: 2 tool turns, then the answer
        assert (row["turns"], row["tool_calls"]) == (3, 2)
        assert row["input_tokens"] == rows["WebSocket"]["input_tokens"]
    assert rows["WebSocket"]["cached_tokens"] > rows["WebSocket"]["input_tokens"] // 2
    assert rows["HTTP, no cache"]["cached_tokens"] == 0
