"""Which llama.cpp CPU backend variant this process may run: what the CPU advertises
(CPUID) *and* what its OS has enabled (XCR0 via `xgetbv`; AMX via `arch_prctl`).

The engine wheel holds several builds of llama.cpp's CPU backend (scripts/build_engine.sh
writes them and a manifest, `cpu-variants.txt`, beside llama.cpp's libraries: one line
per variant, `name file GGML_FEATURE...`). ggml would pick among them by CPUID alone, and a
CPU that advertises AMX while its kernel never enabled the tile state then dies with
SIGILL on the first prefill; AVX-512 is the same story with the XCR0 opmask/ZMM bits. So
warmloop chooses here, from both facts, and `backend.py` loads exactly that file.

No llama.cpp import: this module only reads the CPU, the OS and the manifest.
"""

from __future__ import annotations

import ctypes
import importlib.util
import mmap
import platform
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "cpu-variants.txt"
AUTO = "auto"

# XSAVE state components (bits of XCR0) each kind of register needs the OS to enable.
XCR0_SSE = 1 << 1
XCR0_AVX = 1 << 2  # upper halves of YMM
XCR0_AVX512 = (1 << 5) | (1 << 6) | (1 << 7)  # opmask, ZMM_Hi256, Hi16_ZMM
XCR0_AMX = (1 << 17) | (1 << 18)  # XTILECFG, XTILEDATA

# (leaf, subleaf, register index eax=0 ebx=1 ecx=2 edx=3, bit) of each CPUID flag.
_CPUID_BITS: dict[str, tuple[int, int, int, int]] = {
    "sse4_2": (1, 0, 2, 20),
    "fma": (1, 0, 2, 12),
    "osxsave": (1, 0, 2, 27),
    "avx": (1, 0, 2, 28),
    "f16c": (1, 0, 2, 29),
    "avx2": (7, 0, 1, 5),
    "bmi2": (7, 0, 1, 8),
    "avx512f": (7, 0, 1, 16),
    "avx512dq": (7, 0, 1, 17),
    "avx512cd": (7, 0, 1, 28),
    "avx512bw": (7, 0, 1, 30),
    "avx512vl": (7, 0, 1, 31),
    "avx512_vbmi": (7, 0, 2, 1),
    "avx512_vnni": (7, 0, 2, 11),
    "amx_bf16": (7, 0, 3, 22),
    "amx_tile": (7, 0, 3, 24),
    "amx_int8": (7, 0, 3, 25),
    "avx_vnni": (7, 1, 0, 4),
    "avx512_bf16": (7, 1, 0, 5),
}


@dataclass(frozen=True)
class Needs:
    """What one GGML build feature needs: CPUID flags, XCR0 state, AMX permission."""

    flags: frozenset[str]
    xcr0: int = XCR0_SSE
    amx_permission: bool = False


def _needs(*flags: str, xcr0: int = XCR0_SSE, amx: bool = False) -> Needs:
    return Needs(frozenset(flags), xcr0, amx)


_AVX = XCR0_SSE | XCR0_AVX
_AVX512 = _AVX | XCR0_AVX512
# The instructions each GGML_<FEATURE> build option lets the compiler use (ggml-cpu's
# CMakeLists: GGML_AVX512 is -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw).
FEATURE_NEEDS: dict[str, Needs] = {
    "SSE42": _needs("sse4_2"),
    "AVX": _needs("avx", xcr0=_AVX),
    "F16C": _needs("f16c", xcr0=_AVX),
    "FMA": _needs("fma", xcr0=_AVX),
    "AVX2": _needs("avx2", xcr0=_AVX),
    "BMI2": _needs("bmi2"),
    "AVX_VNNI": _needs("avx_vnni", xcr0=_AVX),
    "AVX512": _needs("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw", xcr0=_AVX512),
    "AVX512_VBMI": _needs("avx512_vbmi", xcr0=_AVX512),
    "AVX512_VNNI": _needs("avx512_vnni", xcr0=_AVX512),
    "AVX512_BF16": _needs("avx512_bf16", xcr0=_AVX512),
    "AMX_TILE": _needs("amx_tile", xcr0=_AVX512 | XCR0_AMX, amx=True),
    "AMX_INT8": _needs("amx_int8", xcr0=_AVX512 | XCR0_AMX, amx=True),
    "AMX_BF16": _needs("amx_bf16", xcr0=_AVX512 | XCR0_AMX, amx=True),
}


