"""Which heads matter: how much the loss rises when one head's output is removed.

A head's output is its slice of the input of its layer's output projection: ``proj`` reads
the H heads side by side, y = [y₀ | y₁ | … | y_{H-1}] (B, T, H·hd), so head h is
y[..., h·hd:(h+1)·hd]. Ablating head h replaces that slice, before ``proj`` mixes the heads:

- ``zero``: with zeros, as if the head were not there;
- ``mean``: with the head's mean output over every position of the same windows, which keeps
  the typical size of what the head adds and removes only what it says about this position.

The importance of a head is loss(ablated) - loss(intact), in nats per character, on a fixed
set of windows: one forward pass of those windows per head, plus one intact (and for ``mean``
one more, to take the means). The model file is untouched: a forward pre-hook on ``proj`` does
the replacing, on whichever attention path the model runs (fused or explicit).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from tinylm.config import ABLATIONS
from tinylm.model import TransformerLM, evaluating


def can_ablate(model: TransformerLM) -> bool:
    """Whether each head's output can be found: tinylm's attention (``proj``, the output
    projection, reads the heads side by side). A learner's own attention class
    (``model.attention=file.py:Class``) has no known output projection: its heads are not ablated."""
    return all(isinstance(getattr(block.attn, "proj", None), torch.nn.Linear) for block in model.blocks)


@contextmanager
def ablated(model: TransformerLM, layer: int, head: int, value: Tensor | None = None) -> Iterator[None]:
    """Inside the block, head ``head`` of layer ``layer`` outputs ``value`` (hd,) at every
    position, zeros when None, instead of what it computes."""
    attention = model.blocks[layer].attn
    width = model.config.head_dim
    cols = slice(head * width, (head + 1) * width)

    def replace(module: torch.nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        y = args[0].clone()  # (B, T, H·hd): the heads side by side, head h at columns cols
        y[..., cols] = 0.0 if value is None else value.to(y.dtype)
        return (y, *args[1:])

    handle = attention.proj.register_forward_pre_hook(replace)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def head_means(model: TransformerLM, inputs: Tensor) -> Tensor:
    """Every head's mean output over all positions of ``inputs`` (N, T): (L, H, hd)."""
    outputs: list[Tensor] = []

    def keep(module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
        outputs.append(args[0].float().mean((0, 1)))  # (H·hd,): the mean over windows and positions

    handles = [block.attn.proj.register_forward_pre_hook(keep) for block in model.blocks]
    try:
        with evaluating(model):
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    config = model.config
    return torch.stack(outputs).view(config.layers, config.heads, config.head_dim)  # (L, H, hd)


def window_loss(model: TransformerLM, inputs: Tensor, targets: Tensor) -> float:
    """Mean cross-entropy (nats per character) of predicting ``targets`` (N, T) from ``inputs``."""
    logits = model(inputs)  # (N, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).item()


@torch.no_grad()
def ablation_scores(model: TransformerLM, windows: Tensor, mode: str = "zero") -> Tensor:
    """How much the loss on ``windows`` (N, T+1) rises when each head is ablated: (L, H), in
    nats per character. Each window's first T tokens predict its last T."""
    if mode not in ABLATIONS:
        raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}, got {mode!r}")
    device = next(model.parameters()).device
    windows = windows.to(device)
    inputs, targets = windows[:, :-1], windows[:, 1:]  # (N, T), (N, T)
    config = model.config
    means = head_means(model, inputs) if mode == "mean" else None  # (L, H, hd)
    rises = torch.zeros(config.layers, config.heads)
    with evaluating(model):
        intact = window_loss(model, inputs, targets)
        for layer in range(config.layers):
            for head in range(config.heads):
                value = None if means is None else means[layer, head]
                with ablated(model, layer, head, value):
                    rises[layer, head] = window_loss(model, inputs, targets) - intact
    return rises


def validation_windows(tokens: Tensor, count: int, block_size: int) -> Tensor:
    """``count`` windows of block_size + 1 tokens (count, block_size + 1), spread evenly over
    ``tokens``: the same windows at every validation. Fewer when the text is short."""
    tokens = torch.as_tensor(tokens)
    span = block_size + 1
    last_start = tokens.numel() - span
    if last_start < 0:
        raise ValueError(f"{tokens.numel()} validation tokens are fewer than one window of {span}")
    count = min(count, last_start + 1)
    starts = torch.linspace(0, last_start, count).round().long().tolist()
    return torch.stack([tokens[s : s + span] for s in starts]).long()  # (count, block_size + 1)
