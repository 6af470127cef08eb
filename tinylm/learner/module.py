"""A learner's own attention class inside tinylm's pre-norm blocks (``model.attention=file.py:Class``).

tinylm keeps the block, the norms, the MLP and the residuals; only the attention is theirs.
``LearnerAttention`` calls their module the way ``tinylm.learner.calling`` found that works
(its forward signature, its return form, the mask convention that made it causal) and gives
back what tinylm's own attention gives: the output (B, T, d) and, when asked, the weights
(B, H, T, T) — the ones it returns, or else those of its own Q and K through the explicit
path when its weights map onto the reference, or else None.

The class is imported only from a file named on the command line: training names it in
model.attention; ``sample`` and ``attention`` need ``attention_file=`` (tinylm.checkpoint).
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from tinylm.config import ModelConfig
from tinylm.learner.adapter import Built, Settings, build_module, load_class, read_result
from tinylm.learner.calling import Calling, find_calling
from tinylm.learner.reference import find_weights
from tinylm.model import AttentionFactory, CausalSelfAttention, causal_mask

_FOUND: dict[tuple, Calling] = {}


def build_for(config: ModelConfig, cls: type | None = None) -> Built:
    """The class ``config.attention`` names, built as the model's blocks build it: at the
    model's settings, with ``config.attention_kwargs``."""
    cls = cls or load_class(config.attention, key="model.attention")
    settings = Settings(config.d_model, config.heads, config.block_size, config.dropout, config.bias)
    return build_module(cls, config.d_model, config.heads, dict(config.attention_kwargs), "model.attention",
                        settings, kwargs_key="model.attention_kwargs")


def calling(config: ModelConfig) -> Calling:
    """How to call the class ``config.attention`` names (found once per process and settings)."""
    key = (config.attention, config.d_model, config.heads, config.block_size, config.dropout, config.bias,
           repr(sorted(config.attention_kwargs.items())))
    if key not in _FOUND:
        _FOUND[key] = find_calling(build_for(config))
    return _FOUND[key]


class LearnerAttention(nn.Module):
    """The learner's module, called as tinylm's blocks call their attention."""

    supports_cache = False  # generation recomputes the window each step

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        found = calling(config)
        self.inner = build_for(config, found.cls).module.train()
        self.signature, self.convention = found.signature, found.convention
        self.heads, self.d_model = config.heads, config.d_model
        try:  # its output projection, when it has one: ablation removes one head's slice of its input
            _, used = find_weights(self.inner, self.d_model)
            self._proj_name = used.rpartition("O: ")[2].split(" (")[0] if "O: " in used else None
        except LookupError:
            self._proj_name = None

    @property
    def proj(self) -> nn.Linear | None:
        """Its output projection, if it is an nn.Linear reading the heads side by side."""
        if self._proj_name is None:
            return None
        layer = self.inner.get_submodule(self._proj_name)
        return layer if isinstance(layer, nn.Linear) else None

    def forward(self, x: Tensor, need_weights: bool = False, cache: Any = None, rope: Any = None
                ) -> tuple[Tensor, Tensor | None]:
        B, T, d = x.shape
        mask = None if self.convention is None else self.convention.make(B, T, x.dtype, x.device)
        result = read_result(self.signature.call(self.inner, x, mask), B, T, d)
        if not need_weights:
            return result.output, None
        weights = result.weights
        if weights is not None and weights.dim() == 3:  # (B, T, T): one head
            weights = weights[:, None]
        if weights is None or weights.size(1) != self.heads:
            weights = self.reference_weights(x)
        return result.output, weights

    def reference_weights(self, x: Tensor) -> Tensor | None:
        """softmax(Q·Kᵀ/√hd + M) from the learner's own Q and K, or None if they are not found."""
        try:
            weights, _ = find_weights(self.inner, self.d_model)
        except LookupError:
            return None
        B, T, d = x.shape
        H, hd = self.heads, d // self.heads
        q, k, _ = nn.functional.linear(x, *weights["qkv"]).split(d, dim=-1)
        q = q.view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, H, hd).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(hd)  # (B, H, T, T)
        scores = scores.masked_fill(~causal_mask(T, T, x.device), float("-inf"))
        return scores.float().softmax(dim=-1).to(x.dtype)  # (B, H, T, T)


def weights_source(config: ModelConfig) -> str | None:
    """Where the attention maps of a learner's class come from, or None when there are none."""
    found = calling(config)
    if found.returns_weights:
        return "the weights it returns"
    try:
        find_weights(build_for(config, found.cls).module, config.d_model)
    except LookupError:
        return None
    return "its own Q and K through tinylm's explicit path"


def attention_for(config: ModelConfig) -> AttentionFactory:
    """What builds the attention of ``config``'s blocks: the learner's class that model.attention
    names, called through ``LearnerAttention``, or tinylm's own."""
    return LearnerAttention if config.learner_attention is not None else CausalSelfAttention
