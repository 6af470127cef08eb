"""``tinylm check-attention path/to/file.py:ClassName``: is a learner's attention right?

It imports the class from the learner's file (their own code, named on their own command
line), builds it for a small shape and prints a checklist, one line each, ✓ or ✗ with the fix:

1. shape: it takes (B, T, d) and gives (B, T, d) back; the forward signature and return form
   found (``forward(x)``, ``forward(q, k, v, mask=None)``; a tensor, ``(out, weights)``, a dict);
2. causal: changing a later position leaves every earlier output unchanged; a ``mask``
   argument gets a causal mask, in the first of the usual conventions that works;
3. attention: with its own Q/K/V/O weights copied into tinylm's explicit reference
   (``tinylm.model.CausalSelfAttention``, attention="explicit"), the outputs agree to 1e-5;
   where they do not, the known mistakes that reproduce its output exactly are named;
4. gradients reach every parameter; 5. it runs in bf16.

An exception in the learner's code becomes one line saying what tinylm was doing.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import inspect
import itertools
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinylm.errors import TinyLMError

WIDTH_NAMES = ("d_model", "hidden_size", "embed_dim", "input_dim", "d_feat", "n_embd", "dim", "d")
HEAD_NAMES = ("num_heads", "n_head", "n_heads", "heads", "h", "nhead", "num_head")
CAUSAL_NAMES = ("causal", "is_causal")
MASK_NAMES = ("mask", "attn_mask", "attention_mask", "causal_mask")
OUTPUT_KEYS = ("out", "output", "x", "y", "attn_output", "context", "hidden_states", "result")
WEIGHT_KEYS = ("attention", "attn", "weights", "attn_weights", "attention_weights", "probs", "scores_softmax")
TOLERANCE = 1e-5
SHAPE = (2, 7)  # batch and positions of the probe: 7 is no head count or head width we build


class CheckError(TinyLMError):
    """The file or class named on the command line cannot be used; exit 2."""


class LearnerError(TinyLMError):
    """The learner's code raised: one line saying what tinylm was doing; exit 1."""

    exit_code = 1
    bad_input = False


def failing(doing: str, error: BaseException) -> LearnerError:
    import torch

    libraries = (Path(__file__).parents[1], Path(torch.__file__).parent)
    where = ""
    tb = error.__traceback__
    while tb is not None:  # the innermost frame of the learner's code, if any
        filename = Path(tb.tb_frame.f_code.co_filename)
        if not any(root in filename.parents for root in libraries):
            where = f" (line {tb.tb_lineno} of {filename.name})"
        tb = tb.tb_next
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return LearnerError(f"{doing}: {type(error).__name__}: {message}{where}")


# --------------------------------------------------------------------------- loading and building


def load_class(spec: str, key: str = "class") -> type:
    """The class named by ``path/to/file.py:ClassName``, imported from that file."""
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text.endswith(".py") or not name.isidentifier():
        raise CheckError(f"{key}: expected path/to/file.py:ClassName, got {spec!r}")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise CheckError(f"{key}: no file {path.resolve()}")
    module_name = "tinylm_user_" + re.sub(r"\W", "_", path.stem)
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.resolve().parent))  # its own helper modules beside it
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # the learner's code: one line, no traceback
        raise failing(f"importing {path}", error) from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        classes = [n for n, v in vars(module).items() if isinstance(v, type) and v.__module__ == module_name]
        raise CheckError(f"{key}: {path} has no class {name}; it defines {', '.join(classes) or 'none'}")
    return cls


@dataclass
class Built:
    module: Any
    d_model: int
    heads: int
    call: str  # how it was built, as Python


