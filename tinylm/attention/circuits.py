"""Scores read from a model's weights and losses rather than its attention pictures:

- ``copying_scores``: whether a head's OV circuit copies the token it attends to (Elhage et al.
  2021): the share of positive eigenvalues of W_U·W_O·W_V·W_E, a (V, V) matrix, exact for a
  character vocabulary;
- ``icl_score``: in-context learning (Olsson et al. 2022), the loss late in the context minus
  the loss early in it, negative when the model uses what it has read;
- ``induction_loss``: the loss on the second copy of random sequences repeated twice, low only
  for a model that copies what followed a token the last time.

How the norms enter the OV circuit, as TransformerLens's ``fold_ln`` treats them: each norm's
gain is folded into the matrix after it, LayerNorm's centring is applied to what enters it, and
its division by the standard deviation (a positive number that depends on the whole residual
stream, not on the token) and the biases (the same for every token) are left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinylm.model import CausalSelfAttention, TransformerLM, evaluating

# Olsson et al. measure the loss at token 500 minus token 50 of a 512-token context; scaled to
# the model's block size, the same fractions of its context.
ICL_LATE, ICL_EARLY, ICL_CONTEXT = 500, 50, 512


def can_read_ov(model: TransformerLM) -> bool:
    """Whether every head's value and output weights are known: tinylm's own attention. A
    learner's class keeps them under names of its own: its heads get no copying score."""
    return all(isinstance(block.attn, CausalSelfAttention) for block in model.blocks)


def _through_norm(x: Tensor, norm: nn.Module) -> Tensor:
    """``x`` (..., d) as the norm's gain and centring see it: centred for LayerNorm, times the gain."""
    if isinstance(norm, nn.LayerNorm):
        x = x - x.mean(-1, keepdim=True)
    weight = getattr(norm, "weight", None)
    return x if weight is None else x * weight.detach().double()


def ov_circuits(model: TransformerLM) -> Tensor:
    """Every head's OV circuit on the vocabulary, (L, H, V, V) float64: entry [l, h, j, i] is
    how much attending to token j raises the logit of token i through head h of layer l alone."""
    config = model.config
    H, G, hd = config.heads, config.kv_heads, config.head_dim
    embedding = model.token_embedding.weight.detach().double()  # (V, d)
    unembedding = model.lm_head.weight.detach().double()  # (V, d)
    circuits = []
    for block in model.blocks:
        attn = block.attn
        source = _through_norm(embedding, block.ln_1)  # (V, d): each token as the head reads it
        qkv = attn.qkv.weight.detach().double()  # ((H + 2G)·hd, d): Q heads, K heads, V heads
        values = qkv[(H + G) * hd:].view(G, hd, -1)  # (G, hd, d)
        out = attn.proj.weight.detach().double()  # (d, H·hd): head h reads columns h·hd..(h+1)·hd
        layer = []
        for h in range(H):
            value = values[h // (H // G)]  # (hd, d): the key/value head this query head shares
            written = source @ value.T @ out[:, h * hd:(h + 1) * hd].T  # (V, d)
            layer.append(_through_norm(written, model.ln_f) @ unembedding.T)  # (V, V)
        circuits.append(torch.stack(layer))
    return torch.stack(circuits)  # (L, H, V, V)


@torch.no_grad()
def copying_scores(model: TransformerLM) -> Tensor | None:
    """Σλ / Σ|λ| over the eigenvalues λ of each head's OV circuit, (L, H) in [-1, 1]: 1 for a
    head that raises the logit of the token it attends to, -1 for one that lowers it, 0 for a
    head that writes nothing the unembedding reads. None when the heads' weights are not known."""
    if not can_read_ov(model):
        return None
    circuits = ov_circuits(model)  # (L, H, V, V)
    eigenvalues = torch.linalg.eigvals(circuits)  # (L, H, V) complex
    total = eigenvalues.abs().sum(-1)
    # Σλ is the trace, a real number; a head with no circuit at all scores 0.
    share = circuits.diagonal(dim1=-2, dim2=-1).sum(-1) / total.where(total > 0, torch.ones_like(total))
    return share.float()


def icl_positions(block_size: int) -> tuple[int, int]:
    """The early and late positions (0-based) of ``icl_score``: Olsson's tokens 50 and 500 of
    512, as fractions of the block size."""
    early = min(block_size - 1, block_size * ICL_EARLY // ICL_CONTEXT)
    late = min(block_size - 1, block_size * ICL_LATE // ICL_CONTEXT)
    return early, late


def position_losses(model: TransformerLM, windows: Tensor) -> Tensor:
    """The loss at each position, averaged over ``windows`` (N, T+1) whose first T tokens
    predict their last T: (T,) nats."""
    device = next(model.parameters()).device
    windows = windows.to(device)
    logits = model(windows[:, :-1])  # (N, T, V)
    losses = F.cross_entropy(logits.float().transpose(1, 2), windows[:, 1:], reduction="none")  # (N, T)
    return losses.mean(0).cpu()


@torch.no_grad()
def icl_score(model: TransformerLM, windows: Tensor) -> float:
    """The mean loss at the late position minus the mean loss at the early one
    (``icl_positions``), on ``windows`` (N, T+1) of text, each position's loss averaged over
    the windows and the positions within T/64 of it. Negative: later characters are predicted
    better, for having more context."""
    with evaluating(model):
        losses = position_losses(model, windows)  # (T,)
    T = losses.numel()
    early, late = icl_positions(T)
    band = T // 64

    def around(p: int) -> float:
        return losses[max(0, p - band):min(T, p + band + 1)].mean().item()

    return around(late) - around(early)


@torch.no_grad()
def induction_loss(model: TransformerLM, sequences: Tensor, period: int) -> float:
    """The mean loss on the second copy of ``sequences`` (B, 2·period), random sequences repeated
    twice: every token from the second of the copy on, each of which the first copy gives away
    (the first token of the second copy does not follow from anything before it)."""
    with evaluating(model):
        device = next(model.parameters()).device
        logits = model(sequences[:, :-1].to(device)).float()  # (B, 2P-1, V)
    targets = sequences[:, 1:].to(device)  # (B, 2P-1): position t predicts token t+1
    # Positions period..2·period-2 predict tokens period+1..2·period-1, the second copy's 2nd on.
    second = slice(period, 2 * period - 1)
    return F.cross_entropy(logits[:, second].transpose(1, 2), targets[:, second]).item()
