"""Generation: the KV cache changes the speed, never the text, for every variant of the model;
sampling draws what its settings allow; the step compiled ahead of time samples the same text."""

from __future__ import annotations

import pytest
import torch
from conftest import VARIANTS, VOCAB, make_model, tokens, variants

from tinylm import TransformerLM
from tinylm.generation import decode
from tinylm.generation.cache import new_cache
from tinylm.generation.eager import eager_step
from tinylm.generation.sampling import sample_next
from tinylm.model import CausalSelfAttention


def sharpened(variant: str = "nanogpt", **overrides) -> TransformerLM:
    """``make_model`` with its token embedding scaled up, so that the untrained model's choices
    are not near ties (a tie could break either way on the two paths)."""
    model = make_model(variant, **overrides)
    with torch.no_grad():
        model.token_embedding.weight.mul_(20)
    return model


@pytest.fixture(scope="module", params=["sdpa", "explicit"])
def model(request) -> TransformerLM:
    """The default model, on each attention path, for the sampling settings (not sharpened:
    sharpened, it would write the same text whatever the seed)."""
    return make_model(attention=request.param)


def prompt(length: int = 5, batch: int = 2) -> torch.Tensor:
    return torch.randint(VOCAB, (batch, length), generator=torch.Generator().manual_seed(3))


def generate(model, idx, n, use_cache, seed=7, **options) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return model.generate(idx, n, use_cache=use_cache, generator=generator, **options)


GREEDY, SAMPLED = dict(temperature=0), dict(temperature=1.0, top_k=10)
SETTINGS = (GREEDY, dict(temperature=1.0), dict(top_k=5, top_p=0.9))
# What the cache holds depends on the model: every variant, within the window and past it (the
# window slides). It must not depend on the sampling: every setting, on the default model, also
# exactly to the window's end and far past it.
CACHE_CASES = [(variant, n, options) for variant in VARIANTS for n in (8, 40)
               for options in (GREEDY, SAMPLED)]
CACHE_CASES += [("nanogpt", n, options) for n in (8, 11, 60) for options in SETTINGS
                if ("nanogpt", n, options) not in CACHE_CASES]


@pytest.mark.parametrize(("variant", "new_tokens", "options"), CACHE_CASES,
                         ids=[f"{v}-{n}-" + ",".join(f"{key}={value}" for key, value in o.items())
                              for v, n, o in CACHE_CASES])
@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_cached_equals_uncached(variant: str, new_tokens: int, options: dict, path: str) -> None:
    model = sharpened(variant, attention=path)
    idx = prompt()
    cached = generate(model, idx, new_tokens, use_cache=True, **options)
    uncached = generate(model, idx, new_tokens, use_cache=False, **options)
    assert cached.shape == (2, 5 + new_tokens)
    assert torch.equal(cached[:, :5], idx)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_prompt_longer_than_block_size(path: str) -> None:
    model = sharpened(attention=path)
    idx = prompt(length=40)
    assert torch.equal(generate(model, idx, 20, True), generate(model, idx, 20, False))


@variants
@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_cached_forward_equals_full_forward(variant: str, path: str) -> None:
    model = make_model(variant, attention=path)
    idx = tokens(length=12)
    with torch.no_grad():
        full = model(idx)
        cache = new_cache(model, 3)
        pieces = [model(idx[:, :5], cache=cache)]  # a prompt, then one token at a time
        pieces += [model(idx[:, t : t + 1], cache=cache) for t in range(5, 12)]
    assert cache.layers[0].keys.shape == (3, model.config.kv_heads, 16, 8)  # only G heads are cached
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


@variants
@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_eager_step_equals_full_forward(variant: str, path: str) -> None:
    """The eager one-token step (tinylm.generation.eager), which cached generation takes for
    every variant (test_cached_equals_uncached holds it to the uncached tokens), computes the
    full forward pass's logits."""
    model = make_model(variant, attention=path)
    idx = tokens(length=12)
    cache = new_cache(model, 3, sliced=True)
    step = eager_step(model, cache)
    assert step is not None
    with torch.no_grad():
        full = model(idx)
        model(idx[:, :5], cache=cache)
        stepped = torch.stack([step(idx[:, t : t + 1]) for t in range(5, 12)], dim=1)
        cache.clear()  # a slide of the window: the step fills the cache itself, then goes on
        filled = step.fill(idx[:, :5])
        refilled = torch.stack([step(idx[:, t : t + 1]) for t in range(5, 12)], dim=1)
        with pytest.raises(ValueError, match="fill starts an empty cache; this one holds 12 positions"):
            step.fill(idx[:, :5])
    torch.testing.assert_close(stepped, full[:, 5:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(filled, full[:, 4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(refilled, full[:, 5:], rtol=1e-5, atol=1e-5)


def test_an_attention_the_eager_step_does_not_know_is_called_as_it_is() -> None:
    """A subclass of tinylm's attention may compute anything: generation calls the model."""

    class Doubled(CausalSelfAttention):
        def forward(self, x, *args):
            y, weights = super().forward(x, *args)
            return 2 * y, weights

    model = TransformerLM(sharpened().config, VOCAB, attention=Doubled).eval()
    assert eager_step(model, new_cache(model, 2, sliced=True)) is None
    idx = prompt()
    assert torch.equal(generate(model, idx, 20, True, **SAMPLED), generate(model, idx, 20, False, **SAMPLED))


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


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "options"), [
    ("nanogpt", dict(temperature=1.0, top_k=10)),
    ("nanogpt", dict(temperature=0)),  # greedy
    ("everything", dict(temperature=0.7, top_k=5)),  # RoPE, RMSNorm, SwiGLU, GQA, QK-norm
    ("speedrun", dict(temperature=0.8, top_p=0.9)),  # ReLU², soft-capped
])
def test_compiled_generation_equals_eager(variant: str, options: dict) -> None:
    """The one-token step compiled ahead of time (tinylm.generation.decode) samples the eager step's
    tokens, past a slide of the window; so does a second model of the shape, which shares the
    compiled library, and so does the first after its weights change. (Untied: sharpened tied
    embeddings would make every model repeat its last token, and hide a wrong model.)"""
    first, second = sharpened(variant, tie_embeddings=False), make_model(variant, tie_embeddings=False)
    with torch.no_grad():
        second.token_embedding.weight.normal_(std=0.4, generator=torch.Generator().manual_seed(1))
    idx = tokens(batch=2, length=5)

    def sampled(model: TransformerLM, compile: bool) -> torch.Tensor:
        return model.generate(idx, 40, compile=compile, generator=torch.Generator().manual_seed(7), **options)

    compiled = sampled(first, True)
    assert torch.equal(compiled, sampled(first, False))
    libraries = len(decode._LIBRARIES)
    assert torch.equal(sampled(second, True), sampled(second, False))
    assert not torch.equal(sampled(second, True), compiled)
    # Both models' generations at once, taking turns: each step reads its own model's weights.
    streams = [model.stream(idx, 40, compile=True, generator=torch.Generator().manual_seed(7), **options)
               for model in (first, second)]
    in_turns = list(zip(*streams, strict=True))
    for model, new_tokens in zip((first, second), zip(*in_turns, strict=True), strict=True):
        assert torch.equal(torch.cat([idx, *new_tokens], dim=1), sampled(model, False))
    with torch.no_grad():
        first.blocks[0].mlp.fc.weight.mul_(-3)
    assert torch.equal(sampled(first, True), sampled(first, False))
    assert len(decode._LIBRARIES) == libraries  # one compile for the shape
