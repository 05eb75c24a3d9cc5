"""The installed engine build is portable: no AMX instruction anywhere in llama.cpp's CPU
library (a CPU may advertise AMX while its OS never enabled it: SIGILL on the first
prefill), and the build reports the AVX2 baseline the Makefile asks for."""

from __future__ import annotations

import os
import shutil

import pytest

from warmloop import doctor


def test_the_cpu_library_holds_no_amx_instruction() -> None:
    if shutil.which("objdump") is None:
        if os.environ.get("CI"):
            pytest.fail("objdump (binutils) is missing")
        pytest.skip("objdump (binutils) is not installed")
    library = doctor.engine_library()
    assert library is not None and library.name.startswith("libggml-cpu"), library
    assert doctor.amx_instructions(library) == 0


def test_the_build_uses_avx2_and_no_amx_or_native_only_features() -> None:
    features = doctor.build_features()
    assert features.get("AVX2") == "1", features
    assert features.get("AMX_INT8", "0") == "0", features
    assert features.get("AVX512", "0") == "0", features  # the portable baseline is AVX2


def test_the_amx_pattern_finds_amx_mnemonics() -> None:
    listing = "  4010:\ttileloadd (%rsi,%rdx,1),%tmm0\n  4016:\ttdpbssd %tmm2,%tmm1,%tmm0\n"
    assert len(doctor.AMX_MNEMONICS.findall(listing)) == 2
    assert not doctor.AMX_MNEMONICS.findall("  4010:\tvpdpbusd %ymm1,%ymm2,%ymm3\n")
