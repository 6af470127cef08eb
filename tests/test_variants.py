"""Model variants (position, norm, MLP, grouped-query attention, QK-norm, the speedrun's options):
each does the maths it claims, stops a bad combination at start-up, and trains. That every
variant keeps the default model's guarantees (causal, both attention paths equal, the parameter
count, the KV cache exact) is checked where those are: tests/test_model.py, test_generate.py."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, compose, make_model, run_script, swiglu_closed_form, tokens

import tinylm
from tinylm import TransformerLM
from tinylm.config import ModelConfig, TrainConfig
from tinylm.errors import ConfigError
from tinylm.functions import ReLUSquared, RMSNormFunction
from tinylm.model import RMSNorm, apply_rope, causal_attention, make_norm, rope_angles
from tinylm.train import _check_resumable, fit

# --- RoPE -----------------------------------------------------------------------------------------


def rotated_scores(q: torch.Tensor, k: torch.Tensor, offset: int) -> torch.Tensor:
    """Q·Kᵀ (…, T, T) after rotating q and k (…, T, hd) as positions offset .. offset + T - 1."""
    T, hd = q.size(-2), q.size(-1)
    cos, sin = rope_angles(offset + T, hd)
    q = apply_rope(q, cos[offset:], sin[offset:])
    k = apply_rope(k, cos[offset:], sin[offset:])
    return q @ k.transpose(-2, -1)


@pytest.mark.parametrize("shift", [1, 7, 100])
def test_rope_scores_depend_on_relative_position_only(shift: int) -> None:
    q, k = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    torch.testing.assert_close(rotated_scores(q, k, shift), rotated_scores(q, k, 0), rtol=1e-4, atol=1e-4)
    # ... and on the relative position they do depend: RoPE is not the identity.
    assert not torch.allclose(rotated_scores(q, k, 0), q @ k.transpose(-2, -1), atol=1e-2)


def test_rope_rotates_pairs_keeping_their_length() -> None:
    x = torch.randn(1, 1, 16, 8)
    cos, sin = rope_angles(16, 8)
    rotated = apply_rope(x, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotated[:, :, 0], x[:, :, 0])  # position 0: angle 0
    # Pair 0 (coordinates 0 and 4) turns by one radian per position.
    angle = torch.atan2(rotated[0, 0, 3, 4], rotated[0, 0, 3, 0]) - torch.atan2(x[0, 0, 3, 4], x[0, 0, 3, 0])
    assert math.remainder(angle.item() - 3.0, 2 * math.pi) == pytest.approx(0, abs=1e-5)


def test_rope_attention_weights_are_the_same_anywhere_in_the_window() -> None:
    """The score matrix of one attention layer: the same 6 queries and keys give the same weights
    whether they sit at positions 0..5 or 9..14 (learned positions would change them)."""
    layer = make_model("rope").blocks[0].attn
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        q, k, _ = layer.qkv(x).split(32, dim=2)
        q, k = (t.view(1, 6, 4, 8).transpose(1, 2) for t in (q, k))  # (1, H, 6, hd)
        cos, sin = rope_angles(16, 8)
        weights = [
            causal_attention(apply_rope(q, cos[s : s + 6], sin[s : s + 6]),
                             apply_rope(k, cos[s : s + 6], sin[s : s + 6]), k)[1]
            for s in (0, 9)
        ]
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-6)


def test_rope_has_no_position_parameters_and_saves_no_angles() -> None:
    model = make_model("rope")
    assert model.position_embedding is None
    assert not any("rope" in name or "position" in name for name in model.state_dict())


# --- no position signal ---------------------------------------------------------------------------


@pytest.mark.parametrize(("position", "invariant"), [("none", True), ("learned", False), ("rope", False)])
def test_without_positions_one_layer_cannot_tell_the_order_of_the_past(position: str, invariant: bool
                                                                       ) -> None:
    """With one layer, the last position's logits are a softmax-weighted mean over the earlier
    tokens: without a position signal, shuffling those tokens cannot change them."""
    model = make_model(position=position, layers=1)
    idx = tokens(batch=1, length=12)
    shuffled = torch.cat([idx[:, :-1][:, torch.randperm(11, generator=torch.Generator().manual_seed(0))],
                          idx[:, -1:]], dim=1)
    with torch.no_grad():
        same = torch.allclose(model(idx)[:, -1], model(shuffled)[:, -1], atol=1e-5)
    assert same == invariant


# --- grouped-query attention ----------------------------------------------------------------------


def test_kv_heads_equal_to_heads_is_plain_multi_head_attention() -> None:
    plain, grouped = make_model(), make_model(kv_heads=4)
    assert plain.config.kv_heads == 4  # null means heads
    grouped.load_state_dict(plain.state_dict())  # the same parameters, shape for shape
    with torch.no_grad():
        assert torch.equal(grouped(tokens()), plain(tokens()))


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_attention_is_multi_head_attention_with_shared_keys_and_values(kv_heads: int) -> None:
    """Copy each K/V head of a GQA model to its H / G query heads: a plain multi-head model with
    those weights computes the same logits, so query head h reads K/V head h // (H / G)."""
    grouped, plain = make_model(kv_heads=kv_heads), make_model()
    d, hd, group = 32, 8, 4 // kv_heads
    state = grouped.state_dict()
    for i in range(2):
        for kind in ("weight", "bias"):
            name = f"blocks.{i}.attn.qkv.{kind}"
            q, k, v = state[name].split([d, kv_heads * hd, kv_heads * hd])
            # (G·hd, …) → (G, hd, …) → each K/V head repeated for its group → (H·hd, …)
            k, v = (t.unflatten(0, (kv_heads, hd)).repeat_interleave(group, dim=0).flatten(0, 1)
                    for t in (k, v))
            state[name] = torch.cat([q, k, v])
    plain.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(grouped(tokens()), plain(tokens()), rtol=1e-5, atol=1e-5)


