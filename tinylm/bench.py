"""Benchmarks: training speed against a bare PyTorch loop, and sampling with and without the
KV cache. Speed targets live here, never in unit tests; results are medians.

    python scripts/bench.py experiment=cpu_quick data.source=PATH bench.steps=200
    python scripts/bench.py bench.task=sample model=baby
    python scripts/bench.py bench.task=data data.source=PATH bench.steps=10
    NANOGPT_DIR=path/to/nanoGPT python scripts/bench.py bench.task=sample   # nanoGPT's beside
    python scripts/bench.py bench.task=norms                                # LayerNorm vs RMSNorm
    NANOGPT_DIR=path/to/nanoGPT python scripts/bench.py bench.task=speedrun data.source=input.txt
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tinylm.command_configs import BenchConfig, BenchRunConfig
from tinylm.config import ModelConfig, PathsConfig, TrainConfig
from tinylm.errors import ConfigError

# --------------------------------------------------------------------------- measures


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
    import torch

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


# --------------------------------------------------------------------------- training


def _step_times_callback():
    from lightning import Callback

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


def _median_ms(ends: list[float], warmup: int) -> float:
    steps = [b - a for a, b in zip(ends[warmup:], ends[warmup + 1 :], strict=False)]
    return 1000 * statistics.median(steps)


def time_tinylm(config: TrainConfig, bench: BenchConfig) -> dict[str, float]:
    """Time ``tinylm.train.fit`` as users run it (logger, progress bar), validation off."""
    from tinylm.train import fit

    timer = _step_times_callback()
    with tempfile.TemporaryDirectory(prefix="tinylm-bench-") as run_dir:
        trainer = {**config.trainer, "max_steps": bench.warmup + bench.steps + 1, "limit_val_batches": 0}
        fit(replace(config, paths=PathsConfig(output_dir=run_dir), trainer=trainer), extra_callbacks=[timer])
    return {"ms_per_step": _median_ms(timer.ends, bench.warmup),
            "startup_s": timer.first_step_end_epoch - process_start_time()}


def time_bare_loop(config: TrainConfig, bench: BenchConfig) -> float:
    """Median ms/step of the same model, data, optimiser and schedule in a plain PyTorch loop."""
    import torch
    import torch.nn.functional as F

    from tinylm.data import CharDataModule, RandomWindows
    from tinylm.lit import learning_rate
    from tinylm.model import TransformerLM
    from tinylm.optim import build_optimizer

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
    return _median_ms(ends, bench.warmup)


def _autocast(precision: str):
    import contextlib

    import torch

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


def run(config: BenchRunConfig) -> None:
    """``tinylm bench``: the benchmark ``bench.task`` names; prints ``report``."""
    if config.bench.task == "sample":
        result = bench_sample(config.model, config.bench, seed=config.seed)
    elif config.bench.task == "data":
        result = bench_data(config)
    elif config.bench.task == "speedrun":
        result = bench_speedrun(config, config.bench)
    elif config.bench.task == "norms":
        result = bench_norms(config.model, config.data.batch_size, config.bench)
    else:
        result = bench_train(config, config.bench)
    print(report(result))


def bench_train(config: TrainConfig, bench: BenchConfig) -> dict[str, Any]:
    import torch

    from tinylm.model import TransformerLM

    result: dict[str, Any] = {"task": "train", "threads": torch.get_num_threads(),
                              "precision": str(config.trainer.get("precision", "32-true"))}
    result.update(time_tinylm(config, bench))
    tokens_per_step = config.data.batch_size * config.model.block_size
    num_parameters = TransformerLM(config.model, bench.vocab_size).num_parameters()
    result["tokens_per_sec"] = tokens_per_step / (result["ms_per_step"] / 1000)
    result["flops_per_token"] = flops_per_token(config.model, num_parameters)
    result["achieved_gflops"] = result["flops_per_token"] * result["tokens_per_sec"] / 1e9
    dtype = "bfloat16" if result["precision"].startswith("bf16") else "float32"
    result["peak_gflops"] = peak_matmul_gflops(dtype)
    result["mfu"] = result["achieved_gflops"] / result["peak_gflops"]
    if bench.bare:
        result["bare_ms_per_step"] = time_bare_loop(config, bench)
        result["lightning_overhead"] = result["ms_per_step"] / result["bare_ms_per_step"]
    if bench.data_prep:
        result["data_prep_cold_s"], result["data_prep_cached_s"] = time_data_prep(config.data.source)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


# --------------------------------------------------------------------------- data

# Run in a fresh process: prepare the data (and train, if asked), print seconds and peak RSS.
_DATA_CHILD = """
import json, resource, sys, time
from dataclasses import replace
from tinylm.config import PathsConfig
from tinylm.command_configs import BenchRunConfig
config = BenchRunConfig.from_dict(json.loads(sys.argv[1]))
train_dir = sys.argv[2]
from tinylm.data import CharDataModule
from tinylm.train import fit
start = time.perf_counter()  # after the imports: they are the same for any data
result = {}
if train_dir:
    trainer = {**config.trainer, "max_steps": config.bench.steps, "limit_val_batches": 0}
    fit(replace(config, paths=PathsConfig(output_dir=train_dir), trainer=trainer))
