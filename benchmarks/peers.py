"""warmloop against llama.cpp's own `llama-server`, on agent workloads, interleaved.

Both servers get the same model, slots, context per slot and threads. warmloop runs each
workload over WebSocket mode (`previous_response_id` + only the new item each turn);
llama-server over `/v1/chat/completions` with the whole history each turn and its
prompt cache on (its default), which is how agents use it today. llama-server is built
from the llama.cpp that llama-cpp-python vendors, as users build it (default cmake,
native: `benchmarks/build_llama_bench.sh native`; `make peers` builds it and runs this);
warmloop runs the CPU variant it picks at start.

This machine drifts by ±30% within an hour, so a number means something only next to
its baseline: every round runs each workload on both servers back to back (the order
alternates by round), each on a fresh server, and the table reports the ratio
warmloop / llama-server per round: its median and its spread over rounds.

    .venv/bin/python benchmarks/peers.py --llama-server PATH [--rounds 3] [--only 1x20,edit]

Writes benchmarks/results/peers/peers.json and peers.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from warmloop.bench.report import percentile, wide_console
from warmloop.bench.runner import Endpoint, TurnRecord, run_mode
from warmloop.bench.server import LocalServer, free_port, stop_process, wait_healthy
from warmloop.bench.workload import WORDS, SessionScript, Turn
from warmloop.config import embedded_model_path

OUT = Path(__file__).resolve().parent / "results" / "peers"
KEY = "sk-peers"


@dataclass(frozen=True)
class Shape:
    """An agent workload: sessions of turns, each a tool output and a short answer."""

    name: str
    sessions: int
    turns: int
    head_words: int  # instructions (+ tool definitions) at the start of every session
    shared_head: bool  # all sessions start with the same head (one agent, many tasks)
    tool_words: tuple[int, int]  # each turn's new text, words (uniform in the range)
    output_tokens: tuple[int, int]
    pause_s: tuple[float, float] = (0.0, 0.0)  # the tool runs between turns
    ctx: int = 8192
    edit: bool = False  # the model is asked to rewrite the tool output it was given
    goal: float = 0.9  # end-to-end ratio to reach (warmloop / llama-server)

    def scripts(self, seed: int = 11) -> list[SessionScript]:
        rng = random.Random(seed)
        head = "You are a coding agent. Follow these rules. " + _words(rng, self.head_words)
        out = []
        for s in range(self.sessions):
            # A different first word: sessions that do not share a head share nothing.
            own = head if self.shared_head else f"Session {s}. {head}"
            turns = []
            for t in range(self.turns):
                r = random.Random(seed * 7919 + s * 104_729 + t)
                n = r.randint(*self.tool_words)
                if t == 0:
                    text = f"Task {s}: fix the failing test in module {s}. " + _words(r, 20)
                elif self.edit:
                    text = (
                        f"Tool output {t} (read_file):\n{_code(r, n)}\n"
                        "Rewrite this file with every `value` renamed to `amount`. "
                        "Print the whole file."
                    )
                else:
                    text = f"Tool output {t}:\n" + _words(r, n)
                pause = r.uniform(*self.pause_s) if t > 0 else 0.0
                turns.append(Turn(text, r.randint(*self.output_tokens), pause))
            out.append(SessionScript(f"s{s}", own, tuple(turns)))
        return out


SHAPES = (
    Shape("1x20", 1, 20, 400, False, (75, 75), (16, 16)),
    Shape("4on4", 4, 10, 400, False, (75, 75), (16, 16)),
    Shape("8on4", 8, 10, 400, False, (75, 75), (16, 16)),
    Shape("shared-head", 8, 10, 1500, True, (75, 75), (16, 16), goal=0.3),
    Shape("edit", 2, 6, 300, False, (60, 90), (96, 96), edit=True, goal=0.6),
    # ~4k-token shared head, tool outputs of 200-1,200 tokens: as much as fits in the
    # embedded model's 8,192-token context (llama-server caps a slot at the model's
    # training context, so both servers get 8,192 per slot).
    Shape("coding-agent", 4, 4, 3800, True, (200, 1200), (30, 100), (0.5, 5.0), goal=0.65),
)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _code(rng: random.Random, words: int) -> str:
    """Python-looking lines of about `words` words (what an edit turn reads and rewrites)."""
    lines = []
    while words > 0:
        a, b, c = (rng.choice(WORDS) for _ in range(3))
        lines.append(f"def {a}_{b}(value, {c}):\n    return {c}.{a}(value) + {b}_value\n")
        words -= 8
    return "".join(lines)


class LlamaServer:
    """`llama-server` on a free port with warmloop's slots, context and threads."""

    def __init__(self, binary: Path, model: Path, *, slots: int, ctx: int, threads: int) -> None:
        self.port = free_port()
        cmd = [
            str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
            "-np", str(slots), "-c", str(slots * ctx), "-t", str(threads), "-tb", str(threads),
            "--no-webui",
        ]  # fmt: skip
        self.log = open(OUT / "llama-server.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(f"{self.url}/health", self.process, 120)
        except RuntimeError:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process, signal.SIGINT)
        self.log.close()


