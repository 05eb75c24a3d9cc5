"""`warmloop bench`: the same agent workload in several modes, with a table, JSON and plots.

A mode is a client protocol (`ws`, `http-prev`, `http-full`, `chat`, see runner.py),
optionally on a server variant: `PROTOCOL@FLAG` runs against a server started with
`--FLAG` (e.g. `ws@no-batching`, `http-full@no-kv-reuse`). `cold` is short for
`http-full@no-kv-reuse`: a stateless client on a server that recomputes every prompt,
the baseline a warm agent loop is measured against.

Without `--target`, the bench starts its own `warmloop serve` (one at a time, one per
server variant) on the embedded model or `--model`. With `--target URL` it runs against
that server; `--api chat` runs the workload over `/v1/chat/completions` so any
OpenAI-compatible server (llama.cpp server, vLLM, SGLang) can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from warmloop.bench import report
from warmloop.bench.runner import PROTOCOLS, Endpoint, TurnRecord, run_mode
from warmloop.bench.server import LocalServer
from warmloop.bench.workload import SessionScript, Workload, load_trace

ALIASES = {"cold": "http-full@no-kv-reuse"}
BENCH_KEY = "sk-warmloop-bench"


@dataclass(frozen=True)
class Mode:
    name: str
    protocol: str
    server_flags: tuple[str, ...]  # the server variant; () for the plain server


def parse_modes(spec: str, *, target: bool) -> list[Mode]:
    modes = []
    for name in (m.strip() for m in spec.split(",")):
        if not name:
            continue
        protocol, *variant = ALIASES.get(name, name).split("@")
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown mode '{name}' (protocols: {', '.join(PROTOCOLS)})")
        if variant and target:
            raise ValueError(f"mode '{name}' needs its own server; it cannot run with --target")
        modes.append(Mode(name, protocol, tuple(f"--{v}" for v in variant)))
    if not modes:
        raise ValueError("no modes given")
    return modes


def tag_run(script: SessionScript, k: int) -> SessionScript:
    return replace(script, instructions=f"[run {chr(ord('A') + k % 26)}] {script.instructions}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Workload()
    p.add_argument(
        "--modes",
        default=None,
        help="comma-separated (default: ws,http-prev,"
        "http-full,cold; with --target: ws,http-prev,http-full; --api chat: chat)",
    )
    p.add_argument("--sessions", type=int, default=d.sessions, help="agent sessions at once")
    p.add_argument("--turns", type=int, default=d.turns, help="turns per session")
    p.add_argument("--instruction-words", type=int, default=d.instruction_words)
    p.add_argument("--tool-words", type=int, default=d.tool_words, help="words per tool output")
    p.add_argument("--output-tokens", type=int, default=d.output_tokens, help="per turn")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--trace", type=Path, default=None, help="JSONL of turns to replay instead")
    p.add_argument(
        "--target",
        default=None,
        help="base URL of a running server, e.g. "
        "http://127.0.0.1:8000/v1 (default: start warmloop serve)",
    )
    p.add_argument("--api", choices=["responses", "chat"], default="responses")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", BENCH_KEY))
    p.add_argument("--model-name", default="default", help="the request's `model` field")
    p.add_argument("--model", type=Path, default=None, help="GGUF for the bench's own server")
    p.add_argument("--slots", type=int, default=4, help="for the bench's own server")
    p.add_argument("--ctx", type=int, default=8192, help="for the bench's own server")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra flag for the bench's own server (repeatable)",
    )
    p.add_argument("--out", type=Path, default=Path("warmloop-bench"), help="results directory")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def _scripts(args: argparse.Namespace) -> list[SessionScript]:
    if args.trace is not None:
        return load_trace(args.trace, args.output_tokens)
    return workload(args).scripts()


def workload(args: argparse.Namespace) -> Workload:
    return Workload(
        sessions=args.sessions,
        turns=args.turns,
        instruction_words=args.instruction_words,
        tool_words=args.tool_words,
        output_tokens=args.output_tokens,
        seed=args.seed,
    )


def _server_flags(args: argparse.Namespace, variant: tuple[str, ...]) -> list[str]:
    flags = ["--slots", str(args.slots), "--ctx", str(args.ctx), "--threads", str(args.threads)]
    flags += ["--api-key", args.api_key, "--log-level", "warning", *args.server_arg, *variant]
    if args.model is not None:
        flags += ["--model", str(args.model)]
    return flags


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the bench; returns the report (also written to `args.out`)."""
    default_modes = (
        "chat"
        if args.api == "chat"
        else "ws,http-prev,http-full"
        if args.target
        else "ws,http-prev,http-full,cold"
    )
    modes = parse_modes(args.modes or default_modes, target=args.target is not None)
    if args.api == "chat" and any(m.protocol != "chat" for m in modes):
        raise ValueError("--api chat runs only the 'chat' mode")
    scripts = _scripts(args)
    console = Console(stderr=True)

    total = sum(len(s.turns) for s in scripts)
    results: dict[str, tuple[float, list[TurnRecord]]] = {}
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.no_progress,
    ) as progress:
        tasks = {m.name: progress.add_task(m.name, total=total) for m in modes}

        def measure(k: int, mode: Mode, endpoint: Endpoint) -> None:
            def tick(_record: TurnRecord) -> None:
                progress.advance(tasks[mode.name])

            # A tag of the same length for every mode starts its instructions, so no mode
            # finds another mode's prompts in the server's cache.
            tagged = [tag_run(s, k) for s in scripts]
            results[mode.name] = asyncio.run(
                run_mode(endpoint, mode.protocol, mode.name, tagged, tick)
            )

        for k, mode in enumerate(modes):
            if args.target:
                measure(k, mode, Endpoint(args.target.rstrip("/"), args.api_key, args.model_name))
                continue
            # a fresh server for each mode, one at a time: nothing carries over, and the
            # modes never compete for the CPU
            with LocalServer(_server_flags(args, mode.server_flags)) as server:
                measure(k, mode, Endpoint(server.base_url, args.api_key, args.model_name))

    summaries = {m.name: report.summarize(m.name, *results[m.name]) for m in modes}
    records = [r for m in modes for r in results[m.name][1]]
    turns = sum(len(s.turns) for s in scripts)
    title = f"warmloop bench: {len(scripts)} session(s), {turns} turns per mode"
    out: dict[str, Any] = {
        "title": title,
        "modes": summaries,
        "ratios": report.ratios(summaries),
        "workload": {"trace": str(args.trace)} if args.trace else asdict(workload(args)),
        "server": args.target
        or {
            "slots": args.slots,
            "ctx": args.ctx,
            "threads": args.threads,
            "model": str(args.model) if args.model else "embedded SmolLM2-135M-Instruct Q4_1",
            "extra_flags": args.server_arg,
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    path = report.write(out, records, args.out)
    report.print_report(out, report.wide_console())
    written = [path]
    if not args.no_plots:
        written += report.plot(out, records, args.out)
    console.print("wrote " + ", ".join(str(p) for p in written))
    return out


def main(argv: list[str] | None = None, **defaults: Any) -> dict[str, Any]:
    """Entry point for scripts: `defaults` override the parser's defaults."""
    p = argparse.ArgumentParser(
        prog="warmloop bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(**defaults)
    return run(p.parse_args(argv))
