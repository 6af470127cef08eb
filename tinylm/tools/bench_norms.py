"""``bench.task=norms``: LayerNorm, torch's RMSNorm and ours, forward and backward."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from tinylm.command_configs import BenchConfig
from tinylm.config import ModelConfig
from tinylm.model import RMSNorm


def bench_norms(model_config: ModelConfig, batch_size: int, bench: BenchConfig) -> dict[str, Any]:
    """Microseconds for forward + backward of each norm on a training step's activations,
    (batch, block_size, d_model), and on QK-norm's (batch, heads, block_size, head_dim): medians of
    ``bench.steps`` timings, the norms interleaved so that load from elsewhere hits all alike."""


    c = model_config
    shapes = {"residual": (batch_size, c.block_size, c.d_model),
              "qk": (batch_size, c.heads, c.block_size, c.head_dim)}
    result: dict[str, Any] = {"task": "norms", "threads": torch.get_num_threads()}
    for label, shape in shapes.items():
        dim = shape[-1]
        norms = {"layernorm": torch.nn.LayerNorm(dim), "torch_rmsnorm": torch.nn.RMSNorm(dim, eps=1e-5),
                 "rmsnorm": RMSNorm(dim)}
        x = torch.randn(shape, requires_grad=True)
        grad = torch.randn(shape)
        times: dict[str, list[float]] = {name: [] for name in norms}
        for i in range(bench.warmup + bench.steps):
            for name, norm in norms.items():
                start = time.perf_counter()
                norm(x).backward(grad)
                if i >= bench.warmup:
                    times[name].append(time.perf_counter() - start)
        for name in norms:
            result[f"{label}_{name}_us"] = 1e6 * statistics.median(times[name])
        result[f"{label}_rmsnorm_vs_layernorm"] = (result[f"{label}_rmsnorm_us"]
                                                   / result[f"{label}_layernorm_us"])
    return result
