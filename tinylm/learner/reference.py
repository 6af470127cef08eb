"""tinylm's reference attention with a learner's own weights in it.

``find_weights``: the learner's Q, K, V and O projections, found among its ``nn.Linear`` layers
by their usual names and laid out as tinylm's explicit attention holds them;
``reference_output``: that explicit attention (``CausalSelfAttention``, attention="explicit")
with those weights copied in. The checklist compares the learner's output with it, the
adapter picks the mask convention that agrees with it, and training draws attention maps
from the learner's own Q and K."""

from __future__ import annotations

import re
from typing import Any

import torch

from tinylm.config import ModelConfig
from tinylm.model import CausalSelfAttention

TOLERANCE = 1e-5  # outputs this close are the same attention

ROLES = {
    "q": ("q", "query", "queries", "wq"),
    "k": ("k", "key", "keys", "wk"),
    "v": ("v", "value", "values", "wv"),
    "o": ("o", "out", "output", "proj", "projection", "dense", "wo", "fc", "c_proj"),
}
FUSED = ("qkv", "in", "c_attn", "wqkv", "attn")


def _tokens(name: str) -> list[str]:
    name = re.sub(r"([a-z])([A-Z])", r"\1_\2", name)
    return [t for t in re.split(r"[^a-zA-Z0-9]+", name.lower()) if t]


