"""``tinylm bench``: training speed against a bare PyTorch loop (here), and the benchmarks
``bench.task`` picks: ``data`` (bench_data), ``sample`` (bench_sample), ``norms`` (bench_norms),
``speedrun`` (bench_speedrun), ``step`` (bench_step), ``gpu`` (bench_gpu). Speed targets live
here, never in unit tests; results are medians.

    python scripts/bench.py experiment=cpu_quick data.source=PATH bench.steps=200
    python scripts/bench.py bench.task=sample model=baby
    python scripts/bench.py bench.task=data data.source=PATH bench.steps=10
    NANOGPT_DIR=path/to/nanoGPT python scripts/bench.py bench.task=sample   # nanoGPT's beside
    python scripts/bench.py bench.task=norms                                # LayerNorm vs RMSNorm
    NANOGPT_DIR=path/to/nanoGPT python scripts/bench.py bench.task=speedrun data.source=input.txt
    python scripts/bench.py bench.task=step experiment=speedrun bench.steps=20  # the step's split
    NANOGPT_DIR=path/to/nanoGPT tinylm bench bench.task=gpu   # on a CUDA GPU: beside nanoGPT, NCCL, decode
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from lightning import Callback

from tinylm.command_configs import BenchConfig, BenchRunConfig
from tinylm.config import PathsConfig, TrainConfig
from tinylm.data import CharDataModule, RandomWindows
from tinylm.lit import learning_rate
from tinylm.model import TransformerLM
from tinylm.optim import build_optimizer
from tinylm.precision import choose_precision
from tinylm.tools.bench_data import bench_data
from tinylm.tools.bench_gpu import bench_gpu
from tinylm.tools.bench_norms import bench_norms
from tinylm.tools.bench_sample import bench_sample
from tinylm.tools.bench_speedrun import bench_speedrun
from tinylm.tools.bench_step import bench_step
from tinylm.tools.measures import (
    OtherWork,
    flops_per_token,
    machine_kind,
    mean_ms,
    median_ms,
    peak_matmul_gflops,
    peak_rss_mb,
    process_start_time,
    progress,
    ratio_with_load,
    report,
)
from tinylm.train import fit


def run(config: BenchRunConfig) -> None:
    """``tinylm bench``: the benchmark ``bench.task`` names; prints ``report``."""
    if config.bench.task == "sample":
        result = bench_sample(config.model, config.bench, seed=config.seed)
    elif config.bench.task == "data":
        result = bench_data(config)
    elif config.bench.task == "speedrun":
        result = bench_speedrun(config, config.bench)
    elif config.bench.task == "step":
        result = bench_step(config, config.bench)
    elif config.bench.task == "gpu":
        result = bench_gpu(config, config.bench)
    elif config.bench.task == "norms":
        result = bench_norms(config.model, config.data.batch_size, config.bench)
    else:
        result = bench_train(config, config.bench)
    print(report({"machine": machine_kind(), **result}))


def _step_times_callback():

    class StepTimes(Callback):
        """Wall-clock time at the end of every training step."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.first_step_end_epoch: float | None = None

        def on_train_batch_end(self, *args: Any) -> None:
            self.ends.append(time.perf_counter())
            if self.first_step_end_epoch is None:
                self.first_step_end_epoch = time.time()

    return StepTimes()


def time_tinylm(config: TrainConfig, bench: BenchConfig) -> dict[str, float]:
    """Time ``tinylm.train.fit`` as users run it (logger, progress bar), validation off."""

    timer = _step_times_callback()
    with tempfile.TemporaryDirectory(prefix="tinylm-bench-") as run_dir:
        trainer = {**config.trainer, "max_steps": bench.warmup + bench.steps + 1, "limit_val_batches": 0}
        fit(replace(config, paths=PathsConfig(output_dir=run_dir), trainer=trainer), extra_callbacks=[timer])
    return {"ms_per_step": median_ms(timer.ends, bench.warmup),
            "mean_ms_per_step": mean_ms(timer.ends, bench.warmup),
            "startup_s": timer.first_step_end_epoch - process_start_time()}


