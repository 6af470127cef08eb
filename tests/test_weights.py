"""model.safetensors: every run writes its final weights without pickle, with what rebuilds the
model in the metadata, and loaders take it over last.ckpt."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from conftest import run_script
from safetensors import safe_open

from tinylm.checkpoint import load_checkpoint, read_checkpoint


def test_a_run_writes_its_final_weights_as_safetensors(trained) -> None:
    run_dir, trainer, module = trained
    weights = run_dir / "checkpoints" / "model.safetensors"
    with safe_open(weights, framework="pt") as file:
        metadata = file.metadata()
        stored = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (not a dict)
    record = json.loads(metadata["tinylm"])
    assert record["model"]["layers"] == 2 and record["model"]["d_model"] == 64
    assert record["vocab"] == module.tokenizer.vocab and int(metadata["step"]) == trainer.global_step
    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert "lm_head.weight" not in stored  # tied: the token embedding, stored once
    assert stored.keys() == {k.removeprefix("model.") for k in last if k != "model.lm_head.weight"}
    for name, tensor in stored.items():
        assert torch.equal(tensor, last[f"model.{name}"])


def test_loaders_prefer_it_and_it_needs_no_pickle(trained, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained[0] / "checkpoints", run / "checkpoints")
    last = run / "checkpoints" / "last.ckpt"
    ids = torch.tensor([[1, 2, 3, 4]])
    expected = load_checkpoint(last)[0](ids)
    # last.ckpt unreadable, and no newer than the weights: only model.safetensors can give the model
    stamp = os.stat(last)
    last.write_bytes(b"not a checkpoint")
    os.utime(last, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    model, _ = load_checkpoint(last)
    assert torch.equal(model(ids), expected)
    sampled = run_script("sample.py", f"ckpt={run}", "prompt=ROMEO:", "max_new_tokens=10")
    assert sampled.returncode == 0 and sampled.stdout.startswith("ROMEO:"), sampled.stderr
    # a last.ckpt written after the weights (a resumed run, stopped before its end) is what loads
    os.utime(last)
    assert "last.ckpt" in str(_error(lambda: load_checkpoint(last)))


def _error(call) -> Exception:
    try:
        call()
    except Exception as error:  # the checkpoint's own one-line error
        return error
    raise AssertionError("no error")
