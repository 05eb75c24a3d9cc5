"""Engine benchmark: prefill and decode tokens/s, batching, and decode stalls, against
llama.cpp's own tools built two ways, measured alternately in one run.

1. Single sequence: prefill tokens/s (a P-token prompt, nothing cached) and decode
   tokens/s (G tokens after a D-token prompt: `--depth`), through warmloop's engine
   (thread, scheduler, samplers, async streams), next to `llama-bench -p P -n G -d 0,D`
   (its prefill at depth 0, its decode at depth D).
2. Batching: aggregate decode tokens/s with 1, 2, 4, 8 concurrent sampled sequences,
   next to `llama-batched-bench` (same threads, one KV stream per sequence, as warmloop
   runs), which decodes without sampling.
3. Stall: while 4 sequences decode, a 4k-token prompt is admitted; the worst gap between
   their tokens is compared with a normal decode step.

llama.cpp's tools come from benchmarks/build_llama_bench.sh: `--native-llama-bench` the
way users build them (default cmake: -march=native), `--llama-bench` with the engine's
AVX2 baseline flags. Each of `--rounds` rounds measures warmloop, then each build, so the
machine's drift hits all alike; the report has medians and ratios.

    .venv/bin/python benchmarks/engine.py
    make bench   # builds both and passes them
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
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
        depth = getattr(args, "depth", 16)
        res = await run_job(engine, random_prompt(engine, depth, rng), args.gen_tokens, 100 + r)
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


def llama_bench(
    path: str, model: Path, threads: int, p: int, g: int, depth: int = 0
) -> dict[str, float] | None:
    """llama-bench's prefill of `p` tokens at depth 0 and decode of `g` at `depth`."""
    cmd = [path, "-m", str(model), "-t", str(threads), "-p", str(p), "-n", str(g), "-o", "json"]
    cmd += ["-d", f"0,{depth}" if depth else "0"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"llama-bench failed: {exc}")
        return None
    rows = json.loads(out)
    res: dict[str, float] = {}
    for row in rows:
        at = int(row.get("n_depth", 0))
        if row.get("n_prompt", 0) > 0 and row.get("n_gen", 0) == 0 and at == 0:
            res["prefill_tps"] = float(row["avg_ts"])
        elif row.get("n_gen", 0) > 0 and at == depth:
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


async def ours(engine: Engine, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    """One round of warmloop's side: single-sequence rates and aggregate decode."""
    res: dict[str, Any] = dict(await single(engine, args, rng))
    for n in (1, 2, 4, 8):
        res[f"batched_{n}"] = await concurrent(engine, n, args.gen_tokens, rng)
    return res


def theirs(build: Path, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One round of one llama.cpp build's side."""
    bench = llama_bench(
        str(build), model, args.threads, args.prompt_tokens, args.gen_tokens, args.depth
    )
    res: dict[str, Any] = dict(bench or {})
    batched = build.with_name("llama-batched-bench")
    if batched.exists():
        for n, v in llama_batched_bench(batched, model, args.threads, args.gen_tokens).items():
            res[f"batched_{n}"] = v
    return res


KEYS = ("prefill_tps", "decode_tps", "batched_1", "batched_2", "batched_4", "batched_8")


async def main_async(args: argparse.Namespace, builds: dict[str, Path]) -> dict[str, Any]:
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
    model = cfg.model_path()
    engine = build_engine(cfg)
    engine.start()
    runs: dict[str, list[dict[str, Any]]] = {"warmloop": [], **{name: [] for name in builds}}
    try:
        print(f"warmloop runs the {engine.backend.cpu.name} CPU variant")
        for r in range(args.rounds):
            runs["warmloop"].append(await ours(engine, args, rng))
            for name, build in builds.items():
                runs[name].append(await asyncio.to_thread(theirs, build, model, args))
            for name, rows in runs.items():
                shown = "  ".join(f"{k} {rows[-1][k]:6.1f}" for k in KEYS if k in rows[-1])
                print(f"round {r} {name:>18}: {shown}", flush=True)
        stall_report = await stall(engine, args, rng)
        variant = engine.backend.cpu.name
    finally:
        engine.stop()
    medians = {
        name: {k: round(statistics.median(x[k] for x in rows), 1) for k in KEYS if k in rows[0]}
        for name, rows in runs.items()
        if rows
    }
    ratios = {
        name: {k: round(medians["warmloop"][k] / v, 3) for k, v in m.items() if v}
        for name, m in medians.items()
        if name != "warmloop"
    }
    print(f"\nmedians over {args.rounds} interleaved rounds (decode at depth {args.depth}):")
    for name, m in medians.items():
        print(f"  {name:>18}: " + "  ".join(f"{k} {v:6.1f}" for k, v in m.items()))
    for name, q in ratios.items():
        print(f"  warmloop / {name}: " + "  ".join(f"{k} {v:.2f}" for k, v in q.items()))
    s = stall_report
    print(
        f"stall while a {args.stall_prompt}-token prompt is admitted: worst gap "
        f"{s['worst_stall_ms']:.0f} ms vs normal step {s['normal_step_ms']:.0f} ms "
        f"({s['stall_ratio']:.2f}x); the long prompt's first token after "
        f"{s['long_prompt_ttft_s']:.1f} s"
    )
    return {
        "cpu_variant": variant,
        "runs": runs,
        "medians": medians,
        "ratios": ratios,
        "stall": stall_report,
    }


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
    p.add_argument("--depth", type=int, default=512, help="context depth of the decode test")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--stall-prompt", type=int, default=4096)
    p.add_argument("--stall-gen", type=int, default=400)
    p.add_argument("--llama-bench", type=Path, default=None, help="the AVX2-baseline build")
    p.add_argument("--native-llama-bench", type=Path, default=None, help="the native build")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "engine.json")
    args = p.parse_args()
    builds = {
        name: path
        for name, path in (
            ("llama.cpp native", args.native_llama_bench),
            ("llama.cpp avx2", args.llama_bench),
        )
        if path is not None
    }
    if not builds:
        print("no llama-bench given: only warmloop is measured (benchmarks/build_llama_bench.sh)")
    report = asyncio.run(main_async(args, builds))
    report["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
