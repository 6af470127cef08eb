"""Running a model on a probe: the checks on the text, the induction sequences, the maps."""

from __future__ import annotations

import pytest
import torch

from tinylm.attention.maps import attention_maps, encode_probe, head_scores, induction_tokens
from tinylm.config import ModelConfig
from tinylm.errors import TinyLMError
from tinylm.model import TransformerLM
from tinylm.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer.from_text("abcdefgh ,\n")


def test_a_probe_is_encoded_as_one_row() -> None:
    assert encode_probe("ab c", TOKENIZER, block_size=8).tolist() == [TOKENIZER.encode("ab c")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a", "prompt: 'a' is too short; attention needs at least 2 characters"),
        ("abcdefghab", "prompt: 10 characters is longer than the model's block_size=8; shorten it"),
        ("abz€", r"prompt: 2 character\(s\) not in the model's vocabulary: 'z', '€' \(U\+20AC\)"),
    ],
)
def test_a_probe_the_model_cannot_read_is_refused_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(TinyLMError, match=message):
        encode_probe(text, TOKENIZER, block_size=8)


def test_induction_sequences_repeat_distinct_tokens() -> None:
    sequences, period = induction_tokens(vocab_size=65, block_size=64)
    assert period == 32 and sequences.shape == (8, 64)
    assert torch.equal(sequences[:, :32], sequences[:, 32:])
    assert all(len(set(row[:32].tolist())) == 32 for row in sequences)  # one earlier occurrence each
    again, _ = induction_tokens(vocab_size=65, block_size=64)
    assert torch.equal(sequences, again)  # fixed: scores at different steps compare


def test_a_small_vocabulary_bounds_the_period() -> None:
    sequences, period = induction_tokens(vocab_size=5, block_size=64)
    assert period == 5 and sequences.shape == (8, 10)


def test_maps_are_the_models_weights_and_the_mode_is_restored() -> None:
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(layers=2, heads=2, d_model=16, block_size=8, dropout=0.5), 11).train()
    idx = torch.tensor([[0, 1, 2, 3, 4]])
    maps = attention_maps(model, idx)
    assert model.training  # put back as it was
    assert maps.shape == (2, 1, 2, 5, 5)  # (layers, batch, heads, T, T)
    model.eval()
    with torch.no_grad():
        _, expected = model(idx, return_attention=True)
    torch.testing.assert_close(maps, torch.stack(expected))  # no dropout: eval mode was used


def test_head_scores_cover_every_head() -> None:
    model = TransformerLM(ModelConfig(layers=3, heads=2, d_model=16, block_size=16), 11)
    scores = head_scores(model, torch.tensor([TOKENIZER.encode("abc defg,\nhab")]))
    for _, values in scores.items():
        assert values.shape == (3, 2) and torch.isfinite(values).all()
