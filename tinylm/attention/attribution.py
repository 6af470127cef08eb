"""Who wrote a prediction: direct logit attribution per component.

The residual stream at the last layer is a sum, x = Σ_c x_c, of what each component wrote: the
token and position embeddings, each head of each layer (its slice of the heads side by side
times its columns of the output projection), each layer's output-projection bias, each MLP.
The logits are W_U · norm_f(x). With the final norm's scale frozen at its value at that position
(σ for LayerNorm, the root mean square for RMSNorm, computed from the whole x), the norm is
linear in x, so the logit of token i is exactly

    logit_i = Σ_c W_U[i] · (g ⊙ centre(x_c) / σ)  +  W_U[i] · b

(centre: minus the mean over features, LayerNorm only; b, the norm's bias, is a component of its
own). That is the direct contribution of c: what it adds through the residual stream alone, not
through the later layers that read it. With ``model.logit_softcap`` the parts sum to the logit
before the cap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tinylm.attention.patching import output_projection
from tinylm.model import CausalSelfAttention, TransformerLM, evaluating


@dataclass(frozen=True)
class Attribution:
    """Every component's direct contribution to every logit at every position of a prompt."""

    names: list[str]  # (C,): "embeddings: tokens", "layer 0 head 2", "layer 1 MLP" ...
    logits: Tensor  # (C, T, V) float64: component c's part of logit v at position t
    model_logits: Tensor  # (T, V): the model's logits (before any soft cap)

    def total(self) -> Tensor:
        """(T, V): the components' sum, equal to ``model_logits``."""
        return self.logits.sum(0)

    def choice(self, position: int, target: int | None) -> tuple[int, int]:
        """The token at ``position`` to explain (``target``, or the model's likeliest when None)
        and its top alternative, the likeliest other token."""
        row = self.model_logits[position]
        target = int(row.argmax()) if target is None else target
        others = row.clone()
        others[target] = float("-inf")
        return target, int(others.argmax())


def _final_scale(norm: nn.Module, x: Tensor) -> Tensor:
    """The final norm's divisor at each position of ``x`` (..., d), as it computes it: (..., 1)."""
    eps = getattr(norm, "eps", 1e-5)
    if isinstance(norm, nn.LayerNorm):
        return (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()  # RMSNorm


@torch.no_grad()
def attribute(model: TransformerLM, idx: Tensor) -> Attribution:
    """The direct logit attribution of every component on ``idx`` (1, T)."""
    config = model.config
    parts: list[tuple[str, Tensor]] = []  # name → (T, d), what the component adds to the stream
    hooks = []

    def heads_hook(layer: int, proj: nn.Linear):
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            y = args[0][0].double()  # (T, H·hd): the heads side by side
            weight = module.weight.double()  # (d, H·hd)
            hd = y.size(-1) // config.heads
            for h in range(config.heads):
                cols = slice(h * hd, (h + 1) * hd)
                parts.append((f"layer {layer} head {h}", y[:, cols] @ weight[:, cols].T))
            if module.bias is not None:
                parts.append((f"layer {layer} attention bias", module.bias.double().expand(y.size(0), -1)))
        return hook

    def whole_hook(name: str):
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor | tuple) -> None:
            out = output[0] if isinstance(output, tuple) else output  # attention returns (y, weights)
            parts.append((name, out[0].double()))
        return hook

    for layer, block in enumerate(model.blocks):
        proj = output_projection(block.attn)
        if proj is not None and isinstance(block.attn, CausalSelfAttention):
            hooks.append(proj.register_forward_pre_hook(heads_hook(layer, proj)))
        else:  # a learner's class: its heads may be mixed inside it; the layer's attention whole
            hooks.append(block.attn.register_forward_hook(whole_hook(f"layer {layer} attention")))
        if block.mlp is not None:
            hooks.append(block.mlp.register_forward_hook(whole_hook(f"layer {layer} MLP")))
    final: list[Tensor] = []  # what the final norm reads, and the logits before any cap
    hooks.append(model.ln_f.register_forward_pre_hook(lambda module, args: final.append(args[0][0].double())))
    hooks.append(model.lm_head.register_forward_hook(lambda module, args, out: final.append(out[0].double())))
    try:
        with evaluating(model):
            device = next(model.parameters()).device
            idx = idx.to(device)
            T = idx.size(1)
            embedded = [("embeddings: tokens", model.token_embedding(idx)[0].double())]
            if model.position_embedding is not None:
                embedded.append(("embeddings: positions", model.position_embedding.weight[:T].double()))
            model(idx)
    finally:
        for hook in hooks:
            hook.remove()
    x, model_logits = final  # (T, d): the stream the final norm reads, the sum of every part; (T, V)
    names = [name for name, _ in embedded + parts]
    stream = torch.stack([part for _, part in embedded + parts])  # (C, T, d)
    norm, unembedding = model.ln_f, model.lm_head.weight.double()  # (V, d)
    if isinstance(norm, nn.LayerNorm):
        stream = stream - stream.mean(-1, keepdim=True)  # centring is linear: each part its own
    gain = norm.weight.double() if getattr(norm, "weight", None) is not None else 1.0
    normed = stream / _final_scale(norm, x) * gain  # (C, T, d): σ frozen at each position
    logits = normed @ unembedding.T  # (C, T, V)
    bias = getattr(norm, "bias", None)
    if bias is not None:
        names.append("final norm bias")
        logits = torch.cat([logits, (bias.double() @ unembedding.T).expand(1, T, -1)])
    return Attribution(names, logits.cpu(), model_logits.cpu())


