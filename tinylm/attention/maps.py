"""Running a model on a probe text to read its attention: shared by the TensorBoard callback
and ``scripts/attention.py``, so both show the same maps and the same head scores.

The maps come from the explicit attention path (``return_attention=True``), in eval mode and
without gradients, on the probe only: training itself keeps the fused kernel.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from tinylm.attention.circuits import copying_scores
from tinylm.attention.scores import HeadScores
from tinylm.errors import TinyLMError
from tinylm.model import TransformerLM, evaluating
from tinylm.tokenizer import Tokenizer

INDUCTION_BATCH = 8  # random sequences averaged per prefix-matching score: a steadier curve
INDUCTION_SEED = 0


class NoWeights(TinyLMError):
    """The model's attention (a learner's class) yields no attention weights."""


class ProbeError(TinyLMError, ValueError):
    """A probe or prompt the model cannot read; the message names the key to fix."""


def encode_probe(text: str, tokenizer: Tokenizer, block_size: int, key: str = "prompt") -> Tensor:
    """``text`` as token ids (1, T), refused with a one-line error naming ``key`` when it is
    shorter than 2 characters, longer than the model's context, or holds characters the
    model never saw."""
    if len(text) < 2:  # one position has one possible key: there is nothing to look at
        raise ProbeError(f"{key}: {text!r} is too short; attention needs at least 2 characters")
    tokenizer.check_known(text, key)
    ids = tokenizer.encode(text)
    if len(ids) > block_size:
        unit = "characters" if len(ids) == len(text) else f"tokens ({len(text)} characters)"
        raise ProbeError(
            f"{key}: {len(ids)} {unit} is longer than the model's block_size={block_size}; "
            f"shorten it to at most {block_size}"
        )
    return torch.tensor([ids])


def induction_tokens(vocab_size: int, block_size: int, batch: int = INDUCTION_BATCH,
                     seed: int = INDUCTION_SEED, period: int | None = None) -> tuple[Tensor, int]:
    """Random sequences repeated twice, (batch, 2·period), and the period.

    Each sequence draws ``period`` distinct tokens, so every token of the second copy has
    exactly one earlier occurrence; period = min(vocab_size, block_size // 2), or ``period``
    when given (at most that).
    """
    period = min(vocab_size, block_size // 2, period or block_size)
    if period < 1:
        raise ValueError(f"block_size={block_size} is too short for an induction probe")
    generator = torch.Generator().manual_seed(seed)
    first = torch.stack([torch.randperm(vocab_size, generator=generator)[:period] for _ in range(batch)])
    return first.repeat(1, 2), period  # (batch, 2·period)


@torch.no_grad()
def attention_maps(model: TransformerLM, idx: Tensor) -> Tensor:
    """Every head's attention on ``idx`` (B, T): (layers, B, heads, T, T), float32 on the CPU.

    Runs in eval mode (no dropout) and puts the model back in the mode it was in.
    """
    with evaluating(model):
        device = next(model.parameters()).device
        _, maps = model(idx.to(device), return_attention=True)
    if any(m is None for m in maps):  # a learner's attention that gives no weights
        raise NoWeights("the attention class returns no weights, and its Q and K were not found")
    return torch.stack(maps).float().cpu()  # (L, B, H, T, T)


def head_scores(model: TransformerLM, text_ids: Tensor, text_maps: Tensor | None = None,
                period: int | None = None) -> HeadScores:
    """The diagnostics of every head: entropy, prev_token and first_token on the text
    ``text_ids`` (1, T) (pass its maps if already computed), prefix_matching and
    duplicate_token on random sequences repeated twice (``induction_tokens``, of ``period``
    tokens), copying from the weights where they are known."""
    if text_maps is None:
        text_maps = attention_maps(model, text_ids)
    sequences, period = induction_tokens(model.vocab_size, model.config.block_size, period=period)
    scores = HeadScores.from_maps(text_maps, attention_maps(model, sequences), period, sequences)
    return dataclasses.replace(scores, copying=copying_scores(model))