def build_module(cls: type, d_model: int = 48, heads: int = 4, kwargs: dict | None = None) -> Built:
    """An instance of ``cls`` for width ``d_model`` and ``heads`` heads, in eval mode (its
    dropout off), finding the arguments by their usual names; ``kwargs`` are passed as given."""
    import torch

    kwargs = dict(kwargs or {})
    parameters = inspect.signature(cls.__init__).parameters
    width = next((n for n in WIDTH_NAMES if n in kwargs), None)
    if width is not None:
        d_model = int(kwargs[width])
    elif (width := next((n for n in WIDTH_NAMES if n in parameters), None)) is not None:
        kwargs[width] = d_model
    head_key = next((n for n in HEAD_NAMES if n in kwargs), None)
    if head_key is not None:
        heads = int(kwargs[head_key])
    elif (head_key := next((n for n in HEAD_NAMES if n in parameters), None)) is not None:
        kwargs[head_key] = heads
    else:
        heads = 1
    for name in CAUSAL_NAMES:
        if name in parameters and name not in kwargs:
            kwargs[name] = True
    call = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        with torch.random.fork_rng(devices=[]):  # the same weights each time; the run's seed untouched
            torch.manual_seed(0)
            module = cls(**kwargs)
    except Exception as error:
        raise failing(f"building {call} (pass other arguments with --kwargs)", error) from None
    if not isinstance(module, torch.nn.Module):
        raise CheckError(f"class: {cls.__name__} is not a torch.nn.Module")
    if width is None:  # no width argument: read it from its first Linear layer
        linear = next((m for m in module.modules() if isinstance(m, torch.nn.Linear)), None)
        if linear is None:
            raise CheckError(
                f"class: found no width argument ({', '.join(WIDTH_NAMES)}) and no Linear "
                f"layer in {cls.__name__}; give it with --kwargs d_model=48"
            )
        d_model = linear.in_features
    heads = _attribute_heads(module, d_model, heads)
    return Built(module.eval(), d_model, heads, call)


def _attribute_heads(module: Any, d_model: int, heads: int) -> int:
    """The head count the instance says it has (``self.num_heads``, ``self.d_k`` ...), if any."""
    for name in ("num_heads", "n_head", "n_heads", "nhead", "heads", "h"):
        value = getattr(module, name, None)
        if isinstance(value, int) and value >= 1 and d_model % value == 0:
            return value
        if name == "heads" and hasattr(value, "__len__") and len(value) >= 1 and d_model % len(value) == 0:
            return len(value)
    for name in ("head_dim", "d_k", "d_head", "head_size", "dk"):
        value = getattr(module, name, None)
        if isinstance(value, int) and value >= 1 and d_model % value == 0:
            return d_model // value
    return heads


# --------------------------------------------------------------------------- calling it


@dataclass(frozen=True)
class MaskConvention:
    name: str
    kind: str  # keep (bool, True = may see), hidden (bool, True = masked), additive, ones (0/1 float)
    shape: str  # "T,T", "1,1,T,T", "B,1,T,T"

    def make(self, B: int, T: int, dtype: Any, device: Any = None) -> Any:
        import torch

        keep = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        if self.kind == "keep":
            mask = keep
        elif self.kind == "hidden":
            mask = ~keep
        elif self.kind == "ones":
            mask = keep.to(dtype)
        else:
            mask = torch.zeros(T, T, dtype=dtype, device=device).masked_fill(~keep, float("-inf"))
        if self.shape == "1,1,T,T":
            mask = mask[None, None]
        elif self.shape == "B,1,T,T":
            mask = mask[None, None].expand(B, 1, T, T)
        return mask


KINDS = {
    "keep": "bool, True where a query may see a key",
    "ones": "1.0 where a query may see a key, 0.0 elsewhere",
    "hidden": "bool, True where a key is hidden",
    "additive": "float, 0 where visible and -inf where hidden",
}
CONVENTIONS = [
    MaskConvention(f"{KINDS[kind]}, shape ({shape})", kind, shape)
    for kind in ("keep", "ones", "hidden", "additive")
    for shape in ("T,T", "1,1,T,T", "B,1,T,T")
]