def measure(wall_s: float, records: list[TurnRecord]) -> dict[str, Any]:
    ttft = [r.ttft_ms for r in records]
    gaps = [g for r in records for g in r.gaps_ms]
    return {
        "end_to_end_s": round(wall_s, 3),
        "ttft_p50_ms": round(statistics.median(ttft), 1),
        "ttft_p95_ms": round(percentile(ttft, 95), 1),
        "turn_p50_ms": round(statistics.median(r.latency_ms for r in records), 1),
        "gap_p50_ms": round(statistics.median(gaps), 2) if gaps else None,
        "gap_p99_ms": round(percentile(gaps, 99), 2) if gaps else None,
        "input_tokens": sum(r.input_tokens for r in records),
        "cached_tokens": sum(r.cached_tokens for r in records),
        "output_tokens": sum(r.output_tokens for r in records),
    }


def run_warmloop(shape: Shape, args: argparse.Namespace) -> dict[str, Any]:
    flags = [
        "--slots", str(args.slots), "--ctx", str(shape.ctx), "--threads", str(args.threads),
        "--api-key", KEY, "--log-level", "warning", "--store", "memory", *args.server_arg,
    ]  # fmt: skip
    with LocalServer(flags, log_path=OUT / "warmloop.log") as server:
        ep = Endpoint(server.base_url, KEY)
        wall, records = asyncio.run(run_mode(ep, "ws", "warmloop", shape.scripts(), _quiet))
    return measure(wall, records)


def run_llama(shape: Shape, args: argparse.Namespace) -> dict[str, Any]:
    server = LlamaServer(
        args.llama_server, args.model, slots=args.slots, ctx=shape.ctx, threads=args.threads
    )
    try:
        ep = Endpoint(f"{server.url}/v1", "none")
        wall, records = asyncio.run(run_mode(ep, "chat", "llama-server", shape.scripts(), _quiet))
    finally:
        server.stop()
    return measure(wall, records)


def _quiet(_record: TurnRecord) -> None:
    pass