def time_bare_loop(config: TrainConfig, bench: BenchConfig) -> float:
    """Median ms/step of the same model, data, optimiser and schedule in a plain PyTorch loop."""


    data = CharDataModule(config.data, config.model.block_size, config.seed)
    data.prepare()
    torch.manual_seed(config.seed)
    model = TransformerLM(config.model, data.tokenizer.vocab_size).train()
    optim = config.optim
    optimizer = build_optimizer(model, optim)
    decay_steps = optim.decay_steps or config.max_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate(step, optim, decay_steps) / optim.lr
    )
    autocast = _autocast(str(config.trainer.get("precision", "32-true")))
    batches = iter(RandomWindows(data.train_tokens, config.model.block_size, config.data.batch_size,
                                 config.seed))
    ends = []
    for _ in range(bench.warmup + bench.steps + 1):
        inputs, targets = next(batches)
        with autocast:
            loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        loss.backward()
        if optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        ends.append(time.perf_counter())
    return median_ms(ends, bench.warmup)


def _autocast(precision: str):


    if precision.startswith("bf16"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def time_data_prep(source: str | tuple[str, ...]) -> tuple[float, float]:
    """Seconds to load + encode ``source`` with an empty ``datasets`` cache, then with it full.

    Each runs in a fresh process so neither benefits from the other's imports or memory.
    """
    code = (
        "import time, json, sys; from tinylm.config import DataConfig; "
        "from tinylm.data import CharDataModule; "
        "source = json.loads(sys.argv[1]); start = time.perf_counter(); "
        "CharDataModule(DataConfig(source=tuple(source) if isinstance(source, list) else source), 8)"
        ".prepare(); print(time.perf_counter() - start)"
    )
    with tempfile.TemporaryDirectory(prefix="tinylm-bench-cache-") as cache:
        env = {**os.environ, "HF_DATASETS_CACHE": cache}
        seconds = []
        for _ in range(2):
            result = subprocess.run([sys.executable, "-c", code, json.dumps(source)], env=env,
                                    capture_output=True, text=True, check=True)
            seconds.append(float(result.stdout.strip().splitlines()[-1]))
    return seconds[0], seconds[1]


def bench_train(config: TrainConfig, bench: BenchConfig) -> dict[str, Any]:
    """tinylm's training step against the bare loop's, the two halves taking turns for
    ``bench.repeats`` rounds (each its ``bench.steps`` steps), so that a change in the machine's
    speed hits both; each round's ratio with the load around it."""
    config, _ = choose_precision(config, on_cpu=not torch.cuda.is_available())
    result: dict[str, Any] = {"task": "train", "threads": torch.get_num_threads(),
                              "precision": str(config.trainer.get("precision", "32-true"))}
    rounds = []
    for n in range(bench.repeats):
        load_before = os.getloadavg()[0]
        with OtherWork() as other:
            progress(f"round {n + 1}/{bench.repeats}: tinylm, {bench.warmup + bench.steps} steps")
            ours = time_tinylm(config, bench)
            bare = None
            if bench.bare:
                progress(f"round {n + 1}/{bench.repeats}: the bare loop, {bench.warmup + bench.steps} steps")
                bare = time_bare_loop(config, bench)
        rounds.append((ours, bare, load_before, os.getloadavg()[0], other.cores))
    for key in ("ms_per_step", "mean_ms_per_step", "startup_s"):
        result[key] = statistics.median(ours[key] for ours, *_ in rounds)
    tokens_per_step = config.data.batch_size * config.model.block_size
    num_parameters = TransformerLM(config.model, bench.vocab_size).num_parameters()
    result["tokens_per_sec"] = tokens_per_step / (result["ms_per_step"] / 1000)
    result["flops_per_token"] = flops_per_token(config.model, num_parameters)
    result["achieved_gflops"] = result["flops_per_token"] * result["tokens_per_sec"] / 1e9
    dtype = "bfloat16" if result["precision"].startswith("bf16") else "float32"
    result["peak_gflops"] = peak_matmul_gflops(dtype)
    result["mfu"] = result["achieved_gflops"] / result["peak_gflops"]
    if bench.bare:
        result["bare_ms_per_step"] = statistics.median(bare for _, bare, *_ in rounds)
        ratios = [(ours["ms_per_step"] / bare, before, after, other)
                  for ours, bare, before, after, other in rounds]
        result["lightning_overhead"] = statistics.median(ratio for ratio, *_ in ratios)
        result["lightning_overhead_rounds"] = ", ".join(ratio_with_load(*r) for r in ratios)
    if bench.data_prep:
        result["data_prep_cold_s"], result["data_prep_cached_s"] = time_data_prep(config.data.source)
    result["peak_rss_mb"] = peak_rss_mb()
    return result
