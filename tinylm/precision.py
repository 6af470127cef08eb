"""Which precision a run on the CPU computes in, decided by measuring the machine.

Two settings ask for bfloat16: ``trainer.precision=bf16-mixed`` (``experiment=shakespeare_char``)
and Muon's Newton–Schulz iterations (``optim.muon_dtype``). Whether bfloat16 pays depends on
the CPU (``tinylm.machine``). What a preset or a default asked for follows the measurement;
what the user typed is kept, with a warning when it is slow here. Either way the run says in
one line what it computes in and why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tinylm.config import TrainConfig
from tinylm.machine import MatmulSpeed, matmul_speed

FLOAT32_PRECISION = "32-true"


def typed_keys(overrides: Sequence[str]) -> set[str]:
    """The keys the command line set (``trainer.precision=bf16-mixed`` → ``trainer.precision``):
    what the user asked for, as opposed to what a preset or a default did."""
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}


def _preset(overrides: Sequence[str]) -> str:
    """Who asked, when the user did not: the experiment named on the command line, or the defaults."""
    experiments = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == "experiment"]
    return f"experiment={experiments[-1]}" if experiments else "the defaults"


def choose_precision(config: TrainConfig, overrides: Sequence[str] = (), on_cpu: bool = True,
                     speed: MatmulSpeed | None = None) -> tuple[TrainConfig, str | None]:
    """``config`` with its bfloat16 settings settled for this machine, and the line that says
    what was chosen and why (None when nothing asked for bfloat16, or not on a CPU).
    ``speed``: the machine's measurement (default: measured once, then cached)."""
    precision = str(config.trainer.get("precision", FLOAT32_PRECISION))
    wants_bf16 = precision.startswith("bf16")
    muon = config.optim.name == "muon"
    if not on_cpu or not (wants_bf16 or muon):
        return config, None
    speed = speed or matmul_speed()
    typed = typed_keys(overrides)
    why = f"bfloat16 matmuls run at {speed.bf16_factor:.2g}× float32's speed on this CPU ({speed.kind()})"
    warnings, chosen = [], []
    if wants_bf16 and not speed.bf16_fast:
        if "trainer.precision" in typed:
            warnings.append(f"trainer.precision={precision} (kept as you asked; "
                            f"{FLOAT32_PRECISION} is faster here)")
            chosen.append(precision)
        else:
            config = dataclasses.replace(config, trainer={**config.trainer, "precision": FLOAT32_PRECISION})
            chosen.append(f"{FLOAT32_PRECISION} instead of {_preset(overrides)}'s {precision}")
    else:
        chosen.append(precision)
    if muon:
        dtype = config.optim.muon_dtype
        if dtype == "auto":
            dtype = "bfloat16" if speed.bf16_fast else "float32"
            config = dataclasses.replace(config, optim=dataclasses.replace(config.optim, muon_dtype=dtype))
        elif dtype == "bfloat16" and not speed.bf16_fast and "optim.muon_dtype" in typed:
            warnings.append("optim.muon_dtype=bfloat16 (kept as you asked; float32 is faster here)")
        chosen.append(f"Muon's iterations in {dtype}")
    if warnings:
        return config, f"warning: {' and '.join(warnings)}: {why}"
    return config, f"precision: {', '.join(chosen)}: {why}"