def ratios(rounds: list[dict[str, dict[str, Any]]], key: str) -> dict[str, float] | None:
    values = [
        r["warmloop"][key] / r["llama-server"][key]
        for r in rounds
        if r["warmloop"].get(key) and r["llama-server"].get(key)
    ]
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def report(results: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="warmloop / llama-server, same run: median (min–max) over rounds")
    for col in ("workload", "end to end", "goal", "TTFT p50", "turn p50", "gap p99",
                "warmloop s", "llama-server s"):  # fmt: skip
        table.add_column(col, justify="right" if col != "workload" else "left")
    for name, w in results["workloads"].items():
        if not w["rounds"]:
            continue

        def cell(key: str, w: dict[str, Any] = w) -> str:
            r = w["ratios"].get(key)
            return f"{r['median']:.2f}x ({r['min']:.2f}–{r['max']:.2f})" if r else "-"

        med = {
            s: statistics.median(r[s]["end_to_end_s"] for r in w["rounds"])
            for s in ("warmloop", "llama-server")
        }
        e2e = w["ratios"]["end_to_end_s"]
        met = "✓" if e2e and e2e["median"] <= w["goal"] else "✗"
        table.add_row(
            name,
            cell("end_to_end_s"),
            f"≤ {w['goal']}x {met}",
            cell("ttft_p50_ms"),
            cell("turn_p50_ms"),
            cell("gap_p99_ms"),
            f"{med['warmloop']:.1f}",
            f"{med['llama-server']:.1f}",
        )
    wide_console().print(table)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, w in results["workloads"].items() if w["rounds"]]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for k, (key, label) in enumerate((("end_to_end_s", "end to end"), ("ttft_p50_ms", "TTFT p50"))):
        meds, lo, hi = [], [], []
        for n in names:
            r = results["workloads"][n]["ratios"].get(key) or {"median": 0, "min": 0, "max": 0}
            meds.append(r["median"])
            lo.append(r["median"] - r["min"])
            hi.append(r["max"] - r["median"])
        xs = [i + (k - 0.5) * 0.38 for i in range(len(names))]
        ax.bar(xs, meds, 0.36, yerr=[lo, hi], capsize=3, label=label)
    for i, n in enumerate(names):
        goal = results["workloads"][n]["goal"]
        ax.plot([i - 0.45, i + 0.45], [goal, goal], color="black", lw=1, ls=":")
    ax.axhline(1.0, color="grey", lw=1)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("warmloop / llama-server (lower is better)")
    ax.set_title("Agent workloads, interleaved runs (dotted: goal)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--llama-server", type=Path)
    p.add_argument(
        "--report", action="store_true", help="print the table and plot of peers.json and exit"
    )
    p.add_argument("--model", type=Path, default=None, help="GGUF (default: the embedded model)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated workload names")
    p.add_argument("--server-arg", action="append", default=[], help="extra `warmloop serve` flag")
    args = p.parse_args()
    if args.report:
        results = json.loads((OUT / "peers.json").read_text())
        report(results)
        plot(results, OUT / "peers.png")
        return
    if args.llama_server is None:
        p.error("--llama-server is required (make peers builds it)")
    args.model = args.model or embedded_model_path()
    OUT.mkdir(parents=True, exist_ok=True)
    shapes = [s for s in SHAPES if not args.only or s.name in args.only.split(",")]
    results: dict[str, Any] = {
        "machine": {"threads": args.threads, "slots": args.slots, "model": args.model.name},
        "server_args": args.server_arg,
        "workloads": {s.name: {"shape": asdict(s), "goal": s.goal, "rounds": []} for s in shapes},
    }
    t0 = time.monotonic()
    for k in range(args.rounds):
        for shape in shapes:
            runs = (("warmloop", run_warmloop), ("llama-server", run_llama))
            one = {}
            for name, fn in runs if k % 2 == 0 else reversed(runs):
                one[name] = fn(shape, args)
                m = one[name]
                print(
                    f"[{time.monotonic() - t0:6.0f} s] round {k + 1} {shape.name:>13} "
                    f"{name:>12}: {m['end_to_end_s']:.1f} s, TTFT p50 {m['ttft_p50_ms']:.0f} ms",
                    file=sys.stderr,
                    flush=True,
                )
            w = results["workloads"][shape.name]
            w["rounds"].append(one)
            keys = ("end_to_end_s", "ttft_p50_ms", "turn_p50_ms", "gap_p99_ms")
            w["ratios"] = {key: ratios(w["rounds"], key) for key in keys}
            (OUT / "peers.json").write_text(json.dumps(results, indent=2))
    report(results)
    plot(results, OUT / "peers.png")
    print(f"wrote {OUT / 'peers.json'} and {OUT / 'peers.png'}")


if __name__ == "__main__":
    main()
