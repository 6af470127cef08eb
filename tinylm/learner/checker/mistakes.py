"""The mistake catalogue: the classic mistakes of the tutorials (``MISTAKES``; ``mistake`` for
those that carry a value, such as the fill of a mask), tinylm's reference attention with
mistakes made on purpose (``variant_output``), and the fewest mistakes that reproduce a
learner's output exactly (``explain``)."""

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
    "diagonal_hidden": Mistake(
        "the diagonal hidden: each position cannot see itself",
        "hide only the keys after the query: keep torch.tril(torch.ones(T, T)) (diagonal=0), hide "
        "torch.triu(torch.ones(T, T), diagonal=1); not triu(diagonal=0) nor tril(diagonal=-1)",
    ),
    "residual_inside": Mistake(
        "its input added back to its output (a residual inside the attention)",
        "return the attention's output alone (return self.W_O(out), not x + ...): tinylm's block "
        "adds the residual itself",
    ),
    "one_ahead": Mistake(
        "the mask off by one: each position sees the next",
        "hide every key after the query: torch.triu(torch.ones(T, T), diagonal=1) is the hidden part",
    ),
}
ACTIVATIONS = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, "tanh": torch.tanh,
               "sigmoid": torch.sigmoid, "silu": torch.nn.functional.silu, "elu": torch.nn.functional.elu}
WEAK_FILLS = (0.0, -1.0, -2.0, -5.0, -10.0)  # fills that leave a hidden key a visible weight
FILL_RANGE = (-20.0, 0.0)  # finite fills searched for beyond WEAK_FILLS; below, a key is all but hidden


def mistake(key: str) -> Mistake:
    """The mistake ``key`` names; ``fill=0.0``, ``activation=relu``, ``activation_o=relu`` and
    ``heads=12x4`` (12 heads of width 4) carry what the learner's code did."""
    kind, _, value = key.partition("=")
    if kind == "fill":
        return Mistake(f"masked scores filled with {value}, which does not hide a key",
                       "fill the hidden scores with float('-inf') (or torch.finfo(scores.dtype).min)")
    if kind in ("activation", "activation_o"):
        where = "Q/K/V and output projections" if kind == "activation_o" else "Q/K/V projections"
        return Mistake(f"a {value} after the {where}",
                       "use each projection as it is (q = self.W_Q(x)): the softmax is attention's "
                       "only non-linearity")
    if kind == "heads":
        count, _, width = value.partition("x")
        return Mistake(f"heads of the wrong width: it attends with {count} head(s) of width {width}",
                       "split with .view(B, T, heads, d_model // heads).transpose(1, 2): heads first, "
                       "then head_dim")
    return MISTAKES[key]


