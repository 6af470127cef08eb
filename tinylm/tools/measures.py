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

# A ratio is flagged when other work kept more than this many cores busy, on average, during
# either of its halves. The load average cannot say so: it counts the benchmark's own processes
# (nanoGPT's two threads lift it to 2 on a quiet machine), and it lags by a minute.
OTHER_WORK_CORES = 0.25


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


def cpu_seconds() -> tuple[float, float] | None:
    """CPU seconds used so far by the whole machine (/proc/stat: every state but idle and iowait;
    steal too, the time a hypervisor gave this machine's CPUs to another) and by this process
    with its finished children. None where there is no /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    own = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return ((user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"),
            sum(usage.ru_utime + usage.ru_stime for usage in own))


class OtherWork:
    """``with OtherWork() as other: ...``; then ``other.cores``: how many cores, on average,
    worked for anything but this process and its children meanwhile, and ``other.own_cores``
    for them (both None without /proc)."""

    def __enter__(self) -> OtherWork:
        self.cores: float | None = None
        self.own_cores: float | None = None
        self._start, self._cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        cpu, wall = cpu_seconds(), time.perf_counter() - self._start
        if cpu is not None and self._cpu is not None and wall > 0:
            machine, own = (after - before for after, before in zip(cpu, self._cpu, strict=True))
            self.cores, self.own_cores = max(0.0, machine - own) / wall, own / wall


def ratio_with_load(ratio: float, load_before: float, load_after: float, other_cores: float | None) -> str:
    """``1.02 (load 1.10→1.30, other work 0.03 cores)``, flagged when other work kept more than
    OTHER_WORK_CORES busy during it: the machine's speed for the benchmark changed."""
    if other_cores is None:
        return f"{ratio:.3f} (load {load_before:.2f}→{load_after:.2f})"
    flag = " OTHER WORK: rerun on a quieter machine" if other_cores > OTHER_WORK_CORES else ""
    return f"{ratio:.3f} (load {load_before:.2f}→{load_after:.2f}, other work {other_cores:.2f} cores{flag})"


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
