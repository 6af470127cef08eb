"""What a head does, in a few numbers: pure functions of attention weights.

Every score takes weights of shape (..., T, T) — rows are query positions, columns key
positions, each row a softmax over keys 0..t — and returns one number per map, shape (...).
They run on anything: a model's maps, or weights built by hand in a test.

Row 0 is left out of every mean. Its only visible key is itself, so its weight is 1.0 on
position 0 whatever the head does: counting it would give every head a free share of
first_token and self-attention, an entropy of 0 and a previous-token weight that does not
exist. The means are over query rows 1..T-1 (for prefix_matching and duplicate_token, over
the second copy of a repeated sequence only).

``copying`` is not a function of weights but of a head's OV circuit: ``tinylm.attention.circuits``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SCORES = ("entropy", "prev_token", "prefix_matching", "duplicate_token", "first_token")
# Scores measured apart from the maps, shown after them when measured.
OPTIONAL = ("copying", "ablation")


def _check(weights: Tensor, min_len: int = 2) -> None:
    if weights.dim() < 2 or weights.size(-1) != weights.size(-2):
        raise ValueError(f"expected attention weights of shape (..., T, T), got {tuple(weights.shape)}")
    if weights.size(-1) < min_len:
        raise ValueError(f"need at least {min_len} positions, got {weights.size(-1)}")


def row_entropy(weights: Tensor) -> Tensor:
    """Entropy in bits of each query row: (..., T, T) → (..., T). 0·log 0 counts as 0.

    A row spread evenly over keys 0..t has log2(t+1) bits; a row on one key has 0.
    """
    w = weights.float()
    logs = torch.where(w > 0, w.log2(), torch.zeros_like(w))  # masked keys contribute 0, not NaN
    return -(w * logs).sum(-1)


def entropy(weights: Tensor) -> Tensor:
    """Mean row entropy in bits over query rows 1..T-1: low for a focused head, near
    mean(log2(t+1)) for one that spreads its attention evenly."""
    _check(weights)
    return row_entropy(weights)[..., 1:].mean(-1)


def prev_token(weights: Tensor) -> Tensor:
    """Mean weight of query t on key t-1, over t = 1..T-1; a pure previous-token head scores 1."""
    _check(weights)
    # diagonal(offset=-1) is weights[..., t, t-1] for t = 1..T-1: (..., T-1)
    return weights.float().diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)


def first_token(weights: Tensor) -> Tensor:
    """Mean weight on key 0, over queries t = 1..T-1: heads that park attention on the first
    token (an "attention sink") score near 1."""
    _check(weights)
    return weights.float()[..., 1:, 0].mean(-1)


def prefix_matching(weights: Tensor, period: int) -> Tensor:
    """Prefix matching (Olsson et al. 2022), on a random sequence of ``period`` distinct tokens
    repeated: the mean weight from each query t of the second copy (t = period..T-1) to key
    t - period + 1, the token that followed the same token in the first copy. A head that
    does "[A][B] ... [A] → look at [B]" (an induction head's pattern) scores 1.
    """
    _check(weights, min_len=period + 1)
    if period < 1:
        raise ValueError(f"period must be at least 1, got {period}")
    # diagonal(offset=-(period-1)) is weights[..., t, t-period+1] for t = period-1..T-1;
    # drop its first entry (t = period-1 is the last token of the first copy).
    return weights.float().diagonal(offset=-(period - 1), dim1=-2, dim2=-1)[..., 1:].mean(-1)


def duplicate_token(weights: Tensor, ids: Tensor) -> Tensor:
    """Duplicate-token score (Wang et al. 2022, "Interpretability in the Wild"): the weight each
    query puts on earlier positions holding the same token as itself, averaged over the queries
    that have such a position; a head that looks from every repeated token at its earlier copies
    scores 1, and NaN when no token repeats. ``ids`` (..., T) are the tokens of the positions,
    their leading dimensions broadcast against those of ``weights`` (e.g. (B, 1, T) for maps
    (B, H, T, T)).
    """
    _check(weights)
    ids = torch.as_tensor(ids, device=weights.device)
    T = weights.size(-1)
    earlier = torch.ones(T, T, dtype=torch.bool, device=weights.device).tril(-1)  # key before query
    copies = (ids.unsqueeze(-1) == ids.unsqueeze(-2)) & earlier  # (..., T, T): earlier copies
    on_copies = (weights.float() * copies).sum(-1)  # (..., T): each query's weight on its copies
    has = copies.any(-1).expand_as(on_copies)  # (..., T): queries with an earlier copy
    return (on_copies * has).sum(-1) / has.sum(-1)  # 0/0 = NaN where no token repeats


@dataclass(frozen=True)
class HeadScores:
    """The pattern scores of every head of a model, each a (layers, heads) tensor, and two
    measured apart: ``copying``, the share of positive eigenvalues of the head's OV circuit
    (``tinylm.attention.circuits``), and ``ablation``, how much the loss rises without the head
    (Δ nats per character, ``tinylm.attention.ablation``)."""

    entropy: Tensor
    prev_token: Tensor
    prefix_matching: Tensor
    duplicate_token: Tensor
    first_token: Tensor
    copying: Tensor | None = None
    ablation: Tensor | None = None

    @classmethod
    def from_maps(cls, text_maps: Tensor, repeated_maps: Tensor, period: int,
                  repeated_ids: Tensor) -> HeadScores:
        """Scores from maps on a text (L, B, H, T, T) and on random sequences repeated twice,
        ``repeated_ids`` (B', 2·period), maps (L, B', H, 2·period, 2·period), averaged over the
        batch dimension."""
        return cls(
            entropy=entropy(text_maps).mean(1),  # (L, H)
            prev_token=prev_token(text_maps).mean(1),
            prefix_matching=prefix_matching(repeated_maps, period).mean(1),
            duplicate_token=duplicate_token(repeated_maps, repeated_ids[:, None, :]).mean(1),
            first_token=first_token(text_maps).mean(1),
        )

    @classmethod
    def from_mapping(cls, scores: dict[str, Tensor]) -> HeadScores:
        """From name → (L, H) values, such as a run's history holds; a score an older run did
        not record is NaN."""
        shape = next(iter(scores.values())).shape
        missing = torch.full(shape, float("nan"))
        return cls(**{name: scores.get(name, missing) for name in SCORES},
                    **{name: scores[name] for name in OPTIONAL if name in scores})

    def items(self) -> list[tuple[str, Tensor]]:
        """(name, (L, H) values) of each score, ``copying`` and ``ablation`` last when measured."""
        names = SCORES + tuple(name for name in OPTIONAL if getattr(self, name) is not None)
        return [(name, getattr(self, name)) for name in names]

    def title(self, layer: int, head: int) -> str:
        """Two lines naming a head and its scores, for the title of its picture."""
        first = f"layer {layer} · head {head}"
        if self.ablation is not None:
            first += f" · ablation {self.ablation[layer, head]:+.3f} nats"
        return (
            f"{first}\n"
            f"prev {self.prev_token[layer, head]:.2f} · prefix {self.prefix_matching[layer, head]:.2f} · "
            f"dup {self.duplicate_token[layer, head]:.2f} · first {self.first_token[layer, head]:.2f} · "
            f"{self.entropy[layer, head]:.1f} bits"
        )

    def table(self, layers: list[int] | None = None, heads: list[int] | None = None) -> str:
        """A markdown table, one row per head (entropy in bits, the pattern scores weights in
        [0, 1], copying in [-1, 1], ablation the loss rise in nats)."""
        n_layers, n_heads = self.entropy.shape
        layers = list(range(n_layers)) if layers is None else layers
        heads = list(range(n_heads)) if heads is None else heads
        columns = ["entropy (bits)", *[name for name, _ in self.items()][1:]]
        lines = [
            "| layer | head | " + " | ".join(columns) + " |",
            "|---:|---:|" + "---:|" * len(columns),
        ]
        for layer in layers:
            for head in heads:
                values = [float(score[layer, head]) for _, score in self.items()]
                lines.append(f"| {layer} | {head} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
        return "\n".join(lines)
