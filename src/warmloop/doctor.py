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
import ctypes
import json
import os
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
from warmloop.models import resolve_model

PREFILL_TOKENS = 64
DECODE_TOKENS = 8
SELF_TEST_TIMEOUT_S = 180.0
CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "amx_tile", "amx_int8")
# AMX mnemonics: any of them in the engine's CPU library means SIGILL where the OS has
# not enabled the AMX tile state.
AMX_MNEMONICS = re.compile(
    r"\b(ldtilecfg|sttilecfg|tileloadd|tileloaddt1|tilestored|tilezero|tilerelease|"
    r"tdpbssd|tdpbsud|tdpbusd|tdpbuud|tdpbf16ps|tdpfp16ps)\b"
)
FIX = (
    "Rebuild the engine portably from a clean environment: `make clean && make setup` "
    "(the Makefile builds llama-cpp-python with explicit AVX2 flags, never -march=native, "
    "and never reuses a wheel built with other flags)."
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


# ----- CPU and build facts ------------------------------------------------------------
def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def os_enables_amx() -> bool | None:
    """Whether the kernel supports the AMX tile state for user space (None: unknown).

    arch_prctl(ARCH_GET_XCOMP_SUPP) returns the XSAVE features the kernel supports; bit
    18 is XTILEDATA. CPUID alone (what ggml checks) says nothing about this.
    """
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        supported = ctypes.c_uint64(0)
        sys_arch_prctl, arch_get_xcomp_supp = 158, 0x1021
        if libc.syscall(sys_arch_prctl, arch_get_xcomp_supp, ctypes.byref(supported)) != 0:
            return None
        return bool(supported.value & (1 << 18))
    except (OSError, AttributeError):
        return None


def engine_library() -> Path | None:
    """The installed llama.cpp CPU backend library (libggml-cpu), if found."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    lib = Path(spec.origin).parent / "lib"
    found = sorted(lib.glob("libggml-cpu*.so*")) or sorted(lib.glob("libllama*.so*"))
    return found[0] if found else None


def amx_instructions(library: Path) -> int | None:
    """How many AMX instructions `library` holds (None: objdump is not installed)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        return None
    out = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", str(library)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(AMX_MNEMONICS.findall(out))


def build_features() -> dict[str, str]:
    """What llama.cpp reports it was built with."""
    from warmloop.engine.backend import system_info

    return system_info()


# ----- the self-test --------------------------------------------------------------------
def self_test(model: Path, *, threads: int) -> SelfTestResult:
    """Prefill 64 tokens and decode 8 in a child process; raise SelfTestFailed with
    the cause and the fix if that child crashes, hangs or fails."""
    cmd = [sys.executable, "-m", "warmloop.doctor", "--child", str(model), str(threads)]
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
            raise SelfTestFailed(
                "the engine crashed with SIGILL (illegal instruction) in its self-test: this "
                "llama-cpp-python build uses CPU instructions this machine or its OS does not "
                f"enable (AMX advertised: {'amx_tile' in cpu_flags()}, enabled by the OS: "
                f"{os_enables_amx()}). {FIX}"
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


def _child(model: Path, threads: int) -> None:
    """The self-test itself: load, prefill, decode greedily, print one JSON line."""
    from warmloop.engine.backend import BatchRow, LlamaBackend
    from warmloop.engine.request import SamplingParams
    from warmloop.engine.sampling import make_sampler

    backend = LlamaBackend(model, ctx_per_seq=256, n_seq=1, n_threads=threads, n_batch=128)
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


def report(model: Path, threads: int) -> tuple[list[tuple[str, str]], bool]:
    """Rows of (what, finding) and whether everything is fine."""
    ok = True
    flags = cpu_flags()
    rows = [("CPU flags", " ".join(f for f in CPU_FLAGS if f in flags) or "unknown")]
    amx_os = os_enables_amx()
    rows.append(("AMX enabled by the OS", {None: "unknown", True: "yes", False: "no"}[amx_os]))
    if "avx2" not in flags:
        rows.append(("problem", "this CPU lacks AVX2, which the engine build requires"))
        ok = False
    features = build_features()
    used = [k for k, v in features.items() if v == "1"]
    rows.append(("engine build", " ".join(used) or "no CPU features reported"))
    library = engine_library()
    if library is not None:
        count = amx_instructions(library)
        found = "objdump not installed" if count is None else str(count)
        rows.append((f"AMX instructions in {library.name}", found))
        if count:
            rows.append(("problem", f"the engine build holds AMX instructions. {FIX}"))
            ok = False
    rows.append(("model", f"{model} ({model.stat().st_size / 2**20:.1f} MiB)"))
    try:
        result = self_test(model, threads=threads)
    except SelfTestFailed as exc:
        rows.append(("self-test", f"FAILED: {exc}"))
        return rows, False
    prefill_rate = result.prefill_tokens / max(result.prefill_ms, 1e-6) * 1000.0
    decode_rate = result.decode_tokens / max(result.decode_ms, 1e-6) * 1000.0
    rows.append(("model context (trained)", str(result.n_ctx_train)))
    rows.append(
        (
            "self-test",
            f"ok: {result.prefill_tokens}-token prefill in {result.prefill_ms:.0f} ms "
            f"({prefill_rate:.0f} tok/s), {result.decode_tokens} tokens decoded in "
            f"{result.decode_ms:.0f} ms ({decode_rate:.0f} tok/s) on {threads} threads",
        )
    )
    return rows, ok


def run(args: argparse.Namespace) -> None:
    model = resolve_model(args.model) if args.model is not None else embedded_model_path()
    rows, ok = report(model, args.threads)
    width = max(len(what) for what, _ in rows)
    for what, finding in rows:
        print(f"{what:<{width}}  {finding}")
    if not ok:
        raise SystemExit(1)


def _main(argv: list[str]) -> Any:
    if len(argv) == 3 and argv[0] == "--child":
        return _child(Path(argv[1]), int(argv[2]))
    raise SystemExit("usage: warmloop doctor (this module's --child mode is internal)")


if __name__ == "__main__":
    _main(sys.argv[1:])