def variant_output(
    weights: dict[str, Any],
    x: Any,
    heads: int,
    split: str = "ok",
    scale: str = "ok",
    axis: str = "ok",
    mask: str = "ok",
    merge: str = "ok",
    act: str = "ok",
    split_heads: int | None = None,
) -> Any:
    """The attention of ``weights`` on ``x`` with known mistakes made on purpose: ``mask`` may
    also be "diagonal" (hidden), "ahead" (one step), "fill=<value>"; ``act`` an activation after
    the Q/K/V projections ("relu", or "relu+o" after the output projection too);
    ``split_heads`` another head count than ``heads`` (scale "intended": √ of the intended width)."""
    B, T, d = x.shape
    H = split_heads or heads
    hd = d // H
    q, k, v = torch.nn.functional.linear(x, *weights["qkv"]).split(d, dim=-1)  # 3 × (B, T, d)
    if act != "ok":
        q, k, v = (ACTIVATIONS[act.removesuffix("+o")](t) for t in (q, k, v))
    if split == "ok":
        q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
    else:
        q, k, v = (t.view(B, T, H, hd) for t in (q, k, v))  # (B, T, H, hd): heads attend to heads
    scores = q @ k.transpose(-2, -1)  # (B, H, T, T), or (B, T, H, H) not transposed
    root = {"ok": math.sqrt(hd), "d_model": math.sqrt(d), "none": 1.0, "intended": math.sqrt(d // heads)}
    scores = scores / root[scale]
    n = scores.size(-1)
    keep = torch.ones(n, n, dtype=torch.bool).tril({"diagonal": -1, "ahead": 1}.get(mask, 0))
    if mask in ("ok", "ahead"):
        scores = scores.masked_fill(~keep, float("-inf"))
    elif mask == "diagonal":  # a finite fill: the first row, all hidden, becomes uniform
        scores = scores.masked_fill(~keep, -1e9)
    elif mask.startswith("fill="):
        scores = scores.masked_fill(~keep, float(mask.removeprefix("fill=")))
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
        if act.endswith("+o"):
            y = ACTIVATIONS[act.removesuffix("+o")](y)
    return y


def _combinations(heads: int, d: int, T: int) -> list[dict[str, Any]]:
    """Every set of mistakes ``explain`` tries, fewest first: the classic five alone and
    together; an activation (with any scale, any mask); another head width (with any scale)."""
    masks = ["ok", "after", "none", "diagonal", "ahead", *(f"fill={v}" for v in WEAK_FILLS)]
    options = {
        "split": ["ok", "not"],
        "scale": ["ok", "d_model", "none"],
        "axis": ["ok", "wrong"],
        "mask": masks,
        "merge": ["ok", "no_transpose", "hd_first"],
    }
    combos = []
    for values in itertools.product(*options.values()):
        chosen = dict(zip(options, values, strict=True))
        if chosen["split"] == "not" and chosen["merge"] == "hd_first":
            continue
        if chosen["split"] == "not" and chosen["mask"] != "ok" and chosen["mask"] != "none":
            continue  # a (T, T) mask cannot apply to (B, T, H, H) scores
        if chosen["split"] == "not" and chosen["mask"] != "none" and heads != T:
            chosen["mask"] = "none"
        if heads == 1 and chosen["scale"] == "d_model":
            continue  # the same as the right scale
        combos.append(chosen)
    for act in ACTIVATIONS:
        for where, scale, mask in itertools.product(("", "+o"), ("ok", "d_model", "none"), ("ok", "none")):
            combos.append({"act": act + where, "scale": scale, "mask": mask})
    for other in (h for h in range(1, d + 1) if d % h == 0 and h != heads):
        for scale in ("ok", "intended", "d_model", "none"):
            combos.append({"split_heads": other, "scale": scale})
    combos.sort(key=lambda c: sum(v not in ("ok", None) for v in c.values()))
    return combos


def _names(chosen: dict[str, Any], heads: int, d: int, T: int) -> list[str]:
    """The catalogue's keys for the mistakes ``chosen`` made on purpose."""
    found = []
    for key, value in chosen.items():
        if value == "ok":
            continue
        if key == "split":
            found.append("not_transposed")
        elif key == "scale":
            found.append({"d_model": "scale_d_model", "none": "no_scale"}.get(value, "scale_intended"))
        elif key == "axis":
            found.append("wrong_axis")
        elif key == "mask":
            found.append({"after": "mask_after", "none": "no_mask", "diagonal": "diagonal_hidden",
                          "ahead": "one_ahead"}.get(value, value))
        elif key == "merge":
            found.append("merge_order")
        elif key == "act":
            found.append(f"activation{'_o' if value.endswith('+o') else ''}={value.removesuffix('+o')}")
        elif key == "split_heads":
            found.append(f"heads={value}x{d // value}")
    if "scale_intended" in found:  # the scale it meant for heads of the width it was built for
        found.remove("scale_intended")
    if chosen.get("split") == "not":  # merging was part of that mistake
        found = [f for f in found if f not in ("merge_order", "no_mask")] + (
            ["no_mask"] if chosen.get("mask") == "none" and heads == T else []
        )
    return found


def explain(weights: dict[str, Any], x: Any, heads: int, output: Any,
            rows: Any = None) -> list[str] | None:
    """The fewest known mistakes that reproduce ``output`` exactly (on the positions ``rows``
    selects, when some of its rows are not finite), or None."""
    _, T, d = x.shape
    with torch.no_grad():
        for chosen in _combinations(heads, d, T):
            if all(v in ("ok", None) for v in chosen.values()):
                continue
            try:
                candidate = variant_output(weights, x, heads, **chosen)
            except RuntimeError:
                continue
            if rows is not None:
                candidate, target = candidate[:, rows], output[:, rows]
            else:
                target = output
            if (candidate - target).abs().max().item() <= TOLERANCE:
                return _names(chosen, heads, d, T)
        candidate, target = variant_output(weights, x, heads) + x, output  # a residual of its own
        if rows is not None:
            candidate, target = candidate[:, rows], output[:, rows]
        if (candidate - target).abs().max().item() <= TOLERANCE:
            return ["residual_inside"]
        return _fitted_fill(weights, x, heads, output, rows)


def _fitted_fill(weights: dict[str, Any], x: Any, heads: int, output: Any, rows: Any) -> list[str] | None:
    """A mask filled with a finite value other than ``WEAK_FILLS`` (-3, -2.5 ...): the fill
    between FILL_RANGE that reproduces ``output`` exactly, found on a grid then by golden
    section, and named as written (rounded to two decimals) when that still reproduces it."""
    def gap(fill: float, scale: str) -> float:
        candidate = variant_output(weights, x, heads, scale=scale, mask=f"fill={fill}")
        target = output
        if rows is not None:
            candidate, target = candidate[:, rows], output[:, rows]
        return (candidate - target).abs().max().item()

    low, high = FILL_RANGE
    steps = int((high - low) * 2)
    for scale in ("ok", "d_model", "none"):
        grid = [high - i / 2 for i in range(steps + 1)]
        best = min(grid, key=lambda f: gap(f, scale))
        a, b = best - 0.5, best + 0.5
        for _ in range(40):  # golden section: the gap has one minimum near a grid point
            c, e = b - 0.618 * (b - a), a + 0.618 * (b - a)
            a, b = (a, e) if gap(c, scale) < gap(e, scale) else (c, b)
        fitted = (a + b) / 2
        # as written: the fill itself, or one the scores are divided by the scale after (the LLM book's order)
        root = {"ok": math.sqrt(x.size(-1) // heads), "d_model": math.sqrt(x.size(-1)), "none": 1.0}[scale]
        before = round(fitted * root, 2)
        for written, effective in ((round(fitted, 2), round(fitted, 2)), (before, before / root)):
            if written < 0 and gap(effective, scale) <= TOLERANCE:
                names = {"ok": [], "d_model": ["scale_d_model"], "none": ["no_scale"]}[scale]
                return [*names, f"fill={written:g}"]
    return None
