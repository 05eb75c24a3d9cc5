"""Prefill that does not stall decoders: what each `--prefill-stall-factor` does to the
streams that are decoding when a long prompt arrives, and to that prompt's first token.

While 4 sequences decode (sampled), a 4,096-token prompt is admitted. For each factor,
interleaved round by round (each round builds a fresh engine per factor, so the machine's
drift hits every factor alike), it prints the worst gap between two tokens of the
decoding streams during that prefill, in normal decode steps (the median gap before the
prompt came), and the long prompt's time to first token against factor 0 (the whole
prompt in one step: fastest for the prompt, a multi-second freeze for the streams).
Goal (issue 24): worst gap <= 3 normal steps with TTFT at most 1.2x.

    .venv/bin/python benchmarks/prefill_stall.py
    .venv/bin/python benchmarks/prefill_stall.py --factors 0,2,3,4 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
from pathlib import Path
from typing import Any

from engine import stall  # type: ignore[import-not-found]

from warmloop.app import build_engine
from warmloop.config import Config

ROOT = Path(__file__).resolve().parent


async def one(factor: float, args: argparse.Namespace, seed: int) -> dict[str, float]:
    cfg = Config(
        ctx=args.ctx,
        slots=8,
        threads=args.threads,
        kv_reuse=False,
        prefill_stall_factor=factor,
    )
    engine = build_engine(cfg)
    engine.start()
    try:
        return await stall(engine, args, random.Random(seed))
    finally:
        engine.stop()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--factors", default="0,2,3")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx", type=int, default=8192)
    p.add_argument("--stall-prompt", type=int, default=4096)
    p.add_argument("--stall-gen", type=int, default=400)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "prefill_stall.json")
    args = p.parse_args()
    factors = [float(f) for f in args.factors.split(",")]
    runs: dict[float, list[dict[str, float]]] = {f: [] for f in factors}
    for r in range(args.rounds):
        for f in factors:
            res = asyncio.run(one(f, args, 1000 + r))
            runs[f].append(res)
            print(
                f"round {r} factor {f:g}: worst gap {res['stall_ratio']:.1f} steps "
                f"({res['worst_stall_ms']:.0f} ms / {res['normal_step_ms']:.0f} ms), "
                f"long prompt TTFT {res['long_prompt_ttft_s']:.2f} s",
                flush=True,
            )
    base = statistics.median(x["long_prompt_ttft_s"] for x in runs[factors[0]])
    summary: dict[str, Any] = {}
    print(f"\nmedians over {args.rounds} interleaved rounds (TTFT against factor {factors[0]:g}):")
    for f in factors:
        ratio = statistics.median(x["stall_ratio"] for x in runs[f])
        ttft = statistics.median(x["long_prompt_ttft_s"] for x in runs[f])
        summary[f"{f:g}"] = {
            "worst_gap_steps": round(ratio, 2),
            "long_prompt_ttft_s": round(ttft, 3),
            "ttft_vs_first": round(ttft / base, 3),
        }
        print(
            f"  factor {f:g}: worst gap {ratio:5.1f} normal steps, long prompt TTFT "
            f"{ttft:.2f} s = {ttft / base:.2f}x"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": platform.processor() or platform.machine(), "threads": args.threads}
    args.out.write_text(
        json.dumps({"machine": machine, "runs": {str(k): v for k, v in runs.items()},
                    "summary": summary}, indent=2) + "\n"
    )  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
