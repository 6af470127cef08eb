"""The model does the maths it claims: both attention paths, causality, tying, size, init; every
variant (position, norm, MLP, grouped-query attention, QK-norm, ...) keeps those guarantees."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import VARIANTS, VOCAB, make_model, swiglu_closed_form, tokens, variants

from tinylm.config import ModelConfig
from tinylm.model import Block, CausalSelfAttention, TransformerLM, causal_attention, evaluating


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


@variants
def test_explicit_and_fused_paths_agree(variant: str) -> None:
    fused, explicit = make_model(variant, attention="sdpa"), make_model(variant, attention="explicit")
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


@variants
@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_future_tokens_do_not_change_past_logits(variant: str, path: str) -> None:
    model = make_model(variant, attention=path)
    idx = tokens(length=16)
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(idx), model(changed)
    assert torch.equal(before[:, :10], after[:, :10])
    assert not torch.allclose(before[:, 10:], after[:, 10:])


@variants
def test_attention_weights_are_causal_rows_of_a_softmax(variant: str) -> None:
    model = make_model(variant)
    with torch.no_grad():
        logits, maps = model(tokens(length=12), return_attention=True)
    assert logits.shape == (3, 12, VOCAB)
    assert len(maps) == 2
    for weights in maps:
        assert weights.shape == (3, 4, 12, 12)  # (B, heads, T, T): one per query head, also with fewer K/V
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


# Every variant, the default at other shapes, and mixtures the variants do not hold.
SHAPES = [*((variant, {}) for variant in VARIANTS),
          ("nanogpt", dict(bias=True)), ("nanogpt", dict(bias=False)),
          ("nanogpt", dict(mlp_ratio=2.5, layers=3, heads=2)),
          ("nanogpt", dict(position="none", kv_heads=1, qk_norm=True, layers=3)),
          ("nanogpt", dict(norm="rmsnorm", qk_norm=True, bias=False, kv_heads=2, layers=3))]


@pytest.mark.parametrize(("variant", "shape"), SHAPES,
                         ids=[v + "".join(f",{key}={value}" for key, value in s.items()) for v, s in SHAPES])
def test_parameter_count_matches_the_closed_form(variant: str, shape: dict) -> None:
    model = make_model(variant, **shape)
    c = model.config
    d, hd, H, G, b = c.d_model, c.head_dim, c.heads, c.kv_heads, int(c.bias)

    def norm(width: int) -> int:
        return width if c.norm == "rmsnorm" else width + b * width  # RMSNorm: a gain, no bias

    mlp = swiglu_closed_form(d, c.mlp_ratio, c.bias) if c.mlp == "swiglu" else (
        2 * d * c.mlp_hidden + b * (c.mlp_hidden + d))  # GELU and ReLU²: in, out
    per_block = (
        2 * norm(d)
        + d * (H + 2 * G) * hd + b * (H + 2 * G) * hd  # Q, K, V
        + d * d + b * d  # output projection
        + (2 * norm(hd) if c.qk_norm else 0)
        + mlp
    )
    positions = c.block_size * d if c.position == "learned" else 0
    head = 0 if c.tie_embeddings else VOCAB * d  # tied: the token embedding
    expected = VOCAB * d + positions + c.layers * per_block + norm(d) + head
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
