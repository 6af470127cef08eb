"""Calling a learner's attention class the way tinylm's blocks call theirs: the adapter that
both training (``model.attention=file.py:Class``) and the checklist (``tinylm check-attention``)
stand on.

- ``load_class``: the class named by ``path/to/file.py:ClassName``, imported from that file;
- ``build_module``: an instance, its width and head arguments found by their usual names;
- ``Signature`` and ``MaskConvention``: how to call its forward (x once or q, k, v; which mask);
- ``read_result``: its output (B, T, d) and its weights, whatever form it returns them in.

An exception in the learner's code becomes one line saying what tinylm was doing (``failing``).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from tinylm.errors import TinyLMError
from tinylm.learner.registry import registered

WIDTH_NAMES = ("d_model", "hidden_size", "embed_dim", "input_dim", "d_feat", "n_embd", "emb_dim", "dim",
               "d_in", "d_out", "d")
HEAD_NAMES = ("num_heads", "n_head", "n_heads", "heads", "h", "nhead", "num_head", "num_attention_heads")
HEAD_WIDTH_NAMES = ("head_size", "head_dim", "d_head", "d_k", "dk")  # filled when required
CONTEXT_NAMES = ("block_size", "context_length", "max_len", "max_seq_len", "max_seq_length", "seq_len",
                 "n_ctx", "max_length", "max_position_embeddings", "context_size", "ctx_len")
DROPOUT_NAMES = ("dropout", "dropout_p", "dropout_rate", "drop_rate", "attn_dropout", "attn_pdrop",
                 "attention_dropout", "p_drop", "drop_prob")  # filled when required
BIAS_NAMES = ("bias", "qkv_bias", "use_bias", "USE_BIAS")  # filled when required
CONFIG_NAMES = ("config", "cfg", "conf", "args", "params", "hparams", "settings", "opt", "model_args")
CAUSAL_NAMES = ("causal", "is_causal")
MASK_NAMES = ("mask", "attn_mask", "attention_mask", "causal_mask")
OUTPUT_KEYS = ("out", "output", "x", "y", "attn_output", "context", "hidden_states", "result")
WEIGHT_KEYS = ("attention", "attn", "weights", "attn_weights", "attention_weights", "probs", "scores_softmax")



class CheckError(TinyLMError):
    """The file or class named on the command line cannot be used; exit 2."""


class LearnerError(TinyLMError):
    """The learner's code raised: one line saying what tinylm was doing; exit 1."""

    exit_code = 1
    bad_input = False


def failing(doing: str, error: BaseException) -> LearnerError:
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


