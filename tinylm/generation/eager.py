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

from collections.abc import Iterator
from contextlib import contextmanager

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


def _norm(norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(x)``, calling its function directly (nn.LayerNorm, or tinylm's RMSNorm without
    gradients)."""
    if type(norm) is RMSNorm:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.eps)
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class OneTokenStep:
    """``step(token (B, 1)) -> logits (B, V)`` of the token after those ``cache`` holds, which it
    stores; the same maths as ``model.place`` then ``model.logits`` on a sliced cache."""

    def __init__(self, model: TransformerLM, cache: KVCache) -> None:
        self.model, self.cache, self.config = model, cache, model.config
        # Keys and values side by side in one buffer per layer when the cache holds them so:
        # then the new ones are one copy straight out of the QKV product.
        self.joint = [layer.joint for layer in cache.layers]

    def __call__(self, token: Tensor) -> Tensor:
        model, cache, config = self.model, self.cache, self.config
        p = cache.length  # the new token's position
        if p >= config.block_size:
            raise ValueError(f"a sequence of {p + 1} tokens is longer than "
                             f"model.block_size={config.block_size}")
        cache.length = p + 1
        x = F.embedding(token[:, 0], model.token_embedding.weight)  # (B, d)
        if model.position_embedding is not None:
            x = x + model.position_embedding.weight[p]
        rope = None
        if config.position == "rope":
            rope = (model.rope_cos[p : p + 1], model.rope_sin[p : p + 1])  # 2 × (1, hd/2)
        for block, layer, joint in zip(model.blocks, cache.layers, self.joint, strict=True):
            x = x + self._attend(block.attn, _norm(block.ln_1, x), layer, joint, p, rope)
            if block.mlp is not None:
                x = x + self._mlp(block.mlp, _norm(block.ln_2, x))
        logits = F.linear(_norm(model.ln_f, x), model.lm_head.weight)  # (B, V)
        if config.logit_softcap is not None:
            cap = config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    @staticmethod
    def _attend(attn: CausalSelfAttention, x: Tensor, layer: LayerCache, joint: Tensor | None, p: int,
                rope: tuple[Tensor, Tensor] | None) -> Tensor:
        """CausalSelfAttention.forward for one position ``p`` of a sliced cache: (B, d)."""
        B, H, G, hd = x.size(0), attn.heads, attn.kv_heads, attn.head_dim
        heads = F.linear(x, attn.qkv.weight, attn.qkv.bias).view(B, H + 2 * G, 1, hd)
        # narrow, not indexing: the same views in one call each instead of a tuple of slices
        q = heads.narrow(1, 0, H)  # (B, H, 1, hd)
        if joint is not None and attn.q_norm is None and rope is None:  # k, v as they come
            joint.narrow(2, p, 1).copy_(heads.narrow(1, H, 2 * G))
        else:
            k, v = heads.narrow(1, H, G), heads.narrow(1, H + G, G)  # (B, G, 1, hd)
            if attn.q_norm is not None:
                q, k = _norm(attn.q_norm, q), _norm(attn.k_norm, k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            layer.keys.narrow(2, p, 1).copy_(k)
            layer.values.narrow(2, p, 1).copy_(v)
        k, v = layer.keys.narrow(2, 0, p + 1), layer.values.narrow(2, 0, p + 1)  # (B, G, p + 1, hd)
        if G != H:
            k, v = k.repeat_interleave(H // G, dim=1), v.repeat_interleave(H // G, dim=1)
        # One query: every cached key is visible, so no mask.
        y = causal_attention(q, k, v)[0] if attn.explicit else F.scaled_dot_product_attention(q, k, v)
        return F.linear(y.view(B, H * hd), attn.proj.weight, attn.proj.bias)  # (B, d)

    @staticmethod
    def _mlp(mlp: MLP, x: Tensor) -> Tensor:
        """MLP.forward on (B, d) rows."""
        h = F.linear(x, mlp.fc.weight, mlp.fc.bias)
        if mlp.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif mlp.relu2:
            h = F.relu(h).square()
        else:
            h = F.gelu(h)
        return F.linear(h, mlp.proj.weight, mlp.proj.bias)


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
