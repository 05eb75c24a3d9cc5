"""Choosing llama.cpp's CPU backend variant from what the CPU advertises *and* what the
OS enables: an AMX or AVX-512 variant is never picked (or forced) where the kernel has
not enabled that state, whatever CPUID says."""

from __future__ import annotations

from pathlib import Path

import pytest

from warmloop.engine import cpu

BASE = ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2")
AVX512 = (*BASE, "AVX512")
BF16 = (*AVX512, "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16")
BUILD = [
    cpu.Variant("avx2", "libggml-cpu.so", BASE),
    cpu.Variant("avx2-vnni", "libggml-cpu-avx2-vnni.so", (*BASE, "AVX_VNNI")),
    cpu.Variant("avx512", "libggml-cpu-avx512.so", AVX512),
    cpu.Variant(
        "avx512-vnni", "libggml-cpu-avx512-vnni.so", (*AVX512, "AVX512_VBMI", "AVX512_VNNI")
    ),
    cpu.Variant("avx512-bf16", "libggml-cpu-avx512-bf16.so", BF16),
    cpu.Variant("amx", "libggml-cpu-amx.so", (*BF16, "AMX_TILE", "AMX_INT8")),
]
EVERY_FLAG = frozenset(cpu._CPUID_BITS)  # a Sapphire Rapids-like CPU: advertises it all
ALL_STATES = cpu.XCR0_SSE | cpu.XCR0_AVX | cpu.XCR0_AVX512 | cpu.XCR0_AMX


def machine(
    xcr0: int = ALL_STATES, amx: bool = True, flags: frozenset[str] = EVERY_FLAG
) -> cpu.Cpu:
    return cpu.Cpu(flags, xcr0, amx, "test")


def test_amx_advertised_but_not_granted_gets_the_best_avx512_variant() -> None:
    choice = cpu.choose(machine(amx=False), BUILD)
    assert choice.name == "avx512-bf16"
    assert "arch_prctl" in choice.rejected["amx"][0]
    assert cpu.choose(machine(), BUILD).name == "amx"


def test_avx512_advertised_but_not_enabled_gets_avx2() -> None:
    no_avx512 = cpu.XCR0_SSE | cpu.XCR0_AVX | cpu.XCR0_AMX  # the OS keeps ZMM state off
    choice = cpu.choose(machine(no_avx512), BUILD)
    assert choice.name == "avx2-vnni"
    assert "not enabled by the OS" in choice.rejected["avx512"][0]
    plain = machine(no_avx512, flags=EVERY_FLAG - {"avx_vnni"})
    assert cpu.choose(plain, BUILD).name == "avx2"


def test_this_machine_kind_without_amx_or_vnni() -> None:
    flags = EVERY_FLAG - {"amx_tile", "amx_int8", "amx_bf16", "avx512_bf16"}
    assert cpu.choose(machine(flags=flags, amx=False), BUILD).name == "avx512-vnni"


@pytest.mark.parametrize("xcr0", [0, cpu.XCR0_SSE, cpu.XCR0_SSE | cpu.XCR0_AVX512])
def test_no_avx_state_means_no_variant_at_all(xcr0: int) -> None:
    with pytest.raises(cpu.CpuVariantError, match="no CPU backend variant"):
        cpu.choose(machine(xcr0), BUILD)


def test_forcing_a_variant() -> None:
    assert cpu.choose(machine(), BUILD, "avx2").name == "avx2"
    assert cpu.choose(machine(), BUILD, "avx2").reason == "forced by --cpu-variant"
    with pytest.raises(cpu.CpuVariantError, match="cannot run here: AMX_TILE was not granted"):
        cpu.choose(machine(amx=False), BUILD, "amx")
    with pytest.raises(cpu.CpuVariantError, match=r"no such variant \(built: avx2, avx2-vnni"):
        cpu.choose(machine(), BUILD, "zen9")


def test_a_build_without_variants_runs_its_own_backend() -> None:
    assert cpu.choose(machine(), None).name == "built-in"
    with pytest.raises(cpu.CpuVariantError, match="no variants"):
        cpu.choose(machine(), None, "avx2")


def test_every_choice_needs_only_what_the_os_allows() -> None:
    """Every XCR0 state combination, with and without AMX permission, on a CPU that
    advertises everything: the chosen variant's features need nothing the OS withheld."""
    for xcr0 in range(0, 1 << 19):
        if xcr0 & ~ALL_STATES:
            continue
        for amx in (False, True):
            here = machine(xcr0, amx)
            try:
                choice = cpu.choose(here, BUILD)
            except cpu.CpuVariantError:
                assert xcr0 & (cpu.XCR0_SSE | cpu.XCR0_AVX) != cpu.XCR0_SSE | cpu.XCR0_AVX
                continue
            assert choice.variant is not None
            needs = [cpu.FEATURE_NEEDS[f] for f in choice.variant.features]
            assert all(n.xcr0 & ~xcr0 == 0 for n in needs), (hex(xcr0), choice.name)
            assert amx or not any(n.amx_permission for n in needs), (hex(xcr0), choice.name)


def test_the_manifest_format(tmp_path: Path) -> None:
    assert cpu.read_manifest(tmp_path) is None
    (tmp_path / cpu.MANIFEST).write_text(
        "avx2 libggml-cpu.so SSE42 AVX F16C FMA AVX2 BMI2\n# note\n\namx libggml-cpu-amx.so AMX_TILE \n"
    )
    variants = cpu.read_manifest(tmp_path)
    assert variants == [
        cpu.Variant("avx2", "libggml-cpu.so", BASE),
        cpu.Variant("amx", "libggml-cpu-amx.so", ("AMX_TILE",)),
    ]


def test_cpuid_agrees_with_the_kernel_on_this_machine() -> None:
    """The instructions read by the CPU itself agree with the kernel's view (which lists
    only flags whose state it enables); skipped where code cannot run from memory."""
    read = cpu._run_machine_code()
    if read is None:
        pytest.skip("this process may not execute code from memory (W^X)")
    flags, xcr0 = read
    kernel_flags, kernel_xcr0 = cpu._proc_cpuinfo()
    assert flags - {"osxsave"} >= kernel_flags
    assert xcr0 & kernel_xcr0 == kernel_xcr0