def test_fewer_kv_heads_mean_fewer_parameters() -> None:
    counts = [make_model(kv_heads=g).num_parameters() for g in (4, 2, 1)]
    per_kv_head = 2 * (32 * 8 + 8) * 2  # K and V, weight and bias, 2 layers
    assert counts[0] - counts[1] == 2 * per_kv_head and counts[1] - counts[2] == per_kv_head


# --- norms, QK-norm and SwiGLU --------------------------------------------------------------------


def test_rmsnorm_divides_by_the_root_mean_square_without_centring() -> None:
    norm = make_norm("rmsnorm", 16)
    assert [name for name, _ in norm.named_parameters()] == ["weight"]  # a gain, no bias
    x = torch.randn(5, 16) * 3 + 2
    expected = x / x.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_qk_norm_makes_scores_independent_of_the_scale_of_queries_and_keys(norm: str) -> None:
    """Scale the query and key projections by 100: with QK-norm attention does not change (each
    head's q and k are normalised over hd first); without, the softmax becomes much sharper."""
    x = torch.randn(2, 9, 32)
    for qk_norm in (True, False):
        layer = make_model(qk_norm=qk_norm, norm=norm).blocks[0].attn
        with torch.no_grad():
            before, weights_before = layer(x, need_weights=True)
            layer.qkv.weight[:64].mul_(100)  # the rows that make Q and K
            layer.qkv.bias[:64].mul_(100)
            after, weights_after = layer(x, need_weights=True)
        assert torch.allclose(weights_after, weights_before, atol=1e-4) == qk_norm
        assert torch.allclose(after, before, atol=1e-5) == qk_norm
    assert layer.q_norm is None and layer.k_norm is None  # off by default
    assert make_model(qk_norm=True).blocks[0].attn.q_norm.weight.shape == (8,)  # over hd, for all heads


@pytest.mark.parametrize(("d_model", "ratio", "hidden"), [(128, 4, 344), (384, 4, 1024), (32, 4, 88),
                                                          (64, 2.5, 112)])
