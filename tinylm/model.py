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
    model.kv_heads=1..H     grouped-query attention: H query heads share kv_heads key/value heads
    model.qk_norm=true      queries and keys normalised per head before Q·Kᵀ
    model.zero_init=true    the projections into the residual stream start at zero
    model.tie_embeddings=false   the output head is a matrix of its own, not Eᵀ
    model.logit_softcap=c   logits = c · tanh(logits / c): bounded, however large the weights grow

Generation appends one token at a time. A KV cache keeps each layer's keys and values of the
positions already seen, so a new token costs one query position instead of a whole forward pass.

Shapes: B batch, T positions, d = d_model, H heads, G = kv_heads key/value heads,
hd = head_dim = d / H, V vocabulary. This module is plain PyTorch: no Lightning, no Hydra.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinylm.config import ModelConfig


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


class RMSNormFunction(torch.autograd.Function):
    """y = x̂ · g with x̂ = x · r, r = 1 / √(mean(x²) + ε); its gradients in a few whole-tensor
    operations: ∂x = r · (∂x̂ - x̂ · mean(∂x̂ ⊙ x̂)) with ∂x̂ = ∂y ⊙ g, and ∂g = Σ ∂y ⊙ x̂."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        # ‖x‖ in one reduction kernel; mean(x²) = ‖x‖² / d on the small (..., 1) tensor.
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.size(-1)).add_(eps).rsqrt_()
        x_hat = x * r  # (..., d)
        ctx.save_for_backward(x_hat, r, weight)
        return x_hat * weight

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None, None]:
        x_hat, r, weight = ctx.saved_tensors
        grad_x_hat = grad * weight
        x_hat = x_hat.to(grad_x_hat.dtype)  # under autocast x̂ may be bf16 and the gradient fp32
        dot = torch.linalg.vecdot(grad_x_hat, x_hat).unsqueeze(-1).div_(x_hat.size(-1))  # (..., 1)
        grad_x = torch.addcmul(grad_x_hat, x_hat, dot, value=-1).mul_(r)
        grad_weight = None
        if ctx.needs_input_grad[1]:  # Σ over every position of ∂y ⊙ x̂, one fused reduction
            grad_weight = torch.linalg.vecdot(grad.flatten(0, -2), x_hat.flatten(0, -2), dim=0)
        return grad_x, grad_weight, None


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


class LayerCache:
    """One layer's keys and values, (B, G, block_size, hd) buffers of a fixed shape: a forward
    pass writes its new positions' keys and values in place and attends over the whole buffer,
    masking every key after its query (those not yet written among them). Fixed shapes let one
    compiled one-token step serve every position. With RoPE the keys are stored already rotated."""

    def __init__(self, cache: KVCache, keys: Tensor, values: Tensor) -> None:
        self.cache = cache  # it says where this pass's tokens go
        self.keys, self.values = keys, values

    @property
    def visible(self) -> Tensor:
        """(T, block_size): which keys each of this pass's queries may see."""
        return self.cache.visible

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new positions' k, v (B, G, T, hd); return every key and value buffer."""
        self.keys.index_copy_(2, self.cache.positions, k)
        self.values.index_copy_(2, self.cache.positions, v)
        return self.keys, self.values  # (B, G, block_size, hd)