class CpuVariantError(RuntimeError):
    """The requested CPU variant does not exist in this build or cannot run here."""


@dataclass(frozen=True)
class Cpu:
    """What this CPU advertises and what its OS allows."""

    flags: frozenset[str]
    xcr0: int
    amx_permission: bool
    source: str  # "cpuid" or "/proc/cpuinfo" (when code cannot be executed from memory)

    def lacks(self, features: Iterable[str]) -> list[str]:
        """Why a build with `features` cannot run here (empty: it can)."""
        reasons: list[str] = []
        for feature in features:
            needs = FEATURE_NEEDS.get(feature)
            if needs is None:
                reasons.append(f"{feature} is unknown to warmloop")
                continue
            missing = sorted(needs.flags - self.flags)
            if missing:
                reasons.append(f"{feature} needs CPU flags {', '.join(missing)}")
            elif needs.xcr0 & ~self.xcr0:
                reasons.append(f"{feature} is not enabled by the OS (XCR0 {self.xcr0:#x})")
            elif needs.amx_permission and not self.amx_permission:
                reasons.append(f"{feature} was not granted by the OS (arch_prctl)")
        return reasons


@dataclass(frozen=True)
class Variant:
    name: str
    file: str
    features: tuple[str, ...]


@dataclass(frozen=True)
class Choice:
    """The variant to load and why; `variant` is None when the build has no manifest
    (a llama-cpp-python built without GGML_BACKEND_DL links its one CPU backend)."""

    variant: Variant | None
    reason: str
    rejected: Mapping[str, list[str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.variant.name if self.variant is not None else "built-in"


def library_dir() -> Path | None:
    """Where llama-cpp-python keeps llama.cpp's libraries and the manifest (found
    without importing it, so the choice can be made before anything loads)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "lib"


def read_manifest(lib_dir: Path | None) -> list[Variant] | None:
    """The variants the engine build holds, in build order (None: no manifest)."""
    if lib_dir is None:
        return None
    try:
        text = (lib_dir / MANIFEST).read_text()
    except FileNotFoundError:
        return None
    variants = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#"):
            variants.append(Variant(parts[0], parts[1], tuple(parts[2:])))
    return variants


def choose(cpu: Cpu, variants: list[Variant] | None, wanted: str = AUTO) -> Choice:
    """The variant to run: `wanted` if it can run here, else (auto) the runnable one with
    the most features, the later in the build's list on a tie."""
    if variants is None:
        if wanted != AUTO:
            raise CpuVariantError(
                f"--cpu-variant {wanted}: this llama-cpp-python build has one CPU backend "
                "and no variants (rebuild with `make setup`)"
            )
        return Choice(None, "this llama-cpp-python build has one CPU backend")
    rejected = {v.name: cpu.lacks(v.features) for v in variants}
    runnable = [v for v in variants if not rejected[v.name]]
    if wanted != AUTO:
        found = next((v for v in variants if v.name == wanted), None)
        if found is None:
            known = ", ".join(v.name for v in variants)
            raise CpuVariantError(f"--cpu-variant {wanted}: no such variant (built: {known})")
        if rejected[wanted]:
            raise CpuVariantError(
                f"--cpu-variant {wanted} cannot run here: {'; '.join(rejected[wanted])}"
            )
        return Choice(found, "forced by --cpu-variant", rejected)
    if not runnable:
        details = "; ".join(f"{name}: {r[0]}" for name, r in rejected.items())
        raise CpuVariantError(f"no CPU backend variant of this build can run here ({details})")
    best = max(enumerate(runnable), key=lambda iv: (len(iv[1].features), iv[0]))[1]
    return Choice(best, f"the widest of {len(runnable)} runnable", rejected)


# ----- reading the CPU and the OS -------------------------------------------------------
# x86-64 System V machine code, run from an executable mapping (no compiler needed):
# cpuid(leaf=edi, subleaf=esi, out=rdx -> uint32[4] eax, ebx, ecx, edx)
_CPUID_CODE = bytes.fromhex(
    "53"  # push rbx (cpuid clobbers it; callee-saved)
    "89f8"  # mov eax, edi
    "89f1"  # mov ecx, esi
    "4989d0"  # mov r8, rdx
    "0fa2"  # cpuid
    "418900"  # mov [r8], eax
    "41895804"  # mov [r8+4], ebx
    "41894808"  # mov [r8+8], ecx
    "4189500c"  # mov [r8+12], edx
    "5b"  # pop rbx
    "c3"  # ret
)
# xgetbv(index=edi) -> edx:eax as one uint64
_XGETBV_CODE = bytes.fromhex(
    "89f9"  # mov ecx, edi
    "0f01d0"  # xgetbv
    "48c1e220"  # shl rdx, 32
    "4809d0"  # or rax, rdx
    "c3"  # ret
)
_SYS_ARCH_PRCTL = 158
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
# /proc/cpuinfo names of the flags above where they differ
_PROC_NAMES = {"avx512_vbmi": "avx512vbmi"}


def _run_machine_code() -> tuple[frozenset[str], int] | None:
    """CPUID flags and XCR0 read by the instructions themselves (None: this process may
    not execute code from memory, e.g. under a W^X policy)."""
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, AttributeError, ValueError):
        return None
    try:
        page.write(_CPUID_CODE + b"\x90" * (64 - len(_CPUID_CODE)) + _XGETBV_CODE)
        # The view is a temporary: released at once, so the page can be closed below.
        base = ctypes.addressof(ctypes.c_char.from_buffer(page))
        cpuid = ctypes.CFUNCTYPE(
            None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)
        )(base)
        xgetbv = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint32)(base + 64)
        regs = (ctypes.c_uint32 * 4)()
        cpuid(0, 0, regs)
        max_leaf = regs[0]
        cpuid(7, 0, regs)
        max_sub7 = regs[0] if max_leaf >= 7 else 0
        flags = set()
        for name, (leaf, sub, reg, bit) in _CPUID_BITS.items():
            if leaf > max_leaf or (leaf == 7 and sub > max_sub7):
                continue
            cpuid(leaf, sub, regs)
            if regs[reg] >> bit & 1:
                flags.add(name)
        # xgetbv faults unless the OS set CR4.OSXSAVE, which CPUID reports.
        xcr0 = int(xgetbv(0)) if "osxsave" in flags else 0
        return frozenset(flags), xcr0
    finally:
        page.close()


