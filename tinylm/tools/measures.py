"""What every benchmark measures with: the process's start, the machine's matmul roof, the
FLOPs of a training token, peak memory, medians of step times, and the report it prints."""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tinylm.config import ModelConfig
from tinylm.machine import matmul_speed

# A ratio is flagged when the load average moved by more than this fraction (and more than
# CHANGED_LOAD_ABS) between its two halves' start and end: the machine's speed changed under it.
CHANGED_LOAD_FRACTION, CHANGED_LOAD_ABS = 0.25, 0.5


def process_start_time() -> float:
    """When this process started (epoch seconds), from /proc; now where /proc is missing."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


def peak_matmul_gflops(dtype_name: str = "float32", size: int = 1024, repeats: int = 10) -> float:
    """GFLOP/s of a square matmul in ``dtype_name`` on this machine now: the roof for MFU."""

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def flops_per_token(config: ModelConfig, num_parameters: int) -> float:
    """Training FLOPs per token, as nanoGPT (PaLM appendix B) counts them: 6 per weight that
    multiplies (position embeddings excluded) plus 12·layers·d·T for attention scores."""
    position_weights = config.block_size * config.d_model if config.position == "learned" else 0
    matmul_weights = num_parameters - position_weights
    return 6 * matmul_weights + 12 * config.layers * config.d_model * config.block_size


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def median_ms(ends: list[float], warmup: int) -> float:
    """Median milliseconds between consecutive step ends, after ``warmup`` steps."""
    steps = [b - a for a, b in zip(ends[warmup:], ends[warmup + 1 :], strict=False)]
    return 1000 * statistics.median(steps)


def mean_ms(ends: list[float], warmup: int) -> float:
    """Mean milliseconds per step after ``warmup`` steps: unlike the median, it counts the work
    done every N steps (a checkpoint, the attention pictures)."""
    return 1000 * (ends[-1] - ends[warmup]) / (len(ends) - 1 - warmup)


def machine_kind() -> str:
    """The machine every figure was measured on: CPU, vector ISA, threads, float32 and bfloat16
    matmul rates (tinylm.machine, cached), and the load average now."""
    return f"{matmul_speed().describe()}; load {os.getloadavg()[0]:.2f}"


def ratio_with_load(ratio: float, load_before: float, load_after: float) -> str:
    """``1.02 (load 1.10→1.30)``, flagged when the load changed enough to move the ratio."""
    changed = abs(load_after - load_before)
    flag = (" CHANGING LOAD: rerun on a quieter machine"
            if changed > CHANGED_LOAD_ABS and changed > CHANGED_LOAD_FRACTION * min(load_before, load_after)
            else "")
    return f"{ratio:.3f} (load {load_before:.2f}→{load_after:.2f}{flag})"


def progress(message: str) -> None:
    """A benchmark's progress, on stderr so that its report stays the last lines of stdout."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def report(result: dict[str, Any]) -> str:
    """A two-column table of the figures, then the same as one JSON line (last, for tools)."""
    width = max(map(len, result))
    rows = [f"{key:<{width}}  {_fmt(value)}" for key, value in result.items()]
    return "\n".join([*rows, json.dumps(result)])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
