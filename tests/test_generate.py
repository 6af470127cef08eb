"""Generation: the KV cache changes the speed, never the text."""

from __future__ import annotations

import pytest
import torch

from tinylm import TransformerLM
from tinylm.config import ModelConfig
from tinylm.generation.cache import new_cache
from tinylm.generation.sampling import sample_next

VOCAB = 29


@pytest.fixture(scope="module", params=["sdpa", "explicit"])
def model(request) -> TransformerLM:
    torch.manual_seed(0)
    config = ModelConfig(layers=2, heads=2, d_model=32, block_size=16, attention=request.param)
    model = TransformerLM(config, VOCAB).eval()
    with torch.no_grad():  # sharpen the untrained model so its choices are not near ties
        model.token_embedding.weight.mul_(20)
    return model


def prompt(length: int = 5, batch: int = 2) -> torch.Tensor:
    return torch.randint(VOCAB, (batch, length), generator=torch.Generator().manual_seed(3))


def generate(model, idx, n, use_cache, seed=7, **options) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return model.generate(idx, n, use_cache=use_cache, generator=generator, **options)


@pytest.mark.parametrize("new_tokens", [8, 11, 60])  # within block_size, exactly to it, far past it
@pytest.mark.parametrize("options", [dict(temperature=0), dict(temperature=1.0), dict(top_k=5, top_p=0.9)])
def test_cached_equals_uncached(model, new_tokens: int, options: dict) -> None:
    idx = prompt()
    cached = generate(model, idx, new_tokens, use_cache=True, **options)
    uncached = generate(model, idx, new_tokens, use_cache=False, **options)
    assert cached.shape == (2, 5 + new_tokens)
    assert torch.equal(cached[:, :5], idx)
    assert torch.equal(cached, uncached)


def test_prompt_longer_than_block_size(model) -> None:
    idx = prompt(length=40)
    assert torch.equal(generate(model, idx, 20, True), generate(model, idx, 20, False))


def test_cached_forward_equals_full_forward(model) -> None:
    idx = prompt(length=12)
    with torch.no_grad():
        full = model(idx)
        cache = new_cache(model, 2)
        pieces = [model(idx[:, :5], cache=cache)]  # a prompt, then one token at a time
        pieces += [model(idx[:, t : t + 1], cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_same_seed_same_text_other_seed_other_text(model) -> None:
    idx = prompt()
    assert torch.equal(generate(model, idx, 30, True, seed=1), generate(model, idx, 30, True, seed=1))
    assert not torch.equal(generate(model, idx, 30, True, seed=1), generate(model, idx, 30, True, seed=2))


def test_top_k_one_and_tiny_top_p_are_greedy(model) -> None:
    idx = prompt()
    greedy = generate(model, idx, 25, True, temperature=0)
    assert torch.equal(generate(model, idx, 25, True, top_k=1), greedy)
    assert torch.equal(generate(model, idx, 25, True, top_p=1e-6), greedy)
    assert torch.equal(generate(model, idx, 25, True, temperature=1e-6), greedy)  # T → 0


def test_low_temperature_approaches_greedy() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    share_of_argmax = []
    for temperature in (2.0, 1.0, 0.3, 0.05):
        draws = sample_next(logits.expand(4000, 4), temperature, generator=torch.Generator().manual_seed(0))
        share_of_argmax.append((draws == 0).float().mean().item())
    assert share_of_argmax == sorted(share_of_argmax)
    assert share_of_argmax[-1] > 0.99


def test_draws_follow_the_softmax() -> None:
    """The exponential race draws token i with probability pᵢ: frequencies of 40,000 draws are
    within 4 standard deviations of p, and a token of probability 0 is never drawn."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    draws = sample_next(p.log().expand(40_000, 5), generator=torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws[:, 0], minlength=5) / 40_000
    assert torch.all((frequencies - p).abs() <= 4 * (p * (1 - p) / 40_000).sqrt())
    assert frequencies[4] == 0


def test_top_k_and_top_p_only_sample_the_allowed_tokens() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits.expand(2000, 4), top_k=2, generator=g).unique().tolist()) == {0, 1}
    # 0.5 + 0.3 = 0.8 < 0.85: the third token is needed to reach top_p, the fourth is not.
    assert set(sample_next(logits.expand(2000, 4), top_p=0.85, generator=g).unique().tolist()) == {0, 1, 2}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(temperature=-1), "temperature: must be 0"),
        (dict(top_k=0), "top_k: must be at least 1"),
        (dict(top_p=0.0), r"top_p: must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p: must be in \(0, 1\]"),
    ],
)
def test_bad_sampling_settings_are_refused(model, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model.generate(prompt(), 3, **options)


def test_generation_leaves_no_gradient_graph(model) -> None:
    out = model.generate(prompt(), 3)
    assert not out.requires_grad and out.dtype == torch.long
