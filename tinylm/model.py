"""A decoder-only Transformer language model, written to read like the maths.

    x₀     = E[tokens] + P[positions]                  token + learned position embeddings
    x      = x + Attention(LayerNorm(x))               } one pre-norm block,
    x      = x + MLP(LayerNorm(x))                     } repeated `layers` times
    logits = LayerNorm(x) · Eᵀ                         the output head is E itself (tied)

Attention, for each head:  softmax(Q·Kᵀ / √head_dim + M) · V,  where the causal mask M is 0
where key position ≤ query position and -inf elsewhere, so no position sees its future.

That is nanoGPT's (GPT-2's) architecture, the default. Each later refinement is one config key:
    model.position=rope     no P; queries and keys are rotated by their position (RoPE), so
                            scores depend only on how far apart two positions are
    model.position=none     no position signal but the causal mask itself
    model.norm=rmsnorm      x / rms(x) · g instead of LayerNorm: no centring, no bias
    model.mlp=swiglu        proj(SiLU(gate·x) ⊙ (up·x)), a gated MLP, instead of proj(GELU(fc·x))
    model.mlp=relu2         proj(ReLU(fc·x)²): squared ReLU (modded-nanogpt's choice)
    model.mlp=none          no MLP at all: an attention-only model, the setting of circuit studies
    model.kv_heads=1..H     grouped-query attention: H query heads share kv_heads key/value heads
    model.qk_norm=true      queries and keys normalised per head before Q·Kᵀ
    model.zero_init=true    the projections into the residual stream start at zero
    model.tie_embeddings=false   the output head is a matrix of its own, not Eᵀ
    model.logit_softcap=c   logits = c · tanh(logits / c): bounded, however large the weights grow

Generation (tinylm.generation) appends one token at a time. A KV cache keeps each layer's keys
and values of the positions already seen, so a new token costs one query position instead of a
whole forward pass; the model reads a cache through the two small interfaces below.

Shapes: B batch, T positions, d = d_model, H heads, G = kv_heads key/value heads,
hd = head_dim = d / H, V vocabulary. This module is plain PyTorch: no Lightning, no Hydra.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinylm.config import ModelConfig
from tinylm.functions import ReLUSquared, RMSNormFunction


class LayerCache(Protocol):
    """One layer's keys and values (tinylm.generation.cache): what attention reads of a cache."""

    visible: Tensor  # (T, Tk): which cached keys each new query may see

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new positions' k, v (B, G, T, hd); return every key and value (B, G, Tk, hd)."""
        ...


class KVCache(Protocol):
    """Every layer's cache, and where this pass's tokens go: what the model reads of a cache."""

    length: int  # positions held, this pass's included once placed
    positions: Tensor  # (T,): this pass's positions
    layers: Sequence[LayerCache]

    def advance(self, tokens: int) -> None:
        """Place ``tokens`` new tokens after those held."""
        ...


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None) -> Tensor:
    """(Tq, Tk) booleans, True where a query may see a key. The queries are the last Tq of the
    Tk positions, so query i sits at position Tk - Tq + i and sees keys 0 .. Tk - Tq + i."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout: float = 0.0,
                     visible: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The explicit path: softmax(Q·Kᵀ/√hd + M)·V, returning the output and the weights.

    q is (B, H, Tq, hd); k and v are (B, H, Tk, hd). ``visible`` (Tq, Tk) says which keys each
    query may see; by default the causal mask of Tq = Tk positions. (With a KV cache the keys
    are the cache's every position, and ``visible`` hides those after each query.)
    """
    q_len, k_len, head_dim = q.size(-2), k.size(-2), q.size(-1)
    if visible is None:
        visible = causal_mask(q_len, k_len, q.device)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)  # (B, H, Tq, Tk)
    # Mask before the softmax, with -inf (exact in every dtype), so hidden keys get weight 0.
    scores = scores.masked_fill(~visible, float("-inf"))
    weights = scores.float().softmax(dim=-1).to(q.dtype)  # (B, H, Tq, Tk), rows sum to 1
    y = F.dropout(weights, dropout) @ v  # (B, H, Tq, hd)
    return y, weights