class KVCache:
    """Every layer's LayerCache; how many positions they hold (``length``); and the positions
    of the tokens being added, with the keys each of them may see."""

    def __init__(self, batch: int, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, config.kv_heads, config.block_size, config.head_dim)  # G heads: GQA's saving
        # Zeros, not empty(): masked keys get weight 0, and 0 · NaN would still be NaN.
        self.layers = [
            LayerCache(self, torch.zeros(shape, dtype=dtype, device=device),
                       torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(config.layers)
        ]
        self.key_positions = torch.arange(config.block_size, device=device)[None]  # (1, block_size)
        self.length = 0
        self.advance(0)

    @classmethod
    def holding(cls, keys: list[Tensor], values: list[Tensor], positions: Tensor, visible: Tensor) -> KVCache:
        """A cache over given buffers, its pass placed at ``positions`` with mask ``visible``:
        the view of it that an exported step (tinylm.decode), given only tensors, works on."""
        cache = cls.__new__(cls)
        cache.layers = [LayerCache(cache, k, v) for k, v in zip(keys, values, strict=True)]
        cache.positions, cache.visible = positions, visible
        return cache

    def advance(self, tokens: int) -> None:
        """Place ``tokens`` new tokens after the ``length`` held (TransformerLM.place checks
        that they fit)."""
        start, self.length = self.length, self.length + tokens
        if tokens == 1 and self.positions.numel() == 1:  # one more token: two small writes in place
            self.positions.fill_(start)
            torch.le(self.key_positions, start, out=self.visible)
            return
        # A new tensor, not a slice of key_positions: a compiled step sees the same input each time.
        self.positions = torch.arange(start, self.length, device=self.key_positions.device)  # (T,)
        self.visible = self.key_positions <= self.positions[:, None]  # (T, block_size): up to its own

    def clear(self) -> None:
        """Start again at position 0 (the buffers are overwritten as positions are stored)."""
        self.length = 0


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
        elif self.relu2:
            h = F.relu(h).square()  # sparse like ReLU, smooth at 0 like GELU, and cheap
        else:
            h = F.gelu(h)
        return self.dropout(self.proj(h))  # (B, T, d)


class Block(nn.Module):
    """A pre-norm Transformer block: normalise, transform, add back to the residual stream."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config.norm, config.d_model, config.bias)
        if config.learner_attention is not None:  # model.attention=file.py:Class: the attention is theirs
            from tinylm.attention.learner import LearnerAttention

            self.attn = LearnerAttention(config)
        else:
            self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config.norm, config.d_model, config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, need_weights: bool = False, cache: LayerCache | None = None,
                rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.attn(self.ln_1(x), need_weights, cache, rope)
        x = x + attended
        x = x + self.mlp(self.ln_2(x))
        return x, weights


class TransformerLM(nn.Module):
    """Embeddings → pre-norm blocks → final norm → logits over the vocabulary."""

    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be at least 1, got {vocab_size}")
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
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = make_norm(config.norm, config.d_model, config.bias)
        self.lm_head = nn.Linear(config.d_model, vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight  # weight tying: one (V, d) tensor
        self.apply(_init_weights)
        # GPT-2 / nanoGPT: each block adds two projections to the residual stream, so scale
        # their initial weights by 1/√(2·layers) to keep its variance independent of depth.
        # With zero_init they start at 0: every block begins as the identity (modded-nanogpt).
        for block in self.blocks:
            for projection in (getattr(block.attn, "proj", None), block.mlp.proj):
                if projection is None:  # a learner's attention: its output projection has no known name
                    continue
                if config.zero_init:
                    nn.init.zeros_(projection.weight)
                else:
                    nn.init.normal_(projection.weight, std=0.02 / math.sqrt(2 * config.layers))

    def forward(self, idx: Tensor, return_attention: bool = False, cache: KVCache | None = None
                ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits (B, T, V) for token ids ``idx`` (B, T); with ``return_attention`` also each
        layer's attention weights (B, H, T, T), computed on the explicit path.

        With a ``cache`` (from ``new_cache``), ``idx`` continues the cached positions: only the
        new tokens are computed, attending over the cached keys and values as well.
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

    def new_cache(self, batch: int) -> KVCache:
        """An empty KV cache for ``batch`` sequences: a LayerCache per block."""
        weight = self.token_embedding.weight
        return KVCache(batch, self.config, weight.dtype, weight.device)

    @torch.inference_mode()
    def stream(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
               generator: torch.Generator | None = None, compile: bool = False) -> Iterator[Tensor]:
        """Yield ``max_new_tokens`` next tokens (B, 1), each sampled given ``idx`` and those before.

        The context is a window of at most block_size tokens. When it is full it slides forward
        by half a block: the newest block_size // 2 tokens are re-encoded and generation goes on.
        With ``use_cache`` each other token costs one query position; without, the window is
        recomputed every step. Both follow the same windows and give the same tokens. (Positions
        count from the window's start: with RoPE the cached keys were rotated for their place in
        the window, and a slide re-encodes the kept tokens at their new places.) ``compile``:
        the one-token steps run the same maths compiled ahead of time (tinylm.decode).
        Call ``model.eval()`` first: in training mode dropout stays on.
        """
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(f"idx must be (batch, tokens) with at least one token, got {tuple(idx.shape)}")
        block, (batch, length) = self.config.block_size, idx.shape
        use_cache = use_cache and all(getattr(b.attn, "supports_cache", True) for b in self.blocks)
        tokens = idx.new_empty(batch, length + max_new_tokens)  # the prompt, then each new token
        tokens[:, :length] = idx
        start = max(0, length - block)  # the window is tokens[:, start:length]
        cache = self.new_cache(batch) if use_cache else None
        step = None  # the compiled one-token step
        if compile and cache is not None:
            from tinylm.decode import compiled_step

            step = compiled_step(self, cache, temperature, top_k, top_p)
        filled = False  # whether the cache holds the window
        for _ in range(max_new_tokens):
            if length - start > block:  # full: slide, keeping the newest half block
                start, filled = length - max(1, block // 2), False
            noise = sampling_noise(batch, self.vocab_size, temperature, generator, idx.device)
            one_token = filled  # the cache holds the window: only the newest token is new
            if one_token:
                new = tokens[:, length - 1 : length]
            else:  # the whole window: at each step without the cache, or to fill it
                new = tokens[:, start:length]
                if cache is not None:
                    cache.clear()
                    filled = True
            self.place(new, cache)
            if one_token and step is not None:
                token = step(new, noise)
            else:
                token = next_token(self, new, cache, noise, temperature, top_k, top_p)
            tokens[:, length : length + 1] = token
            length += 1
            yield token

    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None, compile: bool = False) -> Tensor:
        """``idx`` (B, T) followed by ``max_new_tokens`` sampled tokens: (B, T + max_new_tokens).

        temperature 0 is greedy decoding; top_k keeps the k likeliest tokens; top_p keeps the
        smallest set of likeliest tokens whose probabilities sum to at least top_p. See ``stream``.
        """
        new = list(self.stream(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator, compile))
        return torch.cat([idx, *new], dim=1)

    def num_parameters(self) -> int:
        """Trainable parameters, a tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())


def next_token(model: TransformerLM, idx: Tensor, cache: KVCache | None, noise: Tensor | None,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               explicit: bool = False) -> Tensor:
    """The token (B, 1) after ``idx`` (B, T), which continues ``cache``: the model's logits at
    the last position, and the choice ``choose_next`` makes from them with ``noise``.
    ``model.place`` has placed ``idx`` in ``cache`` (outside: it checks Python numbers, which a
    compiled step cannot). ``explicit`` takes the explicit attention path (tinylm.decode)."""
    logits = model.logits(idx, cache, return_attention=explicit)
    if explicit:  # the weights, unused, compile away
        logits = logits[0]
    return choose_next(logits[:, -1], noise, temperature, top_k, top_p)  # (B, 1)


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
    is a handful of whole-row operations: they compile into the decode step (tinylm.decode),
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
