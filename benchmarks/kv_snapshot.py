"""Host-RAM tier cost: snapshot and restore of one sequence versus recomputing it.

For each length N it prefills N tokens into sequence 0 (the recompute cost), saves the
sequence with `llama_state_seq_get_data` (snapshot), restores it into sequence 1 with
`llama_state_seq_set_data` (restore), and checks that the next-token logits of the
restored sequence equal the original's. Goal: restore of 4k tokens <= 20 ms and >= 100x
cheaper than recompute.

    .venv/bin/python benchmarks/kv_snapshot.py                 # 512 ... 8192 tokens
    .venv/bin/python benchmarks/kv_snapshot.py --sizes 512,1024
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import numpy as np

from warmloop.config import embedded_model_path
from warmloop.engine.backend import BatchRow, LlamaBackend

ROOT = Path(__file__).resolve().parent


def prefill(backend: LlamaBackend, seq: int, tokens: list[int]) -> None:
    for start in range(0, len(tokens), backend.n_batch):
        chunk = tokens[start : start + backend.n_batch]
        rows = [
            BatchRow(t, start + i, seq, start + i == len(tokens) - 1) for i, t in enumerate(chunk)
        ]
        backend.decode(rows)


def next_logits(backend: LlamaBackend, seq: int, pos: int, token: int) -> np.ndarray:
    backend.decode([BatchRow(token, pos, seq, True)])
    return np.ctypeslib.as_array(backend.logits(0), shape=(backend.n_vocab(),)).copy()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="512,1024,2048,4096,8192")
    p.add_argument("--repeats", type=int, default=5, help="snapshot/restore repetitions")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "kv_snapshot.json")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    model = args.model or embedded_model_path()
    backend = LlamaBackend(
        model, ctx_per_seq=max(sizes) + 16, n_seq=2, n_threads=args.threads, n_batch=512
    )
    rng = random.Random(0)
    vocab = backend.n_vocab()
    rows = []
    header = ("tokens", "recompute ms", "snapshot ms", "restore ms", "MB", "speed-up")
    widths = (7, 13, 12, 11, 7, 9)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)) + "  exact")
    for n in sizes:
        tokens = [rng.randrange(100, vocab) for _ in range(n)]
        backend.seq_truncate(0, 0)
        t0 = time.perf_counter()
        prefill(backend, 0, tokens)
        recompute_ms = (time.perf_counter() - t0) * 1000
        snap_ms, restore_ms = [], []
        data = b""
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            data = backend.seq_state_get(0)
            snap_ms.append((time.perf_counter() - t0) * 1000)
            backend.seq_truncate(1, 0)
            t0 = time.perf_counter()
            backend.seq_state_set(1, data)
            restore_ms.append((time.perf_counter() - t0) * 1000)
        probe = rng.randrange(100, vocab)
        a = next_logits(backend, 0, n, probe)
        b = next_logits(backend, 1, n, probe)
        exact = bool(np.array_equal(a, b))
        row = {
            "tokens": n,
            "recompute_ms": round(recompute_ms, 1),
            "snapshot_ms": round(statistics.median(snap_ms), 2),
            "restore_ms": round(statistics.median(restore_ms), 2),
            "bytes": len(data),
            "speedup_vs_recompute": round(recompute_ms / statistics.median(restore_ms), 1),
            "restored_logits_identical": exact,
        }
        rows.append(row)
        print(
            f"{n:>7} {row['recompute_ms']:>13} {row['snapshot_ms']:>12} {row['restore_ms']:>11} "
            f"{len(data) / 1e6:>7.1f} {row['speedup_vs_recompute']:>8}x  {exact}"
        )
    backend.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"model": model.name, "threads": args.threads, "rows": rows}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