def make_norm(kind: str, dim: int, bias: bool = True) -> nn.Module:
    """model.norm: "layernorm" is (x - mean(x)) / std(x) · g + b over the last ``dim`` features;
    "rmsnorm" is x / √(mean(x²) + ε) · g: no centring and no bias."""
    if kind == "rmsnorm":
        return RMSNorm(dim)
    return nn.LayerNorm(dim, bias=bias)


def make_dropout(p: float) -> nn.Module:
    """Dropout of rate ``p``; none at all when p is 0: even in eval mode a Dropout layer is a
    call per use, and a generated character makes thirteen of them on nano."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class RMSNorm(nn.Module):
    """x / √(mean(x²) + ε) · g over the last ``dim`` features: ``nn.RMSNorm``'s maths, with a
    backward pass written out (``RMSNormFunction``) instead of autograd's many small kernels,
    so on a CPU it costs less than ``nn.RMSNorm`` (docs/performance.md#rmsnorm)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled() or not (x.requires_grad or self.weight.requires_grad):
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused kernel
        return RMSNormFunction.apply(x, self.weight, self.eps)


def rope_angles(positions: int, head_dim: int, base: float = 10_000.0) -> tuple[Tensor, Tensor]:
    """cos and sin (positions, hd/2) of RoPE's angles: position p turns pair i by p·θᵢ, where
    θᵢ = base^(-2i/hd) runs from 1 radian per position down to nearly 1/base."""
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hd/2,)
    angles = torch.outer(torch.arange(positions, dtype=torch.float64), theta)  # (P, hd/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, heads, T, hd) by its positions' angles, cos and sin (T, hd/2): coordinates i
    and i + hd/2 form a pair that turns as a point in the plane. Rotating a query by angle a and
    a key by b makes q·k depend on a - b only, so scores see relative positions."""
    x1, x2 = x.chunk(2, dim=-1)  # 2 × (B, heads, T, hd/2): the pairs' first and second coordinates
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, heads, T, hd)
    return rotated.to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: H heads of width hd, side by side in d = H·hd.

    Keys and values have G = kv_heads heads, each shared by a group of H / G query heads
    (grouped-query attention). G = H is plain multi-head attention, G = 1 multi-query.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = config.heads, config.kv_heads, config.head_dim
        self.dropout = config.dropout
        self.explicit = config.attention == "explicit"
        qkv_width = (config.heads + 2 * config.kv_heads) * config.head_dim  # 3·d when G = H
        self.qkv = nn.Linear(config.d_model, qkv_width, bias=config.bias)  # Q, K, V at once
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)  # mixes the heads
        self.resid_dropout = make_dropout(config.dropout)
        # QK-norm fixes the scale of each query and key, so scores cannot grow just because the
        # vectors do (a cause of loss spikes in large models); it keeps only their directions and a gain.
        self.q_norm = make_norm(config.norm, config.head_dim, config.bias) if config.qk_norm else None
        self.k_norm = make_norm(config.norm, config.head_dim, config.bias) if config.qk_norm else None

    def forward(self, x: Tensor, need_weights: bool = False, cache: LayerCache | None = None,
                rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        """``rope``: the cos and sin (T, hd/2) of the positions of x, when model.position=rope."""
        B, T, d = x.shape
        H, G, hd = self.heads, self.kv_heads, self.head_dim
        # Q, K and V of every head side by side: H + 2G heads of width hd. Move heads next to
        # batch, so that each head attends on its own, then take Q, K and V apart.
        heads = self.qkv(x).view(B, T, H + 2 * G, hd).transpose(1, 2)  # (B, H + 2G, T, hd)
        q, k, v = heads.split([H, G, G], dim=1)  # (B, H, T, hd), 2 × (B, G, T, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # each head's vectors normalised over hd
        if rope is not None:  # turn each query and key by its own position's angles
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:  # attend over the cached positions too
            k, v = cache.append(k, v)  # (B, G, block_size, hd), written up to the last new position
        if G != H:  # each key/value head serves H / G query heads in a row: copy it to each
            k = k.repeat_interleave(H // G, dim=1)  # (B, H, Tk, hd)
            v = v.repeat_interleave(H // G, dim=1)  # (B, H, Tk, hd)
        dropout = self.dropout if self.training else 0.0
        visible = cache.visible if cache is not None else None  # (T, block_size), or causal
        if self.explicit or need_weights:
            y, weights = causal_attention(q, k, v, dropout, visible)  # the teaching path
        else:  # the fast path: one fused kernel, same maths, no weights materialised
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, dropout_p=dropout,
                                               is_causal=visible is None and T > 1)
            weights = None
        y = y.transpose(1, 2).reshape(B, T, d)  # (B, T, d): heads side by side again
        return self.resid_dropout(self.proj(y)), weights


# What builds a block's attention from the config: a module called as
# ``attn(x, need_weights, cache, rope) -> (y (B, T, d), weights (B, H, T, T) or None)``.
AttentionFactory = Callable[[ModelConfig], nn.Module]


class MLP(nn.Module):
    """Position-wise feed-forward: d → hidden → d with a GELU between.

    SwiGLU computes two hidden vectors and lets one gate the other, SiLU(gate) ⊙ up; ``fc``
    then makes both at once, and the hidden width is 2/3 as large (ModelConfig.mlp_hidden).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.swiglu, self.relu2 = config.mlp == "swiglu", config.mlp == "relu2"
        fc_width = 2 * config.mlp_hidden if self.swiglu else config.mlp_hidden
        self.fc = nn.Linear(config.d_model, fc_width, bias=config.bias)
        self.proj = nn.Linear(config.mlp_hidden, config.d_model, bias=config.bias)
        self.dropout = make_dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)  # (B, T, hidden), or (B, T, 2·hidden) for SwiGLU
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)  # 2 × (B, T, hidden)
            h = F.silu(gate) * up  # each unit passes as much of `up` as its gate lets through
        elif self.relu2:  # ReLU(h)²: sparse like ReLU, smooth at 0 like GELU, and cheap
            h = ReLUSquared.apply(h) if torch.is_grad_enabled() and h.requires_grad else F.relu(h).square()
        else:
            h = F.gelu(h)
        return self.dropout(self.proj(h))  # (B, T, d)


