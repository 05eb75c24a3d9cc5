"""The CPU variant runs as chosen: forced to the AVX2 baseline, a process maps only the
baseline's llama.cpp CPU library, reports no AVX-512 and still decodes; auto loads the
variant `cpu.choose` picks for this machine. Each in a child process: a process keeps
the variant it loaded first."""

from __future__ import annotations

import subprocess
import sys

import pytest

from warmloop import doctor
from warmloop.config import embedded_model_path
from warmloop.engine import cpu


def test_the_avx2_variant_can_be_forced() -> None:
    result = doctor.self_test(embedded_model_path(), threads=2, cpu_variant="avx2")
    assert result.cpu_variant == "avx2"
    assert result.cpu_libraries == ["libggml-cpu.so"]
    assert result.decode_tokens == doctor.DECODE_TOKENS and result.text


def test_auto_loads_the_variant_chosen_for_this_machine() -> None:
    chosen = cpu.choose_here()
    assert chosen.variant is not None, "the engine wheel has no CPU variants: run `make setup`"
    result = doctor.self_test(embedded_model_path(), threads=2)
    assert result.cpu_variant == chosen.name
    assert result.cpu_libraries == [chosen.variant.file]


def test_a_variant_that_cannot_run_here_is_refused_before_anything_loads() -> None:
    variants = cpu.read_manifest(cpu.library_dir()) or []
    blocked = [v.name for v in variants if cpu.probe().lacks(v.features)]
    if not blocked:
        pytest.skip("every variant of this build can run on this machine")
    done = subprocess.run(
        [sys.executable, "-m", "warmloop.cli", "serve", "--cpu-variant", blocked[-1]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert f"--cpu-variant {blocked[-1]} cannot run here" in done.stderr
