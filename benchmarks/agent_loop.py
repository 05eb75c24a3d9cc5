"""Agent-loop benchmark: the same deterministic tool loop in three modes.

  ws          WebSocket mode: previous_response_id + only the new item each turn
  http-full   HTTP, the whole history resent each turn (the server may still reuse its
              slot's prefix, as llama.cpp's server does)
  stateless   HTTP full resend against a --no-kv-reuse server (every prompt computed)

The workload: ~500-word instructions, then T turns (default 20), each sending a
~80-word tool output and generating 16 tokens greedily. It prints end-to-end time,
TTFT, server compute vs overhead, and client bytes per mode, plus the ratios, and
writes JSON and a PNG.

    .venv/bin/python benchmarks/agent_loop.py              # starts its own servers
    .venv/bin/python benchmarks/agent_loop.py --turns 5    # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

ROOT = Path(__file__).resolve().parent
WORDS = (
    "file read write tool call result test build error line module function class value "
    "return import path config server client socket cache token model prompt output input "
    "list item index check patch diff commit branch status log trace stack frame thread "
    "queue batch slot memory state chain turn agent loop shell command exit code warning"
).split()
TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@dataclass(frozen=True)
class Workload:
    turns: int = 20
    instruction_words: int = 500
    tool_words: int = 80
    output_tokens: int = 16
    seed: int = 7

    def instructions(self) -> str:
        rng = random.Random(self.seed)
        return "You are a coding agent. Follow these rules. " + words(rng, self.instruction_words)

    def turn_text(self, session: int, turn: int) -> str:
        rng = random.Random(self.seed * 1_000_003 + session * 1009 + turn)
        if turn == 0:
            return f"Task {session}: fix the failing test. " + words(rng, 20)
        return f"Tool output {turn}:\n" + words(rng, self.tool_words)


@dataclass
class TurnResult:
    ttft_ms: float
    latency_ms: float
    sent_bytes: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    prefill_ms: float
    decode_ms: float


@dataclass
class ModeResult:
    mode: str
    wall_s: float
    turns: list[list[TurnResult]] = field(default_factory=list)  # per session

    def flat(self) -> list[TurnResult]:
        return [t for s in self.turns for t in s]

    def summary(self) -> dict[str, Any]:
        flat = self.flat()
        compute_ms = sum(t.prefill_ms + t.decode_ms for t in flat)
        prompt = sum(t.input_tokens for t in flat)
        cached = sum(t.cached_tokens for t in flat)
        later = [t for s in self.turns for t in s[1:]]
        return {
            "mode": self.mode,
            "wall_s": round(self.wall_s, 3),
            "ttft_p50_ms": round(statistics.median(t.ttft_ms for t in flat), 2),
            "ttft_p95_ms": round(_pct([t.ttft_ms for t in flat], 95), 2),
            "turn_p50_ms": round(statistics.median(t.latency_ms for t in flat), 2),
            "turn_p95_ms": round(_pct([t.latency_ms for t in flat], 95), 2),
            "server_compute_s": round(compute_ms / 1000.0, 3),
            "overhead_s": round(sum(t.latency_ms for t in flat) / 1000.0 - compute_ms / 1000.0, 3),
            "overhead_per_turn_ms": round(
                statistics.median(t.ttft_ms - t.prefill_ms for t in later) if later else 0.0, 2
            ),
            "prompt_tokens": prompt,
            "cached_tokens": cached,
            "computed_tokens": prompt - cached,
            "reused_ratio": round(cached / prompt, 4) if prompt else 0.0,
            "client_bytes": sum(t.sent_bytes for t in flat),
            "client_bytes_first_turn": self.turns[0][0].sent_bytes,
            "client_bytes_last_turn": self.turns[0][-1].sent_bytes,
        }


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def _usage(resp: dict[str, Any], ttft: float, latency: float, sent: int) -> TurnResult:
    usage = resp["usage"]
    extra = resp.get("warmloop", {})
    return TurnResult(
        ttft_ms=ttft,
        latency_ms=latency,
        sent_bytes=sent,
        input_tokens=usage["input_tokens"],
        cached_tokens=usage["input_tokens_details"]["cached_tokens"],
        output_tokens=usage["output_tokens"],
        prefill_ms=float(extra.get("prefill_ms", 0.0)),
        decode_ms=float(extra.get("decode_ms", 0.0)),
    )


def _output_text(resp: dict[str, Any]) -> str:
    return "".join(
        c["text"]
        for item in resp["output"]
        if item["type"] == "message"
        for c in item["content"]
        if c["type"] == "output_text"
    )


# ----- the three clients ------------------------------------------------------------------
async def run_ws_session(url: str, key: str, wl: Workload, session: int) -> list[TurnResult]:
    results: list[TurnResult] = []
    headers = {"Authorization": f"Bearer {key}"}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        prev: str | None = None
        for turn in range(wl.turns):
            body: dict[str, Any] = {
                "type": "response.create",
                "model": "default",
                "instructions": wl.instructions(),
                "input": [{"role": "user", "content": wl.turn_text(session, turn)}],
                "temperature": 0,
                "max_output_tokens": wl.output_tokens,
                "store": False,
            }
            if prev is not None:
                body["previous_response_id"] = prev
            frame = json.dumps(body)
            t0 = time.perf_counter()
            await ws.send(frame)
            ttft: float | None = None
            while True:
                event = json.loads(await ws.recv())
                if event["type"] == "response.output_text.delta" and ttft is None:
                    ttft = (time.perf_counter() - t0) * 1000
                if event["type"] == "error":
                    raise RuntimeError(f"server error: {event}")
                if event["type"] in TERMINAL:
                    break
            latency = (time.perf_counter() - t0) * 1000
            resp = event["response"]
            prev = resp["id"]
            results.append(_usage(resp, ttft or latency, latency, len(frame.encode())))
    return results


async def run_http_session(base: str, key: str, wl: Workload, session: int) -> list[TurnResult]:
    results: list[TurnResult] = []
    history: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(timeout=600) as client:
        for turn in range(wl.turns):
            history.append({"role": "user", "content": wl.turn_text(session, turn)})
            body = {
                "model": "default",
                "instructions": wl.instructions(),
                "input": history,
                "temperature": 0,
                "max_output_tokens": wl.output_tokens,
                "store": False,
                "stream": True,
            }
            payload = json.dumps(body).encode()
            t0 = time.perf_counter()
            ttft: float | None = None
            final: dict[str, Any] | None = None
            async with client.stream(
                "POST", f"{base}/responses", content=payload, headers=headers
            ) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    if event["type"] == "response.output_text.delta" and ttft is None:
                        ttft = (time.perf_counter() - t0) * 1000
                    if event["type"] in TERMINAL:
                        final = event["response"]
            latency = (time.perf_counter() - t0) * 1000
            assert final is not None
            history.append({"role": "assistant", "content": _output_text(final)})
            results.append(_usage(final, ttft or latency, latency, len(payload)))
    return results


async def run_mode(mode: str, port: int, key: str, wl: Workload, sessions: int) -> ModeResult:
    t0 = time.perf_counter()
    if mode == "ws":
        url = f"ws://127.0.0.1:{port}/v1/responses"
        coros = [run_ws_session(url, key, wl, s) for s in range(sessions)]
    else:
        base = f"http://127.0.0.1:{port}/v1"
        coros = [run_http_session(base, key, wl, s) for s in range(sessions)]
    turns = await asyncio.gather(*coros)
    return ModeResult(mode, time.perf_counter() - t0, list(turns))


# ----- servers ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, extra: list[str], args: argparse.Namespace) -> None:
        self.port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "warmloop.cli",
            "serve",
            "--port",
            str(self.port),
            "--slots",
            str(args.slots),
            "--ctx",
            str(args.ctx),
            "--threads",
            str(args.threads),
            "--log-level",
            "warning",
            *extra,
        ]
        if args.model:
            cmd += ["--model", args.model]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).raise_for_status()
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None:
                    raise RuntimeError("server exited") from None
                time.sleep(0.3)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def plot(results: list[ModeResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        ttft = [t.ttft_ms for t in r.turns[0]]
        ax1.plot(range(1, len(ttft) + 1), ttft, marker="o", ms=3, label=r.mode)
        ax2.plot(range(1, len(ttft) + 1), [t.sent_bytes / 1024 for t in r.turns[0]], label=r.mode)
    ax1.set(xlabel="turn", ylabel="TTFT (ms)", title="Time to first token by turn")
    ax2.set(xlabel="turn", ylabel="client bytes sent (KiB)", title="Bytes on the wire per turn")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--sessions", type=int, default=1)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--ctx", type=int, default=8192)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default=None)
    p.add_argument("--modes", default="ws,http-full,stateless")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "agent_loop.json")
    args = p.parse_args()
    wl = Workload(turns=args.turns)
    modes = args.modes.split(",")
    key = "bench"
    results: list[ModeResult] = []
    warm = Server([], args) if {"ws", "http-full"} & set(modes) else None
    try:
        for mode in ("ws", "http-full"):
            if mode in modes:
                assert warm is not None
                print(
                    f"running {mode} ({args.sessions} session(s) x {args.turns} turns)...",
                    flush=True,
                )
                results.append(asyncio.run(run_mode(mode, warm.port, key, wl, args.sessions)))
    finally:
        if warm:
            warm.stop()
    if "stateless" in modes:
        cold = Server(["--no-kv-reuse"], args)
        try:
            print(
                f"running stateless ({args.sessions} session(s) x {args.turns} turns)...",
                flush=True,
            )
            r = asyncio.run(run_mode("http-full", cold.port, key, wl, args.sessions))
            r.mode = "stateless"
            results.append(r)
        finally:
            cold.stop()

    summaries = {r.mode: r.summary() for r in results}
    cols = [
        "wall_s",
        "ttft_p50_ms",
        "turn_p50_ms",
        "server_compute_s",
        "overhead_per_turn_ms",
        "reused_ratio",
        "client_bytes",
        "client_bytes_first_turn",
        "client_bytes_last_turn",
    ]
    print(f"\n{'mode':<11}" + "".join(f"{c:>24}" for c in cols))
    for m, s in summaries.items():
        print(f"{m:<11}" + "".join(f"{s[c]:>24}" for c in cols))
    ratios: dict[str, float] = {}
    if "ws" in summaries:
        ws = summaries["ws"]["wall_s"]
        for other in ("http-full", "stateless"):
            if other in summaries:
                ratios[f"ws_vs_{other}"] = round(ws / summaries[other]["wall_s"], 3)
        ratios["ws_wall_vs_compute"] = round(ws / max(summaries["ws"]["server_compute_s"], 1e-9), 3)
    print("\nratios:", json.dumps(ratios))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "workload": asdict(wl),
        "sessions": args.sessions,
        "slots": args.slots,
        "threads": args.threads,
        "summaries": summaries,
        "ratios": ratios,
        "turns": {r.mode: [[asdict(t) for t in s] for s in r.turns] for r in results},
    }
    args.out.write_text(json.dumps(report, indent=2))
    png = args.out.with_suffix(".png")
    plot(results, png)
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