def load_class(spec: str, key: str = "attention") -> type:
    """The class named by ``path/to/file.py:ClassName``, imported from that file (or a notebook's
    class registered by ``tinylm.train(attention=...)``)."""
    if (notebook_class := registered(spec)) is not None:
        return notebook_class
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
class Settings:
    """The model's settings a learner's constructor may ask for, by whatever name it uses."""

    d_model: int = 48
    heads: int = 4
    block_size: int = 64  # the longest context training calls it with
    dropout: float = 0.0
    bias: bool = True

    def namespace(self, given: dict[str, Any]) -> SimpleNamespace:
        """A config object for ``__init__(self, config)`` (nanoGPT's ``config.n_embd`` ...): the
        settings under every usual name, then what ``given`` (kwargs.config.NAME=...) adds."""
        d, h, T, p, b = self.d_model, self.heads, self.block_size, self.dropout, self.bias
        values = {name: d for name in WIDTH_NAMES if len(name) > 1}
        values |= {name: h for name in HEAD_NAMES if len(name) > 1}
        values |= {name: T for name in CONTEXT_NAMES}
        values |= {name: p for name in (*DROPOUT_NAMES, "resid_pdrop", "embd_pdrop")}
        values |= {name: b for name in BIAS_NAMES} | {name: True for name in CAUSAL_NAMES}
        values |= {name: d // h for name in HEAD_WIDTH_NAMES}
        return SimpleNamespace(**(values | dict(given)))


@dataclass
class Built:
    module: Any
    d_model: int
    heads: int
    call: str  # how it was built, as Python
    kwargs: dict[str, Any] = field(default_factory=dict)  # what tinylm passed, by name
    given: dict[str, Any] = field(default_factory=dict)  # what the user passed (kwargs.NAME=...)
    config_arg: str | None = None  # the name of its one config-object argument, if it takes one


def build_module(cls: type, d_model: int = 48, heads: int = 4, kwargs: dict | None = None,
                 key: str = "attention", settings: Settings | None = None,
                 kwargs_key: str = "kwargs") -> Built:
    """An instance of ``cls`` for width ``d_model`` and ``heads`` heads, in eval mode (its
    dropout off), finding the arguments by their usual names (a single ``config`` argument gets
    an object holding the settings under every usual name); ``kwargs`` are passed as given.
    A class tinylm cannot use is a CheckError naming ``key``, the setting that named it;
    ``kwargs_key`` is where the user passes other constructor arguments."""
    settings = settings or Settings()
    given = dict(kwargs or {})
    kwargs = dict(given)
    parameters = {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    required = [n for n, p in parameters.items() if p.default is p.empty]
    width = next((n for n in WIDTH_NAMES if n in kwargs), None)
    if width is not None:
        d_model = int(kwargs[width])
    head_key = next((n for n in HEAD_NAMES if n in kwargs), None)
    if head_key is not None:
        heads = int(kwargs[head_key])
    settings = Settings(d_model, heads, settings.block_size, settings.dropout, settings.bias)
    config_arg = _config_argument(parameters, required)
    if config_arg is not None:
        namespace = settings.namespace(kwargs.pop(config_arg, None) or {})
        kwargs[config_arg] = namespace
        width, head_key = "config", "config"
        shown = ", ".join(f"{n}={getattr(namespace, n)!r}" for n in
                          ("n_embd", "n_head", "dropout", "bias", "block_size"))
        call = f"{cls.__name__}({config_arg}: {shown})"
    else:
        if width is None and (width := next((n for n in WIDTH_NAMES if n in parameters), None)):
            kwargs[width] = d_model
        for name in ("d_in", "d_out"):  # the LLM book's MultiHeadAttention(d_in, d_out, ...)
            if name in parameters and name not in kwargs:
                kwargs[name] = d_model
        if head_key is None and (head_key := next((n for n in HEAD_NAMES if n in parameters), None)):
            kwargs[head_key] = heads
        fill = [(CONTEXT_NAMES, settings.block_size, False), (DROPOUT_NAMES, settings.dropout, True),
                (BIAS_NAMES, settings.bias, True), (HEAD_WIDTH_NAMES, d_model // heads, True),
                (CAUSAL_NAMES, True, False)]
        for names, value, only_required in fill:
            for name in names:
                if name in parameters and name not in kwargs and (name in required or not only_required):
                    kwargs[name] = value
        call = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        with torch.random.fork_rng(devices=[]):  # the same weights each time; the run's seed untouched
            torch.manual_seed(0)
            module = cls(**kwargs)
    except Exception as error:
        hint = (f"add it as {kwargs_key}.{config_arg}.NAME=VALUE" if config_arg else
                f"pass other arguments as {kwargs_key}.NAME=VALUE")
        raise failing(f"building {call} ({hint})", error) from None
    if not isinstance(module, torch.nn.Module):
        raise CheckError(f"{key}: {cls.__name__} is not a torch.nn.Module")
    if width is None:  # no width argument: read it from its first Linear layer
        linear = next((m for m in module.modules() if isinstance(m, torch.nn.Linear)), None)
        if linear is None:
            raise CheckError(
                f"{key}: found no width argument ({', '.join(WIDTH_NAMES)}) and no Linear "
                f"layer in {cls.__name__}; give it with {kwargs_key}.d_model=48"
            )
        d_model = linear.in_features
    heads = _attribute_heads(module, d_model, 1 if head_key is None else heads, by_width=head_key is None)
    passed = {k: v for k, v in kwargs.items() if k != config_arg}
    return Built(module.eval(), d_model, heads, call, passed, given, config_arg)


def _config_argument(parameters: dict[str, inspect.Parameter], required: list[str]) -> str | None:
    """The name of a constructor's one config-object argument (``__init__(self, config)``), if
    that is all it requires."""
    if len(required) != 1 or required[0] in (*WIDTH_NAMES, *HEAD_NAMES):
        return None
    name = required[0]
    annotation = parameters[name].annotation
    typed = isinstance(annotation, type) and annotation not in (int, float, bool, str)
    return name if name.lower() in CONFIG_NAMES or typed else None


def _attribute_heads(module: Any, d_model: int, heads: int, by_width: bool = True) -> int:
    """The head count the instance says it has (``self.num_heads``; ``self.d_k`` ... when
    ``by_width``: a class given a heads argument that splits another way has that mistake)."""
    for name in ("num_heads", "n_head", "n_heads", "nhead", "heads", "h"):
        value = getattr(module, name, None)
        if isinstance(value, int) and value >= 1 and d_model % value == 0:
            return value
        if name == "heads" and hasattr(value, "__len__") and len(value) >= 1 and d_model % len(value) == 0:
            return len(value)
    for name in ("head_dim", "d_k", "d_head", "head_size", "dk") if by_width else ():
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

