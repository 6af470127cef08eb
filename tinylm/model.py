"""A decoder-only Transformer language model, written to read like the maths.

    x₀     = E[tokens] + P[positions]                  token + learned position embeddings
    x      = x + Attention(LayerNorm(x))               } one pre-norm block,
    x      = x + MLP(LayerNorm(x))                     } repeated `layers` times
    logits = LayerNorm(x) · Eᵀ                         the output head is E itself (tied)

Attention, for each head:  softmax(Q·Kᵀ / √head_dim + M) · V,  where the causal mask M is 0
where key position ≤ query position and -inf elsewhere, so no position sees its future.

Generation appends one token at a time. A KV cache keeps each layer's keys and values of the
positions already seen, so a new token costs one query position instead of a whole forward pass.

Shapes: B batch, T positions, d = d_model, H heads, hd = head_dim = d / H, V vocabulary.
This module is plain PyTorch: no Lightning, no Hydra.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinylm.config import ModelConfig


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None) -> Tensor:
    """(Tq, Tk) booleans, True where a query may see a key. The queries are the last Tq of the
    Tk positions, so query i sits at position Tk - Tq + i and sees keys 0 .. Tk - Tq + i."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout: float = 0.0) -> tuple[Tensor, Tensor]:
    """The explicit path: softmax(Q·Kᵀ/√hd + M)·V, returning the output and the weights.

    q is (B, H, Tq, hd); k and v are (B, H, Tk, hd) with Tq ≤ Tk: the queries are the last
    Tq of the Tk positions (Tq = Tk in training; Tq < Tk when earlier keys are cached).
    """
    q_len, k_len, head_dim = q.size(-2), k.size(-2), q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)  # (B, H, Tq, Tk)
    # Mask before the softmax, with -inf (exact in every dtype), so hidden keys get weight 0.
    scores = scores.masked_fill(~causal_mask(q_len, k_len, q.device), float("-inf"))
    weights = scores.float().softmax(dim=-1).to(q.dtype)  # (B, H, Tq, Tk), rows sum to 1
    y = F.dropout(weights, dropout) @ v  # (B, H, Tq, hd)
    return y, weights


class LayerCache:
    """One layer's keys and values for the positions seen so far: (B, H, block_size, hd)
    buffers filled up to ``length``."""

    def __init__(self, batch: int, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, config.heads, config.block_size, config.head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new positions' k, v (B, H, T, hd); return all keys and values so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.keys.size(2):
            raise ValueError(f"the KV cache holds {self.keys.size(2)} positions; {end} were asked for")
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]  # (B, H, end, hd)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: H heads of width hd, side by side in d = H·hd."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = config.heads, config.head_dim
        self.dropout = config.dropout
        self.explicit = config.attention == "explicit"
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)  # Q, K, V at once
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)  # mixes the heads
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, need_weights: bool = False, cache: LayerCache | None = None
                ) -> tuple[Tensor, Tensor | None]:
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)  # 3 × (B, T, d)
        # Split d into H heads, then move heads next to batch: each head attends on its own.
        q = q.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        v = v.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        if cache is not None:  # attend over the cached positions too
            k, v = cache.append(k, v)  # (B, H, Tk, hd), Tk = cached + T
        dropout = self.dropout if self.training else 0.0
        if self.explicit or need_weights:
            y, weights = causal_attention(q, k, v, dropout)  # the teaching path
        else:  # the fast path: one fused kernel, same maths, no weights materialised
            q_len, k_len = q.size(2), k.size(2)
            # One new query is the last position and may see every key: no mask at all.
            mask = None if q_len in (1, k_len) else causal_mask(q_len, k_len, x.device)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=q_len == k_len > 1
            )
            weights = None
        y = y.transpose(1, 2).reshape(B, T, d)  # (B, T, d): heads side by side again
        return self.resid_dropout(self.proj(y)), weights


class MLP(nn.Module):
    """Position-wise feed-forward: d → hidden → d with a GELU between."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.mlp_hidden, bias=config.bias)
        self.proj = nn.Linear(config.mlp_hidden, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))  # (B, T, d)


class Block(nn.Module):
    """A pre-norm Transformer block: normalise, transform, add back to the residual stream."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, need_weights: bool = False, cache: LayerCache | None = None
                ) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.attn(self.ln_1(x), need_weights, cache)
        x = x + attended
        x = x + self.mlp(self.ln_2(x))
        return x, weights


