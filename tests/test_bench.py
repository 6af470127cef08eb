"""scripts/bench.py runs and reports every figure it promises (no timing assertions here)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_script

from tinylm.tools.measures import OtherWork, ratio_with_load

TRAIN_KEYS = {
    "ms_per_step", "mean_ms_per_step", "tokens_per_sec", "flops_per_token", "achieved_gflops",
    "peak_gflops", "mfu", "startup_s", "peak_rss_mb", "data_prep_cold_s", "data_prep_cached_s",
    "bare_ms_per_step", "lightning_overhead", "lightning_overhead_rounds", "machine",
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
                        "callbacks.progress_bar.refresh_rate=0", "bench.repeats=2")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = last_json(result.stdout)
    assert TRAIN_KEYS <= figures.keys()
    # The halves took turns, each round's ratio beside its load; the machine's kind beside all.
    assert "bench: round 2/2: the bare loop" in result.stderr
    assert len(figures["lightning_overhead_rounds"].split("(load ")) == 3
    assert "float32 matmuls" in figures["machine"] and "bfloat16 instructions" in figures["machine"]
    assert figures["ms_per_step"] > 0 and figures["mean_ms_per_step"] > 0 and 0 < figures["mfu"] < 1
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


def test_norms_benchmark_reports_each_norm() -> None:
    result = run_script("bench.py", "bench.task=norms", "bench.steps=3", "bench.warmup=1")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = last_json(result.stdout)
    for shape in ("residual", "qk"):
        for norm in ("layernorm", "torch_rmsnorm", "rmsnorm"):
            assert figures[f"{shape}_{norm}_us"] > 0
        assert figures[f"{shape}_rmsnorm_vs_layernorm"] > 0


NANOGPT_STUB = '''
from dataclasses import dataclass
import torch

@dataclass
class GPTConfig:
    block_size: int = 64
    vocab_size: int = 65
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True

class GPT(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        return torch.cat([idx, torch.zeros(idx.size(0), max_new_tokens, dtype=idx.dtype)], dim=1)
'''


@pytest.mark.slow
def test_sample_benchmark_times_the_compiled_step_and_nanogpt_beside_in_batches(tmp_path: Path) -> None:
    """With NANOGPT_DIR, nanoGPT's generate (here a stand-in with its interface) is timed on the
    same shape and batch; with bench.compile the compiled decode step too, its compile apart."""
    (tmp_path / "model.py").write_text(NANOGPT_STUB)
    result = run_script("bench.py", "bench.task=sample", "bench.new_tokens=20", "bench.repeats=1",
                        "bench.num_samples=3", "model.block_size=16", "bench.compile=true",
                        env={"NANOGPT_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    figures = last_json(result.stdout)
    assert figures["num_samples"] == 3 and figures["same_tokens"] is True
    assert figures["nanogpt_tokens_per_sec"] > 0 and figures["vs_nanogpt"] > 0
    assert figures["compile_s"] > 0 and figures["compiled_tokens_per_sec"] > 0
    assert figures["compiled_same_tokens"] is True and figures["compiled_vs_nanogpt"] > 0
    assert "compile_pays_back_after" in figures


NANOGPT_TRAIN_STUB = """
import sys
print("step 2000: train loss 1.7000, val loss 1.8800")  # the line nanoGPT's train.py prints
assert "--device=cpu" in sys.argv and "--max_iters=2000" in sys.argv, sys.argv
"""


def test_speedrun_benchmark_needs_nanogpt() -> None:
    result = run_script("bench.py", "bench.task=speedrun", env={"NANOGPT_DIR": ""})
    assert result.returncode != 0 and "NANOGPT_DIR" in result.stderr and "Traceback" not in result.stderr


def test_speedrun_benchmark_needs_nanogpts_data_prepared(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(NANOGPT_TRAIN_STUB)
    (tmp_path / "data" / "shakespeare_char").mkdir(parents=True)
    (tmp_path / "data" / "shakespeare_char" / "meta.pkl").write_bytes(b"")
    result = run_script("bench.py", "bench.task=speedrun", env={"NANOGPT_DIR": str(tmp_path)})
    assert result.returncode == 2 and result.stdout == ""
    data = tmp_path / "data" / "shakespeare_char"
    assert result.stderr == (f"error: bench.task: speedrun: NANOGPT_DIR has no train.bin, val.bin in {data}; "
                             f"prepare them there: copy tiny shakespeare to {data}/input.txt and run "
                             f"python prepare.py in {data}\n")




@pytest.mark.slow
def test_speedrun_benchmark_gives_each_round_a_directory(small_text: Path, tmp_path: Path) -> None:
    """Each round is a whole new run: a second round in the first round's directory would only
    say that the run has finished, and print no loss."""
    (tmp_path / "train.py").write_text(NANOGPT_TRAIN_STUB)
    (tmp_path / "data" / "shakespeare_char").mkdir(parents=True)
    for name in ("train.bin", "val.bin", "meta.pkl"):  # prepared, as the stand-in never reads them
        (tmp_path / "data" / "shakespeare_char" / name).write_bytes(b"")
    result = run_script("bench.py", "bench.task=speedrun", f"data.source={small_text}", "bench.repeats=2",
                        env={"NANOGPT_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    figures = last_json(result.stdout)
    assert "bench: round 2/2: tinylm" in result.stderr
    assert figures["nanogpt_best_val_loss"] == 1.88 and 0 < figures["tinylm_best_val_loss"] < 5
    assert figures["time_ratio"] > 0 and len(figures["time_ratio_rounds"].split("(load ")) == 3
    assert figures["time_ratio_rounds"].count("other work ") == 2


def test_step_benchmark_splits_the_step_and_times_torchs_muon_beside_ours(small_text: Path) -> None:
    result = run_script("bench.py", "bench.task=step", "experiment=speedrun", f"data.source={small_text}",
                        "bench.steps=3", "bench.warmup=1", "model.layers=1", "model.d_model=32")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = last_json(result.stdout)
    assert figures["precision"].startswith("precision: 32-true, Muon's iterations in ")
    assert figures["forward_backward_ms"] > 0 and figures["muon_ms"] > 0 and figures["torch_muon_ms"] > 0
    assert figures["muon_ms"] <= figures["optimizer_ms"] and 0 < figures["optimizer_share"] < 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the GPU benchmark runs (minutes)")
def test_gpu_benchmark_on_a_cpu_machine_says_it_needs_a_gpu() -> None:
    result = run_script("bench.py", "bench.task=gpu")
    assert result.returncode == 2 and result.stdout == "", result.stdout[-2000:]
    assert result.stderr == ("error: bench.task: gpu needs a CUDA GPU and this machine has none "
                             "(torch.cuda.is_available() is False); run it on a machine with one\n")


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads /proc/stat")
def test_other_work_counts_processes_beside_a_benchmark_not_its_own() -> None:
    """A ratio is flagged for other work, which the load average cannot tell from the
    benchmark's own processes: a child it waits for is its own work, a busy process beside it is
    other work (the suite's other workers may add to it, never take from it)."""
    busy = [sys.executable, "-c", "while True: pass"]
    with OtherWork() as own:
        subprocess.run([sys.executable, "-c", "sum(range(30_000_000))"], check=True)
    beside = subprocess.Popen(busy)
    try:
        time.sleep(0.5)  # the interpreter starting is not the point
        with OtherWork() as other:
            time.sleep(1.5)
    finally:
        beside.kill()
        beside.wait()
    assert own.own_cores is not None and own.own_cores > 0.3, own.own_cores  # the child was ours
    assert other.own_cores is not None and other.own_cores < 0.2, other.own_cores  # we slept
    assert other.cores is not None and other.cores > 0.6, other.cores  # the busy process was not ours
    assert "OTHER WORK: rerun on a quieter machine" in ratio_with_load(0.2, 1.0, 2.0, other.cores)
    assert ratio_with_load(0.2, 1.0, 2.0, 0.01) == "0.200 (load 1.00→2.00, other work 0.01 cores)"
