"""Head importance by ablation: a head the model does not use costs nothing to remove; the
one head a copying model needs costs the most."""

from __future__ import annotations

import pytest
import torch

from tinylm.attention.ablation import ablated, ablation_scores, validation_windows
from tinylm.attention.scores import HeadScores
from tinylm.config import ModelConfig
from tinylm.model import TransformerLM

VOCAB = 12


def model_of(**overrides) -> TransformerLM:
    torch.manual_seed(0)
    config = ModelConfig(**{"layers": 2, "heads": 4, "d_model": 32, "block_size": 16, **overrides})
    return TransformerLM(config, VOCAB)


@pytest.mark.parametrize("mode", ["zero", "mean"])
@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_a_head_the_model_does_not_use_costs_nothing(mode: str, attention: str) -> None:
    model = model_of(attention=attention)
    hd = model.config.head_dim
    with torch.no_grad():  # layer 1 head 2 reaches nothing: the projection ignores its slice
        model.blocks[1].attn.proj.weight[:, 2 * hd : 3 * hd] = 0.0
    windows = torch.randint(0, VOCAB, (4, 17), generator=torch.Generator().manual_seed(1))
    rises = ablation_scores(model, windows, mode)  # (L, H)
    assert rises.shape == (2, 4)
    assert rises[1, 2] == 0.0
    assert (rises.flatten().abs() > 0).sum() == 7  # every other head changes the loss


def test_ablating_leaves_the_model_as_it_was() -> None:
    model = model_of()
    ids = torch.randint(0, VOCAB, (2, 16))
    before = model(ids)
    with ablated(model, 0, 1):
        assert not torch.equal(model(ids), before)
    assert torch.equal(model(ids), before)


def alternating(count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` windows a b a b … of 17 tokens: each next token is the one before the last,
    so only attention to the previous position can predict it."""
    pairs = torch.randint(0, VOCAB, (count, 2), generator=generator)
    return pairs.repeat(1, 9)[:, :17]  # (count, 17)


def copying_model() -> TransformerLM:
    """A one-layer model of one head, trained on ``alternating`` windows."""
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(layers=1, heads=1, d_model=32, block_size=16, mlp_ratio=2), VOCAB)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        windows = alternating(32, generator)
        logits = model(windows[:, :-1])  # (32, 16, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def test_the_only_head_of_a_copying_model_costs_the_most() -> None:
    model = copying_model()
    windows = alternating(16, torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(windows[:, :-1])[:, 1:]  # position 0 cannot know the next token
        copied = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 2:].flatten()).item()
    assert copied < 0.1  # it learned to copy
    for mode in ("zero", "mean"):
        (rise,) = ablation_scores(model, windows, mode).flatten().tolist()
        # Without its head it cannot know the token before: the loss rises most of the way to
        # a guess among the VOCAB characters (ln 12 ≈ 2.5 nats).
        assert rise > 1.0, mode


def test_the_windows_are_fixed_and_spread_over_the_text() -> None:
    tokens = torch.arange(1000)
    windows = validation_windows(tokens, 8, 16)
    assert windows.shape == (8, 17)
    assert windows[0, 0] == 0 and windows[-1, -1] == 999
    assert torch.equal(windows, validation_windows(tokens, 8, 16))
    assert validation_windows(torch.arange(20), 8, 16).shape == (4, 17)  # as many as fit


def test_the_ablation_column_and_title() -> None:
    zeros = torch.zeros(2, 3)
    scores = HeadScores(zeros, zeros, zeros, zeros, zeros, ablation=torch.full((2, 3), 0.25))
    header, _, first, *_ = scores.table().splitlines()
    assert header.endswith("| first_token | ablation |")
    assert first.endswith("| 0.250 |")
    assert "ablation +0.250 nats" in scores.title(1, 2)
    assert [name for name, _ in scores.items()][-1] == "ablation"


@pytest.mark.parametrize(("settings", "key"), [
    ({"ablation": "half"}, "callbacks.attention.ablation"),
    ({"ablation_windows": 0}, "callbacks.attention.ablation_windows"),
])
def test_bad_ablation_settings_name_their_key(settings: dict, key: str) -> None:
    from tinylm.config import AttentionMapsConfig
    from tinylm.errors import ConfigError

    with pytest.raises(ConfigError, match=f"^{key}: "):
        AttentionMapsConfig(**settings)


def test_a_resumed_run_replaces_the_records_it_repeats(tmp_path) -> None:
    import numpy as np

    from tinylm.attention.history import append_history, load_history

    path = tmp_path / "attention.npz"
    maps = np.full((1, 2, 3, 3), 0.5)
    for step in (0, 10, 20, 10, 20):  # the run resumed from its step-10 checkpoint
        append_history(path, step, list("abc"), maps * (step / 20), {"entropy": np.full((1, 2), step)})
    history = load_history(path)
    assert history.steps.tolist() == [0, 10, 20]
    assert history.scores["entropy"][:, 0, 0].tolist() == [0, 10, 20]
    assert history.weights(2).max() == pytest.approx(0.5, abs=1 / 255) and history.labels == ["a", "b", "c"]
