"""The installed engine build: llama.cpp's CPU backend as variants, each holding exactly
the instructions its manifest line says, so that no variant `cpu.choose` can pick without
the OS's permission holds AMX or AVX-512 instructions (a CPU may advertise AMX while its
OS never granted the tile state: SIGILL on the first prefill)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

from warmloop import doctor
from warmloop.engine import cpu

ROOT = Path(__file__).resolve().parents[2]


def _variants() -> list[cpu.Variant]:
    variants = cpu.read_manifest(cpu.library_dir())
    assert variants, "the engine wheel has no CPU variant manifest: run `make setup`"
    return variants


@cache
def _counts(file: str) -> dict[str, int]:
    if shutil.which("objdump") is None:
        if os.environ.get("CI"):
            pytest.fail("objdump (binutils) is missing")
        pytest.skip("objdump (binutils) is not installed")
    lib = cpu.library_dir()
    assert lib is not None
    counts = doctor.instruction_counts(lib / file)
    assert counts is not None
    return counts


def test_each_variant_holds_only_the_instructions_its_manifest_names() -> None:
    for variant in _variants():
        counts = _counts(variant.file)
        has_avx512 = "AVX512" in variant.features
        has_amx = any(f.startswith("AMX") for f in variant.features)
        # ...and the check can fail: the variants built for them do use them.
        assert (counts["avx512"] > 0) == has_avx512, (variant, counts)
        assert (counts["amx"] > 0) == has_amx, (variant, counts)


def test_no_variant_chosen_without_the_os_permission_holds_amx_or_avx512() -> None:
    """Every OS state (AVX-512 enabled or not, AMX enabled or not, AMX granted or not) on
    a CPU that advertises every flag, auto and every forced name: what can be chosen
    holds no instruction the OS withheld (by objdump, not by its name)."""
    variants = _variants()
    flags = frozenset(cpu._CPUID_BITS)
    base = cpu.XCR0_SSE | cpu.XCR0_AVX
    for avx512, amx_state, granted in itertools.product((False, True), repeat=3):
        xcr0 = base | (cpu.XCR0_AVX512 if avx512 else 0) | (cpu.XCR0_AMX if amx_state else 0)
        here = cpu.Cpu(flags, xcr0, granted, "test")
        amx_allowed = avx512 and amx_state and granted
        for wanted in (cpu.AUTO, *(v.name for v in variants)):
            try:
                choice = cpu.choose(here, variants, wanted)
            except cpu.CpuVariantError:
                continue
            assert choice.variant is not None
            counts = _counts(choice.variant.file)
            assert avx512 or counts["avx512"] == 0, (wanted, choice.name, hex(xcr0))
            assert amx_allowed or counts["amx"] == 0, (wanted, choice.name, hex(xcr0), granted)


def test_the_manifest_is_the_makefiles() -> None:
    """The installed wheel was built from the Makefile's flags (a stale wheel is caught)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "print-engine"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    settings = dict(line.split("=", 1) for line in out.splitlines())
    baseline = tuple(
        f for f in cpu.FEATURE_NEEDS if f"-DGGML_{f}=ON" in settings["ENGINE_CMAKE_ARGS"].split()
    )
    expected = [cpu.Variant("avx2", "libggml-cpu.so", baseline)]
    for entry in settings["ENGINE_CPU_VARIANTS"].split():
        name, extra = entry.split(":")
        expected.append(cpu.Variant(name, f"libggml-cpu-{name}.so", (*baseline, *extra.split(","))))
    assert _variants() == expected


def test_instruction_counting() -> None:
    listing = (
        "  4010:\t62 f1 7c 48 10 06    \tvmovups (%rsi),%zmm0\n"
        "  4016:\tc5 fc 10 06          \tvmovups (%rsi),%ymm0\n"
        "  401a:\t67 62 f2 7d 08 50 c1 \tvpdpbusd %xmm1,%xmm0,%xmm0\n"
        "  4020:\tc4 e2 7b 4b 04 16    \ttileloadd (%rsi,%rdx,1),%tmm0\n"
        "  4026:\tc4 e2 73 5e c2       \ttdpbssd %tmm0,%tmm1,%tmm2\n"
    )
    assert doctor.count_instructions(listing) == {"amx": 2, "avx512": 2}
