"""Streaming against a JSON answer on one server, interleaved: the same greedy response
(same prompt, same 128 tokens: its prompt stays cached after the first round) as a JSON
body, as SSE and over a WebSocket, the three alternating request by request so the
machine's drift hits all alike. Reports tokens/s over each request's whole time (what a
client waits for), per mode, and the ratios to JSON.

The clients are as light as they can be (raw httpx lines, raw WebSocket frames; no SDK
parsing) but share the machine's cores with the server, as a local agent does.

    .venv/bin/python benchmarks/streaming.py
    .venv/bin/python benchmarks/streaming.py --rounds 12 --tokens 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from warmloop.bench.server import LocalServer

ROOT = Path(__file__).resolve().parent
MODES = ("json", "sse", "websocket")
PROMPT = "Count from 1 to 400, separated by commas, and nothing else."


def body(tokens: int) -> dict[str, Any]:
    return {
        "model": "default",
        "input": PROMPT,
        "max_output_tokens": tokens,
        "temperature": 0,
        "store": False,
    }


def _done(event: str) -> bool:
    """The response's last event (128 tokens usually end it as incomplete)."""
    head = event[:60]
    return '"response.completed"' in head or '"response.incomplete"' in head


def run_json(client: httpx.Client, tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = client.post("/v1/responses", json=body(tokens))
    r.raise_for_status()
    return time.perf_counter() - t0, int(r.json()["usage"]["output_tokens"])


def run_sse(client: httpx.Client, tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    with client.stream("POST", "/v1/responses", json={**body(tokens), "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and _done(line[6:]):
                usage = json.loads(line[6:])["response"]["usage"]
                return time.perf_counter() - t0, int(usage["output_tokens"])
    raise RuntimeError("the SSE stream ended without its last event")


def run_ws(ws: Any, tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    ws.send(json.dumps({"type": "response.create", **body(tokens)}))
    while True:
        frame = ws.recv()
        if _done(frame):
            usage = json.loads(frame)["response"]["usage"]
            return time.perf_counter() - t0, int(usage["output_tokens"])
        if '"error"' in frame[:40]:
            raise RuntimeError(frame)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", default=",".join(MODES), help="json, sse, websocket")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "streaming.json")
    args = p.parse_args()
    flags = ["--no-self-test", "--threads", str(args.threads), "--speculative-draft", "0"]
    modes = [m for m in args.modes.split(",") if m]
    rates: dict[str, list[float]] = {m: [] for m in modes}
    with (
        LocalServer(flags) as server,
        httpx.Client(base_url=server.url, timeout=120) as client,
        connect(server.ws_url, max_size=None) as ws,
    ):
        run_json(client, args.tokens)  # warm: the prompt's KV is cached from here on
        for r in range(args.rounds):
            shown = []
            for mode in modes:
                if mode == "json":
                    wall, n = run_json(client, args.tokens)
                elif mode == "sse":
                    wall, n = run_sse(client, args.tokens)
                else:
                    wall, n = run_ws(ws, args.tokens)
                rates[mode].append(n / wall)
                shown.append(f"{mode} {n / wall:6.1f}")
            print(f"round {r}: " + "  ".join(shown) + f" tok/s ({n} tokens)", flush=True)
    summary = {m: round(statistics.median(v), 1) for m, v in rates.items()}
    base = summary.get("json", summary[modes[0]])
    ratios = {m: round(summary[m] / base, 3) for m in modes}
    print(f"\nmedians over {args.rounds} interleaved rounds:")
    for m in modes:
        print(f"  {m:>9}: {summary[m]:6.1f} tok/s = {ratios[m]:.2f}x {modes[0]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"rates": rates, "median_tps": summary, "ratio_to_json": ratios}, indent=2)
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
