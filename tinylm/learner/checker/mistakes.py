"""The mistake catalogue: the classic mistakes of the tutorials (``MISTAKES``), tinylm's
reference attention with mistakes made on purpose (``variant_output``), and the fewest
mistakes that reproduce a learner's output exactly (``explain``)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch

from tinylm.learner.reference import TOLERANCE


@dataclass(frozen=True)
class Mistake:
    name: str
    fix: str


MISTAKES = {
    "not_transposed": Mistake(
        "heads not transposed",
        "split heads with .view(B, T, heads, head_dim).transpose(1, 2): "
        "(B, heads, T, head_dim), so each head attends over positions",
    ),
    "scale_d_model": Mistake(
        "scores scaled by √d_model instead of √head_dim",
        "divide the scores by √head_dim (q.size(-1) after the split), not √d_model",
    ),
    "no_scale": Mistake("scores not scaled", "divide the scores by √head_dim before the softmax"),
    "wrong_axis": Mistake(
        "softmax over the wrong axis", "take the softmax over the keys: softmax(scores, dim=-1)"
    ),
    "mask_after": Mistake(
        "mask applied after the softmax",
        "mask the scores before the softmax with float('-inf'), so each row still sums to 1",
    ),
    "no_mask": Mistake(
        "no causal mask",
        "hide future keys before the softmax: "
        "scores.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float('-inf'))",
    ),
    "merge_order": Mistake(
        "heads merged in the wrong order",
        "merge with y.transpose(1, 2).reshape(B, T, d_model): at each position the heads side by side",
    ),
}


def variant_output(
    weights: dict[str, Any],
    x: Any,
    heads: int,
    split: str = "ok",
    scale: str = "ok",
    axis: str = "ok",
    mask: str = "ok",
    merge: str = "ok",
) -> Any:
    """The attention of ``weights`` on ``x`` with known mistakes made on purpose."""
    B, T, d = x.shape
    H, hd = heads, d // heads
    q, k, v = torch.nn.functional.linear(x, *weights["qkv"]).split(d, dim=-1)  # 3 × (B, T, d)
    if split == "ok":
        q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
    else:
        q, k, v = (t.view(B, T, H, hd) for t in (q, k, v))  # (B, T, H, hd): heads attend to heads
    scores = q @ k.transpose(-2, -1)  # (B, H, T, T), or (B, T, H, H) not transposed
    scores = scores / {"ok": math.sqrt(hd), "d_model": math.sqrt(d), "none": 1.0}[scale]
    n = scores.size(-1)
    keep = torch.ones(n, n, dtype=torch.bool).tril()
    if mask == "ok":
        scores = scores.masked_fill(~keep, float("-inf"))
    attn = scores.softmax(dim=-1 if axis == "ok" else -2)
    if mask == "after":
        attn = attn.masked_fill(~keep, 0.0)
    y = attn @ v
    if split == "ok":
        if merge == "ok":
            y = y.transpose(1, 2).reshape(B, T, d)
        elif merge == "no_transpose":
            y = y.reshape(B, T, d)
        else:  # head_dim before heads
            y = y.permute(0, 2, 3, 1).reshape(B, T, d)
    else:
        y = y.transpose(1, 2).reshape(B, T, d) if merge == "ok" else y.reshape(B, T, d)
    if weights["o"] is not None:
        y = torch.nn.functional.linear(y, *weights["o"])
    return y


def explain(weights: dict[str, Any], x: Any, heads: int, output: Any) -> list[str] | None:
    """The fewest known mistakes that reproduce ``output`` exactly, or None."""
    options = {
        "split": ["ok", "not"],
        "scale": ["ok", "d_model", "none"],
        "axis": ["ok", "wrong"],
        "mask": ["ok", "after", "none"],
        "merge": ["ok", "no_transpose", "hd_first"],
    }
    combos = []
    for values in itertools.product(*options.values()):
        chosen = dict(zip(options, values, strict=True))
        if chosen["split"] == "not" and chosen["merge"] == "hd_first":
            continue
        if chosen["split"] == "not" and chosen["mask"] != "none" and heads != x.size(1):
            chosen["mask"] = "none"  # a (T, T) mask cannot apply to (B, T, H, H) scores
        if heads == 1 and chosen["scale"] == "d_model":
            continue  # the same as the right scale
        combos.append(chosen)
    combos.sort(key=lambda c: sum(v != "ok" for v in c.values()))
    with torch.no_grad():
        for chosen in combos:
            if all(v == "ok" for v in chosen.values()):
                continue
            try:
                candidate = variant_output(weights, x, heads, **chosen)
            except RuntimeError:
                continue
            if (candidate - output).abs().max().item() <= TOLERANCE:
                names = {
                    "split": "not_transposed",
                    "scale": f"scale_{chosen['scale']}".replace("scale_none", "no_scale"),
                    "axis": "wrong_axis",
                    "mask": "mask_after" if chosen["mask"] == "after" else "no_mask",
                    "merge": "merge_order",
                }
                found = [names[key] for key, value in chosen.items() if value != "ok"]
                if chosen["split"] == "not":  # merging was part of that mistake
                    found = [f for f in found if f not in ("merge_order", "no_mask")] + (
                        ["no_mask"] if chosen["mask"] == "none" and heads == x.size(1) else []
                    )
                return found
    return None

