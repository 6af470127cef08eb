"""The head scores on attention built by hand, where the right answer is known exactly."""

from __future__ import annotations

import math

import pytest
import torch

from tinylm.attention.scores import (
    HeadScores,
    duplicate_token,
    entropy,
    first_token,
    prefix_matching,
    prev_token,
    row_entropy,
)


def uniform_causal(T: int) -> torch.Tensor:
    """Every query t spreads its attention evenly over keys 0..t: (T, T)."""
    causal = torch.ones(T, T).tril()
    return causal / causal.sum(-1, keepdim=True)


def previous_token_head(T: int) -> torch.Tensor:
    """Query t puts all its weight on key t-1; query 0 can only look at itself."""
    weights = torch.zeros(T, T)
    weights[0, 0] = 1.0
    weights[torch.arange(1, T), torch.arange(T - 1)] = 1.0
    return weights


def induction_head(period: int) -> torch.Tensor:
    """On a sequence repeated twice (2·period tokens), each query of the second copy attends to
    the token after its earlier occurrence; queries of the first copy attend to themselves."""
    T = 2 * period
    weights = torch.eye(T)
    for t in range(period, T):
        weights[t] = 0.0
        weights[t, t - period + 1] = 1.0
    return weights


def test_a_pure_previous_token_head_scores_one() -> None:
    assert prev_token(previous_token_head(16)).item() == 1.0


def test_uniform_attention_has_prev_token_weight_one_over_t_plus_one() -> None:
    expected = sum(1 / (t + 1) for t in range(1, 16)) / 15  # rows 1..15; row 0 left out
    assert prev_token(uniform_causal(16)).item() == pytest.approx(expected)


def test_an_exact_induction_pattern_scores_one() -> None:
    weights = induction_head(period=10)
    assert prefix_matching(weights, period=10).item() == 1.0
    assert prev_token(weights).item() < 0.1  # and it is not mistaken for a previous-token head


def test_a_previous_token_head_is_not_an_induction_head() -> None:
    assert prefix_matching(previous_token_head(20), period=10).item() == 0.0


def duplicate_head(period: int) -> torch.Tensor:
    """On a sequence repeated twice, each query of the second copy attends to its own token's
    first occurrence, t - period; the first copy attends to itself."""
    weights = torch.eye(2 * period)
    for t in range(period, 2 * period):
        weights[t] = 0.0
        weights[t, t - period] = 1.0
    return weights


def test_duplicate_token_is_the_weight_on_earlier_copies_of_the_query_token() -> None:
    ids = torch.arange(6).repeat(2)  # 6 distinct tokens, twice
    assert duplicate_token(duplicate_head(6), ids).item() == 1.0
    assert duplicate_token(induction_head(6), ids).item() == 0.0  # the token after, not the copy
    assert prefix_matching(duplicate_head(6), period=6).item() == 0.0
    uniform = duplicate_token(uniform_causal(12), ids).item()  # one copy among t+1 keys
    assert uniform == pytest.approx(sum(1 / (t + 1) for t in range(6, 12)) / 6)
    # Text without a repeated token has no query to average over: NaN, never a made-up 0.
    assert duplicate_token(uniform_causal(6), torch.arange(6)).isnan().item()


def test_uniform_causal_rows_have_entropy_log2_t_plus_one() -> None:
    T = 12
    rows = row_entropy(uniform_causal(T))
    torch.testing.assert_close(rows, torch.tensor([math.log2(t + 1) for t in range(T)]))
    expected = sum(math.log2(t + 1) for t in range(1, T)) / (T - 1)  # row 0 is 0 bits, left out
    assert entropy(uniform_causal(T)).item() == pytest.approx(expected)


def test_a_head_on_one_key_has_zero_entropy_not_nan() -> None:
    assert entropy(previous_token_head(8)).item() == 0.0


def test_first_token_is_the_weight_on_position_zero() -> None:
    sink = torch.zeros(8, 8)
    sink[:, 0] = 1.0
    assert first_token(sink).item() == 1.0
    assert first_token(previous_token_head(8)).item() == pytest.approx(1 / 7)  # only query 1
    assert first_token(uniform_causal(8)).item() == pytest.approx(sum(1 / (t + 1) for t in range(1, 8)) / 7)


def test_scores_keep_the_leading_dimensions() -> None:
    maps = torch.stack([previous_token_head(10), uniform_causal(10), induction_head(5)])  # (3, T, T)
    maps = maps[None].expand(2, 3, 10, 10)  # (batch, heads, T, T)
    assert prev_token(maps).shape == (2, 3)
    assert prev_token(maps)[1, 0].item() == 1.0
    assert prefix_matching(maps, period=5)[0, 2].item() == 1.0


def test_head_scores_average_over_the_batch() -> None:
    text = torch.stack([previous_token_head(10), uniform_causal(10)])[None, None]  # (L=1, B=1, H=2, T, T)
    repeated = torch.stack([induction_head(5), uniform_causal(10)])[None, None].repeat(1, 3, 1, 1, 1)
    ids = torch.arange(5).repeat(2).expand(3, 10)  # (B'=3, 2·period): 5 distinct tokens twice
    scores = HeadScores.from_maps(text, repeated, period=5, repeated_ids=ids)
    assert scores.prev_token.shape == (1, 2)
    assert scores.prev_token[0, 0].item() == 1.0 and scores.prefix_matching[0, 0].item() == 1.0
    table = scores.table()
    assert "| 0 | 0 | 0.000 | 1.000 | 1.000 |" in table
    assert len(table.splitlines()) == 2 + 2  # header, rule, one row per head


def test_weights_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        entropy(torch.ones(3, 4))
    with pytest.raises(ValueError, match="at least 11 positions"):
        prefix_matching(uniform_causal(10), period=10)
