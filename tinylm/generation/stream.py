"""Generation: a prompt continued one token at a time, in a sliding window over a KV cache.

``stream`` and ``generate`` take any ``tinylm.model.TransformerLM``; ``TransformerLM`` here is
that network with the two as methods, as ``tinylm.TransformerLM`` and ``tinylm.load_checkpoint``
give it.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partialmethod

import torch
from torch import Tensor

from tinylm.config import ModelConfig, SamplingConfig
from tinylm.generation.cache import new_cache
from tinylm.generation.decode import compiled_step
from tinylm.generation.eager import eager_step, native_kernels
from tinylm.generation.sampling import choose_next, next_token
from tinylm.learner.module import attention_for
from tinylm.model import AttentionFactory, TransformerLM


@torch.inference_mode()
def stream(model: TransformerLM, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
           generator: torch.Generator | None = None, compile: bool = False) -> Iterator[Tensor]:
    """Yield ``max_new_tokens`` next tokens (B, 1), each sampled given ``idx`` and those before.

    The context is a window of at most block_size tokens. When it is full it slides forward
    by half a block: the newest block_size // 2 tokens are re-encoded and generation goes on.
    With ``use_cache`` each other token costs one query position; without, the window is
    recomputed every step. Both follow the same windows and give the same tokens. (Positions
    count from the window's start: with RoPE the cached keys were rotated for their place in
    the window, and a slide re-encodes the kept tokens at their new places.) ``compile``:
    the one-token steps run the same maths compiled ahead of time (tinylm.generation.decode).
    Call ``model.eval()`` first: in training mode dropout stays on.
    """
    SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be (batch, tokens) with at least one token, got {tuple(idx.shape)}")
    block, (batch, length) = model.config.block_size, idx.shape
    use_cache = use_cache and all(getattr(b.attn, "supports_cache", True) for b in model.blocks)
    tokens = idx.new_empty(batch, length + max_new_tokens)  # the prompt, then each new token
    tokens[:, :length] = idx
    start = max(0, length - block)  # the window is tokens[:, start:length]
    cache = new_cache(model, batch, sliced=not compile) if use_cache else None
    step = None  # the compiled one-token step
    if compile and cache is not None:
        step = compiled_step(model, cache, temperature, top_k, top_p)
    eager = eager_step(model, cache) if cache is not None and step is None else None
    # What choose_next draws with (sampling_noise), one buffer redrawn in place at each token.
    noise = None if temperature == 0 else torch.empty(batch, model.vocab_size, device=idx.device)
    filled = False  # whether the cache holds the window
    for _ in range(max_new_tokens):
        if length - start > block:  # full: slide, keeping the newest half block
            start, filled = length - max(1, block // 2), False
        if noise is not None:
            noise.exponential_(generator=generator)
        one_token = filled  # the cache holds the window: only the newest token is new
        if one_token:
            new = tokens[:, length - 1 : length]
        else:  # the whole window: at each step without the cache, or to fill it
            new = tokens[:, start:length]
            if cache is not None:
                cache.clear()
                filled = True
        # One row's one-token step on one thread; filling the cache is rows enough to share.
        with native_kernels(one_thread=one_token and eager is not None and batch == 1):
            if eager is not None:
                logits = eager(new) if one_token else eager.fill(new)
                token = choose_next(logits, noise, temperature, top_k, top_p)
            else:
                model.place(new, cache)
                if one_token and step is not None:
                    token = step(new, noise)
                else:
                    token = next_token(model, new, cache, noise, temperature, top_k, top_p)
        tokens[:, length : length + 1] = token
        length += 1
        yield token

def generate(model: TransformerLM, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None, compile: bool = False) -> Tensor:
    """``idx`` (B, T) followed by ``max_new_tokens`` sampled tokens: (B, T + max_new_tokens).

    temperature 0 is greedy decoding; top_k keeps the k likeliest tokens; top_p keeps the
    smallest set of likeliest tokens whose probabilities sum to at least top_p. See ``stream``.
    """
    new = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator, compile))
    return torch.cat([idx, *new], dim=1)


class GenerativeLM(TransformerLM):
    """The network with its sampling methods, ``model.generate(idx, 100)`` being
    ``generate(model, idx, 100)``; its attention is the one ``config.attention`` names unless
    ``attention`` says otherwise. ``tinylm.TransformerLM`` is this class."""

    def __init__(self, config: ModelConfig, vocab_size: int, attention: AttentionFactory | None = None
                 ) -> None:
        super().__init__(config, vocab_size, attention or attention_for(config))

    # model.stream(idx, n, ...) is stream(model, idx, n, ...), and generate likewise.
    stream = partialmethod(stream)
    generate = partialmethod(generate)
