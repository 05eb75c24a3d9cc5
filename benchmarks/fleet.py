"""A fleet behind HAProxy: does every turn land where its KV is warm?

Part one, `simulate` (no model, a minute or two): HAProxy's routing over 1,000 workers and
100,000 agent sessions, with fleet/ring.py (a model of HAProxy 2.6's consistent hashing
that picks what HAProxy picks, see tests/unit/test_fleet_haproxy.py) and the rules of the
generated configuration. Every session sends a session header (AgentSession does).

- remap: the share of sessions whose worker changes when one worker joins, or one dies
  (consistent hashing promises about 1/N); averaged over several joins and deaths.
- load: sessions per worker, max / mean, with the configuration's weight (16 x 64 ring
  points a worker) and with HAProxy's default weight 1 (16 points).
- cached-token ratio under churn. The model: session i starts at a uniformly random step
  of the first `--horizon` steps and runs `--turns` turns, one per step (a step is 30 s:
  a model turn plus a tool call). Turn t's prompt is the instructions (`--instructions`
  tokens) plus t earlier (tool output + answer) pairs plus its own tool output:
  I + t (d + o) + d tokens. It is cached, all but its new d tokens, when the worker that
  served turn t-1 serves it and has not restarted since; otherwise it is computed in
  full (a store:true chain recomputed from PostgreSQL elsewhere). A worker's KV is
  assumed big enough for its sessions (no eviction). Churn: each worker restarts at a
  rate of `c` per hour (a crash, a deploy), is down for `--down-steps` steps (its health
  checks fail, HAProxy routes around it), and comes back with an empty KV. Policies:
    affinity     the generated configuration: the chain's own worker while it is up
                 (previous_response_id / x-warmloop-worker), else the session's hash
    hash-only    the session's hash every turn, no worker rule (a plain header hash, as
                 in Envoy's ring hash): when a worker returns, its sessions move back
    round-robin  a turn goes to the next worker (HTTP turns without affinity)
  Reported: `cached_ratio` = cached / input tokens; its `ceiling`, what one server that
  never fails would reach (every first turn and every turn's new d tokens are computed
  whatever the routing: 0.934 with the defaults); and `reused_share` = cached / what
  that server would have reused. The goal: affinity keeps cached_ratio >= 0.95 of its
  ceiling (reused_share >= 0.95) at realistic churn.

Part two, `live` (the embedded model; minutes): the agent-loop workload of `warmloop
bench` through HAProxy over 3 local workers (`warmloop fleet up`'s Fleet: PostgreSQL, 1
thread each), with the generated configuration and with `--roundrobin` (plain round
robin, no affinity rule); per protocol (http-prev: HTTP + previous_response_id, store
true; ws: one socket per session): cached-token ratio, recomputed tokens, turn latency
p50/p95.

    .venv/bin/python benchmarks/fleet.py simulate [--workers 1000 --sessions 100000]
    .venv/bin/python benchmarks/fleet.py live [--sessions 6 --turns 8]

Writes benchmarks/results/fleet/{simulation,live}.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from warmloop.fleet.ring import Ring, key_hash

OUT = Path(__file__).resolve().parent / "results" / "fleet"
STEP_S = 30.0
POLICIES = ("affinity", "hash-only", "round-robin")
Ints = npt.NDArray[np.int64]


# --- part one: the simulation -------------------------------------------------------


def make_ring(names: list[str], weight: int) -> Ring:
    ring = Ring(weight)
    for name in names:
        ring.add(name)
    return ring


def place(ring: Ring, hashes: npt.NDArray[np.uint32], index: dict[str, int]) -> Ints:
    return np.array([index[n] if n else -1 for n in ring.lookup_many(hashes)], dtype=np.int64)


def remap_and_load(args: argparse.Namespace, hashes: npt.NDArray[np.uint32]) -> dict[str, Any]:
    names = [f"w{k}" for k in range(args.workers)]
    index = {n: k for k, n in enumerate(names)} | {f"new{k}": args.workers + k for k in range(9)}
    ring = make_ring(names, args.weight)
    base = place(ring, hashes, index)
    rng = random.Random(args.seed)
    joins, deaths = [], []
    for k in range(args.trials):
        ring.add(f"new{k}")
        joins.append(float(np.mean(place(ring, hashes, index) != base)))
        ring.remove(f"new{k}")
        victim = rng.choice(names)
        ring.set_down(victim)
        after = place(ring, hashes, index)
        moved = after != base
        assert set(base[moved]) <= {index[victim]}  # only the dead worker's sessions move
        deaths.append(float(np.mean(moved)))
        ring.set_up(victim)
    counts = np.bincount(base, minlength=args.workers)
    coarse = np.bincount(place(make_ring(names, 1), hashes, index), minlength=args.workers)
    return {
        "ideal": 1 / args.workers,
        "join": {"mean": statistics.mean(joins), "min": min(joins), "max": max(joins)},
        "death": {"mean": statistics.mean(deaths), "min": min(deaths), "max": max(deaths)},
        "load": {
            "mean": float(counts.mean()),
            "max": int(counts.max()),
            "min": int(counts.min()),
            "max_over_mean": float(counts.max() / counts.mean()),
            "max_over_mean_weight_1": float(coarse.max() / coarse.mean()),
        },
        "load_histogram": np.bincount(counts).tolist(),
    }


def churn_run(
    args: argparse.Namespace, hashes: npt.NDArray[np.uint32], rate_per_hour: float, policy: str
) -> dict[str, Any]:
    """One run of the churn model (see the module's docstring); token totals."""
    n, s = args.workers, len(hashes)
    names = [f"w{k}" for k in range(n)]
    index = {name: k for k, name in enumerate(names)}
    ring = make_ring(names, args.weight)
    rng = np.random.default_rng(args.seed)  # the same churn for every policy
    start = rng.integers(0, args.horizon, size=s)
    p_restart = rate_per_hour * STEP_S / 3600.0
    up_at = np.zeros(n, dtype=np.int64)  # a down worker is back at this step
    epoch = np.zeros(n, dtype=np.int64)  # restarts so far: the KV of an older epoch is gone
    worker = np.full(s, -1, dtype=np.int64)  # who served the session's last turn
    seen_epoch = np.zeros(s, dtype=np.int64)
    d, o, instr, turns = args.delta, args.output, args.instructions, args.turns
    totals = {"input": 0, "cached": 0, "reusable": 0, "restarts": 0, "moved_turns": 0}
    rr = 0
    peak: list[float] = []
    for step in range(args.horizon + turns):
        for w in np.flatnonzero((up_at == step) & (step > 0)):  # restarted workers return
            ring.set_up(names[w])
        fails = np.flatnonzero((rng.random(n) < p_restart) & (up_at <= step))
        for w in fails:
            ring.set_down(names[w])
            up_at[w] = step + args.down_steps
            epoch[w] += 1
        totals["restarts"] += len(fails)
        up = up_at <= step
        active = np.flatnonzero((start <= step) & (step < start + turns))
        if len(active) == 0:
            continue
        t = step - start[active]
        prev = worker[active]
        if policy == "affinity":
            stay = (prev >= 0) & up[np.maximum(prev, 0)]
            new = prev.copy()
            moving = active[~stay]
            if len(moving):
                new[~stay] = place(ring, hashes[moving], index)
        elif policy == "hash-only":
            new = place(ring, hashes[active], index)
        else:
            live = np.flatnonzero(up)
            new = live[(rr + np.arange(len(active))) % len(live)]
            rr += len(active)
        warm = (new == prev) & (t > 0) & (seen_epoch[active] == epoch[np.maximum(new, 0)])
        prompt = instr + t * (d + o) + d
        totals["input"] += int(prompt.sum())
        totals["cached"] += int((prompt - d)[warm].sum())
        totals["reusable"] += int((prompt - d)[t > 0].sum())
        totals["moved_turns"] += int(((new != prev) & (t > 0)).sum())
        worker[active], seen_epoch[active] = new, epoch[new]
        if step == args.horizon // 2:
            per = np.bincount(new, minlength=n)[up]
            peak.append(float(per.max() / per.mean()))
    return {
        "policy": policy,
        "restarts_per_worker_per_hour": rate_per_hour,
        "cached_ratio": totals["cached"] / totals["input"],
        "ceiling": totals["reusable"] / totals["input"],
        "reused_share": totals["cached"] / totals["reusable"],
        "recomputed_tokens": totals["input"] - totals["cached"],
        "turns_moved_share": totals["moved_turns"] / (s * (turns - 1)),
        "restarts": totals["restarts"],
        "concurrent_max_over_mean": peak[0] if peak else None,
    }


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    sessions = [f"{rng.getrandbits(128):032x}" for _ in range(args.sessions)]  # uuid-like
    hashes = np.array([key_hash(k) for k in sessions], dtype=np.uint32)
    out: dict[str, Any] = {
        "title": f"fleet simulation: {args.workers} workers x {args.sessions} sessions",
        "params": {k: v for k, v in vars(args).items() if k != "func"},
        "remap_and_load": remap_and_load(args, hashes),
        "churn": [],
    }
    print(json.dumps(out["remap_and_load"] | {"load_histogram": "..."}, indent=1), flush=True)
    for rate in args.churn:
        for policy in POLICIES:
            row = churn_run(args, hashes, rate, policy)
            out["churn"].append(row)
            print(json.dumps(row), flush=True)
    out["seconds"] = time.perf_counter() - t0
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "simulation.json").write_text(json.dumps(out, indent=2))
    plot_simulation(out, OUT / "simulation.png")
    print(f"wrote {OUT / 'simulation.json'} and {OUT / 'simulation.png'}")
    return out


