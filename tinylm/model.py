"""A decoder-only Transformer language model, written to read like the maths.

    x₀     = E[tokens] + P[positions]                  token + learned position embeddings
    x      = x + Attention(LayerNorm(x))               } one pre-norm block,
    x      = x + MLP(LayerNorm(x))                     } repeated `layers` times
    logits = LayerNorm(x) · Eᵀ                         the output head is E itself (tied)

Attention, for each head:  softmax(Q·Kᵀ / √head_dim + M) · V,  where the causal mask M is 0
where key position ≤ query position and -inf elsewhere, so no position sees its future.

Shapes: B batch, T positions, d = d_model, H heads, hd = head_dim = d / H, V vocabulary.
This module is plain PyTorch: no Lightning, no Hydra.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinylm.config import ModelConfig


def causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout: float = 0.0) -> tuple[Tensor, Tensor]:
    """The explicit path: softmax(Q·Kᵀ/√hd + M)·V, returning the output and the weights.

    q is (B, H, Tq, hd); k and v are (B, H, Tk, hd) with Tq ≤ Tk: the queries are the last
    Tq of the Tk positions (Tq = Tk in training; Tq < Tk when earlier keys are cached).
    """
    q_len, k_len, head_dim = q.size(-2), k.size(-2), q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)  # (B, H, Tq, Tk)
    # Query i sits at position k_len - q_len + i and may see keys 0 .. k_len - q_len + i.
    visible = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
    # Mask before the softmax, with -inf (exact in every dtype), so hidden keys get weight 0.
    scores = scores.masked_fill(~visible, float("-inf"))
    weights = scores.float().softmax(dim=-1).to(q.dtype)  # (B, H, Tq, Tk), rows sum to 1
    y = F.dropout(weights, dropout) @ v  # (B, H, Tq, hd)
    return y, weights


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

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)  # 3 × (B, T, d)
        # Split d into H heads, then move heads next to batch: each head attends on its own.
        q = q.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        v = v.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        dropout = self.dropout if self.training else 0.0
        if self.explicit or need_weights:
            y, weights = causal_attention(q, k, v, dropout)  # the teaching path
        else:  # the fast path: one fused kernel, same maths, no weights materialised
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
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

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.attn(self.ln_1(x), need_weights)
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

    def forward(self, idx: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits (B, T, V) for token ids ``idx`` (B, T); with ``return_attention`` also each
        layer's attention weights (B, H, T, T), computed on the explicit path."""
        T = idx.size(1)
        if T > self.config.block_size:  # there is no position embedding beyond block_size
            raise ValueError(
                f"a sequence of {T} tokens is longer than model.block_size={self.config.block_size}"
            )
        positions = torch.arange(T, device=idx.device)  # (T,)
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(positions))  # (B, T, d)
        attention_maps = []
        for block in self.blocks:
            x, weights = block(x, need_weights=return_attention)
            attention_maps.append(weights)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return (logits, attention_maps) if return_attention else logits

    def num_parameters(self) -> int:
        """Trainable parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
