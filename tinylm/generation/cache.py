"""The KV cache: each layer's keys and values of the positions already seen, so that a new token
costs one query position instead of a whole forward pass.

Shapes: B batch, G = kv_heads key/value heads, hd = head_dim; every buffer is (B, G, block_size, hd).
The model reads a cache through two names only (``TransformerLM.place`` and the attention's
``cache.append``/``cache.visible``), so it never imports this module.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tinylm.config import ModelConfig


class LayerCache:
    """One layer's keys and values, (B, G, block_size, hd) buffers of a fixed shape: a forward
    pass writes its new positions' keys and values in place and attends over the whole buffer,
    masking every key after its query (those not yet written among them). Fixed shapes let one
    compiled one-token step serve every position. With RoPE the keys are stored already rotated."""

    def __init__(self, cache: KVCache, keys: Tensor, values: Tensor, joint: Tensor | None = None) -> None:
        self.cache = cache  # it says where this pass's tokens go
        self.keys, self.values = keys, values
        self.joint = joint  # (B, 2G, block_size, hd) whose halves keys and values are, or None

    @property
    def visible(self) -> Tensor | None:
        """(T, block_size): which keys each of this pass's queries may see; None where the keys
        ``append`` returns are exactly those the pass may see, causally (a ``sliced`` cache)."""
        return self.cache.visible

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new positions' k, v (B, G, T, hd); return every key and value buffer, or in
        a ``sliced`` cache its first ``length`` positions."""
        cache = self.cache
        if cache.visible is None:  # sliced: the pass's positions are a plain range
            self.keys[:, :, cache.length - k.size(2) : cache.length] = k
            self.values[:, :, cache.length - v.size(2) : cache.length] = v
            return self.keys[:, :, : cache.length], self.values[:, :, : cache.length]  # (B, G, length, hd)
        self.keys.index_copy_(2, cache.positions, k)
        self.values.index_copy_(2, cache.positions, v)
        return self.keys, self.values  # (B, G, block_size, hd)


class KVCache:
    """Every layer's LayerCache; how many positions they hold (``length``); and the positions
    of the tokens being added, with the keys each of them may see."""

    def __init__(self, batch: int, config: ModelConfig, dtype: torch.dtype, device: torch.device,
                 sliced: bool = False) -> None:
        # sliced: attention reads the filled positions only, without a mask, in fewer and smaller
        # kernels (an eager step); otherwise the whole fixed-shape buffer under a mask (what a
        # compiled step, one shape for every position, needs).
        self.sliced = sliced
        shape = (batch, config.kv_heads, config.block_size, config.head_dim)  # G heads: GQA's saving
        # Zeros, not empty(): masked keys get weight 0, and 0 · NaN would still be NaN.
        self.layers = [self._layer(shape, dtype, device) for _ in range(config.layers)]
        self.key_positions = torch.arange(config.block_size, device=device)[None]  # (1, block_size)
        self.length = 0
        self.advance(0)

    def _layer(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> LayerCache:
        if not self.sliced:  # a compiled step reads each buffer with the strides it was compiled for
            return LayerCache(self, torch.zeros(shape, dtype=dtype, device=device),
                              torch.zeros(shape, dtype=dtype, device=device))
        # Keys and values as the two halves of one buffer, as the QKV product gives them: the
        # eager step (tinylm.generation.eager) stores a new position's both in one copy.
        B, G, block, hd = shape
        joint = torch.zeros(B, 2 * G, block, hd, dtype=dtype, device=device)
        return LayerCache(self, joint[:, :G], joint[:, G:], joint)

    @classmethod
    def holding(cls, keys: list[Tensor], values: list[Tensor], positions: Tensor, visible: Tensor) -> KVCache:
        """A cache over given buffers, its pass placed at ``positions`` with mask ``visible``:
        the view of it that an exported step (tinylm.generation.decode), given only tensors, works on."""
        cache = cls.__new__(cls)
        cache.sliced = False
        cache.layers = [LayerCache(cache, k, v) for k, v in zip(keys, values, strict=True)]
        cache.positions, cache.visible = positions, visible
        return cache

    def advance(self, tokens: int) -> None:
        """Place ``tokens`` new tokens after the ``length`` held (TransformerLM.place checks
        that they fit)."""
        start, self.length = self.length, self.length + tokens
        if self.sliced and (tokens == 1 or start == 0):  # attends over keys 0 .. length-1, causally
            self.positions = torch.arange(start, self.length, device=self.key_positions.device)
            self.visible = None
            return
        if tokens == 1 and self.visible is not None and self.positions.numel() == 1:  # two small writes
            self.positions.fill_(start)
            torch.le(self.key_positions, start, out=self.visible)
            return
        # A new tensor, not a slice of key_positions: a compiled step sees the same input each time.
        self.positions = torch.arange(start, self.length, device=self.key_positions.device)  # (T,)
        self.visible = self.key_positions <= self.positions[:, None]  # (T, block_size): up to its own

    def clear(self) -> None:
        """Start again at position 0 (the buffers are overwritten as positions are stored)."""
        self.length = 0


def new_cache(model: torch.nn.Module, batch: int, sliced: bool = False) -> KVCache:
    """An empty KV cache for ``batch`` sequences of ``model`` (a TransformerLM), in its dtype and
    on its device: a LayerCache per block (``sliced``: see KVCache)."""
    weight = model.token_embedding.weight
    return KVCache(batch, model.config, weight.dtype, weight.device, sliced)
