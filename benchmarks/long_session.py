"""One agent session far longer than the context: truncation and compaction.

A single session of --turns turns (default 200); each turn sends one tool call and its
output (~150 words) and gets a short answer. Modes, each on a fresh server:

  shift       WebSocket, truncation "auto", --truncation-kv shift (the dropped turns
              are cut out of the KV, the kept ones shifted: only the delta is computed)
  recompute   WebSocket, truncation "auto", --truncation-kv recompute (the default:
              the instructions' KV stays, the kept turns are computed again, exactly)
  compact     WebSocket; when the prompt passes --compact-at of the context the client
              calls POST /v1/responses/compact and goes on from its items
  server-compact
              WebSocket, `context_management` with compact_threshold = --compact-at of
              the context: the server compacts inside the turn that passes it
  stateless   HTTP, truncation "auto", on a --no-kv-reuse server: what a server without
              a KV cache does, every prompt computed in full each turn

Per turn it records prompt tokens, tokens computed (input - cached), truncated items and
latency; it prints the compute per turn after the context first filled, as a multiple
of the turn's own delta, and each mode's end-to-end time as a ratio to stateless.

    .venv/bin/python benchmarks/long_session.py [--turns 200] [--ctx 2048] [--modes ...]

Writes benchmarks/results/long_session/long_session.json and long_session.png.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import openai

from warmloop.bench.server import LocalServer
from warmloop.bench.workload import WORDS

OUT = Path(__file__).resolve().parent / "results" / "long_session"
INSTRUCTIONS = (
    "You are a coding agent working in a repository. After each tool result, say in one "
    "short sentence what you will do next."
)
MODES = ("shift", "recompute", "compact", "server-compact", "stateless")


def tool_turn(k: int, words: int) -> list[dict[str, Any]]:
    rng = random.Random(k)
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    call_id = f"call_{k}"
    return [
        {
            "type": "function_call",
            "call_id": call_id,
            "name": "read_file",
            "arguments": json.dumps({"path": f"src/module_{k % 17}.py"}),
        },
        {"type": "function_call_output", "call_id": call_id, "output": text},
    ]


def flags(mode: str, ctx: int) -> list[str]:
    base = ["--ctx", str(ctx), "--slots", "1", "--threads", "2", "--store", "memory",
            "--log-level", "warning"]  # fmt: skip
    if mode == "shift":
        return [*base, "--truncation-kv", "shift"]
    if mode == "stateless":
        return [*base, "--no-kv-reuse"]
    return base


def create(
    turn: list[dict[str, Any]], previous: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    return {
        "model": "default",
        "instructions": INSTRUCTIONS,
        "input": turn,
        "previous_response_id": previous,
        "temperature": 0,
        "max_output_tokens": args.output_tokens,
        "truncation": "auto",
        "store": False,
    }


def row(k: int, r: Any, t0: float) -> dict[str, Any]:
    u = r.usage
    return {
        "turn": k,
        "input": u.input_tokens,
        "cached": u.input_tokens_details.cached_tokens,
        "computed": u.input_tokens - u.input_tokens_details.cached_tokens,
        "output": u.output_tokens,
        "truncated_items": (r.warmloop or {}).get("truncated_items", 0),
        "latency_s": round(time.perf_counter() - t0, 4),
    }


async def ws_mode(mode: str, server: LocalServer, args: argparse.Namespace) -> list[dict[str, Any]]:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    rows: list[dict[str, Any]] = []
    previous: str | None = None
    carried: list[dict[str, Any]] = []  # compact mode: the compacted items, sent once
    async with client.responses.connect() as conn:
        for k in range(args.turns):
            t0 = time.perf_counter()
            turn = carried + tool_turn(k, args.tool_words)
            carried = []
            body = create(turn, previous, args)
            if mode == "compact":  # stored, so POST /v1/responses/compact can find it
                body["store"] = True
            if mode == "server-compact":
                threshold = int(args.compact_at * args.ctx)
                body["context_management"] = [
                    {"type": "compaction", "compact_threshold": threshold}
                ]
            await conn.send({"type": "response.create", **body})
            response = None
            async for event in conn:
                if event.type == "error":
                    raise RuntimeError(f"turn {k}: {event}")
                if event.type in ("response.completed", "response.incomplete", "response.failed"):
                    response = event.response  # type: ignore[union-attr]
                    break
            assert response is not None and response.status != "failed", response
            rows.append(row(k, response, t0))
            if response.output and response.output[0].type == "compaction":
                rows[-1]["compacted"] = True  # its usage counts the summary's job too
            previous = response.id
            used = response.usage.input_tokens + response.usage.output_tokens
            if mode == "compact" and used > args.compact_at * args.ctx:
                t1 = time.perf_counter()
                compacted = await client.responses.compact(
                    model="default", instructions=INSTRUCTIONS, previous_response_id=previous
                )
                u = compacted.usage
                rows[-1]["compaction_s"] = round(time.perf_counter() - t1, 3)
                rows[-1]["compaction_computed"] = (
                    u.input_tokens - u.input_tokens_details.cached_tokens + u.output_tokens
                )
                carried = [
                    i.model_dump(mode="json", exclude_none=True, warnings=False)
                    for i in compacted.output
                ]
                previous = None  # the next turn starts a new chain from the compacted items
    await client.close()
    return rows


async def http_mode(server: LocalServer, args: argparse.Namespace) -> list[dict[str, Any]]:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    rows = []
    previous = None
    for k in range(args.turns):
        t0 = time.perf_counter()
        body = create(tool_turn(k, args.tool_words), previous, args) | {"store": True}
        response = await client.responses.create(**body)
        rows.append(row(k, response, t0))
        previous = response.id
    await client.close()
    return rows


def compacted(r: dict[str, Any]) -> bool:
    """The client compacted after this turn, or the server compacted within it."""
    return "compaction_s" in r or bool(r.get("compacted"))


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Compute per turn after the context first filled, as a multiple of the delta.

    A turn's delta is what it adds to the conversation: the new items' tokens (its
    input minus the previous turn's input and output, when nothing was dropped). The
    median delta of untruncated turns stands for it in truncated ones."""
    deltas = [
        b["input"] - a["input"] - a["output"]
        for a, b in itertools.pairwise(rows)
        if not b["truncated_items"] and not compacted(a) and not compacted(b)
    ]
    delta = statistics.median(deltas) if deltas else float("nan")
    filled = next((i for i, r in enumerate(rows) if r["truncated_items"] or compacted(r)), None)
    after = rows[filled + 1 :] if filled is not None else []
    spent = sum(r["computed"] + r.get("compaction_computed", 0) for r in after)
    return {
        "turns": len(rows),
        "end_to_end_s": round(sum(r["latency_s"] + r.get("compaction_s", 0) for r in rows), 2),
        "first_full_turn": filled,
        "delta_tokens": delta,
        "compute_per_turn_after_full": round(spent / len(after), 1) if after else None,
        "compute_over_delta": round(spent / len(after) / delta, 2) if after else None,
        "truncations": sum(1 for r in rows if r["truncated_items"]),
        "compactions": sum(1 for r in rows if compacted(r)),
        "turn_p50_s": round(statistics.median(r["latency_s"] for r in rows), 3),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for mode, data in results["modes"].items():
        turns = [r["turn"] for r in data["rows"]]
        top.plot(turns, [r["computed"] for r in data["rows"]], label=mode, lw=1)
        bottom.plot(turns, [r["latency_s"] for r in data["rows"]], label=mode, lw=1)
    top.set_ylabel("prompt tokens computed")
    bottom.set_ylabel("turn latency (s)")
    bottom.set_xlabel("turn")
    top.set_title(f"One {results['turns']}-turn session at --ctx {results['ctx']}")
    top.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--turns", type=int, default=200)
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--tool-words", type=int, default=150)
    p.add_argument("--output-tokens", type=int, default=24)
    p.add_argument("--compact-at", type=float, default=0.8, help="share of --ctx (compact mode)")
    p.add_argument("--modes", default=",".join(MODES))
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"turns": args.turns, "ctx": args.ctx, "modes": {}}
    for mode in args.modes.split(","):
        if mode not in MODES:
            p.error(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
        with LocalServer(flags(mode, args.ctx), log_path=OUT / f"{mode}.log") as server:
            t0 = time.perf_counter()
            if mode == "stateless":
                rows = asyncio.run(http_mode(server, args))
            else:
                rows = asyncio.run(ws_mode(mode, server, args))
            wall = time.perf_counter() - t0
        summary = summarize(rows) | {"wall_s": round(wall, 2)}
        results["modes"][mode] = {"summary": summary, "rows": rows}
        print(f"{mode:>10}: {json.dumps(summary)}", flush=True)
        (OUT / "long_session.json").write_text(json.dumps(results, indent=2))
    base = results["modes"].get("stateless", {}).get("summary")
    for mode, data in results["modes"].items():
        s = data["summary"]
        ratio = f"{s['wall_s'] / base['wall_s']:.2f}x stateless" if base else ""
        print(
            f"{mode:>10}: {s['wall_s']:7.1f} s end to end {ratio:>16}; after the context "
            f"filled, {s['compute_per_turn_after_full']} tokens computed per turn = "
            f"{s['compute_over_delta']}x the delta ({s['delta_tokens']} tokens)"
        )
    plot(results, OUT / "long_session.png")
    print(f"wrote {OUT / 'long_session.json'} and {OUT / 'long_session.png'}")


if __name__ == "__main__":
    main()
