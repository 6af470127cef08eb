"""Choosing the next token from the model's logits: greedy, or a draw cut to top_k and top_p.

The draw is made from noise drawn outside the choice (``sampling_noise``), so that the choice
itself is a handful of whole-row operations that compile into the decode step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tinylm.generation.cache import KVCache
from tinylm.model import TransformerLM


def next_token(model: TransformerLM, idx: Tensor, cache: KVCache | None, noise: Tensor | None,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               explicit: bool = False) -> Tensor:
    """The token (B, 1) after ``idx`` (B, T), which continues ``cache``: the model's logits at
    the last position, and the choice ``choose_next`` makes from them with ``noise``.
    ``model.place`` has placed ``idx`` in ``cache`` (outside: it checks Python numbers, which a
    compiled step cannot). ``explicit`` takes the explicit attention path (tinylm.generation.decode)."""
    logits = model.logits(idx, cache, return_attention=explicit)
    if explicit:  # the weights, unused, compile away
        logits = logits[0]
    return choose_next(logits[:, -1], noise, temperature, top_k, top_p)  # (B, 1)


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """One token id per row of ``logits`` (B, V): (B, 1)."""
    noise = sampling_noise(logits.size(0), logits.size(-1), temperature, generator, logits.device)
    return choose_next(logits, noise, temperature, top_k, top_p)


def sampling_noise(batch: int, vocab_size: int, temperature: float,
                   generator: torch.Generator | None = None, device: torch.device | None = None
                   ) -> Tensor | None:
    """What ``choose_next`` draws with: E ~ Exp(1) for each row and token, or None for greedy
    decoding (temperature 0), which draws nothing."""
    if temperature == 0:
        return None
    return torch.empty(batch, vocab_size, device=device).exponential_(generator=generator)  # (B, V)


def choose_next(logits: Tensor, noise: Tensor | None, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """One token id per row of ``logits`` (B, V): (B, 1), the likeliest if ``noise`` is None.

    Otherwise a draw from p = softmax(logits / temperature), cut to top_k and top_p, by the
    exponential race: with Eᵢ ~ Exp(1), Eᵢ / pᵢ ~ Exp(pᵢ), and the first of those to arrive is
    token i with probability pᵢ, so argmax pᵢ / Eᵢ is a draw from p. Given the noise, the choice
    is a handful of whole-row operations: they compile into the decode step (tinylm.generation.decode),
    which then makes the eager step's choices, where torch.multinomial would draw inside it.
    """
    if noise is None:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() if temperature == 1 else logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the likelier ones already reach top_p; the likeliest always stays.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    # A draw of exactly 0 would make 0 / 0 for a token cut away (pᵢ = 0): keep E above 0.
    arrival = noise.clamp_min(torch.finfo(noise.dtype).tiny)
    return (logits.softmax(dim=-1) / arrival).argmax(dim=-1, keepdim=True)  # (B, 1)
