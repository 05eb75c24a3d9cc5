"""What a sliding-window model's full-size KV cache costs against the windowed one.

Gemma 3 (and gpt-oss) attend over a window in most layers. llama.cpp can keep those
layers' KV for every position (`swa_full`, its default and warmloop's) or only for the
last window. For each choice, in a child process of its own, this loads the model with
`--slots` sequences of `--ctx` tokens and reports: the process's memory for the context,
a sequence's state (what a host-RAM snapshot holds) after a `--prefill`-token prompt, and
whether the chain can be cut back to its middle and continued (what the last-common-
prefix fallback, truncation and prefix sharing need).

    .venv/bin/python benchmarks/swa.py                    # Gemma 3 270M from make setup
    .venv/bin/python benchmarks/swa.py --model PATH.gguf --ctx 8192 --slots 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
GEMMA = Path(sys.prefix) / "models" / "gemma-3-270m-q4_k_m.gguf"


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(model: Path, ctx: int, slots: int, prefill: int, swa_full: bool) -> dict[str, Any]:
    import llama_cpp  # noqa: F401 (the library's own memory is not the context's)
    import numpy as np

    from warmloop.engine.backend import BackendError, BatchRow, LlamaBackend

    before = rss_mib()
    b = LlamaBackend(
        model, ctx_per_seq=ctx, n_seq=slots, n_threads=2, n_batch=512, swa_full=swa_full
    )
    loaded = rss_mib()
    tokens = (b.tokenize("The garden grows in the spring and rests in the winter. ") * 400)[
        :prefill
    ]
    for start in range(0, len(tokens), 512):
        chunk = tokens[start : start + 512]
        b.decode([BatchRow(t, start + i, 0, False) for i, t in enumerate(chunk)])
    after_prefill = rss_mib()
    state = len(b.seq_state_get(0))
    # cut the chain back to its middle and continue from there; compare the next-token
    # logits with the same prefix computed cold in another sequence
    half = prefill // 2
    try:
        b.seq_truncate(0, half)
        b.decode([BatchRow(tokens[half], half, 0, True)])
        warm = np.ctypeslib.as_array(b.logits(0), shape=(b.n_vocab(),)).copy()
        for start in range(0, half + 1, 512):
            end = min(start + 512, half + 1)
            b.decode([BatchRow(tokens[i], i, 1, i == half) for i in range(start, end)])
        cold = np.ctypeslib.as_array(b.logits(-1), shape=(b.n_vocab(),)).copy()
        cut_back = f"max logit difference {float(np.abs(warm - cold).max()):.3g} against cold"
    except BackendError as exc:
        cut_back = f"refused: {exc}"
    return {
        "swa_full": swa_full,
        "model_and_context_mib": round(loaded - before, 1),
        "after_prefill_mib": round(after_prefill - before, 1),
        "sequence_state_mib": round(state / 2**20, 2),
        "cut_back_to_middle": cut_back,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, default=GEMMA)
    p.add_argument("--ctx", type=int, default=8192)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--prefill", type=int, default=4096)
    p.add_argument("--child", choices=["full", "window"], help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "swa.json")
    args = p.parse_args()
    if args.child:
        result = measure(args.model, args.ctx, args.slots, args.prefill, args.child == "full")
        print(json.dumps(result))
        return
    rows = []
    for kind in ("full", "window"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, "--model", str(args.model),
             "--ctx", str(args.ctx), "--slots", str(args.slots), "--prefill", str(args.prefill)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in rows:
        print(
            f"swa_full={r['swa_full']!s:5}: model + {args.slots} x {args.ctx}-token context "
            f"{r['model_and_context_mib']:7.1f} MiB, after a {args.prefill}-token prefill "
            f"{r['after_prefill_mib']:7.1f} MiB, one sequence's state "
            f"{r['sequence_state_mib']:6.2f} MiB, cut back to the middle: {r['cut_back_to_middle']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    setup = {
        "model": args.model.name,
        "ctx": args.ctx,
        "slots": args.slots,
        "prefill": args.prefill,
    }
    args.out.write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