else:
    data = CharDataModule(config.data, config.model.block_size, config.seed)
    data.prepare()
    result = {"tokens": len(data.train_tokens) + len(data.val_tokens), "dtype": data.train_tokens.dtype.name,
              "vocab_size": data.tokenizer.vocab_size}
result["seconds"] = time.perf_counter() - start
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(result))
"""


def bench_data(config: BenchRunConfig) -> dict[str, Any]:
    """Preparing ``data.source`` with an empty ``datasets`` cache, then with it full, each in a
    fresh process (seconds and peak RSS), then the peak RSS of a ``bench.steps``-step training
    run on the cached data; the cached preparation of the embedded tiny shakespeare beside it."""
    from tinylm.schema import as_plain

    def child(run_config: BenchRunConfig, cache: str, train_dir: str = "") -> dict[str, Any]:
        env = {**os.environ, "HF_DATASETS_CACHE": cache}
        out = subprocess.run([sys.executable, "-c", _DATA_CHILD, json.dumps(as_plain(run_config)), train_dir],
                             env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"bench.task=data: a measuring process failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    result: dict[str, Any] = {"task": "data", "source": config.data.source,
                              "tokenizer": config.data.tokenizer}
    with tempfile.TemporaryDirectory(prefix="tinylm-bench-cache-") as cache:
        cold, cached = child(config, cache), child(config, cache)
        result.update({k: cold[k] for k in ("tokens", "dtype", "vocab_size")})
        result["token_file_mb"] = sum(p.stat().st_size for p in Path(cache).rglob("tinylm-tokens-*")) / 2**20
        result |= {"data_prep_cold_s": cold["seconds"], "data_prep_cold_peak_rss_mb": cold["peak_rss_mb"],
                   "data_prep_cached_s": cached["seconds"],
                   "data_prep_cached_peak_rss_mb": cached["peak_rss_mb"]}
        with tempfile.TemporaryDirectory(prefix="tinylm-bench-run-") as run_dir:
            trained = child(config, cache, run_dir)
        result |= {"train_steps": config.bench.steps, "train_s": trained["seconds"],
                   "train_peak_rss_mb": trained["peak_rss_mb"]}
        baseline = replace(config, data=replace(config.data, source="builtin:tiny_shakespeare"))
        child(baseline, cache)
        result["tiny_shakespeare_cached_s"] = child(baseline, cache)["seconds"]
    return result


# --------------------------------------------------------------------------- sampling


def bench_sample(model_config: ModelConfig, bench: BenchConfig, seed: int = 1337) -> dict[str, Any]:
    """Tokens/s generating ``bench.new_tokens`` from a one-token prompt for each of
    ``bench.num_samples`` rows (one batch): cache on and off; with ``bench.compile`` the
    compiled decode step too (its first call's compile time apart); with ``NANOGPT_DIR`` set
    (a checkout of karpathy/nanoGPT) nanoGPT's ``generate`` on the same shape. All in this
    process, the settings taking turns in each of ``bench.repeats`` rounds, so that a change
    in the machine's speed hits them alike; medians."""
    import torch

    from tinylm.model import TransformerLM

    torch.manual_seed(seed)
    model = TransformerLM(replace(model_config, dropout=0.0), bench.vocab_size).eval()
    prompt = torch.zeros(bench.num_samples, 1, dtype=torch.long)
    tokens = bench.new_tokens * bench.num_samples
    result: dict[str, Any] = {"task": "sample", "new_tokens": bench.new_tokens,
                              "num_samples": bench.num_samples, "top_k": bench.top_k,
                              "block_size": model_config.block_size, "threads": torch.get_num_threads()}

    def ours(use_cache: bool, compile: bool = False) -> Any:
        return lambda: model.generate(prompt, bench.new_tokens, temperature=1.0, top_k=bench.top_k,
                                      use_cache=use_cache, compile=compile,
                                      generator=torch.Generator().manual_seed(seed))

    settings = {"cached": ours(True), "uncached": ours(False)}
    if bench.compile:
        settings["compiled"] = ours(True, compile=True)
        start = time.perf_counter()
        settings["compiled"]()  # the first call compiles
        result["compile_s"] = time.perf_counter() - start
    if os.environ.get("NANOGPT_DIR"):
        nanogpt = nanogpt_model(model_config, bench, seed)
        settings["nanogpt"] = lambda: nanogpt.generate(prompt, bench.new_tokens, temperature=1.0,
                                                       top_k=bench.top_k)
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    texts = {}
    with torch.no_grad():
        for _ in range(bench.repeats):
            for name, generate in settings.items():
                start = time.perf_counter()
                texts[name] = generate()
                seconds[name].append(time.perf_counter() - start)
    for name in settings:
        result[f"{name}_tokens_per_sec"] = tokens / statistics.median(seconds[name])
    result["speedup"] = result["cached_tokens_per_sec"] / result["uncached_tokens_per_sec"]
    result["same_tokens"] = bool(torch.equal(texts["cached"], texts["uncached"]))
    if bench.compile:
        result["compiled_same_tokens"] = bool(torch.equal(texts["compiled"], texts["cached"]))
        saved_per_step = (statistics.median(seconds["cached"]) - statistics.median(seconds["compiled"])) \
            / bench.new_tokens
        # After how many new tokens the compile has paid for itself (never, if it saves nothing).
        result["compile_pays_back_after"] = (round(result["compile_s"] / saved_per_step)
                                             if saved_per_step > 0 else None)
    if "nanogpt" in settings:
        nanogpt_speed = result["nanogpt_tokens_per_sec"]
        result["vs_nanogpt"] = result["cached_tokens_per_sec"] / nanogpt_speed
        if bench.compile:
            result["compiled_vs_nanogpt"] = result["compiled_tokens_per_sec"] / nanogpt_speed
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def nanogpt_model(model_config: ModelConfig, bench: BenchConfig, seed: int) -> Any:
    """nanoGPT's own ``GPT`` (model.py of the checkout at ``NANOGPT_DIR``), in eval mode, of
    ``model_config``'s shape and ``bench.vocab_size``."""
    import importlib.util

    import torch

    path = Path(os.environ["NANOGPT_DIR"]).expanduser() / "model.py"
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    if spec is None or not path.is_file():
        raise ConfigError(f"NANOGPT_DIR: no nanoGPT model.py at {path}")
    nanogpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nanogpt)
    torch.manual_seed(seed)
    config = nanogpt.GPTConfig(n_layer=model_config.layers, n_head=model_config.heads,
                               n_embd=model_config.d_model, block_size=model_config.block_size,
                               vocab_size=bench.vocab_size, dropout=0.0, bias=model_config.bias)
    return nanogpt.GPT(config).eval()


