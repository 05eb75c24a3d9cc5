"""An engine change against its baseline, interleaved: aggregate sampled decode of N
concurrent sequences (benchmarks/engine.py's `concurrent`), this tree against another
revision, alternating run by run so that the machine's drift hits both alike.

The baseline revision is checked out into a temporary git worktree and imported first
on PYTHONPATH; each run is a fresh process (a fresh engine) that measures every count
in `--seqs` in order.

    .venv/bin/python benchmarks/engine_ab.py --baseline HEAD~1
    .venv/bin/python benchmarks/engine_ab.py --baseline main --seqs 2,4,8 --runs 4
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
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent


def measure(seqs: list[int], gen: int, threads: int) -> dict[int, float]:
    """One run in this process: tok/s for each count in `seqs` (the child's side)."""
    from engine import concurrent  # type: ignore[import-not-found]

    from warmloop.app import build_engine
    from warmloop.config import Config

    async def run() -> dict[int, float]:
        engine = build_engine(Config(ctx=8192, slots=8, threads=threads, kv_reuse=False))
        engine.start()
        try:
            rng = random.Random(0)
            return {n: await concurrent(engine, n, gen, rng) for n in seqs}
        finally:
            engine.stop()

    return asyncio.run(run())


def child(src: Path, args: argparse.Namespace) -> dict[int, float]:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    cmd = [sys.executable, __file__, "--child", "--seqs", args.seqs, "--gen", str(args.gen)]
    cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return {int(k): v for k, v in json.loads(line[7:]).items()}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--baseline", default="HEAD~1", help="git revision to compare against")
    p.add_argument("--seqs", default="4,8")
    p.add_argument("--gen", type=int, default=96)
    p.add_argument("--runs", type=int, default=3, help="runs of each side, alternating")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "engine_ab.json")
    args = p.parse_args()
    seqs = [int(n) for n in args.seqs.split(",")]
    if args.child:
        print("RESULT " + json.dumps(measure(seqs, args.gen, args.threads)), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(base), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            runs: dict[str, list[dict[int, float]]] = {"baseline": [], "this tree": []}
            for r in range(args.runs):
                for side, src in (("baseline", base / "src"), ("this tree", REPO / "src")):
                    res = child(src, args)
                    runs[side].append(res)
                    shown = "  ".join(f"{n} seqs {v:6.1f}" for n, v in res.items())
                    print(f"run {r} {side:>9}: {shown} tok/s", flush=True)
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False
            )
    summary = {}
    print(f"\nmedians over {args.runs} interleaved runs (baseline {args.baseline}):")
    for n in seqs:
        b = statistics.median(x[n] for x in runs["baseline"])
        t = statistics.median(x[n] for x in runs["this tree"])
        summary[str(n)] = {
            "baseline": round(b, 1),
            "this_tree": round(t, 1),
            "ratio": round(t / b, 3),
        }
        print(f"  {n} sequences: {b:6.1f} -> {t:6.1f} tok/s = {t / b:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"baseline": args.baseline, "runs": runs, "summary": summary}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
