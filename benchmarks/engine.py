"""Engine benchmark: prefill and decode tokens/s, batching, and decode stalls.

1. Single sequence: prefill tokens/s (a P-token prompt, nothing cached) and decode
   tokens/s (G tokens), through warmloop's engine (thread, scheduler, samplers, async
   streams), next to llama.cpp's own `llama-bench` for the same model and threads when it
   is available (`--llama-bench PATH`; build it with benchmarks/build_llama_bench.sh).
2. Batching: aggregate decode tokens/s with 1, 2, 4, 8 concurrent sequences, next to
   `llama-batched-bench` (same build, threads, per-sequence KV) when it sits beside
   llama-bench.
3. Stall: while 4 sequences decode, a 4k-token prompt is admitted; the worst gap between
   their tokens is compared with a normal decode step.

    .venv/bin/python benchmarks/engine.py
    .venv/bin/python benchmarks/engine.py --llama-bench ~/.cache/warmloop/llama-bench/llama-bench
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from warmloop.app import build_engine
from warmloop.config import Config
from warmloop.engine.engine import Engine
from warmloop.engine.request import Finished, Job, Placed, SamplingParams, TokenOut

ROOT = Path(__file__).resolve().parent


def random_prompt(engine: Engine, n: int, rng: random.Random) -> list[int]:
    vocab = engine.backend.n_vocab()
    return [rng.randrange(100, vocab) for _ in range(n)]


async def run_job(engine: Engine, tokens: list[int], max_tokens: int, seed: int) -> dict[str, Any]:
    """Run one job; returns its timings and the wall-clock time of every token."""
    # temperature > 0 with a fixed seed: no early end-of-generation, reproducible
    job = Job(
        id=f"bench-{seed}",
        tokens=tokens,
        params=SamplingParams(max_tokens=max_tokens, temperature=0.8, seed=seed),
    )
    t0 = time.perf_counter()
    stamps: list[float] = []
    cached = 0
    fin: Finished | None = None
    async for ev in engine.run(job):
        if isinstance(ev, Placed):
            cached = ev.cached_tokens
        elif isinstance(ev, TokenOut) and ev.token >= 0:
            stamps.append(time.perf_counter())
        elif isinstance(ev, Finished):
            fin = ev
    assert fin is not None
    return {"t0": t0, "stamps": stamps, "cached": cached, "fin": fin}


async def single(engine: Engine, args: argparse.Namespace, rng: random.Random) -> dict[str, float]:
    prefill, decode = [], []
    for r in range(args.repeats):
        res = await run_job(engine, random_prompt(engine, args.prompt_tokens, rng), 1, r)
        assert res["cached"] == 0
        prefill.append(args.prompt_tokens / (res["stamps"][0] - res["t0"]))
        res = await run_job(engine, random_prompt(engine, 16, rng), args.gen_tokens, 100 + r)
        gaps = len(res["stamps"]) - 1
        decode.append(gaps / (res["stamps"][-1] - res["stamps"][0]))
    return {"prefill_tps": statistics.median(prefill), "decode_tps": statistics.median(decode)}


async def concurrent(engine: Engine, n: int, gen: int, rng: random.Random) -> float:
    """Aggregate decode tokens/s while all `n` sequences decode. A sampled end of text
    would shrink that window to a few steps: such a run is repeated with other seeds."""
    for attempt in range(5):
        prompts = [random_prompt(engine, 16, rng) for _ in range(n)]
        results = await asyncio.gather(
            *(run_job(engine, p, gen, 200 + 10 * attempt + i) for i, p in enumerate(prompts))
        )
        if all(len(r["stamps"]) == gen for r in results):
            break
    # From the first sequence's first token to the last one's last (all `n` run the whole
    # way: same length, admitted in one step); a job's first token ends its prefill.
    start = min(r["stamps"][0] for r in results)
    end = max(r["stamps"][-1] for r in results)
    return sum(len(r["stamps"]) - 1 for r in results) / (end - start)


async def stall(engine: Engine, args: argparse.Namespace, rng: random.Random) -> dict[str, float]:
    decoders = [
        asyncio.create_task(
            run_job(engine, random_prompt(engine, 16, rng), args.stall_gen, 300 + i)
        )
        for i in range(4)
    ]
    await asyncio.sleep(1.0)  # let them reach steady decoding
    t_long = time.perf_counter()
    long = asyncio.create_task(
        run_job(engine, random_prompt(engine, args.stall_prompt, rng), 1, 399)
    )
    results = await asyncio.gather(*decoders)
    long_res = await long
    t_long_done = long_res["stamps"][0]
    gaps_before, gaps_during = [], []
    for r in results:
        for a, b in zip(r["stamps"], r["stamps"][1:], strict=False):
            (gaps_during if t_long <= a <= t_long_done else gaps_before).append(b - a)
    normal = statistics.median(gaps_before) if gaps_before else float("nan")
    worst = max(gaps_during) if gaps_during else float("nan")
    return {
        "normal_step_ms": normal * 1000,
        "worst_stall_ms": worst * 1000,
        "stall_ratio": worst / normal,
        "long_prompt_ttft_s": t_long_done - t_long,
    }


def llama_bench(path: str, model: Path, threads: int, p: int, g: int) -> dict[str, float] | None:
    cmd = [path, "-m", str(model), "-t", str(threads), "-p", str(p), "-n", str(g), "-o", "json"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"llama-bench failed: {exc}")
        return None
    rows = json.loads(out)
    res: dict[str, float] = {}
    for row in rows:
        if row.get("n_prompt", 0) > 0 and row.get("n_gen", 0) == 0:
            res["prefill_tps"] = float(row["avg_ts"])
        elif row.get("n_gen", 0) > 0:
            res["decode_tps"] = float(row["avg_ts"])
    return res


def llama_batched_bench(path: Path, model: Path, threads: int, g: int) -> dict[str, float]:
    """Aggregate decode tokens/s of llama.cpp's own batched loop at 1, 2, 4, 8 sequences
    (16-token prompts, `g` generated each, one KV stream per sequence as warmloop uses)."""
    cmd = [
        str(path), "-m", str(model), "-t", str(threads), "-tb", str(threads), "-c", "8192",
        "-b", "512", "-ub", "512", "-npp", "16", "-ntg", str(g), "-npl", "1,2,4,8",
        "-no-kvu", "--output-format", "jsonl",
    ]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"llama-batched-bench failed: {exc}")
        return {}
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {str(r["pl"]): round(float(r["speed_tg"]), 1) for r in rows}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(0)
    cfg = Config(
        model=args.model,
        ctx=args.ctx,
        slots=8,
        threads=args.threads,
        batch_tokens=args.batch_tokens,
        prefill_chunk=args.prefill_chunk,
        prefill_stall_factor=args.prefill_stall_factor,
        kv_reuse=False,
    )
    engine = build_engine(cfg)
    engine.start()
    try:
        report: dict[str, Any] = {"single": await single(engine, args, rng)}
        print(
            f"warmloop  prefill {report['single']['prefill_tps']:8.1f} tok/s   "
            f"decode {report['single']['decode_tps']:7.1f} tok/s"
        )
        rates = {}
        for n in (1, 2, 4, 8):
            rates[n] = await concurrent(engine, n, args.gen_tokens, rng)
            print(f"  {n} concurrent sequences: {rates[n]:7.1f} decode tok/s aggregate")
        report["concurrency"] = {str(k): round(v, 1) for k, v in rates.items()}
        report["batching_speedup_at_8"] = round(rates[8] / rates[1], 2)
        report["stall"] = await stall(engine, args, rng)
        s = report["stall"]
        print(
            f"  stall while a {args.stall_prompt}-token prompt is admitted: worst gap "
            f"{s['worst_stall_ms']:.0f} ms vs normal step {s['normal_step_ms']:.0f} ms "
            f"({s['stall_ratio']:.2f}x); the long prompt's first token after "
            f"{s['long_prompt_ttft_s']:.1f} s"
        )
    finally:
        engine.stop()
    return report


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--ctx", type=int, default=8192)
    p.add_argument("--batch-tokens", type=int, default=512)
    defaults = Config.model_fields
    p.add_argument("--prefill-chunk", type=int, default=defaults["prefill_chunk"].default)
    p.add_argument(
        "--prefill-stall-factor", type=float, default=defaults["prefill_stall_factor"].default
    )
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stall-prompt", type=int, default=4096)
    p.add_argument("--stall-gen", type=int, default=400)
    p.add_argument(
        "--llama-bench",
        default=os.environ.get("WARMLOOP_LLAMA_BENCH") or shutil.which("llama-bench"),
    )
    p.add_argument("--out", type=Path, default=ROOT / "results" / "engine.json")
    args = p.parse_args()
    report = asyncio.run(main_async(args))
    model = args.model or Config().model_path()
    report["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if args.llama_bench:
        ref = llama_bench(
            args.llama_bench, model, args.threads, args.prompt_tokens, args.gen_tokens
        )
        if ref:
            report["llama_bench"] = ref
            ours = report["single"]
            report["ratio_vs_llama_cpp"] = {
                k: round(ours[k] / ref[k], 3) for k in ("prefill_tps", "decode_tps") if k in ref
            }
            print(
                f"llama.cpp prefill {ref.get('prefill_tps', 0):8.1f} tok/s   "
                f"decode {ref.get('decode_tps', 0):7.1f} tok/s   (llama-bench)"
            )
            print(f"warmloop / llama.cpp: {report['ratio_vs_llama_cpp']}")
        batched = Path(args.llama_bench).with_name("llama-batched-bench")
        if batched.exists():
            theirs = llama_batched_bench(batched, model, args.threads, args.gen_tokens)
            report["llama_batched_bench"] = theirs
            report["batched_ratio_vs_llama_cpp"] = {
                n: round(report["concurrency"][n] / v, 3) for n, v in theirs.items() if v
            }
            print(f"llama-batched-bench aggregate decode tok/s: {theirs}")
            print(f"warmloop / llama.cpp, batched: {report['batched_ratio_vs_llama_cpp']}")
    else:
        print(
            "llama-bench not found: llama.cpp's own numbers were not measured "
            "(build it with benchmarks/build_llama_bench.sh)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