@dataclass
class Signature:
    """How to call the learner's forward: with x once or as q, k, v; with a mask or not."""

    qkv: bool
    mask_name: str | None
    mask_positional: bool
    text: str

    @classmethod
    def of(cls, module: Any) -> Signature:
        params = [
            p
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        names = [p.name for p in params]
        required = [p for p in params if p.default is p.empty and p.kind != p.KEYWORD_ONLY]
        mask_name = next((n for n in names if n.lower() in MASK_NAMES), None)
        positional = [p for p in params if p.name != mask_name and p.kind != p.KEYWORD_ONLY]
        qkv = len([p for p in required if p.name != mask_name]) >= 3 or (
            len(positional) >= 3 and positional[0].name.lower() in ("q", "query", "queries")
        )
        mask_positional = (
            mask_name is not None and params[names.index(mask_name)].kind != inspect.Parameter.KEYWORD_ONLY
        )
        shown = ", ".join(names)
        return cls(qkv, mask_name, mask_positional, f"forward({shown})")

    def call(self, module: Any, x: Any, mask: Any = None) -> Any:
        args = (x, x, x) if self.qkv else (x,)
        if self.mask_name is None:
            return module(*args)
        return module(*args, **{self.mask_name: mask})


@dataclass
class Result:
    output: Any
    weights: Any
    form: str


def read_result(value: Any, B: int, T: int, d: int) -> Result:
    """The output (B, T, d) and, if returned, the weights (B, H, T, T) of a forward's result."""
    import torch

    def is_output(t: Any) -> bool:
        return isinstance(t, torch.Tensor) and tuple(t.shape) == (B, T, d)

    def is_weights(t: Any) -> bool:
        return (
            isinstance(t, torch.Tensor)
            and t.dim() in (3, 4)
            and tuple(t.shape[-2:]) == (T, T)
            and t.size(0) == B
        )

    if isinstance(value, torch.Tensor):
        return Result(value, None, "a tensor")
    if isinstance(value, tuple | list) and value:
        output = next((v for v in value if is_output(v)), value[0])
        weights = next((v for v in value if v is not output and is_weights(v)), None)
        kind = "a tuple" if isinstance(value, tuple) else "a list"
        return Result(output, weights, f"{kind} (output{', weights' if weights is not None else ''})")
    if isinstance(value, dict):
        out_key = next((k for k in OUTPUT_KEYS if is_output(value.get(k))), None)
        if out_key is None:
            candidates = [k for k, v in value.items() if is_output(v)]
            out_key = candidates[-1] if candidates else None
        weight_key = next((k for k in WEIGHT_KEYS if is_weights(value.get(k))), None)
        if out_key is None:
            return Result(None, None, f"a dict with no (B, T, d) entry (keys {', '.join(map(str, value))})")
        shown = f"[{out_key!r}]" + (f", weights [{weight_key!r}]" if weight_key else "")
        return Result(value[out_key], value[weight_key] if weight_key else None, f"a dict: output {shown}")
    return Result(None, None, f"a {type(value).__name__}")


# --------------------------------------------------------------------------- the reference


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


def find_weights(module: Any, d: int, mapping: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """The learner's Q, K, V and O projections as tinylm's reference holds them, from its
    Linear layers found by their usual names (or by ``mapping``: role → layer name).

    Returns {"qkv": (weight (3d, d), bias (3d,)), "o": (weight, bias) or None} and what was used.
    Raises LookupError saying what is missing."""
    import torch

    linears = {name: m for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}
    found: dict[str, list[str]] = {"q": [], "k": [], "v": [], "o": [], "qkv": []}
    if mapping:
        for role, names in mapping.items():
            for name in names.split("+"):
                if name not in linears:
                    raise LookupError(
                        f"--map {role}={name}: no Linear layer {name!r}; it has {', '.join(linears)}"
                    )
                found[role].append(name)
    else:
        for name, linear in linears.items():
            tokens = _tokens(name.rsplit(".", 1)[-1])
            if (
                any(t in FUSED or "qkv" in t for t in tokens)
                and linear.out_features == 3 * linear.in_features
            ):
                found["qkv"].append(name)
                continue
            role = next((r for r in "qkvo" if any(t in ROLES[r] for t in tokens)), None)
            if role is not None:
                found[role].append(name)

    def stacked(names: list[str]) -> tuple[Any, Any]:
        weight = torch.cat([linears[n].weight for n in names], dim=0)
        bias = torch.cat(
            [
                linears[n].bias if linears[n].bias is not None else torch.zeros(linears[n].out_features)
                for n in names
            ]
        )
        return weight, bias

    if found["qkv"]:
        weight, bias = stacked(found["qkv"])
        used = f"{'+'.join(found['qkv'])} (Q, K, V fused)"
    else:
        missing = [r.upper() for r in "qkv" if not found[r]]
        if missing:
            raise LookupError(
                f"found no {'/'.join(missing)} projection among its Linear layers "
                f"({', '.join(linears) or 'none'}); name them, e.g. --map q=W_Q,k=W_K,v=W_V,o=W_O"
            )
        parts = [stacked(found[r]) for r in "qkv"]
        weight, bias = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        used = ", ".join("+".join(found[r]) for r in "qkv")
    if tuple(weight.shape) != (3 * d, d):
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
    return {
        "qkv": (weight.detach(), bias.detach()),
        "o": None if out is None else (out[0].detach(), out[1].detach()),
    }, used


def reference_output(weights: dict[str, Any], x: Any, heads: int) -> Any:
    """tinylm's own explicit attention (CausalSelfAttention, attention="explicit") with the
    learner's weights copied in."""
    import torch

    from tinylm.config import ModelConfig
    from tinylm.model import CausalSelfAttention

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
    import torch

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
    import torch

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


# --------------------------------------------------------------------------- the checklist


@dataclass
class Line:
    ok: bool
    text: str

    def __str__(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.text}"


@dataclass
class Report:
    """The checklist of one class; ``adapter`` calls it the way that worked."""

    header: str
    lines: list[Line] = field(default_factory=list)
    signature: Signature | None = None
    convention: MaskConvention | None = None
    causal: bool = False
    agrees: bool = False
    mistakes: list[str] = field(default_factory=list)
    returns_weights: bool = False

    @property
    def ok(self) -> bool:
        return bool(self.lines) and all(line.ok for line in self.lines)

    def verdict(self, kind: str) -> str:
        return next((line.text for line in self.lines if line.text.startswith(kind)), "")

    def __str__(self) -> str:
        return "\n".join([self.header, *map(str, self.lines)])


def _first_change(changed: Any) -> int:
    return int(changed.nonzero()[0].item()) if changed.any() else -1


def check(built: Built, mapping: dict[str, str] | None = None) -> Report:
    """Run the checklist on a built module."""
    import torch

    module, d, H = built.module, built.d_model, built.heads
    B, T = SHAPE
    report = Report(f"{built.call}: {H} head(s) of width {d // H}, on x of shape (B, T, d) = ({B}, {T}, {d})")
    signature = Signature.of(module)
    report.signature = signature
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, d, generator=generator)

    def run(inputs: Any, convention: MaskConvention | None, dtype: Any = torch.float32) -> Result:
        mask = None if convention is None else convention.make(B, T, dtype)
        return read_result(signature.call(module, inputs, mask), B, T, d)

    # 1. shape, and which mask convention makes it causal
    conventions: list[MaskConvention | None] = [*CONVENTIONS] if signature.mask_name else [None]
    tried: list[tuple[MaskConvention | None, Result]] = []
    errors: list[str] = []
    with torch.no_grad():
        for convention in conventions:
            try:
                tried.append((convention, run(x, convention)))
            except Exception as error:
                errors.append(str(failing("", error)).removeprefix(": "))
        if not tried and signature.mask_name:
            try:
                tried.append((None, run(x, None)))
            except Exception as error:
                errors.append(str(failing("", error)).removeprefix(": "))
    if not tried:
        report.lines.append(
            Line(False, f"shape: calling {signature.text} on (B, T, d) = ({B}, {T}, {d}) failed: {errors[0]}")
        )
        return report
    result = tried[0][1]
    if result.output is None or tuple(result.output.shape) != (B, T, d):
        shape = None if result.output is None else tuple(result.output.shape)
        report.lines.append(
            Line(
                False,
                f"shape: {signature.text} returned {result.form}"
                f"{f' of shape {shape}' if shape else ''}, expected ({B}, {T}, {d}); "
                f"return the attention's output (B, T, d_model)",
            )
        )
        return report
    report.lines.append(
        Line(True, f"shape: {signature.text} → {result.form}, ({B}, {T}, {d}) from ({B}, {T}, {d})")
    )
    report.returns_weights = result.weights is not None

    try:
        weights, used = find_weights(module, d, mapping)
    except LookupError as error:
        weights, used = None, str(error)
    reference = reference_output(weights, x, H) if weights is not None else None

    def causal_break(convention: MaskConvention | None, output: Any) -> tuple[int, int] | None:
        """(earlier, later) positions where a change at ``later`` moved the output at ``earlier``."""
        for later in range(T - 1, 0, -1):
            changed_x = x.clone()
            changed_x[:, later:] = torch.randn(B, T - later, d, generator=generator)
            other = run(changed_x, convention).output
            moved = ~((other[:, :later] - output[:, :later]).abs().amax(dim=(0, 2)) <= TOLERANCE)  # NaN moved
            if moved.any():
                return _first_change(moved), later
        return None

    chosen = None
    with torch.no_grad():
        for convention, attempt in tried:
            if (
                attempt.output is None
                or tuple(attempt.output.shape) != (B, T, d)
                or not torch.isfinite(attempt.output).all()
            ):
                continue
            try:
                broken = causal_break(convention, attempt.output)
            except Exception:
                continue
            agrees = reference is not None and (attempt.output - reference).abs().max().item() <= TOLERANCE
            if broken is None and (agrees or chosen is None or not chosen[2]):
                if chosen is None or agrees:
                    chosen = (convention, attempt, True, agrees)
                if agrees:
                    break
        if chosen is None:
            convention, attempt = tried[0]
            chosen = (convention, attempt, False, False)
            broken = causal_break(convention, attempt.output)
    convention, result, causal, _ = chosen
    report.convention, report.causal = convention, causal
    causal_at = len(report.lines)

    # 3. agreement with the reference
    if reference is None:
        report.lines.append(Line(False, f"attention: cannot compare with tinylm's reference: {used}"))
    else:
        difference = (result.output - reference).abs().max().item()
        if difference <= TOLERANCE:
            report.agrees = True
            report.lines.append(
                Line(
                    True,
                    f"attention: agrees with tinylm's reference to {difference:.0e} (its weights: {used})",
                )
            )
        else:
            found = explain(weights, x, H, result.output)
            if found:
                report.mistakes = found
                names = " + ".join(MISTAKES[m].name for m in found)
                fixes = "; ".join(MISTAKES[m].fix for m in found)
                report.lines.append(
                    Line(
                        False,
                        f"attention: differs from tinylm's reference by {difference:.3g}; "
                        f"{names} reproduces it exactly. Fix: {fixes}",
                    )
                )
            else:
                report.lines.append(
                    Line(
                        False,
                        f"attention: differs from tinylm's reference by {difference:.3g} "
                        f"(its weights: {used}), and no known mistake explains it; compare "
                        f"with softmax(Q·Kᵀ/√head_dim + causal mask)·V, head by head",
                    )
                )

    if causal:
        how = f"with mask= {convention.name}" if convention else "it masks the future itself"
        line = Line(True, f"causal: changing a later position leaves every earlier output unchanged ({how})")
    else:
        earlier, later = broken
        tried_masks = " with every usual causal mask" if signature.mask_name else ""
        if report.mistakes:
            fix = "the attention line says why"
        elif signature.mask_name:
            fix = "apply the mask to the scores before the softmax, with float('-inf')"
        else:
            fix = MISTAKES["no_mask"].fix
        line = Line(
            False,
            f"causal: output {earlier} changes when position {later} changes{tried_masks}: "
            f"it sees the future; {fix}",
        )
    report.lines.insert(causal_at, line)

    # 4. gradients
    params = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    try:
        for _, p in params:
            p.grad = None
        output = run(x, convention).output
        (output * torch.randn(output.shape, generator=generator)).sum().backward()
        dead = [name for name, p in params if p.grad is None or not p.grad.abs().sum().item() > 0]
        for _, p in params:
            p.grad = None
        if not params:
            report.lines.append(
                Line(False, "gradients: it has no trainable parameters; make its projections nn.Linear")
            )
        elif dead:
            report.lines.append(
                Line(
                    False,
                    f"gradients: {', '.join(dead)} get none: used nowhere in forward, or "
                    f"detached; use them or remove them",
                )
            )
        else:
            report.lines.append(Line(True, f"gradients: reach all {len(params)} parameters"))
    except Exception as error:
        report.lines.append(
            Line(False, f"gradients: backward failed: {str(failing('', error)).removeprefix(': ')}")
        )

    # 5. bf16
    report.lines.append(_low_precision(module, signature, convention, x, result.output, B, T, d))
    return report


def _low_precision(
    module: Any,
    signature: Signature,
    convention: MaskConvention | None,
    x: Any,
    full: Any,
    B: int,
    T: int,
    d: int,
) -> Line:
    import torch

    def attempt(dtype: Any) -> tuple[Any, str | None]:
        copied = copy.deepcopy(module).to(dtype)
        mask = None if convention is None else convention.make(B, T, dtype)
        try:
            with torch.no_grad():
                return read_result(signature.call(copied, x.to(dtype), mask), B, T, d).output, None
        except Exception as error:
            return None, str(failing("", error)).removeprefix(": ")

    out, error = attempt(torch.bfloat16)
    if error:
        return Line(
            False, f"bf16: it fails in bfloat16: {error}; make masks and constants follow the input's dtype"
        )
    if out is None or not torch.isfinite(out.float()).all():
        return Line(
            False,
            "bf16: its output in bfloat16 is not finite; fill masked scores with float('-inf') "
            "or torch.finfo(scores.dtype).min, and keep the softmax in float32",
        )
    gap = (out.float() - full).abs().max().item()
    scale = full.abs().max().item() or 1.0
    if gap > 0.05 * scale:
        return Line(
            False, f"bf16: its bfloat16 output is {gap:.3g} from float32's; keep the softmax in float32"
        )
    _, half_error = attempt(torch.float16)
    note = ""
    if half_error and "overflow" in half_error:
        note = " (in float16 it overflows: fill masked scores with float('-inf'), not -1e9)"
    return Line(True, f"bf16: runs in bfloat16, within {gap:.2g} of float32{note}")


# --------------------------------------------------------------------------- the command


def parse_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``--kwargs d_model=64 num_heads=4`` (values as JSON where they parse, else text)."""
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise CheckError(f"--kwargs: expected name=value, got {item!r}")
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = {"True": True, "False": False, "None": None}.get(text, text)
    return values


def parse_mapping(text: str | None) -> dict[str, str] | None:
    """``--map q=W_Q,k=W_K,v=W_V,o=W_O`` or ``--map qkv=c_attn,o=c_proj``."""
    if not text:
        return None
    mapping = {}
    for item in text.split(","):
        role, sep, name = item.partition("=")
        if not sep or role not in ("q", "k", "v", "o", "qkv") or not name:
            raise CheckError(f"--map: expected role=layer with roles q, k, v, o or qkv, got {item!r}")
        mapping[role] = name
    return mapping


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tinylm check-attention",
        description="Check your own attention class against tinylm's reference, and name its mistake.",
    )
    parser.add_argument("target", metavar="FILE.py:CLASS", help="the file and the class in it")
    parser.add_argument("--d-model", type=int, default=48, help="width to build it with (default 48)")
    parser.add_argument("--heads", type=int, default=4, help="heads to build it with (default 4)")
    parser.add_argument(
        "--kwargs",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="constructor arguments, e.g. --kwargs d_model=64 num_heads=8 dropout=0.0",
    )
    parser.add_argument(
        "--map",
        metavar="ROLE=LAYER,...",
        help="which Linear layers are Q, K, V, O: q=W_Q,k=W_K,v=W_V,o=W_O or qkv=c_attn,o=c_proj",
    )
    return parser.parse_args(argv)


def check_target(
    target: str,
    d_model: int = 48,
    heads: int = 4,
    kwargs: dict | None = None,
    mapping: dict[str, str] | None = None,
    key: str = "class",
) -> tuple[Report, Built]:
    """Load, build and check ``file.py:Class``."""
    built = build_module(load_class(target, key), d_model, heads, kwargs)
    return check(built, mapping), built


def main(argv: Sequence[str] | None = None, out: Callable[[str], Any] = print) -> None:
    """``tinylm check-attention``: print the checklist; exit 0 when every line holds, else 1."""
    args = parse_args(argv)
    if args.d_model < 1 or args.heads < 1 or args.d_model % args.heads:
        raise CheckError(f"--heads: {args.heads} heads do not divide --d-model={args.d_model}")
    report, _ = check_target(
        args.target, args.d_model, args.heads, parse_kwargs(args.kwargs), parse_mapping(args.map)
    )
    out(f"checking {args.target}: {report}")
    raise SystemExit(0 if report.ok else 1)