def _proc_cpuinfo() -> tuple[frozenset[str], int]:
    """The kernel's view: it lists only the flags whose state it enables."""
    listed: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    listed = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    flags = frozenset(n for n in _CPUID_BITS if _PROC_NAMES.get(n, n) in listed)
    xcr0 = XCR0_SSE
    if "avx" in flags:
        xcr0 |= XCR0_AVX
    if "avx512f" in flags:
        xcr0 |= XCR0_AVX512
    if "amx_tile" in flags:
        xcr0 |= XCR0_AMX
    return flags, xcr0


def _request_amx() -> bool:
    """Ask Linux for the AMX tile data state for this process (needed before any tile
    instruction since 5.16; refused where the kernel does not support it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0)
    except (OSError, AttributeError):
        return False


def choose_here(wanted: str = AUTO) -> Choice:
    """`choose` for this machine and the installed engine build."""
    return choose(probe(), read_manifest(library_dir()), wanted)


def probe() -> Cpu:
    """This CPU and OS (x86-64 Linux; elsewhere nothing beyond the baseline is known)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return Cpu(frozenset(), 0, False, "unsupported platform")
    read = _run_machine_code()
    flags, xcr0 = read if read is not None else _proc_cpuinfo()
    source = "cpuid" if read is not None else "/proc/cpuinfo"
    amx = False
    if {"amx_tile", "amx_int8"} <= flags and xcr0 & XCR0_AMX == XCR0_AMX:
        amx = _request_amx()
    return Cpu(flags, xcr0, amx, source)