class Block(nn.Module):
    """A pre-norm Transformer block: normalise, transform, add back to the residual stream."""

    def __init__(self, config: ModelConfig, attention: AttentionFactory = CausalSelfAttention) -> None:
        super().__init__()
        self.ln_1 = make_norm(config.norm, config.d_model, config.bias)
        self.attn = attention(config)
        attention_only = config.mlp == "none"
        self.ln_2 = None if attention_only else make_norm(config.norm, config.d_model, config.bias)
        self.mlp = None if attention_only else MLP(config)

    def forward(self, x: Tensor, need_weights: bool = False, cache: LayerCache | None = None,
                rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.attn(self.ln_1(x), need_weights, cache, rope)
        x = x + attended
        if self.mlp is not None:
            x = x + self.mlp(self.ln_2(x))
        return x, weights


class TransformerLM(nn.Module):
    """Embeddings → pre-norm blocks → final norm → logits over the vocabulary.

    ``attention`` builds each block's attention from the config: tinylm's own by default, a
    learner's class (``model.attention=file.py:Class``) through ``tinylm.learner.module``.
    """

    def __init__(self, config: ModelConfig, vocab_size: int,
                 attention: AttentionFactory = CausalSelfAttention) -> None:
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be at least 1, got {vocab_size}")
        if config.learner_attention is not None and attention is CausalSelfAttention:
            raise ValueError(f"model.attention={config.attention} names a learner's class: build the "
                             f"model with attention=tinylm.learner.module.attention_for(config)")
        self.config, self.vocab_size = config, vocab_size
        self.token_embedding = nn.Embedding(vocab_size, config.d_model)
        self.position_embedding = (
            nn.Embedding(config.block_size, config.d_model) if config.position == "learned" else None
        )
        if config.position == "rope":  # every position's angles, computed once; not saved
            cos, sin = rope_angles(config.block_size, config.head_dim)  # 2 × (block_size, hd/2)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.dropout = make_dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, attention) for _ in range(config.layers))
        self.ln_f = make_norm(config.norm, config.d_model, config.bias)
        self.lm_head = nn.Linear(config.d_model, vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight  # weight tying: one (V, d) tensor
        self.apply(_init_weights)
        # GPT-2 / nanoGPT: each block adds two projections to the residual stream, so scale
        # their initial weights by 1/√(2·layers) to keep its variance independent of depth.
        # With zero_init they start at 0: every block begins as the identity (modded-nanogpt).
        for block in self.blocks:
            for projection in (getattr(block.attn, "proj", None), getattr(block.mlp, "proj", None)):
                if projection is None:  # a learner's attention (no known output projection), or no MLP
                    continue
                if config.zero_init:
                    nn.init.zeros_(projection.weight)
                else:
                    nn.init.normal_(projection.weight, std=0.02 / math.sqrt(2 * config.layers))

    def forward(self, idx: Tensor, return_attention: bool = False, cache: KVCache | None = None
                ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits (B, T, V) for token ids ``idx`` (B, T); with ``return_attention`` also each
        layer's attention weights (B, H, T, T), computed on the explicit path.

        With a ``cache`` (``tinylm.generation.cache.new_cache``), ``idx`` continues the cached
        positions: only the new tokens are computed, attending over the cached keys and values too.
        """
        self.place(idx, cache)
        return self.logits(idx, cache, return_attention)

    def place(self, idx: Tensor, cache: KVCache | None) -> None:
        """Check that ``idx`` (B, T) fits in the context after what ``cache`` holds, and give
        its tokens their positions in the cache."""
        start = cache.length if cache is not None else 0  # positions already in the cache
        end = start + idx.size(1)
        if end > self.config.block_size:  # there is no position (or cache room) beyond block_size
            raise ValueError(
                f"a sequence of {end} tokens is longer than model.block_size={self.config.block_size}"
            )
        if cache is not None:
            cache.advance(idx.size(1))

    def logits(self, idx: Tensor, cache: KVCache | None = None, return_attention: bool = False
               ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """``forward`` once ``place`` has checked ``idx`` and placed it in ``cache``: this part
        has the same shapes at every position, so a compiled one-token step (``decode_step``)
        runs all of them without recompiling."""
        T = idx.size(1)
        positions = cache.positions if cache is not None else None  # (T,), or 0 .. T-1
        x = self.token_embedding(idx)  # (B, T, d)
        if self.position_embedding is not None:
            table = self.position_embedding.weight  # (block_size, d)
            x = x + (table[:T] if positions is None else table[positions])  # + (T, d)
        x = self.dropout(x)
        rope = None
        if self.config.position == "rope":  # RoPE acts inside attention: the angles of these positions
            cos, sin = self.rope_cos, self.rope_sin  # 2 × (block_size, hd/2)
            rope = (cos[:T], sin[:T]) if positions is None else (cos[positions], sin[positions])
        attention_maps = []
        for i, block in enumerate(self.blocks):
            x, weights = block(x, return_attention, cache.layers[i] if cache is not None else None, rope)
            attention_maps.append(weights)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        if self.config.logit_softcap is not None:  # squash into (-cap, cap), smoothly
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return (logits, attention_maps) if return_attention else logits

    def num_parameters(self) -> int:
        """Trainable parameters, a tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode (no dropout) inside the block, then back in the mode it was in."""
    training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(training)