def test_swiglu_hidden_width_is_two_thirds_rounded_up_to_a_multiple_of_8(d_model, ratio, hidden) -> None:
    config = ModelConfig(d_model=d_model, heads=4, mlp_ratio=ratio, mlp="swiglu")
    assert config.mlp_hidden == hidden
    assert ModelConfig(d_model=d_model, heads=4, mlp_ratio=ratio).mlp_hidden == round(ratio * d_model)


@pytest.mark.parametrize("bias", [True, False])
def test_swiglu_mlp_has_about_the_parameters_of_the_gelu_mlp(bias: bool) -> None:
    config = ModelConfig(mlp="swiglu", bias=bias)  # nano's width, 128
    swiglu = sum(p.numel() for p in TransformerLM(config, VOCAB).blocks[0].mlp.parameters())
    gelu = sum(p.numel() for p in TransformerLM(ModelConfig(bias=bias), VOCAB).blocks[0].mlp.parameters())
    assert swiglu == swiglu_closed_form(128, 4, bias)
    assert abs(swiglu - gelu) / gelu < 0.01  # 132,096 against 131,072 weights


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(kv_heads=3), "model.kv_heads: 3 does not divide model.heads=4; use one of [1, 2, 4]"),
        (dict(kv_heads=0), "model.kv_heads: must be at least 1"),
        (dict(kv_heads=8), "model.kv_heads: 8 does not divide model.heads=4"),
        (dict(position="rope", d_model=12), "model.position: rope needs an even head_dim"),
        (dict(position="alibi"), "model.position: must be one of learned, rope, none, got 'alibi'"),
        (dict(norm="batchnorm"), "model.norm: must be one of layernorm, rmsnorm"),
        (dict(mlp="relu"), "model.mlp: must be one of gelu, swiglu, relu2"),
    ],
)
def test_invalid_variants_are_config_errors_naming_the_key(options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        ModelConfig(**{"heads": 4, **options})
    assert message in str(error.value)


def test_variant_keys_are_checked_when_composed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.qk_norm: expected true or false, got 'maybe'"):
        TrainConfig.from_dict(compose("model.qk_norm=maybe", f"paths.output_dir={tmp_path}"))
    modern = TrainConfig.from_dict(compose("model=modern", f"paths.output_dir={tmp_path}")).model
    nano = TrainConfig.from_dict(compose("model=nano", f"paths.output_dir={tmp_path}")).model
    assert (modern.position, modern.norm, modern.mlp, modern.kv_heads, modern.qk_norm) == (
        "rope", "rmsnorm", "swiglu", 4, False)
    assert (nano.position, nano.norm, nano.mlp, nano.kv_heads, nano.qk_norm) == (
        "learned", "layernorm", "gelu", 4, False)
    shape = ("layers", "heads", "d_model", "block_size", "dropout", "bias", "mlp_ratio")
    assert [getattr(modern, k) for k in shape] == [getattr(nano, k) for k in shape]
    # The command line picks the model over an experiment's preset.
    quick = compose("experiment=cpu_quick", "model=modern", f"paths.output_dir={tmp_path}")
    assert TrainConfig.from_dict(quick).model == modern


@pytest.mark.parametrize(
    ("override", "message"),
    [("model.kv_heads=3", "error: model.kv_heads: 3 does not divide model.heads=4"),
     ("model.heads=8 model.d_model=24 model.position=rope",
      "error: model.position: rope needs an even head_dim")],
)
def test_train_script_stops_on_an_invalid_variant_with_one_line(override: str, message: str,
                                                                tmp_path: Path) -> None:
    result = run_script("train.py", *override.split(), f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- training, checkpoints and resume -------------------------------------------------------------


def tiny_run(text: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.source={text}", f"paths.output_dir={run_dir}", "logger=none",
        "model.layers=1", "model.heads=4", "model.d_model=32", "model.block_size=16", "data.batch_size=8",
        "optim.warmup_steps=2", "trainer.max_steps=5", "trainer.val_check_interval=5",
        "trainer.limit_val_batches=2", "trainer.log_every_n_steps=1",
        "callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false", *extra,
    ]


def train_briefly(text: Path, run_dir: Path, *extra: str):
    values = compose(*tiny_run(text, run_dir, *extra))
    trainer, module = fit(TrainConfig.from_dict(values))
    assert trainer.global_step == 5
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    return trainer, module


MODERN = ("model.position=rope", "model.norm=rmsnorm", "model.mlp=swiglu", "model.kv_heads=2",
          "model.qk_norm=true")


@pytest.fixture(scope="module")
def modern_run(small_text: Path, tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("modern")
    _, module = train_briefly(small_text, run_dir, *MODERN)
    return run_dir, module


def test_a_variant_checkpoint_rebuilds_the_same_model(modern_run) -> None:
    run_dir, module = modern_run
    model, tokenizer = tinylm.load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert model.config == module.model_config and model.config.position == "rope"
    idx = torch.tensor([tokenizer.encode("ROMEO:\nWhat")])
    module.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(idx), module.model(idx), rtol=0, atol=1e-6)


def test_a_checkpoint_from_before_the_variants_still_loads(small_text: Path, tmp_path: Path) -> None:
    """Old checkpoints store no position, norm, mlp, kv_heads or qk_norm: they were nanoGPT's."""
    _, module = train_briefly(small_text, tmp_path / "run")
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ("position", "norm", "mlp", "kv_heads", "qk_norm"):
        del checkpoint["hyper_parameters"]["model"][key]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    model, tokenizer = tinylm.load_checkpoint(tmp_path / "old.ckpt")
    assert model.config == module.model_config  # the defaults are the old architecture
    idx = torch.tensor([tokenizer.encode("ROMEO:")])
    module.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(idx), module.model(idx), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "refused"),
    [("model.position=learned", "model.position='rope' there, 'learned' here"),
     ("model.norm=layernorm", "model.norm='rmsnorm' there, 'layernorm' here"),
     ("model.mlp=gelu", "model.mlp='swiglu' there, 'gelu' here"),
     ("model.kv_heads=4", "model.kv_heads=2 there, 4 here"),
     ("model.qk_norm=false", "model.qk_norm=True there, False here")],
)
def test_resuming_with_another_variant_is_refused(modern_run, small_text: Path, tmp_path: Path,
                                                   change: str, refused: str) -> None:
    last = modern_run[0] / "checkpoints" / "last.ckpt"
    overrides = [*(o for o in MODERN if o.split("=")[0] != change.split("=")[0]), change]
    values = compose(*tiny_run(small_text, tmp_path, f"ckpt_path={last}", *overrides))
    with pytest.raises(ConfigError, match=f"ckpt_path: .*{refused}"):
        fit(TrainConfig.from_dict(values))