FROZEN = "the final norm's scale frozen at that position"


def targets(result: Attribution, ids: Tensor, position: int) -> tuple[int, str, int]:
    """The token to explain at ``position`` of ``ids`` (1, T): the one that came next in the
    prompt, or at its last position the model's likeliest; how it was chosen; its top alternative."""
    T = ids.size(1)
    if position + 1 < T:
        target, kind = int(ids[0, position + 1]), "next in the prompt"
    else:
        target, kind = None, "the model's likeliest"
    target, alternative = result.choice(position, target)
    return target, kind, alternative


def table(result: Attribution, ids: Tensor, position: int, decode: Callable[[int], str],
          softcap: float | None = None) -> str:
    """Who wrote the prediction at ``position``: a markdown row per component with its direct part
    of the logit of the next token, of the top alternative, and their difference."""
    target, kind, alternative = targets(result, ids, position)
    shown_t, shown_a = repr(decode(target)), repr(decode(alternative))
    t, a = result.logits[:, position, target], result.logits[:, position, alternative]
    after = repr(decode(int(ids[0, position])))
    lines = [
        f"who wrote the prediction at position {position} (after {after}): the direct part of each "
        f"component in the logit of {shown_t} ({kind}) and of {shown_a} (the top alternative), "
        f"{frozen_note(softcap)}",
        "",
        f"| component | {shown_t} | {shown_a} | difference |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {t[c]:+.3f} | {a[c]:+.3f} | {t[c] - a[c]:+.3f} |"
              for c, name in enumerate(result.names)]
    model_t, model_a = result.model_logits[position, target], result.model_logits[position, alternative]
    lines += [f"| **sum** | {t.sum():+.3f} | {a.sum():+.3f} | {t.sum() - a.sum():+.3f} |",
              f"| the model's logit | {model_t:+.3f} | {model_a:+.3f} | {model_t - model_a:+.3f} |"]
    return "\n".join(lines)


def frozen_note(softcap: float | None) -> str:
    return FROZEN + ("" if softcap is None else f"; logits before model.logit_softcap={softcap:g}")


def explorer_data(result: Attribution, ids: Tensor, n: int, decode: Callable[[int], str],
                  softcap: float | None = None) -> dict[str, Any]:
    """For the explorer page: at each of the first ``n`` positions, each component's direct part
    of the next token's logit (``t``) and of the top alternative's (``a``)."""
    positions = []
    for position in range(n):
        target, kind, alternative = targets(result, ids, position)
        positions.append({
            "target": decode(target), "alternative": decode(alternative), "kind": kind,
            "t": [round(v, 4) for v in result.logits[:, position, target].tolist()],
            "a": [round(v, 4) for v in result.logits[:, position, alternative].tolist()],
            "total": float(result.model_logits[position, target]),
            "alt_total": float(result.model_logits[position, alternative]),
        })
    return {"names": result.names, "positions": positions, "note": frozen_note(softcap)}
