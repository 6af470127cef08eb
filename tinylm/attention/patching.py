"""Activation patching per head: run a corrupted prompt with one head's output taken from the
clean prompt's run, and see how much of the clean prediction comes back.

The metric m is, at the last position, the logit of the clean run's next character minus that
of the corrupt run's (each run's likeliest). Patching head h of layer l gives m_patched; its
recovery is (m_patched - m_corrupt) / (m_clean - m_corrupt): 1 when that head alone carries
the difference, 0 when it carries none of it.

A head's output is its slice of the input of its layer's output projection (the heads side by
side, ``tinylm.attention.ablation``): tinylm's ``proj``, or the output Linear of a learner's
class when ``tinylm.learner.reference`` finds one (o_proj, out_proj, W_O ...). A forward
pre-hook on it does the replacing, so the model file has no patching code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tinylm.errors import TinyLMError
from tinylm.model import TransformerLM, evaluating


class HeadsUnreachable(TinyLMError):
    """The heads' outputs of a learner's attention class cannot be found."""


def output_projection(attention: nn.Module) -> nn.Linear | None:
    """The Linear layer that reads the heads side by side and writes the residual stream:
    tinylm's ``proj``, or the one ``tinylm.learner.module.LearnerAttention.proj`` finds in a
    learner's class (o_proj, out_proj, W_O ...); None when there is none."""
    proj = getattr(attention, "proj", None)
    return proj if isinstance(proj, nn.Linear) else None


def projections(model: TransformerLM) -> list[nn.Linear]:
    """Every layer's output projection; raises HeadsUnreachable saying what is missing."""
    found = [output_projection(block.attn) for block in model.blocks]
    if any(p is None for p in found):
        raise HeadsUnreachable(
            "the attention class has no output projection tinylm can find (a Linear named o_proj, "
            "out_proj, proj, W_O ... reading the heads side by side), so its heads' outputs cannot "
            "be reached; name it so, or patch a model trained with tinylm's own attention")
    return found


@contextmanager
def recording(model: TransformerLM) -> Iterator[list[Tensor]]:
    """Inside the block, every forward pass appends each layer's heads side by side (B, T, H·hd)."""
    kept: list[Tensor] = []

    def keep(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        kept.append(args[0].detach().clone())

    handles = [p.register_forward_pre_hook(keep) for p in projections(model)]
    try:
        yield kept
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def patched(model: TransformerLM, layer: int, head: int, value: Tensor) -> Iterator[None]:
    """Inside the block, head ``head`` of layer ``layer`` outputs ``value`` (B, T, H·hd)'s slice."""
    width = model.config.head_dim
    cols = slice(head * width, (head + 1) * width)

    def replace(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        y = args[0].clone()
        y[..., cols] = value[..., cols].to(y.dtype)
        return (y, *args[1:])

    handle = projections(model)[layer].register_forward_pre_hook(replace)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class Patching:
    """What ``patch_heads`` measured."""

    clean_next: int  # the clean run's likeliest next token
    corrupt_next: int
    clean_metric: float  # logit[clean_next] - logit[corrupt_next], clean run, last position
    corrupt_metric: float
    recovery: Tensor  # (L, H): (m_patched - m_corrupt) / (m_clean - m_corrupt)


def metric(logits: Tensor, good: int, bad: int) -> float:
    """logit[good] - logit[bad] at the last position of ``logits`` (1, T, V)."""
    return (logits[0, -1, good] - logits[0, -1, bad]).item()


@torch.no_grad()
def patch_heads(model: TransformerLM, clean: Tensor, corrupt: Tensor) -> Patching:
    """Patch every head in turn from ``clean`` (1, T) into ``corrupt`` (1, T). Raises
    ValueError when both runs predict the same next token: there is nothing to recover."""
    with evaluating(model):
        with recording(model) as kept:
            clean_logits = model(clean)
        clean_heads = list(kept)  # per layer: (1, T, H·hd)
        corrupt_logits = model(corrupt)
        good, bad = int(clean_logits[0, -1].argmax()), int(corrupt_logits[0, -1].argmax())
        if good == bad:
            raise ValueError(good)
        m_clean, m_corrupt = metric(clean_logits, good, bad), metric(corrupt_logits, good, bad)
        config = model.config
        recovery = torch.zeros(config.layers, config.heads)
        for layer in range(config.layers):
            for head in range(config.heads):
                with patched(model, layer, head, clean_heads[layer]):
                    m = metric(model(corrupt), good, bad)
                recovery[layer, head] = (m - m_corrupt) / (m_clean - m_corrupt)
    return Patching(good, bad, m_clean, m_corrupt, recovery)