def projections(module: Any) -> dict[str, Any]:
    """Every layer that may be a projection, by name: its ``nn.Linear`` layers, and the 2-D or
    3-D ``nn.Parameter`` tensors not inside one (``self.W_query = nn.Parameter(...)``; one
    matrix per head: (heads, ., .))."""
    found: dict[str, Any] = {name: m for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, parameter in module.named_parameters():
        owner = name.rpartition(".")[0]
        if not isinstance(found.get(owner), torch.nn.Linear) and parameter.dim() in (2, 3):
            found[name] = parameter
    return found


def _as_linear(layer: Any, orientation: str) -> tuple[Any, Any]:
    """(weight (out, in), bias (out,)) of a Linear, or of a Parameter used as ``x @ W``
    (orientation "x@W") or ``W @ x`` ("W@x"); one matrix per head is stacked head by head."""
    if isinstance(layer, torch.nn.Linear):
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
        return layer.weight, bias
    matrices = layer if layer.dim() == 3 else layer[None]
    if orientation == "x@W":
        matrices = matrices.transpose(-2, -1)
    weight = matrices.reshape(-1, matrices.size(-1))
    return weight, torch.zeros(weight.size(0))


def find_weights(module: Any, d: int, mapping: dict[str, str] | None = None, orientation: str = "x@W"
                 ) -> tuple[dict[str, Any], str]:
    """The learner's Q, K, V and O projections as tinylm's reference holds them, from its
    Linear layers (or Parameter matrices, used as ``orientation`` says) found by their usual
    names, or by ``mapping``: role → layer name.

    Returns {"qkv": (weight (3d, d), bias (3d,)), "o": (weight, bias) or None} and what was used.
    Raises LookupError saying what is missing."""
    layers = projections(module)
    found: dict[str, list[str]] = {"q": [], "k": [], "v": [], "o": [], "qkv": []}
    for name, layer in layers.items():
        tokens = _tokens(name.rsplit(".", 1)[-1])
        width_in, width_out = (layer.in_features, layer.out_features) if isinstance(
            layer, torch.nn.Linear) else (min(layer.shape[-2:]), max(layer.shape[-2:]))
        if any(t in FUSED or "qkv" in t for t in tokens) and width_out == 3 * width_in:
            found["qkv"].append(name)
            continue
        role = next((r for r in "qkvo" if any(t in ROLES[r] for t in tokens)), None)
        if role is not None:
            found[role].append(name)
    for role, names in (mapping or {}).items():  # what map.ROLE names replaces what names found
        found[role] = []
        found.update({"q": [], "k": [], "v": []} if role == "qkv" else {"qkv": []} if role != "o" else {})
        for name in names.split("+"):
            if name not in layers:
                raise LookupError(
                    f"map.{role}={name}: no Linear layer or Parameter {name!r}; "
                    f"it has {', '.join(layers)}"
                )
            found[role].append(name)
    used_names = {n for names in found.values() for n in names}
    square = [n for n, layer in layers.items() if n not in used_names and isinstance(layer, torch.nn.Linear)
              and layer.in_features == layer.out_features == d]
    if not found["o"] and len(square) == 1:  # its one other (d, d) Linear, such as the ML book's `linear`
        found["o"] = square

    def stacked(names: list[str]) -> tuple[Any, Any]:
        parts = [_as_linear(layers[n], orientation) for n in names]
        return torch.cat([w for w, _ in parts], dim=0), torch.cat([b for _, b in parts])

    if found["qkv"]:
        weight, bias = stacked(found["qkv"])
        used = f"{'+'.join(found['qkv'])} (Q, K, V fused)"
    else:
        missing = [r.upper() for r in "qkv" if not found[r]]
        if missing:
            raise LookupError(
                f"found no {'/'.join(missing)} projection among its Linear layers and Parameters "
                f"({', '.join(layers) or 'none'}); name them, e.g. map.q=W_Q map.k=W_K map.v=W_V map.o=W_O"
            )
        parts = [stacked(found[r]) for r in "qkv"]
        weight, bias = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        used = ", ".join("+".join(found[r]) for r in "qkv")
    if tuple(weight.shape) != (3 * d, d):
        per_head = [layers[n] for n in found["q"] if not isinstance(layers[n], torch.nn.Linear)
                    and layers[n].dim() == 3]
        if per_head:
            h, width = per_head[0].shape[0], per_head[0].shape[1 if orientation == "W@x" else 2]
            raise LookupError(f"its {h} heads are {width} wide each ({h}·{width} = {h * width}), where "
                              f"tinylm's reference has heads of width d_model/heads = {d}/{h}: "
                              f"give each head {d // h if d % h == 0 else 'd_model/heads'} columns")
        raise LookupError(
            f"its Q/K/V projections ({used}) are {tuple(weight.shape)}, not (3·{d}, {d}): "
            f"tinylm's reference has Q, K, V of width d_model"
        )
    out = None
    if found["o"]:
        out = stacked(found["o"][-1:])
        if tuple(out[0].shape) != (d, d):
            raise LookupError(
                f"its output projection {found['o'][-1]} is {tuple(out[0].shape)}, not ({d}, {d})"
            )
        used += f", O: {found['o'][-1]}"
    else:
        used += ", no O (the reference uses none)"
    if any(not isinstance(layers[n], torch.nn.Linear) for names in found.values() for n in names):
        used += f" (Parameters used as {orientation})"
    return {
        "qkv": (weight.detach(), bias.detach()),
        "o": None if out is None else (out[0].detach(), out[1].detach()),
    }, used


def head_widths(module: Any, d: int, heads: int) -> tuple[int, int]:
    """(heads, width of each) as its projections hold them: one (heads, ., .) Parameter per
    role says so itself; otherwise d_model split ``heads`` ways."""
    for name, layer in projections(module).items():
        if not isinstance(layer, torch.nn.Linear) and layer.dim() == 3:
            tokens = _tokens(name.rsplit(".", 1)[-1])
            if any(t in ROLES["q"] for t in tokens):
                width = layer.shape[1] if layer.shape[2] == d else layer.shape[2]
                return layer.shape[0], width
    return heads, d // heads


def reference_output(weights: dict[str, Any], x: Any, heads: int) -> Any:
    """tinylm's own explicit attention (CausalSelfAttention, attention="explicit") with the
    learner's weights copied in."""
    d = x.size(-1)
    config = ModelConfig(d_model=d, heads=heads, attention="explicit", bias=True, block_size=x.size(1))
    reference = CausalSelfAttention(config).to(x.dtype).eval()
    with torch.no_grad():
        reference.qkv.weight.copy_(weights["qkv"][0])
        reference.qkv.bias.copy_(weights["qkv"][1])
        if weights["o"] is None:
            reference.proj.weight.copy_(torch.eye(d))
            reference.proj.bias.zero_()
        else:
            reference.proj.weight.copy_(weights["o"][0])
            reference.proj.bias.copy_(weights["o"][1])
        return reference(x)[0]
