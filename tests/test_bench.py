"""scripts/bench.py runs and reports every figure it promises (no timing assertions here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_script

TRAIN_KEYS = {
    "ms_per_step", "tokens_per_sec", "flops_per_token", "achieved_gflops", "peak_gflops", "mfu",
    "startup_s", "peak_rss_mb", "data_prep_cold_s", "data_prep_cached_s", "bare_ms_per_step",
    "lightning_overhead",
}
SAMPLE_KEYS = {"cached_tokens_per_sec", "uncached_tokens_per_sec", "speedup", "same_tokens"}


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_sample_benchmark_reports_both_paths() -> None:
    result = run_script("bench.py", "bench.task=sample", "bench.new_tokens=40", "bench.repeats=1",
                        "model.block_size=16")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = last_json(result.stdout)
    assert SAMPLE_KEYS <= figures.keys()
    assert figures["same_tokens"] is True  # the cache never changes the text
    assert figures["cached_tokens_per_sec"] > 0 and figures["uncached_tokens_per_sec"] > 0


@pytest.mark.slow
def test_train_benchmark_reports_every_figure(small_text: Path) -> None:
    result = run_script("bench.py", f"data.source={small_text}", "bench.steps=5", "bench.warmup=2",
                        "model.layers=1", "model.d_model=32", "model.block_size=16",
                        "callbacks.progress_bar.refresh_rate=0")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = last_json(result.stdout)
    assert TRAIN_KEYS <= figures.keys()
    assert figures["ms_per_step"] > 0 and 0 < figures["mfu"] < 1
    assert figures["startup_s"] > 0 and figures["data_prep_cold_s"] > 0


def test_bad_bench_setting_is_one_line_error() -> None:
    result = run_script("bench.py", "bench.task=fly")
    assert result.returncode != 0 and "error: bench.task: must be one of train, sample, data" in result.stderr


DATA_KEYS = {"tokens", "dtype", "vocab_size", "token_file_mb", "data_prep_cold_s", "data_prep_cached_s",
             "data_prep_cold_peak_rss_mb", "data_prep_cached_peak_rss_mb", "train_peak_rss_mb",
             "tiny_shakespeare_cached_s"}


@pytest.mark.slow
def test_data_benchmark_reports_preparation_and_memory(small_text: Path) -> None:
    result = run_script("bench.py", "bench.task=data", f"data.source={small_text}", "bench.steps=2",
                        "model.layers=1", "model.d_model=32", "model.block_size=16", "logger=none",
                        "callbacks.progress_bar.refresh_rate=0")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = last_json(result.stdout)
    assert DATA_KEYS <= figures.keys()
    assert figures["tokens"] == 30_000 and figures["dtype"] == "uint8"
    assert figures["data_prep_cold_s"] > 0 and figures["train_peak_rss_mb"] > 0
