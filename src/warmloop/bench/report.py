"""Numbers out of turn records: per-mode summaries, a table, JSON, and PNG plots."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from warmloop.bench.runner import TurnRecord


def wide_console() -> Console:
    """stdout; off a terminal rich would wrap tables at 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=150)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summarize(mode: str, wall_s: float, records: list[TurnRecord]) -> dict[str, Any]:
    ttft = [r.ttft_ms for r in records]
    turn = [r.latency_ms for r in records]
    prompt = sum(r.input_tokens for r in records)
    cached = sum(r.cached_tokens for r in records)
    computes = [r.server_compute_ms for r in records]
    compute_s = (
        sum(c for c in computes if c is not None) / 1000.0
        if all(c is not None for c in computes)
        else None
    )
    by_turn = _by_turn(records)
    # frame in → first token, minus the prefill that produced it (turns after the first)
    ttft_overhead = [
        r.ttft_ms - r.server_prefill_ms
        for r in records
        if r.turn > 0 and r.server_prefill_ms is not None
    ]
    return {
        "mode": mode,
        "end_to_end_s": round(wall_s, 3),
        "turns": len(records),
        "ttft_p50_ms": round(statistics.median(ttft), 1),
        "ttft_p95_ms": round(percentile(ttft, 95), 1),
        "turn_p50_ms": round(statistics.median(turn), 1),
        "turn_p95_ms": round(percentile(turn, 95), 1),
        "client_bytes_sent": sum(r.sent_bytes for r in records),
        "client_bytes_received": sum(r.received_bytes for r in records),
        "bytes_first_turn": round(statistics.mean(r.sent_bytes for r in by_turn[0])),
        "bytes_last_turn": round(statistics.mean(r.sent_bytes for r in by_turn[max(by_turn)])),
        "input_tokens": prompt,
        "cached_tokens": cached,
        "computed_tokens": prompt - cached,
        "cached_ratio": round(cached / prompt, 4) if prompt else 0.0,
        "output_tokens": sum(r.output_tokens for r in records),
        # compute: the server's prefill + decode time; overhead: the rest of each turn
        # (protocol, queueing, tokenizing, JSON) as the client saw it.
        "server_compute_s": None if compute_s is None else round(compute_s, 3),
        "overhead_s": None if compute_s is None else round(sum(turn) / 1000.0 - compute_s, 3),
        "ttft_overhead_p50_ms": (
            round(statistics.median(ttft_overhead), 2) if ttft_overhead else None
        ),
    }


def _by_turn(records: list[TurnRecord]) -> dict[int, list[TurnRecord]]:
    out: dict[int, list[TurnRecord]] = defaultdict(list)
    for r in records:
        out[r.turn].append(r)
    return out


def ratios(summaries: dict[str, dict[str, Any]]) -> dict[str, float]:
    """End-to-end time of every other mode divided by the first mode's (its speed-up)."""
    if not summaries:
        return {}
    first, *others = summaries
    base = summaries[first]["end_to_end_s"]
    return {
        f"{other}_vs_{first}": round(summaries[other]["end_to_end_s"] / base, 2)
        for other in others
        if base > 0
    }


COLUMNS = [
    ("end-to-end s", "end_to_end_s"),
    ("TTFT p50 ms", "ttft_p50_ms"),
    ("TTFT p95 ms", "ttft_p95_ms"),
    ("turn p50 ms", "turn_p50_ms"),
    ("turn p95 ms", "turn_p95_ms"),
    ("cached", "cached_ratio"),
    ("client KB sent", "client_bytes_sent"),
    ("compute s", "server_compute_s"),
    ("overhead s", "overhead_s"),
    ("TTFT - prefill ms", "ttft_overhead_p50_ms"),
]


def table(summaries: dict[str, dict[str, Any]], title: str) -> Table:
    t = Table(title=title)
    t.add_column("mode")
    for name, _ in COLUMNS:
        t.add_column(name, justify="right")
    for mode, s in summaries.items():
        t.add_row(mode, *(_cell(key, s[key]) for _, key in COLUMNS))
    return t


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "cached_ratio":
        return f"{100 * value:.1f} %"
    if key == "client_bytes_sent":
        return f"{value / 1024:,.1f}"
    return f"{value:,}"


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(table(report["modes"], report["title"]))
    if report["ratios"]:
        console.print(
            "end-to-end relative to the first mode: "
            + ", ".join(f"{k} = {v}x" for k, v in report["ratios"].items())
        )


def write(report: dict[str, Any], records: list[TurnRecord], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps({**report, "records": [asdict(r) for r in records]}, indent=2))
    return path


def plot(report: dict[str, Any], records: list[TurnRecord], out_dir: Path) -> list[Path]:
    """Three PNGs: TTFT by turn index per mode, end-to-end by mode, bytes sent per turn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(report["modes"])
    per_mode: dict[str, dict[int, list[TurnRecord]]] = {
        m: _by_turn([r for r in records if r.mode == m]) for m in modes
    }
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for m in modes:
        turns = sorted(per_mode[m])
        ax.plot(
            [t + 1 for t in turns],
            [statistics.mean(r.ttft_ms for r in per_mode[m][t]) for t in turns],
            marker="o",
            ms=3,
            label=m,
        )
    ax.set(xlabel="turn", ylabel="TTFT (ms, mean over sessions)", title="Time to first token")
    ax.set_yscale("log")
    paths.append(_save(fig, ax, out_dir / "ttft_by_turn.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    values = [report["modes"][m]["end_to_end_s"] for m in modes]
    bars = ax.bar(modes, values, color=[f"C{i}" for i in range(len(modes))])
    ax.bar_label(bars, fmt="%.1f s")
    ax.set(ylabel="seconds", title="End-to-end time of the whole workload")
    paths.append(_save(fig, ax, out_dir / "end_to_end.png", legend=False))

    fig, ax = plt.subplots(figsize=(7, 4))
    for m in modes:
        turns = sorted(per_mode[m])
        ax.plot(
            [t + 1 for t in turns],
            [statistics.mean(r.sent_bytes for r in per_mode[m][t]) / 1024 for t in turns],
            marker="o",
            ms=3,
            label=m,
        )
    ax.set(xlabel="turn", ylabel="KiB sent by the client", title="Bytes on the wire per turn")
    paths.append(_save(fig, ax, out_dir / "bytes_per_turn.png"))
    return paths


def _save(fig: Any, ax: Any, path: Path, *, legend: bool = True) -> Path:
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    if legend:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
