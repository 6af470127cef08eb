"""``bench.task=data``: preparing a data source cold and cached, and the memory of training on
it, each in a fresh process so that none benefits from another's imports or memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from tinylm.command_configs import BenchRunConfig
from tinylm.schema import as_plain

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
