"""What this machine's CPU does fast: is a bfloat16 matmul quicker than a float32 one here?

CPUs differ the most where it matters for choosing a precision: AMX (recent Xeons) runs
bfloat16 matmuls many times faster than float32 ones, AVX-512 BF16 somewhat faster, and a CPU
without bfloat16 instructions converts every operand, so far slower. torch's CPU capability
names the vector ISA but not that, so tinylm measures it: a float32 and a bfloat16 matmul of
nano's shapes, taking turns, the fastest of several tries each (a loaded machine slows tries,
it never speeds one up), on one thread: a second thread on a busy core waits at every product's
barrier, which once recorded 1.4 GFLOP/s for a machine that does 100. The result is cached per
kind of machine in the user's cache directory, so each machine pays the measurement once. The
kind is everything that decides which kernels run: the CPU's model name *and* its instruction
flags (clouds name Zen 2, 3 and 4 alike "AMD EPYC"), torch's version and vector ISA, and the
environment variables that cap oneDNN's, ATen's and MKL's instructions.
"""

from __future__ import annotations

import functools
import hashlib
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
FORMAT = 2  # of a cache entry; a new format re-measures
# bfloat16 rounds every product: it is chosen only where it is clearly faster, so that two
# measurements of one machine near parity cannot choose differently.
BF16_MARGIN = 1.2
# Variables that change which instructions torch's matmuls use (setting ONEDNN_MAX_CPU_ISA=AVX2
# on a CPU with AVX-512 BF16 makes its bfloat16 matmuls as slow as an AVX2-only CPU's).
KERNEL_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "avx_ne_convert")  # /proc/cpuinfo's names


@dataclass(frozen=True)
class MatmulSpeed:
    """float32 and bfloat16 matmul rates measured on this machine, one thread."""

    cpu: str  # the CPU's model name
    isa: str  # torch's CPU capability: the vector instructions its kernels use (AVX2, AVX512, ...)
    bf16_instructions: str  # the CPU's bfloat16 instructions ("amx_bf16 avx512_bf16"), or "none"
    float32_gflops: float
    bfloat16_gflops: float
    capped: str = ""  # the KERNEL_ENV variables set when measured ("ONEDNN_MAX_CPU_ISA=AVX2")

    @property
    def bf16_factor(self) -> float:
        """bfloat16's speed as a multiple of float32's: above 1, bfloat16 is faster here."""
        return self.bfloat16_gflops / self.float32_gflops

    @property
    def bf16_fast(self) -> bool:
        return self.bf16_factor >= BF16_MARGIN

    def kind(self) -> str:
        """The CPU, torch's ISA, the CPU's bfloat16 instructions and any cap: "AMD EPYC, AVX512,
        bfloat16 instructions: avx512_bf16"."""
        return ", ".join(filter(None, (self.cpu, self.isa, f"bfloat16 instructions: {self.bf16_instructions}",
                                       self.capped)))

    def describe(self) -> str:
        """One line naming the machine's kind, as ``tinylm bench`` prints it beside a figure."""
        return (f"{self.kind()}; one thread: float32 matmuls {self.float32_gflops:.0f} GFLOP/s, "
                f"bfloat16 {self.bfloat16_gflops:.0f} ({self.bf16_factor:.2g}× float32's)")


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) Platinum 8481C"), from /proc/cpuinfo
    where there is one."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> list[str]:
    """The CPU's instruction flags from /proc/cpuinfo (empty where there is none)."""
    return (_cpuinfo("flags", "Features") or "").split()


@functools.cache
def _cpuinfo(*names: str) -> str | None:
    """The value of /proc/cpuinfo's first line named one of ``names`` (None where there is
    none); read once per process: the CPU does not change under it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(names):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def capped_kernels() -> str:
    """The KERNEL_ENV variables set now, as ``NAME=value`` words."""
    return " ".join(f"{name}={os.environ[name]}" for name in KERNEL_ENV if os.environ.get(name))


def cache_file() -> Path:
    """Where measurements are kept: the user's cache directory (``XDG_CACHE_HOME``, else
    ~/.cache), tinylm/machine.json."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "tinylm" / "machine.json"


def cache_key() -> str:
    """This kind of machine: what decides which matmul kernels run (the module's docstring)."""
    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12]
    return (f"{cpu_model()} | flags {flags} | {torch.backends.cpu.get_cpu_capability()} | "
            f"torch {torch.__version__} | {capped_kernels() or 'no caps'} | format {FORMAT}")


def matmul_speed(refresh: bool = False) -> MatmulSpeed:
    """This machine's float32 and bfloat16 matmul rates, from the cache, or measured now and
    cached (``refresh``: measured anyway)."""
    key, path = cache_key(), cache_file()
    entries = _read(path)
    if not refresh and isinstance(entry := entries.get(key), dict):
        try:
            return MatmulSpeed(**entry)
        except TypeError:  # an entry written by another version: measure again
            pass
    speed = measure()
    entries[key] = asdict(speed)
    _write(path, entries)
    return speed


def measure() -> MatmulSpeed:
    """Time float32 and bfloat16 matmuls of ``SHAPES`` on one thread, taking turns."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
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
    flags = set(cpu_flags())
    return MatmulSpeed(cpu=cpu_model(), isa=torch.backends.cpu.get_cpu_capability(),
                       bf16_instructions=" ".join(f for f in BF16_FLAGS if f in flags) or "none",
                       float32_gflops=flops / best[torch.float32] / 1e9,
                       bfloat16_gflops=flops / best[torch.bfloat16] / 1e9, capped=capped_kernels())


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
