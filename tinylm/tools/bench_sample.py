"""``bench.task=sample``: tokens per second of generation with and without the KV cache, the
compiled decode step, and nanoGPT's ``generate`` beside them."""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tinylm.command_configs import BenchConfig
from tinylm.config import ModelConfig
from tinylm.errors import ConfigError
from tinylm.generation.stream import GenerativeLM
from tinylm.tools.measures import peak_rss_mb


def bench_sample(model_config: ModelConfig, bench: BenchConfig, seed: int = 1337) -> dict[str, Any]:
    """Tokens/s generating ``bench.new_tokens`` from a one-token prompt for each of
    ``bench.num_samples`` rows (one batch): cache on and off; with ``bench.compile`` the
    compiled decode step too (its first call's compile time apart); with ``NANOGPT_DIR`` set
    (a checkout of karpathy/nanoGPT) nanoGPT's ``generate`` on the same shape. All in this
    process, the settings taking turns in each of ``bench.repeats`` rounds, so that a change
    in the machine's speed hits them alike; medians."""
    torch.manual_seed(seed)
    model = GenerativeLM(replace(model_config, dropout=0.0), bench.vocab_size).eval()
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
