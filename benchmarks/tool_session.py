"""A long WebSocket tool loop on one model: how much of each turn's prompt is reused.

One session of `--turns` turns over WebSocket mode (store: false): each turn sends the
previous turn's `function_call_output` items with `previous_response_id` and forces a
call (`tool_choice: "required"`), so the loop is all tool calls, the shape of an agent
loop. It prints each turn's cached / input tokens and the total ratio (goal for Gemma 3
270M: >= 0.90), and writes JSON.

    .venv/bin/python benchmarks/tool_session.py                       # Gemma 3 270M
    .venv/bin/python benchmarks/tool_session.py --model PATH.gguf --turns 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import openai

from warmloop.bench.server import LocalServer

ROOT = Path(__file__).resolve().parent
GEMMA = Path(sys.prefix) / "models" / "gemma-3-270m-q4_k_m.gguf"
TOOL = {
    "type": "function",
    "name": "read_file",
    "description": "Read a file of the project.",
    "parameters": {
        "type": "object",
        "properties": {"path": {"type": "string", "maxLength": 24}},
        "required": ["path"],
    },
}
DONE = ("response.completed", "response.incomplete", "response.failed")


async def session(server: LocalServer, turns: int) -> list[dict[str, Any]]:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused")
    rows: list[dict[str, Any]] = []
    async with client.responses.connect() as conn:
        prev: Any = None
        for k in range(turns):
            frame: dict[str, Any] = {
                "type": "response.create",
                "model": "default",
                "instructions": "You are a coding agent. Read the files you need.",
                "tools": [TOOL],
                "tool_choice": "required",
                "parallel_tool_calls": False,
                "temperature": 0,
                "max_output_tokens": 60,
                "store": False,
            }
            if prev is None:
                frame["input"] = "Find where the config file is parsed."
            else:
                frame["previous_response_id"] = prev.id
                frame["input"] = [
                    {
                        "type": "function_call_output",
                        "call_id": o.call_id,
                        "output": f"file {k}: def parse(path):\n    return load(path)  # line {k}",
                    }
                    for o in prev.output
                    if o.type == "function_call"
                ]
            await conn.send(frame)
            async for event in conn:
                if event.type in DONE:
                    prev = event.response
                    break
            usage = prev.usage
            rows.append(
                {
                    "turn": k + 1,
                    "input": usage.input_tokens,
                    "cached": usage.input_tokens_details.cached_tokens,
                    "output": usage.output_tokens,
                    "delta_only": prev.model_extra["warmloop"]["delta_only"],
                }
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, default=GEMMA)
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--ctx", type=int, default=8192)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "tool_session.json")
    args = p.parse_args()
    with LocalServer(["--model", str(args.model), "--ctx", str(args.ctx), "--slots", "1"]) as s:
        rows = asyncio.run(session(s, args.turns))
    for r in rows:
        print(
            f"turn {r['turn']:>2}: {r['cached']:>5} of {r['input']:>5} prompt tokens reused "
            f"(delta only: {r['delta_only']})"
        )
    total_in = sum(r["input"] for r in rows)
    total_cached = sum(r["cached"] for r in rows)
    print(f"{args.model.name}: {total_cached} of {total_in} prompt tokens reused = "
          f"{total_cached / total_in:.3f} over {len(rows)} turns")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"model": args.model.name, "reused": total_cached / total_in, "rows": rows}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
