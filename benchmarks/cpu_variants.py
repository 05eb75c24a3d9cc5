"""llama.cpp's CPU backend variants against each other on this machine, interleaved:
single-sequence prefill and decode and 4-sequence aggregate decode through warmloop's
engine, each run a fresh process forced onto one variant (`--cpu-variant`), the
variants alternating run by run so the machine's drift hits all alike.

Every variant this CPU and OS can run is measured; the ratio is against the AVX2
baseline measured in the same rounds.

    .venv/bin/python benchmarks/cpu_variants.py
    .venv/bin/python benchmarks/cpu_variants.py --runs 4 --variants avx2,avx512
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
METRICS = ("prefill_tps", "decode_tps", "decode_4_tps")


def measure(variant: str, args: argparse.Namespace) -> dict[str, float]:
    """One run in this process on `variant` (the child's side)."""
    from engine import concurrent, single  # type: ignore[import-not-found]

    from warmloop.app import build_engine
    from warmloop.config import Config

    async def run() -> dict[str, float]:
        config = Config(ctx=4096, slots=4, threads=args.threads, kv_reuse=False)
        engine = build_engine(config.with_(cpu_variant=variant))
        engine.start()
        try:
            rng = random.Random(0)
            result = await single(engine, args, rng)
            result["decode_4_tps"] = await concurrent(engine, 4, args.gen_tokens, rng)
            return result
        finally:
            engine.stop()

    return asyncio.run(run())


def child(variant: str, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, __file__, "--child", variant, "--threads", str(args.threads)]
    cmd += ["--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens)]
    cmd += ["--repeats", str(args.repeats)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    result: dict[str, float] = json.loads(line[7:])
    return result


def plot(summary: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(METRICS)
    for i, metric in enumerate(METRICS):
        xs = [j + i * width for j in range(len(names))]
        ax.bar(xs, [summary[n][metric]["ratio"] for n in names], width, label=metric)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + width for j in range(len(names))], names)
    ax.set_ylabel("x the AVX2 baseline (same rounds)")
    ax.set_title("llama.cpp CPU variants, SmolLM2-135M Q4_1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--variants", default="", help="comma-separated (default: every runnable)")
    p.add_argument("--runs", type=int, default=3, help="rounds; each measures every variant")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--gen-tokens", type=int, default=96)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "cpu_variants.json")
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args)), flush=True)
        return

    from warmloop.engine import cpu

    here = cpu.probe()
    built = cpu.read_manifest(cpu.library_dir()) or []
    runnable = [v.name for v in built if not here.lacks(v.features)]
    names = args.variants.split(",") if args.variants else runnable
    if "avx2" not in names:
        names.insert(0, "avx2")
    print(
        f"variants: {', '.join(names)} (not runnable here: "
        f"{', '.join(v.name for v in built if v.name not in runnable) or 'none'})"
    )
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(args.runs):
        for name in names:
            res = child(name, args)
            runs[name].append(res)
            shown = "  ".join(f"{m} {res[m]:7.1f}" for m in METRICS)
            print(f"run {r} {name:>12}: {shown}", flush=True)
    summary: dict[str, dict[str, Any]] = {}
    print(f"\nmedians over {args.runs} interleaved rounds, ratio to avx2:")
    for name in names:
        summary[name] = {}
        for metric in METRICS:
            value = statistics.median(x[metric] for x in runs[name])
            base = statistics.median(x[metric] for x in runs["avx2"])
            summary[name][metric] = {"tps": round(value, 1), "ratio": round(value / base, 3)}
        print(
            f"  {name:>12}: "
            + "  ".join(
                f"{m} {summary[name][m]['tps']:7.1f} ({summary[name][m]['ratio']:.2f}x)"
                for m in METRICS
            )
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {"cpu_flags": sorted(here.flags), "xcr0": hex(here.xcr0)},
                "chosen_by_auto": cpu.choose(here, built or None).name,
                "runs": runs,
                "summary": summary,
            },
            indent=2,
        )
        + "\n"
    )
    plot(summary, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
