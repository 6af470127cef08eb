"""A run on the CPU computes in bfloat16 only where this machine runs it fast: presets follow
the measurement (tinylm.machine), what the user typed is kept with a warning, and the run's
start says which, in one line."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from conftest import compose, quick_overrides, train_cli

from tinylm.config import TrainConfig
from tinylm.machine import MatmulSpeed, cache_file, cache_key, matmul_speed
from tinylm.precision import choose_precision

SLOW = MatmulSpeed(cpu="AMD EPYC", isa="AVX2", bf16_instructions="none", float32_gflops=54.0,
                   bfloat16_gflops=1.5)
FAST = MatmulSpeed(cpu="Intel Xeon", isa="AVX512", bf16_instructions="amx_bf16 avx512_bf16",
                   float32_gflops=46.0, bfloat16_gflops=960.0)
PARITY = MatmulSpeed(cpu="Intel Xeon", isa="AVX512", bf16_instructions="none", float32_gflops=100.0,
                     bfloat16_gflops=110.0)


def config(*overrides: str) -> TrainConfig:
    return TrainConfig.from_dict(compose(*overrides))


@pytest.mark.parametrize(("speed", "typed", "precision", "line"), [
    (SLOW, False, "32-true", "precision: 32-true instead of experiment=shakespeare_char's bf16-mixed: "
                             "bfloat16 matmuls run at 0.028× float32's speed on this CPU (AMD EPYC, AVX2, "
                             "bfloat16 instructions: none)"),
    (SLOW, True, "bf16-mixed", "warning: trainer.precision=bf16-mixed (kept as you asked; 32-true is faster "
                               "here): bfloat16 matmuls run at 0.028× float32's speed"),
    (FAST, False, "bf16-mixed", "precision: bf16-mixed: bfloat16 matmuls run at 21× float32's speed"),
])
def test_bf16_mixed_follows_the_machine_unless_typed(speed, typed, precision, line) -> None:
    overrides = ["experiment=shakespeare_char", *(["trainer.precision=bf16-mixed"] if typed else [])]
    chosen, said = choose_precision(config(*overrides), overrides, speed=speed)
    assert chosen.trainer["precision"] == precision
    assert said.startswith(line) and "\n" not in said


@pytest.mark.parametrize(("speed", "overrides", "dtype", "starts"), [
    (SLOW, ["experiment=speedrun"], "float32", "precision: 32-true, Muon's iterations in float32: "),
    (FAST, ["experiment=speedrun"], "bfloat16", "precision: 32-true, Muon's iterations in bfloat16: "),
    # Barely faster is not worth bfloat16's rounding (BF16_MARGIN).
    (PARITY, ["experiment=speedrun"], "float32", "precision: 32-true, Muon's iterations in float32: "),
    (SLOW, ["experiment=speedrun", "optim.muon_dtype=bfloat16"], "bfloat16",
     "warning: optim.muon_dtype=bfloat16 (kept as you asked; float32 is faster here): bfloat16 matmuls "
     "run at 0.028×"),
    (SLOW, ["experiment=speedrun", "optim.muon_dtype=float32"], "float32",
     "precision: 32-true, Muon's iterations in float32"),
])
def test_muons_iterations_run_in_the_faster_dtype(speed, overrides, dtype, starts) -> None:
    chosen, said = choose_precision(config(*overrides), overrides, speed=speed)
    assert chosen.optim.muon_dtype == dtype
    assert said.startswith(starts)


def test_nothing_is_said_where_nothing_asks_for_bfloat16_or_off_the_cpu() -> None:
    assert choose_precision(config(), [], speed=SLOW)[1] is None
    chosen, said = choose_precision(config("experiment=shakespeare_char"), [], on_cpu=False, speed=SLOW)
    assert said is None and chosen.trainer["precision"] == "bf16-mixed"


def test_the_machine_is_measured_once_then_read_from_the_cache() -> None:
    measured = matmul_speed(refresh=True)
    assert measured.float32_gflops > 0 and measured.bfloat16_gflops > 0
    entries = json.loads(cache_file().read_text())
    assert entries[cache_key()] == asdict(measured)
    entries[cache_key()]["bfloat16_gflops"] = 0.5  # as if this machine had measured it slow
    cache_file().write_text(json.dumps(entries))
    assert matmul_speed().bfloat16_gflops == 0.5


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="caps x86 instructions")
def test_capping_the_kernels_instructions_is_another_kind_of_machine() -> None:
    """ONEDNN_MAX_CPU_ISA=AVX2 makes a bfloat16-capable CPU compute bfloat16 as an AVX2-only CPU
    does: its measurement is not read from the uncapped machine's entry, nor overwrites it.
    (oneDNN reads the variable once, at its first product: hence a process of its own.)"""
    uncapped = matmul_speed()
    script = ("import json; from tinylm.machine import matmul_speed; "
              "print(json.dumps(matmul_speed().describe()))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in described
    # oneDNN's AVX2 kernels have no bfloat16 arithmetic: every operand is converted.
    factor = float(described.split("(")[-1].split("×")[0])
    assert factor < 1, described
    assert matmul_speed() == uncapped


def test_a_run_says_its_precision_in_its_first_lines(small_text: Path, workdir: Path) -> None:
    entries = json.loads(cache_file().read_text()) if cache_file().is_file() else {}
    entries[cache_key()] = asdict(SLOW)  # this machine, measured slow
    cache_file().parent.mkdir(parents=True, exist_ok=True)
    cache_file().write_text(json.dumps(entries))
    overrides = quick_overrides(small_text, workdir / "run", "experiment=shakespeare_char", "model.heads=2",
                                "trainer.max_steps=2", "trainer.val_check_interval=2", script=True)
    result, _, _ = train_cli(workdir, *overrides)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("data: ")
    assert lines[1] == ("precision: 32-true instead of experiment=shakespeare_char's bf16-mixed: bfloat16 "
                        "matmuls run at 0.028× float32's speed on this CPU (AMD EPYC, AVX2, bfloat16 "
                        "instructions: none)")
    assert os.environ["XDG_CACHE_HOME"] in str(cache_file())


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="caps x86 instructions")
def test_on_a_cpu_whose_bfloat16_is_slow_the_speedrun_says_it_iterates_muon_in_float32(
        small_text: Path, workdir: Path) -> None:
    """Measured, not told: with oneDNN capped to AVX2 this machine's bfloat16 matmuls are an
    AVX2-only laptop's, and the speedrun's first lines say what it chose and why."""
    overrides = quick_overrides(small_text, workdir / "run", "experiment=speedrun", "trainer.max_steps=2",
                                "trainer.val_check_interval=2", script=True)
    result, _, _ = train_cli(workdir, *overrides, env={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert result.returncode == 0, result.stderr
    line = result.stdout.splitlines()[1]
    chosen = "precision: 32-true, Muon's iterations in float32: bfloat16 matmuls run at 0.0"
    assert line.startswith(chosen), line
    assert line.endswith("ONEDNN_MAX_CPU_ISA=AVX2)"), line
