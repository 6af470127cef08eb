"""optim.name=muon: Muon for the blocks' matrices, AdamW for the rest, as one optimiser that
Lightning, the schedule and checkpoints (resume) treat as any other."""

from __future__ import annotations

import copy as copy_module
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import compose, quick_overrides

from tinylm.config import ModelConfig, OptimConfig, TrainConfig
from tinylm.errors import ConfigError
from tinylm.model import TransformerLM
from tinylm.optim import MuonWithAdamW, build_optimizer
from tinylm.train import fit

MUON = OptimConfig(name="muon", lr=3e-3, muon_lr=0.02, muon_dtype="bfloat16")  # torch.optim.Muon's dtype


def small_model(seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(ModelConfig(layers=2, heads=2, d_model=16, block_size=8, tie_embeddings=False), 11)


def train_steps(model: TransformerLM, optimizer: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(11, (4, 9), generator=generator)
        F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad()


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest() -> None:
    model = small_model()
    optimizer = build_optimizer(model, MUON)
    assert isinstance(optimizer, MuonWithAdamW)
    muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    adamw = {id(p) for g in optimizer.adamw.param_groups for p in g["params"]}
    hidden = {id(p) for p in model.blocks.parameters() if p.dim() == 2}
    assert muon == hidden and not muon & adamw
    assert muon | adamw == {id(p) for p in model.parameters()}
    for head in (model.token_embedding.weight, model.lm_head.weight):
        assert id(head) in adamw
    assert isinstance(build_optimizer(model, OptimConfig()), torch.optim.AdamW)


def test_one_step_is_a_muon_step_and_an_adamw_step() -> None:
    model, reference = small_model(), small_model()
    optimizer = build_optimizer(model, MUON)
    train_steps(model, optimizer, 2)
    muon = torch.optim.Muon([p for p in reference.blocks.parameters() if p.dim() == 2], lr=0.02,
                            weight_decay=MUON.weight_decay)
    hidden = {id(p) for g in muon.param_groups for p in g["params"]}
    rest = [p for p in reference.parameters() if id(p) not in hidden]
    adamw = torch.optim.AdamW([{"params": [p for p in rest if p.dim() >= 2],
                                "weight_decay": MUON.weight_decay},
                               {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                              lr=3e-3, betas=MUON.betas, fused=True)
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):
        idx = torch.randint(11, (4, 9), generator=generator)
        F.cross_entropy(reference(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()).backward()
        muon.step()
        adamw.step()
        muon.zero_grad()
        adamw.zero_grad()
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)


def test_the_schedule_scales_both_and_the_state_survives_a_reload() -> None:
    model = small_model()
    optimizer = build_optimizer(model, MUON)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert optimizer.muon.param_groups[0]["lr"] == pytest.approx(0.01)
    assert optimizer.adamw.param_groups[0]["lr"] == pytest.approx(1.5e-3)
    train_steps(model, optimizer, 2)
    scheduler.step()
    saved = copy_module.deepcopy(optimizer.state_dict())  # as written to a checkpoint: no shared tensors
    copy = small_model()
    copy.load_state_dict(model.state_dict())
    reloaded = build_optimizer(copy, MUON)
    reloaded.load_state_dict(saved)
    assert reloaded.muon.param_groups[0]["lr"] == pytest.approx(0.01)
    train_steps(model, optimizer, 1, seed=2)
    train_steps(copy, reloaded, 1, seed=2)
    for ours, theirs in zip(model.parameters(), copy.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)


def test_optim_name_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"optim\.name: must be one of adamw, muon, got 'sgd'"):
        OptimConfig(name="sgd")


def test_speedrun_trains_and_resumes_with_muon(small_text: Path, tmp_path: Path) -> None:
    speedrun = TrainConfig.from_dict(compose("experiment=speedrun", f"paths.output_dir={tmp_path}"))
    assert speedrun.optim.name == "muon" and speedrun.model.qk_norm
    assert not speedrun.callbacks.attention.enabled and not speedrun.callbacks.samples.enabled
    assert speedrun.trainer["val_check_interval"] == speedrun.max_steps  # one validation, at the end
    first = tmp_path / "first"
    values = compose(*quick_overrides(small_text, first, "experiment=speedrun", "trainer.max_steps=10",
                                      "trainer.val_check_interval=10"))
    trainer, _ = fit(TrainConfig.from_dict(values))
    assert trainer.global_step == 10
    values = compose(*quick_overrides(small_text, tmp_path / "second", "experiment=speedrun",
                                      "trainer.max_steps=12", "trainer.val_check_interval=10",
                                      f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"))
    trainer, module = fit(TrainConfig.from_dict(values))
    assert trainer.global_step == 12
    assert isinstance(trainer.optimizers[0], MuonWithAdamW)
    assert all(torch.isfinite(p).all() for p in module.parameters())
