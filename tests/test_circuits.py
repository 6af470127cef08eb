"""Circuits on models where the answer is known: a two-layer attention-only model wired by hand
as an induction circuit (a previous-token head in layer 0, an induction head in layer 1 that
copies), and random small models for the exactness of the attribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_model, tokens

from tinylm.attention.attribution import attribute
from tinylm.attention.circuits import copying_scores, icl_positions, induction_loss
from tinylm.attention.formation import find_formation, none_formed
from tinylm.attention.maps import head_scores, induction_tokens
from tinylm.attention.patching import patch_heads
from tinylm.config import ModelConfig
from tinylm.data import RandomWindows, Repeats
from tinylm.model import TransformerLM

V, T = 8, 16  # tokens, context: the probe repeats V distinct tokens twice
TOK, PREV, POS = 0, V, 2 * V  # where each subspace of the residual stream starts
D = 2 * V + T  # token one-hot, previous token one-hot, position one-hot
HD = D // 2  # two heads, each as wide as the context: a query's dim i can be position i
GAIN = 3.0  # sharpens the softmax: matches score about 25 above the rest


def wired_induction_model() -> TransformerLM:
    """Layer 0 head 0: from each position to the one before (by the position one-hots); it copies
    that token into the previous-token subspace. Layer 1 head 1: from each token to the key whose
    previous token is the same (the one after its last occurrence), copying that key's token into
    the token subspace, where the tied unembedding reads it. Layer 0 head 1 and layer 1 head 0
    look at position 0 and write nothing. RMSNorm without biases keeps every position's scale equal."""
    config = ModelConfig(layers=2, heads=2, d_model=D, block_size=T, mlp="none", norm="rmsnorm", bias=False)
    model = TransformerLM(config, V).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for block in model.blocks:
            block.ln_1.weight.fill_(1.0)
        model.ln_f.weight.fill_(4.0)  # confident predictions
        model.token_embedding.weight[:, TOK:TOK + V] = torch.eye(V)
        model.position_embedding.weight[:, POS:POS + T] = torch.eye(T)
        q0, q1 = (block.attn.qkv.weight.view(3, 2, HD, D) for block in model.blocks)  # (QKV, head, hd, d)
        # Layer 0 head 0: query t's dim i is position i; key s's dim i is position i - 1.
        for i in range(T):
            q0[0, 0, i, POS + i] = GAIN
        for i in range(T - 1):
            q0[1, 0, i + 1, POS + i] = GAIN
        q0[2, 0, :V, TOK:TOK + V] = torch.eye(V)  # value: the key's token
        model.blocks[0].attn.proj.weight[PREV:PREV + V, :V] = torch.eye(V) / 4  # into PREV
        # Layer 1 head 1: the query's token against the key's previous token; key 0 (whose
        # "previous token" is its own) is pushed away through a constant: the sum of the query's
        # position one-hot.
        q1[0, 1, :V, TOK:TOK + V] = GAIN * torch.eye(V)
        q1[1, 1, :V, PREV:PREV + V] = GAIN * torch.eye(V)
        q1[0, 1, V, POS:POS + T] = 1.0
        q1[1, 1, V, POS] = -3 * GAIN
        q1[2, 1, :V, TOK:TOK + V] = torch.eye(V)
        model.blocks[1].attn.proj.weight[TOK:TOK + V, HD:HD + V] = 4 * torch.eye(V)
        # The unused heads: every query on position 0 (a constant query against key 0's position).
        for qkv, head in ((q0, 1), (q1, 0)):
            qkv[0, head, 0, POS:POS + T] = GAIN
            qkv[1, head, 0, POS] = GAIN
    return model


@pytest.fixture(scope="module")
def induction_model() -> TransformerLM:
    return wired_induction_model()


def repeated(first: list[int]) -> torch.Tensor:
    return torch.tensor([first + first[:-1]])  # (1, 2V - 1): the second copy minus its last token


def test_the_wired_induction_head_scores_one_on_prefix_matching_and_the_others_zero(induction_model) -> None:
    scores = head_scores(induction_model, torch.arange(T)[None] % V)
    prefix = scores.prefix_matching
    assert prefix[1, 1].item() > 0.99
    others = prefix.flatten()[[0, 1, 2]]
    assert others.abs().max().item() < 0.01
    assert scores.prev_token[0, 0].item() > 0.99  # the helper is a previous-token head
    assert scores.duplicate_token[1, 1].item() < 0.01  # looks at the token after, not the copy


