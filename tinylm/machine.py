"""What this machine's CPU does fast: is a bfloat16 matmul quicker than a float32 one here?

CPUs differ the most where it matters for choosing a precision: AMX (recent Xeons) runs
bfloat16 matmuls many times faster than float32 ones, AVX-512 BF16 somewhat faster, and a CPU
without bfloat16 instructions converts every operand, so far slower. torch's CPU capability
names the vector ISA but not that, so tinylm measures it: a float32 and a bfloat16 matmul of
nano's shapes, taking turns, the fastest of several tries each (a loaded machine slows tries,
it never speeds one up). The result is cached per machine (CPU model, torch version, threads)
in the user's cache directory, so each machine pays the measurement once.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# (m, k, n) of the products measured: Muon's Gram matrix of a 128 × 512 matrix, and a forward
# matmul of nano's MLP (768 tokens of 128 features into 512).
SHAPES = ((128, 512, 128), (768, 128, 512))
TRIES = 9  # per dtype, alternating; the fastest counts
FORMAT = 1  # of a cache entry; a new format re-measures


@dataclass(frozen=True)
class MatmulSpeed:
    """float32 and bfloat16 matmul rates measured on this machine at ``threads`` threads."""

    cpu: str  # the CPU's model name
    isa: str  # torch's CPU capability: the vector instructions its kernels use (AVX2, AVX512, ...)
    threads: int
    float32_gflops: float
    bfloat16_gflops: float

    @property
    def bf16_factor(self) -> float:
        """bfloat16's speed as a multiple of float32's: above 1, bfloat16 is faster here."""
        return self.bfloat16_gflops / self.float32_gflops

    @property
    def bf16_fast(self) -> bool:
        return self.bf16_factor > 1.0

    def describe(self) -> str:
        """One line naming the machine's kind, as ``tinylm bench`` prints it beside a figure."""
        return (f"{self.cpu} ({self.isa}, {self.threads} threads): float32 matmuls "
                f"{self.float32_gflops:.0f} GFLOP/s, bfloat16 {self.bfloat16_gflops:.0f} "
                f"({self.bf16_factor:.2g}× float32's)")


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) Platinum 8481C"), from /proc/cpuinfo
    where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cache_file() -> Path:
    """Where measurements are kept: the user's cache directory (``XDG_CACHE_HOME``, else
    ~/.cache), tinylm/machine.json."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "tinylm" / "machine.json"


def cache_key(threads: int) -> str:
    return f"{cpu_model()} | torch {torch.__version__} | {threads} threads | format {FORMAT}"


def matmul_speed(threads: int | None = None, refresh: bool = False) -> MatmulSpeed:
    """This machine's float32 and bfloat16 matmul rates at ``threads`` (default: torch's
    current count), from the cache, or measured now and cached (``refresh``: measured anyway)."""
    threads = threads or torch.get_num_threads()
    key, path = cache_key(threads), cache_file()
    entries = _read(path)
    if not refresh and isinstance(entry := entries.get(key), dict):
        try:
            return MatmulSpeed(**entry)
        except TypeError:  # an entry written by another version: measure again
            pass
    speed = measure(threads)
    entries[key] = asdict(speed)
    _write(path, entries)
    return speed


def measure(threads: int) -> MatmulSpeed:
    """Time float32 and bfloat16 matmuls of ``SHAPES`` at ``threads`` threads, taking turns."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        operands = {dtype: [(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype))
                            for m, k, n in SHAPES] for dtype in (torch.float32, torch.bfloat16)}
        best = {dtype: float("inf") for dtype in operands}
        for _ in range(TRIES):
            for dtype, pairs in operands.items():
                best[dtype] = min(best[dtype], _seconds(pairs))
    finally:
        torch.set_num_threads(before)
    flops = sum(2 * m * k * n for m, k, n in SHAPES)
    return MatmulSpeed(cpu=cpu_model(), isa=torch.backends.cpu.get_cpu_capability(), threads=threads,
                       float32_gflops=flops / best[torch.float32] / 1e9,
                       bfloat16_gflops=flops / best[torch.bfloat16] / 1e9)


def _seconds(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    for a, b in pairs:  # the first call of a shape sets up its kernel: not part of its speed
        a @ b
    start = time.perf_counter()
    for a, b in pairs:
        a @ b
    return time.perf_counter() - start


def fastest_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """The faster of bfloat16 and float32 for matmuls on ``device``: bfloat16 on a GPU, on a
    CPU whichever this machine measured faster."""
    if torch.device(device).type != "cpu":
        return torch.bfloat16
    return torch.bfloat16 if matmul_speed().bf16_fast else torch.float32


def _read(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write(path: Path, entries: dict) -> None:
    """Write atomically (processes of one run may measure together); a cache that cannot be
    written only means measuring again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as out:
            json.dump(entries, out, indent=1)
        os.replace(out.name, path)
    except OSError:
        pass
