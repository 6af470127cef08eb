"""Will it fit? The memory a training run needs, estimated from its config alone, so that a run
that cannot fit is refused in a second, naming the key, before anything is allocated.

The estimate counts 4-byte floats: the model's weights, gradients and AdamW's two moments (16
bytes a parameter); the activations a training step keeps for its backward pass (per token and
layer about 10·d_model + 3·mlp_hidden values, plus 2·heads·block_size values per query with the
explicit attention, which writes the (T, T) map out); one validation batch (no backward: one
layer's worth); and the attention pictures, whose maps are written out for every layer and head
of the probe (``callbacks.attention``). It imports nothing heavy: it runs before torch.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from tinylm.errors import ConfigError

if TYPE_CHECKING:
    from tinylm.config import TrainConfig

FLOAT = 4  # bytes
NOMINAL_VOCAB = 256  # the data is not loaded yet: a vocabulary of 256 characters is assumed
# Each part of the estimate, the keys that set its size (the first is named unless the command
# line set another), and what else would make it fit.
PARTS = {
    "model": ("the model's weights, gradients and optimizer state", ("model.d_model", "model.layers"), ""),
    "train": ("a training batch",
              ("model.block_size", "data.batch_size", "model.layers", "model.d_model"), ""),
    "val": ("a validation batch", ("model.block_size", "data.val_batch_size", "model.d_model"), ""),
    "maps": ("the attention pictures, every layer and head of the probe",
             ("model.block_size", "model.layers"), "; or turn them off: callbacks.attention.enabled=false"),
}


def needs(values: dict[str, float]) -> dict[str, float]:
    """Bytes each part of a run needs, from plain numbers (see ``numbers``)."""
    L, H = values["model.layers"], values["model.heads"]
    d, T = values["model.d_model"], values["model.block_size"]
    hidden = values["mlp_ratio"] * d * (2 / 3 if values["swiglu"] else 1)
    kv = d * values["kv_heads"] / H
    V, B, Bv = values["vocab"], values["data.batch_size"], values["data.val_batch_size"]
    per_layer = 2 * d * d + 2 * d * kv + (3 if values["swiglu"] else 2) * d * hidden + 4 * d
    params = V * d + (T * d if values["learned_positions"] else 0) + L * per_layer
    explicit = values["explicit"]
    train = FLOAT * (L * B * T * (10 * d + 3 * hidden + (2 * H * T if explicit else 0)) + 3 * B * T * V)
    val = FLOAT * (Bv * T * (4 * d + hidden + (2 * H * T if explicit else 0)) + 2 * Bv * T * V)
    val *= values["validates"]
    probe = values["probe"]
    maps = FLOAT * (L + 3) * H * probe * probe if values["maps"] else 0
    return {"model": 16 * params, "train": train, "val": val, "maps": maps}


def numbers(config: TrainConfig, vocab: int = NOMINAL_VOCAB) -> dict[str, float]:
    m, attention = config.model, config.callbacks.attention
    return {
        "model.layers": m.layers, "model.heads": m.heads, "model.d_model": m.d_model,
        "model.block_size": m.block_size, "mlp_ratio": m.mlp_ratio, "swiglu": m.mlp == "swiglu",
        "kv_heads": m.kv_heads, "learned_positions": m.position == "learned",
        "explicit": m.attention == "explicit", "vocab": vocab, "data.batch_size": config.data.batch_size,
        "data.val_batch_size": config.data.val_batch_size,
        "maps": attention.enabled and config.logger == "tensorboard"
        and not config.trainer.get("fast_dev_run"),
        "probe": len(attention.probe) if attention.probe else m.block_size,
        "validates": config.trainer.get("limit_val_batches", 1.0) != 0,
    }


def total(values: dict[str, float]) -> float:
    parts = needs(values)
    return parts["model"] + max(parts["train"], parts["val"], parts["maps"])


def check_fits(config: TrainConfig, available: float, where: str = "memory", overrides=(),
               vocab: int = NOMINAL_VOCAB, processes: int = 1) -> None:
    """Raise a ConfigError naming the key, and the largest value of it that fits, when the run
    ``config`` describes needs more than ``available`` bytes (``processes`` copies of it)."""
    values = numbers(config, vocab)
    if processes * total(values) <= available:
        return
    parts = needs(values)
    part = max(("train", "val", "maps"), key=parts.get)
    if parts["model"] >= parts[part]:
        part = "model"
    what, keys, instead = PARTS[part]
    set_keys = [o.split("=", 1)[0].lstrip("+") for o in overrides]
    # The key named: one the command line set, else the first of the part's that can make it fit.
    candidates = [k for k in reversed(set_keys) if k in keys] + list(keys)
    if part == "maps" and config.callbacks.attention.probe:
        candidates = ["callbacks.attention.probe" if k == "model.block_size" else k for k in candidates]
    for key in candidates:
        value = int(values[key] if key in values else values["probe"])
        best = _largest(values, key if key in values else "probe", value, available / processes, config)
        if best >= 1:
            break
    else:
        key = candidates[0]
        value = int(values[key] if key in values else values["probe"])
        best = 0
    fits = f"the largest {key} that fits is {best:,}" if best >= 1 else f"even {key}=1 does not fit"
    if key == "callbacks.attention.probe":
        fits = f"a probe of at most {best:,} characters fits"
    raise ConfigError(
        f"{key}: {value:,} needs about {_size(processes * total(values))} of {where} for {what}, "
        f"more than the {_size(available)} available; {fits}{instead}"
    )


def _largest(values: dict[str, float], key: str, value: int, available: float, config: TrainConfig) -> int:
    step = 1
    if key == "model.d_model":  # heads must divide it (in pairs for rope)
        step = values["model.heads"] * (2 if config.model.position == "rope" else 1)
    low, high = 0, value // step  # in units of step: low fits (or is 0), high does not
    while high - low > 1:
        mid = (low + high) // 2
        trial = {**values, key: mid * step}
        if key == "model.block_size" and not config.callbacks.attention.probe:
            trial["probe"] = mid * step
        low, high = (mid, high) if total(trial) <= available else (low, mid)
    return low * step


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def available_memory() -> float:
    """Bytes of memory this process may still use: what the system has available, within a
    container's limit."""
    available = float("inf")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        with contextlib.suppress(ValueError, OSError):
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            available = min(available, int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return available


def trains_on_cpu(config: TrainConfig) -> bool:
    """Whether the run will train on the CPU, told without torch: accelerator=cpu, or auto on a
    machine without an NVIDIA GPU in sight."""
    accelerator = str(config.trainer.get("accelerator", "auto"))
    if accelerator == "cpu":
        return True
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    no_gpu = visible in ("", "-1") or not Path("/dev/nvidiactl").exists()
    return accelerator == "auto" and no_gpu


def check_before_torch(config: TrainConfig, overrides=()) -> None:
    """``check_fits`` against this machine's memory, for a run on the CPU."""
    if not trains_on_cpu(config):
        return  # checked against the GPU's memory once torch is imported (``tinylm.train.fit``)
    devices = config.trainer.get("devices", 1)
    processes = devices if isinstance(devices, int) and devices > 1 else 1
    check_fits(config, available_memory(), "memory", overrides, processes=processes)


__all__ = ["check_before_torch", "check_fits", "needs"]