def test_a_copying_ov_circuit_scores_one_and_heads_writing_nothing_read_zero(induction_model) -> None:
    copying = copying_scores(induction_model)
    assert copying[1, 1].item() == pytest.approx(1.0, abs=1e-6)
    # Layer 0 head 0 writes where the unembedding does not read; the unused heads write nothing.
    assert copying.flatten()[[0, 1, 2]].abs().max().item() < 1e-6


def test_a_negated_ov_circuit_scores_minus_one(induction_model) -> None:
    flipped = TransformerLM(induction_model.config, V)
    flipped.load_state_dict(induction_model.state_dict())
    with torch.no_grad():
        flipped.blocks[1].attn.proj.weight.neg_()
    assert copying_scores(flipped)[1, 1].item() == pytest.approx(-1.0, abs=1e-6)


def test_the_circuit_predicts_the_second_copy(induction_model) -> None:
    sequences, period = induction_tokens(V, T, batch=4)
    assert induction_loss(induction_model, sequences, period) < 0.01


def test_patching_recovers_one_in_the_induction_head_and_zero_in_the_unused(induction_model) -> None:
    first = list(range(V))
    clean = repeated(first)
    corrupt = repeated([*first[:-1], first[0]])  # the token after 6 is 0, not 7
    patching = patch_heads(induction_model, clean, corrupt)
    assert (patching.clean_next, patching.corrupt_next) == (7, 0)
    recovery = patching.recovery
    assert recovery[1, 1].item() == pytest.approx(1.0, abs=1e-3)
    assert recovery[0, 1].abs().item() < 1e-3 and recovery[1, 0].abs().item() < 1e-3  # unused
    assert recovery[0, 0].abs().item() < 0.05  # the key's token, which decides, is not its output


def test_attribution_names_the_induction_head_as_the_writer(induction_model) -> None:
    result = attribute(induction_model, repeated(list(range(V))))
    target, _ = result.choice(-1, None)
    assert target == 7
    contributions = result.logits[:, -1, target]
    assert result.names[int(contributions.argmax())] == "layer 1 head 1"


@pytest.mark.parametrize("variant", ["nanogpt", "rmsnorm", "softcap", "untied", "everything"])
def test_attribution_sums_to_the_logit(variant: str) -> None:
    model = make_model(variant)
    result = attribute(model, tokens(batch=1))
    if model.config.logit_softcap is None:
        torch.testing.assert_close(result.model_logits.float(), model(tokens(batch=1))[0], atol=1e-5, rtol=0)
    assert (result.total() - result.model_logits).abs().max().item() < 1e-4
    assert len(result.names) == result.logits.size(0)
    assert sum(name.startswith("layer 1 head") for name in result.names) == model.config.heads


def test_icl_positions_scale_olssons_tokens_to_the_block() -> None:
    assert icl_positions(512) == (50, 500)
    assert icl_positions(64) == (6, 62)


def test_the_formation_rule_finds_the_steepest_rise_to_the_threshold_and_names_the_heads() -> None:
    steps = [0, 100, 200, 300, 400]
    prefix = np.zeros((5, 2, 4))
    prefix[:, 1, 2] = [0.04, 0.05, 0.2, 0.65, 0.71]  # steepest rise ending at ≥ 0.3: 200 → 300
    prefix[:, 0, 1] = [0.0, 0.25, 0.25, 0.25, 0.25]  # steep too, but ends below the threshold
    prev = np.zeros((5, 2, 4))
    prev[:, 0, 3] = [0.12, 0.3, 0.5, 0.8, 0.88]
    formed = find_formation(steps, prefix, prev)
    assert formed.line() == ("induction heads formed around step 300: layer 1 head 2 (prefix matching "
                             "0.20 → 0.71), helped by layer 0 head 3 (previous token 0.50 → 0.88)")
    assert find_formation(steps, prefix * 0.4, prev) is None  # never reaches 0.3
    assert "no induction heads formed" in none_formed(prefix * 0.4)


def test_repeated_strings_replace_a_fraction_of_each_batch_the_same_for_the_same_step() -> None:
    text = np.arange(1000) % 50
    windows = RandomWindows(text, block_size=40, batch_size=8, seed=1, repeats=Repeats(0.25, 6, 50))
    inputs, targets = windows.batch(3)
    full = torch.cat([inputs, targets[:, -1:]], dim=1)  # (8, 41)
    for row in full[:2]:  # round(0.25 · 8) = 2 rows: one string of 6 repeated
        assert torch.equal(row[6:], row[:-6])
    for row in full[2:]:  # the rest: the text, consecutive
        assert torch.equal(row[1:] % 50, (row[:-1] + 1) % 50)
    again, _ = windows.batch(3)
    assert torch.equal(again, inputs) and not torch.equal(windows.batch(4)[0][:2], inputs[:2])
