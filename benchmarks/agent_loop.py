"""Agent-loop benchmark: `warmloop bench` with this repo's preset workload.

20 turns per session of ~500-word instructions and ~80-word tool outputs, 16 output
tokens per turn (greedy), in three modes by default:

  ws         WebSocket mode: previous_response_id + only the new item each turn
  http-full  HTTP, the whole history each turn (the server still reuses what it holds)
  cold       HTTP, the whole history, on a --no-kv-reuse server (every prompt computed)

Every `warmloop bench` flag works here, e.g.:

    .venv/bin/python benchmarks/agent_loop.py                                  # 1 session
    .venv/bin/python benchmarks/agent_loop.py --sessions 8 --slots 4           # KV manager
    .venv/bin/python benchmarks/agent_loop.py --sessions 8 --modes ws,ws@no-batching

Writes benchmarks/results/agent_loop/results.json and PNGs (see `warmloop bench -h`).
"""

from pathlib import Path

from warmloop.bench.cli import main

if __name__ == "__main__":
    main(
        modes="ws,http-full,cold",
        turns=20,
        instruction_words=500,
        tool_words=80,
        output_tokens=16,
        out=Path(__file__).resolve().parent / "results" / "agent_loop",
    )
