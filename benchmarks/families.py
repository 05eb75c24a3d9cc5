"""Tool loops per model family: how much of a turn that sends tool outputs back is reused.

For each family's template (llama.cpp's corpus in tests/data/templates, served over the
embedded SmolLM2 weights with `--chat-template-file`; "generic" is SmolLM2's own
template), a two-turn loop: turn 1 asks for `--calls` parallel calls
(`tool_choice: "required"`), turn 2 sends every `function_call_output` back with
`previous_response_id`, over HTTP and over WebSocket. It prints, per family and
transport, turn 2's `cached_tokens` against turn 1's prompt + output (goal: >= 0.95;
1.00 means only the new items were computed), and writes JSON.

    .venv/bin/python benchmarks/families.py                 # 1 call, then 8 parallel calls
    .venv/bin/python benchmarks/families.py --calls 1 --families hermes,generic
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
from pathlib import Path
from typing import Any

import openai

from warmloop.bench.server import LocalServer

ROOT = Path(__file__).resolve().parent
TEMPLATES = ROOT.parent / "tests" / "data" / "templates"
FAMILIES = {
    "generic": "",
    "hermes": "Qwen-Qwen2.5-7B-Instruct",
    "qwen3": "Qwen-Qwen3-0.6B",
    "qwen3-coder": "Qwen3-Coder",
    "llama3": "meta-llama-Llama-3.1-8B-Instruct",
    "mistral-ids": "Mistral-Small-3.2-24B-Instruct-2506",
    "devstral": "unsloth-mistral-Devstral-Small-2507",
    "mistral-nemo": "mistralai-Mistral-Nemo-Instruct-2407",
    "gpt-oss": "openai-gpt-oss-120b",
    "deepseek-v3.1": "deepseek-ai-DeepSeek-V3.1",
    "granite-3.3": "ibm-granite-granite-3.3-2B-Instruct",
    "glm-4.6": "GLM-4.6",
    "gemma-4": "google-gemma-4-31B-it",
    "gemma-4-keep": "google-gemma-4-31B-it",
}
# Gemma 4's template drops the empty thought channel of its generation prompt from the
# call turn: measured as the template has it, and with the chain kept as generated.
FLAGS = {"gemma-4-keep": ["--reasoning-history", "keep"]}
TURN2_TOKENS = 8  # turn 2 is measured by its prompt: what it writes does not matter
SINGLE_CALL = {"llama3", "gpt-oss"}  # the template renders one call per turn
TOOL = {
    "type": "function",
    "name": "read_file",
    "description": "Read a file.",
    "parameters": {
        "type": "object",
        "properties": {"path": {"type": "string", "maxLength": 24}},
        "required": ["path"],
    },
}


def body(family: str, calls: int, **kw: Any) -> dict[str, Any]:
    files = ", ".join(f"part{k}.txt" for k in range(calls))
    instructions = None if family == "mistral-nemo" else "You are a careful agent."
    return {
        "model": "default",
        "tools": [TOOL],
        "temperature": 0,
        "max_output_tokens": 120 * calls + 40,  # DeepSeek's markers take ~40 tokens
        "instructions": instructions,
        "parallel_tool_calls": calls > 1,
        "input": f"Read each of these files: {files}.",
        **kw,
    }


def outputs(first: Any, text: str) -> list[dict[str, Any]]:
    return [
        {"type": "function_call_output", "call_id": o.call_id, "output": text}
        for o in first.output
        if o.type == "function_call"
    ]


def row(family: str, transport: str, calls: int, first: Any, second: Any) -> dict[str, Any]:
    base = first.usage.input_tokens + first.usage.output_tokens
    reused = second.usage.input_tokens_details.cached_tokens
    return {
        "family": family,
        "transport": transport,
        "calls_asked": calls,
        "calls_made": sum(o.type == "function_call" for o in first.output),
        "turn1_prompt_plus_output": base,
        "turn2_cached": reused,
        "turn2_input": second.usage.input_tokens,
        "reuse": round(reused / base, 4),
    }


def http_loop(server: LocalServer, family: str, calls: int) -> dict[str, Any]:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    first = client.responses.create(**body(family, calls, tool_choice="required"))
    second = client.responses.create(
        **body(
            family,
            calls,
            previous_response_id=first.id,
            input=outputs(first, "done"),
            max_output_tokens=TURN2_TOKENS,
        )
    )
    return row(family, "http", calls, first, second)


async def ws_loop(server: LocalServer, family: str, calls: int) -> dict[str, Any]:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused")
    async with client.responses.connect() as conn:
        done = ("response.completed", "response.incomplete", "response.failed")
        await conn.send(
            {"type": "response.create", **body(family, calls, tool_choice="required", store=False)}
        )
        async for event in conn:
            if event.type in done:
                first = event.response
                break
        await conn.send(
            {
                "type": "response.create",
                **body(
                    family,
                    calls,
                    store=False,
                    previous_response_id=first.id,
                    max_output_tokens=TURN2_TOKENS,
                    # not the HTTP loop's text: its chain would be found too
                    input=outputs(first, "finished"),
                ),
            }
        )
        async for event in conn:
            if event.type in done:
                second = event.response
                break
    return row(family, "websocket", calls, first, second)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--calls", default="1,8", help="parallel calls asked for in turn 1")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "families.json")
    args = p.parse_args()
    rows: list[dict[str, Any]] = []
    for family in args.families.split(","):
        template = FAMILIES[family]
        flags = ["--ctx", "4096", "--slots", "2"]
        if template:
            flags += ["--chat-template-file", str(TEMPLATES / f"{template}.jinja")]
        flags += FLAGS.get(family, [])
        with LocalServer(flags) as server:
            for calls in (int(c) for c in args.calls.split(",")):
                if calls > 1 and family in SINGLE_CALL:
                    continue
                for r in (
                    http_loop(server, family, calls),
                    asyncio.run(ws_loop(server, family, calls)),
                ):
                    rows.append(r)
                    print(
                        f"{r['family']:>13} {r['transport']:>9} calls {r['calls_made']}/"
                        f"{r['calls_asked']}: turn 2 reused {r['turn2_cached']:>4} of "
                        f"{r['turn1_prompt_plus_output']:>4} = {r['reuse']:.2f}",
                        flush=True,
                    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "cpus": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
