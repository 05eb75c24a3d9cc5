"""`warmloop demo`: a small real agent, run three ways, and the speed-up table.

Starts warmloop in this process on the embedded model (no set-up beyond `make`), gives
an agent three harmless tools over a scratch directory of files, and runs the same
task (the same tool-calling turns, greedy sampling) three ways:

  WebSocket       AgentSession over WebSocket mode: each turn sends only the new items
  HTTP            the same loop over HTTP, whole conversation each turn, on the same server
  HTTP, no cache  the same over HTTP against a server with `--no-kv-reuse`: what an
                  agent gets from a server that recomputes every prompt
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from warmloop.bench.report import wide_console
from warmloop.bench.server import free_port
from warmloop.client import AgentResult, AgentSession
from warmloop.client.agent import TransportName
from warmloop.config import Config

TASK = (
    "You are looking at a small project. Use the tools to list its files, read them and "
    "count their lines, then say which file is the longest."
)
INSTRUCTIONS = (
    "You are a careful coding agent. You work in a project directory through tools. "
    "Call one tool at a time, read each result, and keep answers short. "
    "Tools: list_files lists the project's files; read_file returns a file's text; "
    "count_lines returns how many lines a file has."
)
FILES = {
    "README.md": "# tiny\n\nA tiny project for the warmloop demo.\n",
    "main.py": "from util import greet\n\n\ndef main():\n    print(greet('world'))\n\n\nmain()\n",
    "util.py": "def greet(name):\n    return f'hello {name}'\n",
    "test_util.py": "from util import greet\n\n\ndef test_greet():\n"
    "    assert greet('a') == 'hello a'\n",
}


class Project:
    """Three harmless, read-only tools over a scratch directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for name, text in FILES.items():
            (root / name).write_text(text)

    def _path(self, path: str) -> Path:
        p = (self.root / path).resolve()
        if self.root.resolve() not in p.parents or not p.is_file():
            raise FileNotFoundError(f"no file '{path}' in the project")
        return p

    def list_files(self) -> str:
        """List the project's files."""
        return "\n".join(sorted(p.name for p in self.root.iterdir()))

    def read_file(self, path: str) -> str:
        """Return the text of one project file."""
        return self._path(path).read_text()

    def count_lines(self, path: str) -> int:
        """Count the lines of one project file."""
        return len(self._path(path).read_text().splitlines())


@contextlib.contextmanager
def serve_in_thread(config: Config) -> Iterator[str]:
    """Run `create_app(config)` with uvicorn on a thread; yields the base URL."""
    from warmloop.launcher import server as uvicorn_server

    server = uvicorn_server(config.with_(host="127.0.0.1"), log_level="warning")
    thread = threading.Thread(target=server.run, name="warmloop-demo-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the demo server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{config.port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@dataclass
class Row:
    name: str
    seconds: float
    result: AgentResult


async def run_agent(
    name: str, base_url: str, transport: TransportName, project: Project, turns: int
) -> Row:
    async with AgentSession(
        base_url=base_url,
        instructions=INSTRUCTIONS,
        tools=[project.list_files, project.read_file, project.count_lines],
        transport=transport,
        temperature=0,
        max_output_tokens=48,
        max_turns=turns,
        parallel_tool_calls=False,
    ) as session:
        t0 = time.perf_counter()
        # A fixed number of tool-calling turns, then the answer: the same work every way.
        first = await session.run(TASK, tool_choice="required")
        final = await session.run("Now answer in one sentence.", tool_choice="none")
        seconds = time.perf_counter() - t0
    merged = AgentResult(
        output_text=final.output_text,
        stopped=final.stopped,
        responses=first.responses + final.responses,
        tool_runs=first.tool_runs + final.tool_runs,
        transport=final.transport,
    )
    return Row(name, seconds, merged)


def table(rows: list[Row]) -> Table:
    t = Table(title="warmloop demo: the same agent loop three ways")
    for col in ("mode", "turns", "tool calls", "end-to-end", "prompt tokens", "cached", "speed-up"):
        t.add_column(col, justify="left" if col == "mode" else "right")
    slowest = max(r.seconds for r in rows)
    for r in rows:
        res = r.result
        t.add_row(
            r.name,
            str(res.turns),
            str(len(res.tool_runs)),
            f"{r.seconds:.2f} s",
            f"{res.input_tokens:,}",
            f"{100 * res.cached_tokens / max(res.input_tokens, 1):.1f} %",
            f"{slowest / r.seconds:.1f}x",
        )
    return t


def run(args: argparse.Namespace) -> list[Row]:
    console = wide_console()
    base = Config(
        model=args.model,
        slots=2,
        ctx=args.ctx,
        threads=args.threads,
        store="memory",
        log_level="warning",
    )
    ways: list[tuple[str, TransportName, Config]] = [
        ("WebSocket", "websocket", base),
        ("HTTP", "http", base),
        ("HTTP, no cache", "http", base.with_(kv_reuse=False)),
    ]
    if args.skip_cold:
        ways.pop()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="warmloop-demo-") as tmp:
        project = Project(Path(tmp))
        console.print(f"[bold]task:[/] {TASK}")
        for name, transport, config in ways:
            # a fresh server each way: no run finds another's prompt in the cache
            with serve_in_thread(config.with_(port=free_port())) as url:
                console.print(f"running the agent: {name}...")
                rows.append(asyncio.run(run_agent(name, url, transport, project, args.turns)))
    for call in rows[0].result.tool_runs:
        console.print(f"  tool {call.name}({call.arguments}) -> {call.output[:60]!r}")
    console.print(f"[bold]answer:[/] {rows[0].result.output_text.strip()}")
    console.print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(results_json(rows), indent=2))
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--turns", type=int, default=6, help="tool-calling turns before the answer")
    p.add_argument("--model", default=None, help="GGUF (default: embedded model); as serve's")
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--threads", type=int, default=Config().threads)
    p.add_argument("--skip-cold", action="store_true", help="skip the no-cache baseline")
    p.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")


def results_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [
        {
            "mode": r.name,
            "seconds": round(r.seconds, 3),
            "turns": r.result.turns,
            "tool_calls": len(r.result.tool_runs),
            "input_tokens": r.result.input_tokens,
            "cached_tokens": r.result.cached_tokens,
        }
        for r in rows
    ]