class TransformerLM(nn.Module):
    """Embeddings → pre-norm blocks → final LayerNorm → logits over the vocabulary."""

    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be at least 1, got {vocab_size}")
        self.config, self.vocab_size = config, vocab_size
        self.token_embedding = nn.Embedding(vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.block_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.d_model, bias=config.bias)
        self.lm_head = nn.Linear(config.d_model, vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # weight tying: one (V, d) tensor
        self.apply(_init_weights)
        # GPT-2 / nanoGPT: each block adds two projections to the residual stream, so scale
        # their initial weights by 1/√(2·layers) to keep its variance independent of depth.
        for block in self.blocks:
            for projection in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(projection.weight, std=0.02 / math.sqrt(2 * config.layers))

    def forward(self, idx: Tensor, return_attention: bool = False, cache: list[LayerCache] | None = None
                ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits (B, T, V) for token ids ``idx`` (B, T); with ``return_attention`` also each
        layer's attention weights (B, H, T, T), computed on the explicit path.

        With a ``cache`` (from ``new_cache``), ``idx`` continues the cached positions: only the
        new tokens are computed, attending over the cached keys and values as well.
        """
        start = cache[0].length if cache else 0  # positions already in the cache
        end = start + idx.size(1)
        if end > self.config.block_size:  # there is no position embedding beyond block_size
            raise ValueError(
                f"a sequence of {end} tokens is longer than model.block_size={self.config.block_size}"
            )
        positions = torch.arange(start, end, device=idx.device)  # (T,)
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(positions))  # (B, T, d)
        attention_maps = []
        for i, block in enumerate(self.blocks):
            x, weights = block(x, need_weights=return_attention, cache=cache[i] if cache else None)
            attention_maps.append(weights)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return (logits, attention_maps) if return_attention else logits

    def new_cache(self, batch: int) -> list[LayerCache]:
        """An empty KV cache, one LayerCache per block, for ``batch`` sequences."""
        weight = self.token_embedding.weight
        return [LayerCache(batch, self.config, weight.dtype, weight.device) for _ in self.blocks]

    @torch.inference_mode()
    def stream(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
               generator: torch.Generator | None = None) -> Iterator[Tensor]:
        """Yield ``max_new_tokens`` next tokens (B, 1), each sampled given ``idx`` and those before.

        The context is a window of at most block_size tokens. When it is full it slides forward
        by half a block: the newest block_size // 2 tokens are re-encoded and generation goes on.
        With ``use_cache`` each other token costs one query position; without, the window is
        recomputed every step. Both follow the same windows and give the same tokens.
        Call ``model.eval()`` first: in training mode dropout stays on.
        """
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(f"idx must be (batch, tokens) with at least one token, got {tuple(idx.shape)}")
        block = self.config.block_size
        start = max(0, idx.size(1) - block)  # the window is idx[:, start:]
        cache = None
        for _ in range(max_new_tokens):
            if idx.size(1) - start > block:  # full: slide, keeping the newest half block
                start, cache = idx.size(1) - max(1, block // 2), None
            if not use_cache:
                logits = self(idx[:, start:])
            elif cache is None:  # encode the whole window once, filling the cache
                cache = self.new_cache(idx.size(0))
                logits = self(idx[:, start:], cache=cache)
            else:  # only the newest token is new
                logits = self(idx[:, -1:], cache=cache)
            next_token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)  # (B, 1)
            idx = torch.cat([idx, next_token], dim=1)
            yield next_token

    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> Tensor:
        """``idx`` (B, T) followed by ``max_new_tokens`` sampled tokens: (B, T + max_new_tokens).

        temperature 0 is greedy decoding; top_k keeps the k likeliest tokens; top_p keeps the
        smallest set of likeliest tokens whose probabilities sum to at least top_p. See ``stream``.
        """
        new = list(self.stream(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator))
        return torch.cat([idx, *new], dim=1)

    def num_parameters(self) -> int:
        """Trainable parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ValueError, naming the argument, for settings that do not define a distribution."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be 0 or more, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be 0 (greedy) or more, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None for no limit), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (or None for no limit), got {top_p}")


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """One token id per row of ``logits`` (B, V): (B, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the likelier ones already reach top_p; the likeliest always stays.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator)  # (B, 1)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