def test_resuming_with_kv_heads_null_or_equal_to_heads_is_the_same_model(small_text: Path,
                                                                          tmp_path: Path) -> None:
    train_briefly(small_text, tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    config = TrainConfig.from_dict(
        compose(*tiny_run(small_text, tmp_path, f"ckpt_path={last}", "model.kv_heads=4")))
    vocab = torch.load(last, weights_only=True)["hyper_parameters"]["vocab"]
    _check_resumable(config, {"tokenizer": "char", "vocab": vocab})  # no error: null meant 4 heads


def test_every_option_at_once_trains_in_bf16_mixed_precision(small_text: Path, tmp_path: Path) -> None:
    """RoPE's float32 angles, the norms and GQA's copies under autocast: still finite."""
    train_briefly(small_text, tmp_path, *MODERN, "trainer.precision=bf16-mixed")


OPTION_VALUES = {
    "model.position": ["learned", "rope", "none"],
    "model.norm": ["layernorm", "rmsnorm"],
    "model.mlp": ["gelu", "swiglu"],
    "model.kv_heads": ["null", "2", "1"],
    "model.qk_norm": ["false", "true"],
}
COMBINATIONS = [
    tuple(f"{key}={value}" for key, value in zip(OPTION_VALUES, values, strict=True))
    for values in itertools.product(*OPTION_VALUES.values())
]


@pytest.mark.slow
@pytest.mark.parametrize("combination", COMBINATIONS, ids=lambda c: ",".join(o.split("=")[1] for o in c))
def test_every_combination_trains(combination: tuple[str, ...], small_text: Path, tmp_path: Path) -> None:
    trainer, _ = train_briefly(small_text, tmp_path, *combination)
    assert math.isfinite(trainer.callback_metrics["val/loss"].item())


@pytest.mark.parametrize("position", ["learned", "rope", "none"])
def test_benchmark_flops_count_only_the_position_weights_there_are(position: str) -> None:
    from tinylm.tools.measures import flops_per_token

    config = ModelConfig(position=position)
    weights = TransformerLM(config, VOCAB).num_parameters()
    embedding = 64 * 128 if position == "learned" else 0  # a lookup, not a matmul
    assert flops_per_token(config, weights) == 6 * (weights - embedding) + 12 * 4 * 128 * 64


# --- the speedrun's options -----------------------------------------------------------------------


def test_relu2_mlp_is_the_square_of_relu() -> None:
    mlp = make_model("relu2").blocks[0].mlp
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.proj(torch.relu(mlp.fc(x)) ** 2))


