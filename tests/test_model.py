"""The model does the maths it claims: both attention paths, causality, tying, size, init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tinylm.config import ModelConfig
from tinylm.model import Block, CausalSelfAttention, TransformerLM, causal_attention, evaluating

VOCAB = 37


def make_model(**overrides) -> TransformerLM:
    """A small model whose attention is sharp: at the 0.02 init every score is near zero and
    softmax is near uniform, which would hide a wrong scale or mask."""
    torch.manual_seed(0)
    config = ModelConfig(**{"layers": 2, "heads": 4, "d_model": 32, "block_size": 16, **overrides})
    model = TransformerLM(config, VOCAB).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.normal_(std=0.4)
    return model


def tokens(batch: int = 3, length: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def reference_attention(
    layer: CausalSelfAttention, x: torch.Tensor, scale_dim: int | None = None
) -> torch.Tensor:
    """Multi-head causal attention straight from the formula, one head and one query at a time."""
    B, T, d = x.shape
    H, hd = layer.heads, layer.head_dim
    q_all, k_all, v_all = layer.qkv(x).split(d, dim=2)
    scale = math.sqrt(scale_dim or hd)
    heads = []
    for h in range(H):
        cols = slice(h * hd, (h + 1) * hd)  # head h owns these columns of Q, K and V
        q, k, v = q_all[..., cols], k_all[..., cols], v_all[..., cols]  # (B, T, hd)
        out = torch.zeros(B, T, hd)
        for t in range(T):
            scores = (k[:, : t + 1] @ q[:, t].unsqueeze(-1)).squeeze(-1) / scale  # keys 0..t only
            out[:, t] = (scores.softmax(-1).unsqueeze(-1) * v[:, : t + 1]).sum(1)
        heads.append(out)
    return layer.proj(torch.cat(heads, dim=-1))


def test_explicit_and_fused_paths_agree() -> None:
    fused, explicit = make_model(attention="sdpa"), make_model(attention="explicit")
    explicit.load_state_dict(fused.state_dict())
    idx = tokens()
    with torch.no_grad():
        difference = (fused(idx) - explicit(idx)).abs().max().item()
    assert difference < 1e-5


@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_attention_equals_the_formula_computed_head_by_head(path: str) -> None:
    layer = make_model(attention=path).blocks[0].attn
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        ours, _ = layer(x)
        expected = reference_attention(layer, x)
    assert (ours - expected).abs().max().item() < 1e-5


def test_scores_are_scaled_by_root_head_dim_not_root_d_model() -> None:
    layer = make_model().blocks[0].attn
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        ours, _ = layer(x)
        wrong = reference_attention(layer, x, scale_dim=32)  # the √d_model pitfall
    assert (ours - wrong).abs().max().item() > 1e-3


@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_future_tokens_do_not_change_past_logits(path: str) -> None:
    model = make_model(attention=path)
    idx = tokens(length=16)
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(idx), model(changed)
    assert torch.equal(before[:, :10], after[:, :10])
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_attention_weights_are_causal_rows_of_a_softmax() -> None:
    model = make_model()
    with torch.no_grad():
        logits, maps = model(tokens(length=12), return_attention=True)
    assert logits.shape == (3, 12, VOCAB)
    assert len(maps) == 2
    for weights in maps:
        assert weights.shape == (3, 4, 12, 12)  # (B, heads, T, T)
        above_diagonal = torch.ones(12, 12, dtype=torch.bool).triu(1)
        assert torch.all(weights[..., above_diagonal] == 0)  # masked before softmax: exactly 0
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 12))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_explicit_attention_is_safe_in_half_precision(dtype: torch.dtype) -> None:
    q, k, v = (torch.randn(1, 2, 8, 4).to(dtype) for _ in range(3))
    y, weights = causal_attention(q, k, v)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert torch.all(weights[0, 0].float().triu(1) == 0)
    fp32, _ = causal_attention(q.float(), k.float(), v.float())
    assert (y.float() - fp32).abs().max().item() < 0.05


def test_attention_with_cached_keys_masks_relative_to_the_last_queries() -> None:
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    full, _ = causal_attention(q, k, v)
    last_two, _ = causal_attention(q[:, :, 4:], k, v)  # two new queries over six keys
    torch.testing.assert_close(last_two, full[:, :, 4:])


def test_block_adds_each_sublayer_output_to_the_residual_stream() -> None:
    block = Block(ModelConfig(heads=2, d_model=16, block_size=8)).eval()
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        # With the MLP silenced, the block is x + attention(ln_1(x)) exactly ...
        for p in block.mlp.proj.parameters():
            p.zero_()
        attended, _ = block.attn(block.ln_1(x))
        torch.testing.assert_close(block(x)[0], x + attended)
        # ... and with attention silenced too, the block is the identity: the residual adds
        # the MLP's output, not the normalised input (the `x = x + h2` pitfall).
        for p in block.attn.proj.parameters():
            p.zero_()
        torch.testing.assert_close(block(x)[0], x)


def test_block_feeds_the_mlp_the_normalised_stream() -> None:
    block = Block(ModelConfig(heads=2, d_model=16, block_size=8)).eval()
    for p in block.attn.proj.parameters():
        torch.nn.init.zeros_(p)
    x = torch.randn(2, 8, 16) * 5 + 3
    with torch.no_grad():
        torch.testing.assert_close(block(x)[0], x + block.mlp(block.ln_2(x)))


def test_lm_head_is_the_token_embedding() -> None:
    model = make_model()
    assert model.lm_head.weight is model.token_embedding.weight


@pytest.mark.parametrize(
    "shape", [dict(bias=True), dict(bias=False), dict(mlp_ratio=2.5, layers=3, heads=2)]
)
def test_parameter_count_matches_the_closed_form(shape: dict) -> None:
    model = make_model(**shape)
    c = model.config
    d, hidden, b = c.d_model, c.mlp_hidden, int(c.bias)
    layer_norm = d + b * d
    per_block = (
        2 * layer_norm
        + 3 * d * d + b * 3 * d  # Q, K, V
        + d * d + b * d  # output projection
        + d * hidden + b * hidden + hidden * d + b * d  # MLP
    )
    expected = VOCAB * d + c.block_size * d + c.layers * per_block + layer_norm  # head tied: 0
    assert model.num_parameters() == expected


def test_initialisation_follows_nanogpt() -> None:
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(layers=8, heads=4, d_model=256, block_size=64), 500)
    assert model.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / math.sqrt(2 * 8)
    assert model.blocks[3].attn.proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert model.blocks[3].mlp.proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert torch.all(model.blocks[0].attn.qkv.bias == 0)


def test_dropout_is_active_in_training_only() -> None:
    model = make_model(dropout=0.5, attention="explicit")
    idx = tokens()
    with torch.no_grad():
        assert torch.equal(model(idx), model(idx))  # eval: deterministic
        model.train()
        assert not torch.equal(model(idx), model(idx))


@pytest.mark.parametrize("training", [True, False])
def test_evaluating_switches_dropout_off_and_restores_the_mode(training: bool) -> None:
    model = make_model(dropout=0.5, attention="explicit").train(training)
    idx = tokens()
    with torch.no_grad(), evaluating(model):
        assert not model.training and not any(m.training for m in model.modules())
        assert torch.equal(model(idx), model(idx))
    assert model.training is training
    with pytest.raises(RuntimeError), evaluating(model):
        raise RuntimeError("the block failed")
    assert model.training is training


def test_a_sequence_longer_than_block_size_is_refused() -> None:
    with pytest.raises(ValueError, match="block_size=16"):
        make_model()(tokens(length=17))


def test_untrained_loss_is_near_log_vocab() -> None:
    model = make_model()
    idx = tokens(length=16)
    with torch.no_grad():
        loss = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    assert loss.item() == pytest.approx(math.log(VOCAB), abs=0.2)
