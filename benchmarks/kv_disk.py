"""The KV disk tier (issue 25's goals), each part against its baseline in the same run.

`restart`: a store:true chain of ~6k tokens, the server drained (SIGTERM) and started
again; its next turn with `--kv-disk-dir` (restored from the file) against the same turn
on a server without it (recomputed from the store), alternating round by round. Each
warm round is measured twice: the file in the page cache (a restart) and with the page
cache dropped first (a reboot; needs root, else skipped). Goal: the warm turn computes
<= 5 % of its prompt and takes <= 0.2x the cold turn's time.

`fleet`: 3 workers behind HAProxy sharing one KV directory (`--kv-disk-sync turn`),
sessions of ~2k tokens over HTTP (store true, a session header); one worker is drained,
then another is SIGKILLed; the moved sessions' next turns, against the same fleet
without the shared directory. Goal: moved turns compute <= 10 % of their prompts.

`idle`: N sessions of T tokens (a shared head, each with its own tail) parked on disk
(host RAM budget 0), then each brought back once in random order; the server's read and
restore time per session and its RSS while they cycle. Goal: each back in <= 50 ms plus
its read time; RSS flat; all within --kv-disk-budget.

    .venv/bin/python benchmarks/kv_disk.py restart [--rounds 3 --tokens 6000]
    .venv/bin/python benchmarks/kv_disk.py fleet [--sessions 6]
    .venv/bin/python benchmarks/kv_disk.py idle [--sessions 1000 --tokens 2048]

Writes benchmarks/results/kv_disk/{restart,fleet,idle}.json (+ idle.png).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from warmloop.bench.server import LocalServer, free_port
from warmloop.fleet.keys import WORKER_HEADER, worker_of
from warmloop.fleet.local import Fleet

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "kv_disk"
FLAGS = ["--no-self-test", "--threads", "2", "--speculative-draft", "0"]


def filler(tokens: int, seed: int = 0) -> str:
    """About `tokens` tokens of log-like text (SmolLM2: ~17 tokens per entry)."""
    rng = random.Random(seed)
    words = ["valve", "pump", "gauge", "relay", "filter", "sensor", "motor", "panel"]
    lines = [
        f"{i}: {rng.choice(words)} {rng.randint(100, 999)} ok at {rng.randint(0, 23):02d}h."
        for i in range(tokens // 17)
    ]
    return "\n".join(lines)


def post(client: httpx.Client, **body: Any) -> tuple[dict[str, Any], float, str]:
    body = {"model": "default", "temperature": 0, "max_output_tokens": 8, **body}
    t0 = time.perf_counter()
    r = client.post("/v1/responses", json=body)
    wall = time.perf_counter() - t0
    r.raise_for_status()
    return r.json(), wall, r.headers.get(WORKER_HEADER, "")


def computed(response: dict[str, Any]) -> tuple[int, int]:
    usage = response["usage"]
    prompt = int(usage["input_tokens"])
    return prompt - int(usage["input_tokens_details"]["cached_tokens"]), prompt


def drain(server: LocalServer) -> None:
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=300)


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def metrics(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = out.get(name, 0.0) + float(value)
    return out


def machine() -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}


def save(name: str, data: dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    print(f"wrote {path}")
    return path


# ----- restart ---------------------------------------------------------------------------
def restart(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="kvdisk-restart-"))
    disk, db = work / "kv", work / "responses.db"
    common = [*FLAGS, "--ctx", str(args.ctx), "--slots", "2", "--store", str(db)]
    warm_flags = [*common, "--kv-disk-dir", str(disk), "--kv-disk-sync", "off"]
    rounds: list[dict[str, Any]] = []
    try:
        with LocalServer(warm_flags) as s, httpx.Client(base_url=s.url, timeout=900) as c:
            first, wall, _ = post(c, input=filler(args.tokens) + "\nWhich pump came last?")
            print(f"chain: {first['usage']['total_tokens']} tokens, computed in {wall:.1f} s")
            drain(s)
        size = sum(f.stat().st_size for f in disk.glob("*.kv"))
        print(f"drained: {len(list(disk.glob('*.kv')))} file(s), {size / 2**20:.0f} MiB")
        turn = {"input": "And the first one?", "previous_response_id": first["id"]}
        modes = ["warm", "warm-uncached", "cold"]
        for r in range(args.rounds):
            row: dict[str, Any] = {}
            for mode in modes:
                if mode == "warm-uncached" and not drop_page_cache():
                    continue
                flags = common if mode == "cold" else warm_flags
                with LocalServer(flags) as s, httpx.Client(base_url=s.url, timeout=900) as c:
                    if mode == "warm-uncached":
                        drop_page_cache()  # the server's own start read the model file
                    resp, wall, _ = post(c, **turn)
                    m = metrics(s.url)
                    drain(s)
                done, prompt = computed(resp)
                row[mode] = {
                    "seconds": round(wall, 3),
                    "computed": done,
                    "prompt": prompt,
                    "read_s": round(m.get("warmloop_kv_disk_read_seconds_sum", 0.0), 4),
                    "restore_s": round(m.get("warmloop_kv_restore_seconds_sum", 0.0), 4),
                }
            rounds.append(row)
            shown = "  ".join(
                f"{k} {v['seconds']:.2f}s computed {v['computed']}/{v['prompt']}"
                for k, v in row.items()
            )
            print(f"round {r}: {shown}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    cold = statistics.median(r["cold"]["seconds"] for r in rounds)
    for mode in modes:
        got = [r[mode] for r in rounds if mode in r]
        if not got:
            continue
        secs = statistics.median(g["seconds"] for g in got)
        share = max(g["computed"] / g["prompt"] for g in got)
        summary[mode] = {
            "median_s": round(secs, 3),
            "ratio_to_cold": round(secs / cold, 3),
            "max_computed_share": round(share, 4),
            "median_read_s": round(statistics.median(g["read_s"] for g in got), 4),
            "median_restore_s": round(statistics.median(g["restore_s"] for g in got), 4),
        }
        print(
            f"{mode:>14}: {secs:6.2f} s = {secs / cold:.3f}x cold, computed <= {share:.1%} "
            f"(read {summary[mode]['median_read_s']:.3f} s, "
            f"restore {summary[mode]['median_restore_s']:.3f} s)"
        )
    save("restart", {"args": vars(args) | {"func": None}, "rounds": rounds, "summary": summary})


# ----- fleet -----------------------------------------------------------------------------
@contextlib.contextmanager
def fleet(shared: bool, args: argparse.Namespace) -> Iterator[Fleet]:
    work = Path(tempfile.mkdtemp(prefix="kvdisk-fleet-"))
    serve = ["--ctx", "4096", "--slots", "4", "--no-self-test", "--kv-disk-sync", "turn"]
    # The baseline: each worker its own KV directory, so nothing is handed over.
    f = Fleet(
        workers=3,
        port=free_port(),
        serve_args=serve,
        state_dir=work,
        drain_timeout=120,
        shared_kv=shared,
    )
    try:
        with f:
            yield f
    finally:
        shutil.rmtree(work, ignore_errors=True)


def wait_up(f: Fleet, n: int) -> None:
    deadline = time.monotonic() + 120
    while httpx.get(f"{f.url}/healthz", timeout=10).json().get("workers_up") != n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the proxy never saw {n} workers up")
        time.sleep(0.2)


def wait_written(url: str) -> None:
    deadline = time.monotonic() + 300
    while metrics(url).get("warmloop_kv_disk_pending", 0.0) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the KV disk writer never caught up")
        time.sleep(0.1)


def fleet_run(shared: bool, args: argparse.Namespace) -> dict[str, Any]:
    with fleet(shared, args) as f, httpx.Client(base_url=f.url, timeout=900) as c:
        chains: dict[int, dict[str, Any]] = {}
        where: dict[int, str] = {}
        for i in range(args.sessions):
            # each session its own text: a worker that took it over holds none of it
            body = {"input": f"{filler(args.tokens, seed=100 + i)}\nWhich valve came first?"}
            c.headers["x-session-id"] = f"s{i}"
            chains[i], _, where[i] = post(c, **body)
        results: dict[str, Any] = {}
        for event, sig in (("drain", signal.SIGTERM), ("sigkill", signal.SIGKILL)):
            counts: dict[str, int] = {}
            for w in where.values():
                counts[w] = counts.get(w, 0) + 1
            up = [w for w in f.local if w.process.poll() is None]
            victim = max(up, key=lambda w: counts.get(w.worker.id, 0))
            if sig == signal.SIGKILL:
                wait_written(victim.url)  # --kv-disk-sync turn: the turn's file is on disk
            victim.process.send_signal(sig)
            victim.process.wait(timeout=300)
            wait_up(f, len(up) - 1)
            moved = [i for i, w in where.items() if w == victim.worker.id]
            turns: list[dict[str, Any]] = []
            for i in moved:
                c.headers["x-session-id"] = f"s{i}"
                resp, wall, w = post(c, input="And the last?", previous_response_id=chains[i]["id"])
                done, prompt = computed(resp)
                turns.append({"session": i, "seconds": round(wall, 3), "computed": done,
                              "prompt": prompt, "from": victim.worker.id, "to": w})  # fmt: skip
                chains[i], where[i] = resp, worker_of(resp["id"]) or w
            results[event] = turns
            share = sum(t["computed"] for t in turns) / max(1, sum(t["prompt"] for t in turns))
            print(
                f"{'shared' if shared else 'separate'} {event}: {len(turns)} sessions moved, "
                f"computed {share:.1%} of their prompts, "
                f"{statistics.mean(t['seconds'] for t in turns) if turns else 0:.2f} s a turn",
                flush=True,
            )
    return results


def fleet_bench(args: argparse.Namespace) -> None:
    runs = {"shared": fleet_run(True, args), "separate": fleet_run(False, args)}
    summary = {}
    for name, run in runs.items():
        for event, turns in run.items():
            share = sum(t["computed"] for t in turns) / max(1, sum(t["prompt"] for t in turns))
            secs = statistics.mean(t["seconds"] for t in turns) if turns else 0.0
            summary[f"{name}/{event}"] = {
                "sessions": len(turns),
                "computed_share": round(share, 4),
                "mean_s": round(secs, 3),
            }
    for k, v in summary.items():
        print(f"{k:>18}: {v}")
    save("fleet", {"args": vars(args) | {"func": None}, "runs": runs, "summary": summary})


# ----- idle ------------------------------------------------------------------------------
def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def idle(args: argparse.Namespace) -> None:
    work = Path(args.dir or tempfile.mkdtemp(prefix="kvdisk-idle-"))
    work.mkdir(parents=True, exist_ok=True)
    disk = work / "kv"
    budget = args.budget or int(args.sessions * args.tokens * 24_000 * 1.1)
    free = shutil.disk_usage(work).free
    if budget > free * 0.9:
        raise SystemExit(f"needs {budget / 2**30:.1f} GiB on disk, {free / 2**30:.1f} free")
    flags = [*FLAGS, "--ctx", str(args.tokens + 256), "--slots", "2", "--kv-host-budget", "0"]
    flags += ["--kv-disk-dir", str(disk), "--kv-disk-budget", str(budget), "--store-ttl", "0"]
    flags += ["--store", str(work / "responses.db"), "--kv-disk-sync", "off", *args.serve]
    head = filler(args.tokens - 120, seed=2)
    samples: list[dict[str, Any]] = []
    try:
        with LocalServer(flags) as s, httpx.Client(base_url=s.url, timeout=900) as c:
            ids = []
            t0 = time.perf_counter()
            for i in range(args.sessions):
                tail = f"\nSession {i}: " + filler(100, seed=1000 + i)
                resp, _, _ = post(c, input=head + tail, max_output_tokens=2)
                ids.append(resp["id"])
                if i % 50 == 0:
                    m = metrics(s.url)
                    print(
                        f"parked {i + 1}/{args.sessions} ({time.perf_counter() - t0:.0f} s): "
                        f"{m.get('warmloop_kv_disk_files', 0):.0f} files, "
                        f"{m.get('warmloop_kv_disk_bytes', 0) / 2**30:.2f} GiB, "
                        f"RSS {rss(s.process.pid) / 2**20:.0f} MiB",
                        flush=True,
                    )
            wait_written(s.url)
            m = metrics(s.url)
            parked = {
                "files": m.get("warmloop_kv_disk_files", 0.0),
                "bytes": m.get("warmloop_kv_disk_bytes", 0.0),
                "budget": budget,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(f"parked: {parked}")
            order = list(range(args.sessions))
            random.Random(3).shuffle(order)
            before = metrics(s.url)
            for k, i in enumerate(order):
                resp, wall, _ = post(c, input="Next?", previous_response_id=ids[i],
                                     max_output_tokens=1)  # fmt: skip
                after = metrics(s.url)
                done, prompt = computed(resp)
                samples.append({
                    "session": i,
                    "seconds": round(wall, 4),
                    "read_s": round(after.get("warmloop_kv_disk_read_seconds_sum", 0)
                                    - before.get("warmloop_kv_disk_read_seconds_sum", 0), 4),
                    "restore_s": round(after.get("warmloop_kv_restore_seconds_sum", 0)
                                       - before.get("warmloop_kv_restore_seconds_sum", 0), 4),
                    "computed": done,
                    "prompt": prompt,
                    "rss": rss(s.process.pid),
                    "disk_bytes": after.get("warmloop_kv_disk_bytes", 0.0),
                })  # fmt: skip
                before = after
                if k % 100 == 0:
                    x = samples[-1]
                    print(
                        f"back {k + 1}/{args.sessions}: {x['seconds'] * 1000:.0f} ms "
                        f"(read {x['read_s'] * 1000:.0f}, restore {x['restore_s'] * 1000:.0f}), "
                        f"computed {x['computed']}/{x['prompt']}, RSS {x['rss'] / 2**20:.0f} MiB",
                        flush=True,
                    )
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    restore = sorted(x["restore_s"] for x in samples)
    read = sorted(x["read_s"] for x in samples)
    rss_mib = [x["rss"] / 2**20 for x in samples]
    tenth = max(1, len(samples) // 10)
    summary = {
        "sessions": args.sessions,
        "tokens": args.tokens,
        "parked": parked,
        "restore_ms_p50": round(1000 * restore[len(restore) // 2], 1),
        "restore_ms_p99": round(1000 * restore[int(len(restore) * 0.99)], 1),
        "read_ms_p50": round(1000 * read[len(read) // 2], 1),
        "read_ms_p99": round(1000 * read[int(len(read) * 0.99)], 1),
        "max_computed": max(x["computed"] for x in samples),
        "rss_mib_first_tenth": round(statistics.mean(rss_mib[:tenth]), 1),
        "rss_mib_last_tenth": round(statistics.mean(rss_mib[-tenth:]), 1),
        "max_disk_bytes": max(x["disk_bytes"] for x in samples),
    }
    print(json.dumps(summary, indent=2))
    name = args.name or "idle"
    save(name, {"args": vars(args) | {"func": None}, "samples": samples, "summary": summary})
    plot(samples, name)


def plot(samples: list[dict[str, Any]], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    k = range(len(samples))
    a.plot(k, [1000 * x["read_s"] for x in samples], ".", ms=2, label="read + check")
    a.plot(k, [1000 * x["restore_s"] for x in samples], ".", ms=2, label="restore")
    a.set_xlabel("session brought back (random order)")
    a.set_ylabel("ms")
    a.legend()
    b.plot(k, [x["rss"] / 2**20 for x in samples])
    b.set_xlabel("session brought back")
    b.set_ylabel("server RSS (MiB)")
    fig.tight_layout()
    fig.savefig(OUT / f"{name}.png", dpi=110)
    print(f"wrote {OUT / f'{name}.png'}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("restart")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--tokens", type=int, default=6000)
    r.add_argument("--ctx", type=int, default=8192)
    r.set_defaults(func=restart)
    f = sub.add_parser("fleet")
    f.add_argument("--sessions", type=int, default=6)
    f.add_argument("--tokens", type=int, default=2000)
    f.set_defaults(func=fleet_bench)
    i = sub.add_parser("idle")
    i.add_argument("--sessions", type=int, default=1000)
    i.add_argument("--tokens", type=int, default=2048)
    i.add_argument("--budget", type=int, default=0, help="--kv-disk-budget (0: what fits)")
    i.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    i.add_argument("--serve", action="append", default=[], help="a `warmloop serve` flag (repeat)")
    i.add_argument("--name", default=None, help="results file name (default: idle)")
    i.set_defaults(func=idle)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
