"""Generation's one-token step in eager mode: the model's maths for one new token in the fewest
torch calls, for the short texts that never pay back a compile (tinylm.generation.decode).

A new character of nano is little arithmetic on a CPU, and most of a step's time is the calls
around it: a module's ``__call__``, a position held as a tensor and gathered (``table[positions]``),
a matrix product on a (B, 1, d) tensor, which torch flattens and expands its bias for. This step
reads the model's weights as they are and calls the functions on them itself, on (B, d) rows, at
a position held as a Python number; keys and values go straight into the KV cache's buffers. The
network (tinylm.model) stays the readable statement of the maths; ``test_generate`` holds the two
to the same tokens for every variant. Where a model holds parts this step does not know (a
learner's attention), ``eager_step`` gives None and generation runs the model itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinylm.generation.cache import KVCache, LayerCache
from tinylm.model import MLP, CausalSelfAttention, RMSNorm, TransformerLM, apply_rope, causal_attention


def eager_step(model: TransformerLM, cache: KVCache) -> OneTokenStep | None:
    """The one-token step for ``model`` writing into ``cache``, or None where the model holds a
    part it does not know (then generation calls the model)."""
    norms = [model.ln_f] + [norm for block in model.blocks for norm in (block.ln_1, block.ln_2)]
    known = (all(type(block.attn) is CausalSelfAttention for block in model.blocks)
             and all(block.mlp is None or type(block.mlp) is MLP for block in model.blocks)
             and all(norm is None or type(norm) in (nn.LayerNorm, RMSNorm) for norm in norms))
    return OneTokenStep(model, cache) if known else None


def _norm(norm: nn.Module) -> Callable[[Tensor], Tensor]:
    """``norm``'s function on its weights, to call directly: torch's own, without F's wrapper
    (nn.LayerNorm, or tinylm's RMSNorm without gradients)."""
    if type(norm) is RMSNorm:
        return partial(torch.rms_norm, normalized_shape=norm.weight.shape, weight=norm.weight, eps=norm.eps)
    return partial(torch.layer_norm, normalized_shape=norm.normalized_shape, weight=norm.weight,
                   bias=norm.bias, eps=norm.eps)


def _linear(layer: nn.Linear) -> Callable[[Tensor], Tensor]:
    """``layer``'s product on (B, in) rows: x·Wᵀ + b with Wᵀ taken once, here, not at every call."""
    weight_t = layer.weight.t()  # (in, out)
    if layer.bias is None:
        return partial(torch.mm, mat2=weight_t)
    return partial(torch.addmm, layer.bias, mat2=weight_t)


class _Layer(NamedTuple):
    """One block's weights and settings as the step uses them, looked up once per generation:
    a module attribute costs about a microsecond a lookup, and a step makes dozens per layer."""

    ln_1: Callable[[Tensor], Tensor]
    qkv: Callable[[Tensor], Tensor]
    heads: int
    kv_heads: int
    head_dim: int
    q_norm: Callable[[Tensor], Tensor] | None
    k_norm: Callable[[Tensor], Tensor] | None
    explicit: bool
    proj: Callable[[Tensor], Tensor]
    ln_2: Callable[[Tensor], Tensor] | None  # None: no MLP
    fc: Callable[[Tensor], Tensor] | None
    activation: str  # "swiglu", "relu2" or "gelu"
    mlp_proj: Callable[[Tensor], Tensor] | None
    cache: LayerCache
    joint: Tensor | None  # the cache's keys and values side by side, when it holds them so


def _layer(block: nn.Module, cache: LayerCache) -> _Layer:
    attn, mlp = block.attn, block.mlp
    activation = "" if mlp is None else "swiglu" if mlp.swiglu else "relu2" if mlp.relu2 else "gelu"
    return _Layer(
        ln_1=_norm(block.ln_1), qkv=_linear(attn.qkv), heads=attn.heads, kv_heads=attn.kv_heads,
        head_dim=attn.head_dim, q_norm=_norm(attn.q_norm) if attn.q_norm is not None else None,
        k_norm=_norm(attn.k_norm) if attn.k_norm is not None else None, explicit=attn.explicit,
        proj=_linear(attn.proj), ln_2=_norm(block.ln_2) if mlp is not None else None,
        fc=_linear(mlp.fc) if mlp is not None else None, activation=activation,
        mlp_proj=_linear(mlp.proj) if mlp is not None else None, cache=cache, joint=cache.joint)


class OneTokenStep:
    """``step(token (B, 1)) -> logits (B, V)`` of the token after those ``cache`` holds, which it
    stores; the same maths as ``model.place`` then ``model.logits`` on a sliced cache.
    ``step.fill(tokens)`` the same for a whole window, into an emptied cache."""

    def __init__(self, model: TransformerLM, cache: KVCache) -> None:
        self.cache, config = cache, model.config
        self.block_size, self.softcap = config.block_size, config.logit_softcap
        self.embedding = model.token_embedding.weight  # (V, d)
        self.positions = model.position_embedding.weight if model.position_embedding is not None else None
        self.rope = (model.rope_cos, model.rope_sin) if config.position == "rope" else None
        self.layers = [_layer(block, layer) for block, layer in zip(model.blocks, cache.layers, strict=True)]
        self.ln_f, self.head = _norm(model.ln_f), _linear(model.lm_head)

    def __call__(self, token: Tensor) -> Tensor:
        """Logits (B, V) after ``token`` (B, 1), the next position of the cache."""
        return self._run(token, self.cache.length)

    def fill(self, tokens: Tensor) -> Tensor:
        """Logits (B, V) after ``tokens`` (B, T), which fill the emptied cache from position 0:
        what generation does at its start and after each slide of the window."""
        if self.cache.length != 0:
            raise ValueError(f"fill starts an empty cache; this one holds {self.cache.length} positions")
        return self._run(tokens, 0)

    def _run(self, tokens: Tensor, p: int) -> Tensor:
        """The model on ``tokens`` (B, T) at positions p .. p+T-1 (T > 1 only from p = 0, where the
        causal mask is the plain one), their keys and values stored: the last position's logits."""
        cache = self.cache
        B, T = tokens.shape
        if p + T > self.block_size:
            raise ValueError(f"a sequence of {p + T} tokens is longer than "
                             f"model.block_size={self.block_size}")
        cache.length = p + T
        x = self.embedding.index_select(0, tokens.reshape(-1))  # (B·T, d): the rows, batch-major
        if self.positions is not None:
            x = (x.view(B, T, -1) + self.positions[p : p + T]).view(B * T, -1)
        rope = None
        if self.rope is not None:
            cos, sin = self.rope
            rope = (cos[p : p + T], sin[p : p + T])  # 2 × (T, hd/2)
        for layer in self.layers:
            x = x + self._attend(layer, layer.ln_1(x), B, T, p, rope)
            if layer.ln_2 is not None:
                x = x + self._mlp(layer, layer.ln_2(x))
        if T > 1:
            x = x.view(B, T, -1)[:, -1]  # (B, d): only the last position's logits are wanted
        logits = self.head(self.ln_f(x))  # (B, V)
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits

    @staticmethod
    def _attend(layer: _Layer, x: Tensor, B: int, T: int, p: int, rope: tuple[Tensor, Tensor] | None
                ) -> Tensor:
        """CausalSelfAttention.forward for positions p .. p+T-1 of a sliced cache, on (B·T, d) rows."""
        H, G, hd = layer.heads, layer.kv_heads, layer.head_dim
        heads = layer.qkv(x)  # (B·T, (H + 2G)·hd)
        # (B, H + 2G, T, hd); one position's is a view as it comes
        heads = heads.view(B, H + 2 * G, 1, hd) if T == 1 else heads.view(B, T, H + 2 * G, hd).transpose(1, 2)
        # narrow, not indexing: the same views in one call each instead of a tuple of slices
        q = heads.narrow(1, 0, H)  # (B, H, T, hd)
        cache = layer.cache
        if layer.joint is not None and layer.q_norm is None and rope is None:  # k, v as they come
            layer.joint.narrow(2, p, T).copy_(heads.narrow(1, H, 2 * G))
        else:
            k, v = heads.narrow(1, H, G), heads.narrow(1, H + G, G)  # (B, G, T, hd)
            if layer.q_norm is not None:
                q, k = layer.q_norm(q), layer.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            cache.keys.narrow(2, p, T).copy_(k)
            cache.values.narrow(2, p, T).copy_(v)
        k, v = cache.keys.narrow(2, 0, p + T), cache.values.narrow(2, 0, p + T)  # (B, G, p + T, hd)
        if G != H:
            k, v = k.repeat_interleave(H // G, dim=1), v.repeat_interleave(H // G, dim=1)
        # One query sees every cached key: no mask. Several fill the cache from 0: the causal one.
        if layer.explicit:
            y = causal_attention(q, k, v)[0]
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        y = y.view(B, H * hd) if T == 1 else y.transpose(1, 2).reshape(B * T, H * hd)
        return layer.proj(y)  # (B·T, d)

    @staticmethod
    def _mlp(layer: _Layer, x: Tensor) -> Tensor:
        """MLP.forward on (B·T, d) rows."""
        h = layer.fc(x)
        if layer.activation == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif layer.activation == "relu2":
            h = F.relu(h).square()
        else:
            h = F.gelu(h)
        return layer.mlp_proj(h)


@contextmanager
def native_kernels(one_thread: bool = False) -> Iterator[None]:
    """torch's own CPU kernels instead of oneDNN's inside the block: oneDNN sets up a primitive
    at each GELU call, which costs more than the GELU of a few rows (docs/performance.md).
    ``one_thread``: on one thread, for one row's kernels, too small to share: a second thread
    adds a barrier to each, and on a busy machine a wait for that thread to be scheduled."""
    enabled, threads = torch.backends.mkldnn.enabled, torch.get_num_threads()
    torch.backends.mkldnn.enabled = False
    if one_thread:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled
        if one_thread:
            torch.set_num_threads(threads)
