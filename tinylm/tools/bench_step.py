"""``bench.task=step``: where a training step's time goes: the forward and backward pass against
the optimiser's update; with ``optim.name=muon`` torch.optim.Muon's update beside ours, on the
same gradients, taking turns step by step."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from tinylm.command_configs import BenchConfig
from tinylm.config import TrainConfig
from tinylm.data import CharDataModule, RandomWindows
from tinylm.model import TransformerLM
from tinylm.optim import build_optimizer
from tinylm.precision import choose_precision


def bench_step(config: TrainConfig, bench: BenchConfig) -> dict[str, Any]:
    """Median milliseconds of the forward + backward pass and of the optimiser step (with Muon:
    ours and torch.optim.Muon's update of Muon's matrices apart), over ``bench.steps`` steps
    after ``bench.warmup``."""
    config, precision = choose_precision(config, on_cpu=True)
    data = CharDataModule(config.data, config.model.block_size, config.seed)
    data.prepare()
    torch.manual_seed(config.seed)
    model = TransformerLM(config.model, data.tokenizer.vocab_size).train()
    optimizer = build_optimizer(model, config.optim)
    theirs = None
    if config.optim.name == "muon":
        hidden = [p for group in optimizer.muon.param_groups for p in group["params"]]
        optim = config.optim
        theirs = torch.optim.Muon(hidden, lr=optim.muon_lr, momentum=optim.muon_momentum,
                                  weight_decay=optim.weight_decay)
    batches = iter(RandomWindows(data.train_tokens, config.model.block_size, config.data.batch_size,
                                 config.seed))
    times: dict[str, list[float]] = {"forward_backward": [], "optimizer": [], "muon": [], "torch_muon": []}
    for step in range(bench.warmup + bench.steps):
        inputs, targets = next(batches)
        start = time.perf_counter()
        F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten()).backward()
        seconds = {"forward_backward": time.perf_counter() - start}
        if theirs is not None:  # torch's update of the same gradients, then the weights put back
            saved = [p.detach().clone() for p in theirs.param_groups[0]["params"]]
            seconds["torch_muon"] = _seconds(theirs.step)
            with torch.no_grad():
                torch._foreach_copy_(theirs.param_groups[0]["params"], saved)
            seconds["muon"] = _seconds(optimizer.muon.step)
            seconds["optimizer"] = seconds["muon"] + _seconds(optimizer.adamw.step)
        else:
            seconds["optimizer"] = _seconds(optimizer.step)
        optimizer.zero_grad(set_to_none=True)
        if step >= bench.warmup:
            for name, value in seconds.items():
                times[name].append(value)
    result: dict[str, Any] = {"task": "step", "threads": torch.get_num_threads(),
                              "precision": precision or "32-true"}
    for name, measured in times.items():
        if measured:
            result[f"{name}_ms"] = 1000 * statistics.median(measured)
    step_ms = result["optimizer_ms"] + result["forward_backward_ms"]
    result["optimizer_share"] = result["optimizer_ms"] / step_ms
    return result


def _seconds(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start