# --------------------------------------------------------------------------- speedrun

# nanoGPT's README CPU run ("I only have a macbook"), as its README gives it.
NANOGPT_CPU_RUN = ("train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
                   "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12",
                   "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                   "--lr_decay_iters=2000", "--dropout=0.0")


def bench_speedrun(config: TrainConfig, bench: BenchConfig) -> dict[str, Any]:
    """Whole-process wall time, start to exit, of nanoGPT's README CPU run (in ``NANOGPT_DIR``,
    its data/shakespeare_char prepared) and of ``tinylm train experiment=speedrun`` on
    ``data.source``, one after the other, ``bench.repeats`` times; medians, the best val/loss
    each printed, and the load average before each run."""
    import re

    nanogpt_dir = os.environ.get("NANOGPT_DIR")
    if not nanogpt_dir or not (Path(nanogpt_dir).expanduser() / "train.py").is_file():
        raise ConfigError("bench.task: speedrun needs NANOGPT_DIR, a checkout of karpathy/nanoGPT "
                          "with data/shakespeare_char/train.bin, val.bin and meta.pkl")
    source = config.data.source if isinstance(config.data.source, str) else ",".join(config.data.source)
    runs: dict[str, list[dict[str, float]]] = {"nanogpt": [], "tinylm": []}
    with tempfile.TemporaryDirectory(prefix="tinylm-speedrun-") as out:
        commands = {
            "nanogpt": ([sys.executable, *NANOGPT_CPU_RUN, f"--out_dir={out}/nanogpt"],
                        Path(nanogpt_dir).expanduser(), r"val loss (\d+\.\d+)"),
            "tinylm": ([sys.executable, "-m", "tinylm", "train", "experiment=speedrun",
                        f"data.source={source}", f"hydra.run.dir={out}/tinylm"], Path.cwd(),
                       r"best val/loss (\d+\.\d+)"),
        }
        for _ in range(bench.repeats):
            for name, (command, cwd, pattern) in commands.items():
                load = os.getloadavg()[0]
                start = time.perf_counter()
                done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
                seconds = time.perf_counter() - start
                if done.returncode != 0:
                    raise RuntimeError(f"{name} failed: {done.stderr[-2000:]}")
                losses = [float(v) for v in re.findall(pattern, done.stdout)]
                runs[name].append({"wall_s": seconds, "best_val_loss": min(losses), "load": load})
    result: dict[str, Any] = {"task": "speedrun", "threads": os.environ.get("OMP_NUM_THREADS", "default"),
                              "repeats": bench.repeats}
    for name, measured in runs.items():
        result[f"{name}_wall_s"] = statistics.median(r["wall_s"] for r in measured)
        result[f"{name}_best_val_loss"] = statistics.median(r["best_val_loss"] for r in measured)
        result[f"{name}_load"] = ", ".join(f"{r['load']:.2f}" for r in measured)
    result["time_ratio"] = result["tinylm_wall_s"] / result["nanogpt_wall_s"]
    return result


# --------------------------------------------------------------------------- norms


def bench_norms(model_config: ModelConfig, batch_size: int, bench: BenchConfig) -> dict[str, Any]:
    """Microseconds for forward + backward of each norm on a training step's activations,
    (batch, block_size, d_model), and on QK-norm's (batch, heads, block_size, head_dim): medians of
    ``bench.steps`` timings, the norms interleaved so that load from elsewhere hits all alike."""
    import torch

    from tinylm.model import RMSNorm

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


def report(result: dict[str, Any]) -> str:
    """A two-column table of the figures, then the same as one JSON line (last, for tools)."""
    width = max(map(len, result))
    rows = [f"{key:<{width}}  {_fmt(value)}" for key, value in result.items()]
    return "\n".join([*rows, json.dumps(result)])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