def plot_simulation(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for policy in POLICIES:
        rows = [r for r in out["churn"] if r["policy"] == policy]
        rates = [r["restarts_per_worker_per_hour"] for r in rows]
        left.plot(rates, [r["cached_ratio"] for r in rows], marker="o", label=policy)
    ceiling = out["churn"][0]["ceiling"]
    left.axhline(ceiling, color="black", linestyle="--", label=f"ceiling {ceiling:.3f}")
    left.axhline(0.95 * ceiling, color="grey", linestyle=":", label="95% of the ceiling")
    left.set_xlabel("restarts per worker per hour")
    left.set_ylabel("cached / input tokens")
    left.set_ylim(0, 1.02)
    left.set_title("cached-token ratio under churn")
    left.legend()
    hist = out["remap_and_load"]["load_histogram"]
    right.bar(range(len(hist)), hist, width=1.0)
    load = out["remap_and_load"]["load"]
    right.set_title(
        f"sessions per worker (max/mean {load['max_over_mean']:.2f}; "
        f"weight 1: {load['max_over_mean_weight_1']:.2f})"
    )
    right.set_xlabel("sessions on a worker")
    right.set_ylabel("workers")
    fig.suptitle(out["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --- part two: the real workload through HAProxy ----------------------------------------


def live(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import replace

    from warmloop.bench.cli import tag_run, workload
    from warmloop.bench.report import percentile
    from warmloop.bench.runner import Endpoint, TurnRecord, run_mode
    from warmloop.fleet.haproxy import Settings
    from warmloop.fleet.local import Fleet

    key = "sk-warmloop-fleet-bench"
    scripts = workload(args).scripts()
    serve = ["--slots", str(args.slots), "--ctx", str(args.ctx), "--api-key", key]
    serve += ["--log-level", "warning", *args.server_arg]
    results: dict[str, Any] = {}
    OUT.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[tuple[float, list[TurnRecord]]]] = {}
    with Fleet(workers=args.workers, port=args.port, serve_args=serve) as fleet:
        k = 0
        for round_ in range(args.rounds):  # alternating order: drift hits both alike
            configs = ("affinity", "round-robin")
            for config in configs if round_ % 2 == 0 else configs[::-1]:
                fleet.write_proxy(replace(Settings(), roundrobin=config == "round-robin"))
                for protocol in args.protocols:
                    name = f"{protocol}/{config}"
                    tagged = [tag_run(s, k) for s in scripts]  # nothing found from another run
                    k += 1
                    ep = Endpoint(fleet.base_url, key)
                    noop: Callable[[TurnRecord], None] = lambda _r: None  # noqa: E731
                    wall, records = asyncio.run(run_mode(ep, protocol, name, tagged, noop))
                    runs.setdefault(name, []).append((wall, records))
                    print(f"round {round_ + 1} {name}: {wall:.1f} s", flush=True)
    for name, done in runs.items():
        records = [r for _, rs in done for r in rs]
        later = [r for r in records if r.turn > 0]  # the first turn is cold anyway
        inp = sum(r.input_tokens for r in records)
        cached = sum(r.cached_tokens for r in records)
        lat = [r.latency_ms for r in later]
        results[name] = {
            "rounds": len(done),
            "turns": len(records),
            "wall_s": [round(w, 2) for w, _ in done],
            "cached_ratio": cached / inp if inp else 0.0,
            "cached_ratio_after_first_turn": sum(r.cached_tokens for r in later)
            / max(1, sum(r.input_tokens for r in later)),
            "recomputed_tokens": (inp - cached) / len(done),
            "latency_ms_p50": percentile(lat, 50),
            "latency_ms_p95": percentile(lat, 95),
        }
    for protocol in args.protocols:  # per round: affinity's wall time over round robin's
        a, b = runs.get(f"{protocol}/affinity"), runs.get(f"{protocol}/round-robin")
        if a and b:
            results[f"{protocol}/affinity"]["wall_vs_round_robin"] = [
                round(x[0] / y[0], 3) for x, y in zip(a, b, strict=True)
            ]
    for name, r in results.items():
        print(f"{name:>22}: {json.dumps(r)}", flush=True)
    out = {
        "title": f"agent loop through HAProxy over {args.workers} workers",
        "workload": {
            k: getattr(args, k)
            for k in ("sessions", "turns", "instruction_words", "tool_words", "output_tokens")
        },
        "server": {"slots": args.slots, "ctx": args.ctx, "threads_per_worker": 1},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "results": results,
    }
    (OUT / "live.json").write_text(json.dumps(out, indent=2))
    plot_live(out, OUT / "live.png")
    print(f"wrote {OUT / 'live.json'} and {OUT / 'live.png'}")
    return out


def plot_live(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["results"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, metric, label in zip(
        axes,
        ("cached_ratio", "recomputed_tokens", "latency_ms_p95"),
        ("cached / input tokens", "tokens computed again per round", "turn latency p95 (ms)"),
        strict=True,
    ):
        ax.bar(names, [out["results"][n][metric] for n in names])
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(out["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    sim = sub.add_parser("simulate", help="part one: 1,000 workers x 100,000 sessions, modelled")
    sim.add_argument("--workers", type=int, default=1000)
    sim.add_argument("--sessions", type=int, default=100_000)
    sim.add_argument("--weight", type=int, default=64, help="as in the generated configuration")
    sim.add_argument("--trials", type=int, default=5, help="joins and deaths for the remap")
    sim.add_argument("--turns", type=int, default=20)
    sim.add_argument("--horizon", type=int, default=180, help="steps over which sessions start")
    sim.add_argument("--instructions", type=int, default=2000, help="tokens")
    sim.add_argument("--delta", type=int, default=300, help="tokens of tool output per turn")
    sim.add_argument("--output", type=int, default=100, help="tokens of answer per turn")
    sim.add_argument("--down-steps", type=int, default=2, help="a restart's downtime in steps")
    sim.add_argument(
        "--churn",
        type=float,
        nargs="+",
        default=[0.0, 0.1, 0.5, 1.0, 2.0],
        help="restarts per worker per hour",
    )
    sim.add_argument("--seed", type=int, default=7)
    sim.set_defaults(func=simulate)
    run = sub.add_parser("live", help="part two: the real workload over 3 local workers")
    run.add_argument("--workers", type=int, default=3)
    run.add_argument("--port", type=int, default=18400, help="HAProxy's port")
    run.add_argument("--protocols", nargs="+", default=["http-prev", "ws"])
    run.add_argument("--sessions", type=int, default=6)
    run.add_argument("--turns", type=int, default=8)
    run.add_argument("--instruction-words", type=int, default=400)
    run.add_argument("--tool-words", type=int, default=60)
    run.add_argument("--output-tokens", type=int, default=16)
    run.add_argument("--slots", type=int, default=4)
    run.add_argument("--ctx", type=int, default=4096)
    run.add_argument("--server-arg", action="append", default=[], help="extra worker flag")
    run.add_argument("--seed", type=int, default=7)
    run.add_argument("--rounds", type=int, default=2, help="alternating affinity/round robin")
    run.set_defaults(func=live)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