def test_zero_init_blocks_start_as_the_identity() -> None:
    model = TransformerLM(ModelConfig(layers=2, heads=4, d_model=32, block_size=16, zero_init=True), VOCAB)
    idx = tokens()
    with torch.no_grad():
        x = model.token_embedding(idx) + model.position_embedding.weight[: idx.size(1)]
        torch.testing.assert_close(model(idx), model.lm_head(model.ln_f(x)))
    default = TransformerLM(ModelConfig(layers=2, heads=4, d_model=32, block_size=16), VOCAB)
    assert default.blocks[0].mlp.proj.weight.abs().sum() > 0


def test_untied_head_is_a_matrix_of_its_own() -> None:
    tied, untied = make_model(), make_model("untied")
    assert tied.lm_head.weight is tied.token_embedding.weight
    assert untied.lm_head.weight is not untied.token_embedding.weight
    assert untied.num_parameters() == tied.num_parameters() + VOCAB * 32


def test_logit_softcap_bounds_the_logits() -> None:
    model = make_model("softcap")
    with torch.no_grad():
        model.lm_head.weight.mul_(100)  # logits far beyond the cap
        logits = model(tokens())
    assert 1.9 < logits.abs().max() <= 2.0  # tanh reaches 1 in float32 far out
    with pytest.raises(ConfigError, match=r"model\.logit_softcap: must be positive"):
        ModelConfig(logit_softcap=0.0)


def test_rmsnorm_matches_torchs_values_and_gradients() -> None:

    ours, reference = RMSNorm(16).double(), torch.nn.RMSNorm(16, eps=1e-5).double()
    with torch.no_grad():
        ours.weight.normal_()
        reference.weight.copy_(ours.weight)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(ours(x), reference(x))
    assert torch.autograd.gradcheck(lambda x, w: RMSNormFunction.apply(x, w, 1e-5), (x, ours.weight))
    with torch.no_grad():  # the fused kernel of F.rms_norm, without autograd
        torch.testing.assert_close(ours(x), reference(x))


def test_squared_relu_matches_autograds_values_and_gradients() -> None:
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    x[0, 0, :4] = 0.0  # ReLU's kink: both give 0 there
    x.requires_grad_()
    torch.testing.assert_close(ReLUSquared.apply(x), torch.relu(x).square())
    assert torch.autograd.gradcheck(ReLUSquared.apply, (x,))
    grad = torch.randn_like(x)
    ours, = torch.autograd.grad(ReLUSquared.apply(x), x, grad)
    theirs, = torch.autograd.grad(torch.relu(x).square(), x, grad)
    torch.testing.assert_close(ours, theirs)

