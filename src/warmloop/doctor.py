"""`warmloop doctor`: what this machine's CPU offers, what the engine build uses, the
model, and a short decode in a child process (the self-test `serve` runs before it
listens).

The self-test runs in a child because an engine built for instructions this CPU (or its
OS) does not enable dies with SIGILL, taking the process with it: a CPU that advertises
AMX in CPUID while the kernel has not granted the AMX tile state is the case seen on
this project's machines. In a child that becomes one clear error with the fix.

    warmloop doctor [--model PATH.gguf] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmloop.config import default_threads, embedded_model_path
from warmloop.engine import cpu
from warmloop.models import resolve_model

PREFILL_TOKENS = 64
DECODE_TOKENS = 8
SELF_TEST_TIMEOUT_S = 180.0
# AMX mnemonics: any of them in a CPU backend means SIGILL where the OS has not granted
# the AMX tile state.
AMX_MNEMONICS = re.compile(
    r"\b(ldtilecfg|sttilecfg|tileloadd|tileloaddt1|tilestored|tilezero|tilerelease|"
    r"tdpbssd|tdpbsud|tdpbusd|tdpbuud|tdpbf16ps|tdpfp16ps)\b"
)
# One instruction of `objdump -d`: address, its bytes, mnemonic and operands.
_INSTRUCTION = re.compile(r"^\s*[0-9a-f]+:\t((?:[0-9a-f]{2} )+)\s*\t(\S+)(.*)$", re.MULTILINE)
# Legacy prefixes that may precede an EVEX (AVX-512) prefix, whose first byte is 0x62.
_PREFIXES = {"67", "2e", "36", "3e", "26", "64", "65"}
FIX = (
    "Rebuild the engine from a clean environment: `make clean && make setup` (the Makefile "
    "builds llama.cpp's CPU kernels as variants with explicit flags, never -march=native, "
    "never reuses a wheel built with other flags, and warmloop loads only a variant the CPU "
    "and the OS both allow); `--cpu-variant avx2` forces the baseline."
)


class SelfTestFailed(RuntimeError):
    """The engine could not decode on this machine; the message says why and what to do."""


@dataclass(frozen=True)
class SelfTestResult:
    prefill_tokens: int
    decode_tokens: int
    prefill_ms: float
    decode_ms: float
    n_ctx_train: int
    text: str
    cpu_variant: str  # the variant the child loaded
    cpu_libraries: list[str]  # the llama.cpp CPU backend files mapped in the child


# ----- CPU and build facts ------------------------------------------------------------
def instruction_counts(library: Path) -> dict[str, int] | None:
    """How many AMX and AVX-512 (EVEX-encoded) instructions `library` holds (None:
    objdump is not installed)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        return None
    listing = subprocess.run(
        [objdump, "-d", "--insn-width=16", str(library)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return count_instructions(listing)


def count_instructions(listing: str) -> dict[str, int]:
    counts = {"amx": 0, "avx512": 0}
    for raw, mnemonic, operands in _INSTRUCTION.findall(listing):
        if AMX_MNEMONICS.fullmatch(mnemonic):
            counts["amx"] += 1
        first = next((b for b in raw.split() if b not in _PREFIXES), "")
        if first == "62" or "%zmm" in operands:
            counts["avx512"] += 1
    return counts


def build_features() -> dict[str, str]:
    """What llama.cpp reports it runs with (the loaded CPU variant's features)."""
    from warmloop.engine.backend import system_info

    return system_info()


# ----- the self-test --------------------------------------------------------------------
def self_test(model: Path, *, threads: int, cpu_variant: str = cpu.AUTO) -> SelfTestResult:
    """Prefill 64 tokens and decode 8 in a child process on `cpu_variant`; raise
    SelfTestFailed with the cause and the fix if that child crashes, hangs or fails."""
    cmd = [sys.executable, "-m", "warmloop.doctor", "--child", str(model), str(threads)]
    cmd.append(cpu_variant)
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=SELF_TEST_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise SelfTestFailed(
            f"the engine self-test did not finish a {PREFILL_TOKENS}-token prefill within "
            f"{SELF_TEST_TIMEOUT_S:.0f} s on {model}."
        ) from None
    if done.returncode < 0:
        sig = signal.Signals(-done.returncode)
        if sig is signal.SIGILL:
            here = cpu.probe()
            raise SelfTestFailed(
                "the engine crashed with SIGILL (illegal instruction) in its self-test: its "
                f"CPU variant ({cpu_variant}) uses instructions this machine or its OS does "
                f"not enable (XCR0 {here.xcr0:#x}, AMX granted: {here.amx_permission}). {FIX}"
            )
        raise SelfTestFailed(
            f"the engine crashed with {sig.name} in its self-test on {model}. {FIX}"
        )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SelfTestFailed(
            f"the engine self-test failed on {model}: " + " / ".join(tail or ["no output"])
        )
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return SelfTestResult(**data)


def _mapped_cpu_libraries() -> list[str]:
    """The llama.cpp CPU backend files this process has mapped (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libggml-cpu" in line}
    except OSError:
        return []
    return sorted(Path(p).name for p in paths)


def _child(model: Path, threads: int, cpu_variant: str) -> None:
    """The self-test itself: load, prefill, decode greedily, print one JSON line."""
    from warmloop.engine.backend import BatchRow, LlamaBackend
    from warmloop.engine.request import SamplingParams
    from warmloop.engine.sampling import make_sampler

    backend = LlamaBackend(
        model, ctx_per_seq=256, n_seq=1, n_threads=threads, n_batch=128, cpu_variant=cpu_variant
    )
    try:
        text = "The quick brown fox jumps over the lazy dog. " * 32
        tokens = backend.tokenize(text)[:PREFILL_TOKENS]
        t0 = time.perf_counter()
        rows = [BatchRow(t, i, 0, i == len(tokens) - 1) for i, t in enumerate(tokens)]
        backend.decode(rows)
        t1 = time.perf_counter()
        sampler = make_sampler(backend.vocab, SamplingParams(max_tokens=DECODE_TOKENS))
        out: list[int] = []
        index = len(rows) - 1
        for k in range(DECODE_TOKENS):
            token = sampler.sample(backend.ctx, index)
            out.append(token)
            backend.decode([BatchRow(token, len(tokens) + k, 0, True)])
            index = 0
        t2 = time.perf_counter()
        sampler.free()
        piece = b"".join(backend.token_bytes(t) for t in out).decode("utf-8", "replace")
        result = {
            "prefill_tokens": len(tokens),
            "decode_tokens": len(out),
            "prefill_ms": round((t1 - t0) * 1000.0, 2),
            "decode_ms": round((t2 - t1) * 1000.0, 2),
            "n_ctx_train": backend.n_ctx_train,
            "text": piece,
            "cpu_variant": backend.cpu.name,
            "cpu_libraries": _mapped_cpu_libraries(),
        }
    finally:
        backend.close()
    print(json.dumps(result))


# ----- `warmloop doctor` --------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="GGUF path, HF cache repo file or Ollama name (default: embedded)",
    )
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument(
        "--cpu-variant", default=cpu.AUTO, help="check this CPU variant instead of auto's"
    )


def _cpu_rows(wanted: str) -> tuple[list[tuple[str, str]], bool]:
    """What the CPU advertises, what the OS enables, which variant runs and why."""
    here = cpu.probe()
    shown = sorted(here.flags - {"osxsave"})
    rows = [("CPU advertises", f"{' '.join(shown) or 'unknown'} (read by {here.source})")]
    states = [
        name
        for name, bits in (
            ("AVX", cpu.XCR0_AVX),
            ("AVX-512", cpu.XCR0_AVX512),
            ("AMX", cpu.XCR0_AMX),
        )
        if here.xcr0 & bits == bits
    ]
    rows.append(("OS enables (XCR0)", f"{here.xcr0:#x}: {' '.join(states) or 'none beyond SSE'}"))
    rows.append(("AMX granted (arch_prctl)", "yes" if here.amx_permission else "no"))
    lib = cpu.library_dir()
    try:
        choice = cpu.choose(here, cpu.read_manifest(lib), wanted)
    except cpu.CpuVariantError as exc:
        return [*rows, ("problem", str(exc))], False
    rows.append(("CPU variant", f"{choice.name} ({choice.reason})"))
    for name, why in choice.rejected.items():
        if why:
            rows.append((f"  not {name}", why[0]))
    if choice.variant is None or lib is None:
        return rows, True
    counts = instruction_counts(lib / choice.variant.file)
    if counts is None:
        rows.append(("instructions", "objdump not installed: not checked"))
        return rows, True
    rows.append(
        (
            f"in {choice.variant.file}",
            f"{counts['avx512']} AVX-512, {counts['amx']} AMX instructions",
        )
    )
    forbidden = []
    if counts["amx"] and not here.amx_permission:
        forbidden.append("AMX")
    if counts["avx512"] and here.xcr0 & cpu.XCR0_AVX512 != cpu.XCR0_AVX512:
        forbidden.append("AVX-512")
    if forbidden:
        rows.append(
            ("problem", f"it holds {' and '.join(forbidden)} the OS has not enabled. {FIX}")
        )
        return rows, False
    return rows, True


def report(
    model: Path, threads: int, cpu_variant: str = cpu.AUTO
) -> tuple[list[tuple[str, str]], bool]:
    """Rows of (what, finding) and whether everything is fine."""
    rows, ok = _cpu_rows(cpu_variant)
    if not ok:
        return rows, False
    features = build_features() if cpu_variant == cpu.AUTO else {}
    used = [k for k, v in features.items() if v == "1"]
    if used:
        rows.append(("CPU backend features", " ".join(used)))
    rows.append(("model", f"{model} ({model.stat().st_size / 2**20:.1f} MiB)"))
    try:
        result = self_test(model, threads=threads, cpu_variant=cpu_variant)
    except SelfTestFailed as exc:
        rows.append(("self-test", f"FAILED: {exc}"))
        return rows, False
    prefill_rate = result.prefill_tokens / max(result.prefill_ms, 1e-6) * 1000.0
    decode_rate = result.decode_tokens / max(result.decode_ms, 1e-6) * 1000.0
    rows.append(("model context (trained)", str(result.n_ctx_train)))
    rows.append(
        (
            "self-test",
            f"ok on the {result.cpu_variant} CPU variant ({', '.join(result.cpu_libraries)}): "
            f"{result.prefill_tokens}-token prefill in {result.prefill_ms:.0f} ms "
            f"({prefill_rate:.0f} tok/s), {result.decode_tokens} tokens decoded in "
            f"{result.decode_ms:.0f} ms ({decode_rate:.0f} tok/s) on {threads} threads",
        )
    )
    return rows, ok


def run(args: argparse.Namespace) -> None:
    model = resolve_model(args.model) if args.model is not None else embedded_model_path()
    rows, ok = report(model, args.threads, args.cpu_variant)
    width = max(len(what) for what, _ in rows)
    for what, finding in rows:
        print(f"{what:<{width}}  {finding}")
    if not ok:
        raise SystemExit(1)


def _main(argv: list[str]) -> Any:
    if len(argv) == 4 and argv[0] == "--child":
        return _child(Path(argv[1]), int(argv[2]), argv[3])
    raise SystemExit("usage: warmloop doctor (this module's --child mode is internal)")


if __name__ == "__main__":
    _main(sys.argv[1:])
