"""Typed, validated configuration.

Hydra composes plain values from ``configs/``; this module turns each section into a
frozen dataclass and checks it, so a bad value stops the run with one line that names
the key and the fix, before torch is imported, data is loaded or a model is built.
It imports nothing heavy on purpose: config errors must come back in well under a second.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class TinyLMError(Exception):
    """An error the user can fix; the message says what is wrong and how to fix it."""

    label = "error"  # the command line prints "<label>: <message>" ...
    exit_code = 2  # ... and exits with this status
    bad_input = True  # found before any work was done: the run's directory can go


class ConfigError(TinyLMError, ValueError):
    """A configuration value is wrong; the message names the key."""


def require(condition: bool, key: str, problem: str) -> None:
    """Raise a ConfigError for ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}: {problem}")


ATTENTION_PATHS = ("sdpa", "explicit")
POSITIONS = ("learned", "rope", "none")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
SWIGLU_MULTIPLE = 8  # SwiGLU's hidden width is rounded up to a multiple of this
LOGGERS = ("tensorboard", "none")


@dataclass(frozen=True)
class ModelConfig:
    """The shape of the Transformer. The vocabulary size comes from the data, not from here."""

    layers: int = 4
    heads: int = 4
    d_model: int = 128
    block_size: int = 64  # the longest context the model attends over
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers (RMSNorm has none)
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * d_model
    attention: str = "sdpa"  # "sdpa": fused kernel (fast); "explicit": softmax(QKᵀ/√d)V by hand
    # Architecture variants; the defaults are nanoGPT's (GPT-2's) choices.
    position: str = "learned"  # "learned" embeddings, "rope" (rotary), "none" (causal mask only)
    norm: str = "layernorm"  # or "rmsnorm": no centring, no bias
    mlp: str = "gelu"  # or "swiglu": a gated MLP with 2/3 the hidden width (see mlp_hidden)
    kv_heads: int | None = None  # heads of keys and values; null: heads (plain multi-head attention)
    qk_norm: bool = False  # normalise each head's queries and keys before their dot product

    def __post_init__(self) -> None:
        # Resolved once here, so a model always sees a number (and a checkpoint stores it); note
        # that dataclasses.replace(config, heads=8) then keeps the resolved kv_heads.
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)
        require(self.layers >= 1, "model.layers", f"must be at least 1, got {self.layers}")
        require(self.heads >= 1, "model.heads", f"must be at least 1, got {self.heads}")
        require(self.d_model >= 1, "model.d_model", f"must be at least 1, got {self.d_model}")
        divisors = [h for h in range(1, min(self.d_model, 16) + 1) if self.d_model % h == 0]
        require(
            self.d_model % self.heads == 0,
            "model.heads",
            f"{self.heads} heads do not divide model.d_model={self.d_model} evenly; "
            f"use one of {divisors} or change model.d_model",
        )
        require(self.block_size >= 1, "model.block_size", f"must be at least 1, got {self.block_size}")
        require(
            0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}"
        )
        require(
            self.mlp_ratio > 0 and self.mlp_hidden >= 1,
            "model.mlp_ratio",
            f"must give an MLP of at least one unit, got {self.mlp_ratio}",
        )
        require(
            self.attention in ATTENTION_PATHS,
            "model.attention",
            f"must be one of {', '.join(ATTENTION_PATHS)}, got {self.attention!r}",
        )
        for key, value, choices in [("position", self.position, POSITIONS), ("norm", self.norm, NORMS),
                                    ("mlp", self.mlp, MLPS)]:
            require(value in choices, f"model.{key}", f"must be one of {', '.join(choices)}, got {value!r}")
        kv_choices = [h for h in range(1, self.heads + 1) if self.heads % h == 0]
        require(self.kv_heads >= 1, "model.kv_heads",
                f"must be at least 1 (or null: model.heads), got {self.kv_heads}")
        require(
            self.heads % self.kv_heads == 0,
            "model.kv_heads",
            f"{self.kv_heads} does not divide model.heads={self.heads}; use one of {kv_choices} "
            f"(1: multi-query, {self.heads}: plain multi-head) or null",
        )
        require(
            self.position != "rope" or self.head_dim % 2 == 0,
            "model.position",
            f"rope needs an even head_dim (it turns pairs of coordinates), got model.d_model / "
            f"model.heads = {self.d_model} / {self.heads} = {self.head_dim}; change one of them",
        )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def mlp_hidden(self) -> int:
        """The MLP's hidden width: mlp_ratio · d_model for GELU. SwiGLU has three matrices where
        GELU has two, so it gets 2/3 of that width, rounded up to a multiple of 8: about the
        same parameters (nano: 344 units × 3 matrices against 512 × 2)."""
        hidden = round(self.mlp_ratio * self.d_model)
        if self.mlp == "swiglu":
            return SWIGLU_MULTIPLE * math.ceil(2 * hidden / 3 / SWIGLU_MULTIPLE)
        return hidden


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it is cut into batches."""

    # A Hub dataset id, a local directory laid out like one, a text file, a glob, or a list
    # of files; "builtin:pydocs" is Python's own documentation, available offline.
    source: str | tuple[str, ...] = "karpathy/tiny_shakespeare"
    revision: str | None = None  # Hub revision (branch, tag or ref); ignored for local sources
    text_column: str = "text"
    val_fraction: float = 0.1  # the last fraction of the concatenated text, as in nanoGPT
    batch_size: int = 12
    val_batch_size: int = 64
    num_workers: int = 0  # batches are cut from an in-memory tensor: workers only add overhead

    def __post_init__(self) -> None:
        require(bool(self.source), "data.source", "is empty; give a Hub id or a path")
        require(
            0.0 < self.val_fraction < 1.0,
            "data.val_fraction",
            f"must be in (0, 1), got {self.val_fraction}",
        )
        require(self.batch_size >= 1, "data.batch_size", f"must be at least 1, got {self.batch_size}")
        require(
            self.val_batch_size >= 1,
            "data.val_batch_size",
            f"must be at least 1, got {self.val_batch_size}",
        )
        require(
            self.num_workers >= 0, "data.num_workers", f"must be 0 or more, got {self.num_workers}"
        )


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to min_lr, as nanoGPT trains."""

    lr: float = 1e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.1  # applied to 2-D weights only (matmuls and embeddings)
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    warmup_steps: int = 100
    decay_steps: int | None = None  # where the cosine reaches min_lr; None: trainer.max_steps
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    fused: bool = True  # one fused kernel for the whole update: 3× faster than the per-tensor loop on CPU

    def __post_init__(self) -> None:
        require(self.lr > 0, "optim.lr", f"must be positive, got {self.lr}")
        require(
            0 <= self.min_lr <= self.lr,
            "optim.min_lr",
            f"must be in [0, optim.lr={self.lr}], got {self.min_lr}",
        )
        require(
            self.weight_decay >= 0,
            "optim.weight_decay",
            f"must be 0 or more, got {self.weight_decay}",
        )
        require(
            all(0 <= b < 1 for b in self.betas),
            "optim.betas",
            f"both must be in [0, 1), got {list(self.betas)}",
        )
        require(self.eps > 0, "optim.eps", f"must be positive, got {self.eps}")
        require(
            self.warmup_steps >= 0,
            "optim.warmup_steps",
            f"must be 0 or more, got {self.warmup_steps}",
        )
        require(
            self.decay_steps is None or self.decay_steps >= 1,
            "optim.decay_steps",
            f"must be at least 1 (or null for trainer.max_steps), got {self.decay_steps}",
        )
        require(self.grad_clip >= 0, "optim.grad_clip", f"must be 0 or more, got {self.grad_clip}")


@dataclass(frozen=True)
class CheckpointConfig:
    # Besides every validation and the end of training, also refresh last.ckpt every N steps.
    every_n_steps: int | None = None

    def __post_init__(self) -> None:
        require(
            self.every_n_steps is None or self.every_n_steps >= 1,
            "callbacks.checkpoint.every_n_steps",
            f"must be at least 1 (or null), got {self.every_n_steps}",
        )


@dataclass(frozen=True)
class ProgressBarConfig:
    refresh_rate: int = 10  # redraw every N steps; each redraw costs time on a small model

    def __post_init__(self) -> None:
        require(
            self.refresh_rate >= 0,
            "callbacks.progress_bar.refresh_rate",
            f"must be 0 (off) or more, got {self.refresh_rate}",
        )


def _check_every_n_steps(value: int | None, key: str) -> None:
    require(value is None or value >= 1, key,
            f"must be at least 1 (or null: after every validation), got {value}")


@dataclass(frozen=True)
class AttentionMapsConfig:
    """Attention maps and head scores on a fixed probe text, logged to TensorBoard."""

    enabled: bool = True
    every_n_steps: int | None = None  # null: at step 0 and after every validation
    probe: str | None = None  # null: the start of the validation text, up to model.block_size
    max_chars: int = 64  # pictures show the first max_chars positions, so labels stay legible

    def __post_init__(self) -> None:
        _check_every_n_steps(self.every_n_steps, "callbacks.attention.every_n_steps")
        require(
            self.probe is None or len(self.probe) >= 2,
            "callbacks.attention.probe",
            f"must be at least 2 characters (or null for the validation text), got {self.probe!r}",
        )
        require(
            self.max_chars >= 2,
            "callbacks.attention.max_chars",
            f"must be at least 2, got {self.max_chars}",
        )


@dataclass(frozen=True)
class SamplesConfig:
    """Text sampled from a fixed prompt and seed, logged to TensorBoard as ``samples``."""

    enabled: bool = True
    every_n_steps: int | None = None  # null: at step 0 and after every validation
    prompt: str | None = None  # null: a newline (the first validation character if none)
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 is greedy decoding
    top_k: int | None = None  # keep the k likeliest characters; null: all
    top_p: float | None = None  # keep the likeliest characters up to this mass; null: all
    seed: int = 1337  # the same seed at every step: samples differ only by what was learned

    def __post_init__(self) -> None:
        key = "callbacks.samples"
        _check_every_n_steps(self.every_n_steps, f"{key}.every_n_steps")
        require(self.prompt is None or len(self.prompt) >= 1, f"{key}.prompt",
                "is empty; give at least one character, or null for a newline")
        require(self.max_new_tokens >= 1, f"{key}.max_new_tokens",
                f"must be at least 1, got {self.max_new_tokens}")
        require(self.temperature >= 0, f"{key}.temperature",
                f"must be 0 (greedy) or more, got {self.temperature}")
        require(self.top_k is None or self.top_k >= 1, f"{key}.top_k",
                f"must be at least 1 (or null for all), got {self.top_k}")
        require(self.top_p is None or 0 < self.top_p <= 1, f"{key}.top_p",
                f"must be in (0, 1] (or null for all), got {self.top_p}")


@dataclass(frozen=True)
class CallbacksConfig:
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    progress_bar: ProgressBarConfig = field(default_factory=ProgressBarConfig)
    attention: AttentionMapsConfig = field(default_factory=AttentionMapsConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)


@dataclass(frozen=True)
class LoggerConfig:
    kind: str = "tensorboard"  # or "none"
    subdir: str = "tb"  # the TensorBoard run lives in <run dir>/<subdir>

    def __post_init__(self) -> None:
        require(
            self.kind in LOGGERS,
            "logger.kind",
            f"must be one of {', '.join(LOGGERS)}, got {self.kind!r}",
        )


@dataclass(frozen=True)
class PathsConfig:
    output_dir: str = "outputs/run"  # this run's directory (Hydra sets it)


@dataclass(frozen=True)
class AttentionScriptConfig:
    """Settings of ``scripts/attention.py`` (configs/attention.yaml)."""

    ckpt: str  # a .ckpt file, or a run directory (then its checkpoints/last.ckpt)
    prompt: str = "To be, or not to be"  # at least 2 and at most model.block_size characters
    out: str = "attention.png"
    layer: int | None = None  # null: every layer; -1: the last
    head: int | None = None  # null: every head
    max_chars: int = 64  # the picture shows the first max_chars positions of the prompt

    def __post_init__(self) -> None:
        require(bool(self.out), "out", "is empty; give a path for the PNG, e.g. out=attention.png")
        require(self.max_chars >= 2, "max_chars", f"must be at least 2, got {self.max_chars}")


# Trainer arguments that tinylm sets itself, with the key a user should change instead.
TRAINER_KEYS_OWNED = {
    "logger": "logger.kind",
    "callbacks": "callbacks.*",
    "default_root_dir": "hydra.run.dir",
    "gradient_clip_val": "optim.grad_clip",
    "gradient_clip_algorithm": "optim.grad_clip",
    "enable_checkpointing": "callbacks.checkpoint.*",
    "plugins": "the defaults (tinylm's plugin writes checkpoints atomically)",
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``scripts/train.py`` needs, checked."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    trainer: dict[str, Any] = field(default_factory=dict)  # lightning.Trainer arguments
    seed: int = 1337
    ckpt_path: str | None = None  # resume from this checkpoint

    def __post_init__(self) -> None:
        for key, instead in TRAINER_KEYS_OWNED.items():
            require(key not in self.trainer, f"trainer.{key}", f"is set by tinylm; use {instead}")
        max_steps = self.trainer.get("max_steps", -1)
        require(
            isinstance(max_steps, int) and not isinstance(max_steps, bool),
            "trainer.max_steps",
            f"must be an integer, got {max_steps!r}",
        )
        require(
            max_steps > 0 or self.optim.decay_steps is not None,
            "trainer.max_steps",
            "must be set (the learning-rate schedule decays over it), "
            "or set optim.decay_steps for open-ended training",
        )
        interval = self.trainer.get("val_check_interval")
        require(
            interval is None
            or (isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0),
            "trainer.val_check_interval",
            f"must be a positive number of steps, got {interval!r}",
        )

    @property
    def max_steps(self) -> int:
        return self.trainer.get("max_steps", -1)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build and validate from the resolved Hydra config (a plain nested dict)."""
        return parse_section(cls, values, "")


def as_plain(config: Any) -> dict[str, Any]:
    """A config dataclass as plain dicts and lists (for checkpoints and YAML)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def parse_section(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from ``values``; every key checked for existence and type."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a group of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {_join(prefix, close[0])}? " if close else ""
            raise ConfigError(
                f"{_join(prefix, key)}: unknown key; {hint}known keys are {', '.join(known)}"
            )
    kwargs = {key: _coerce(value, hints[key], _join(prefix, key)) for key, value in values.items()}
    return cls(**kwargs)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint``; return it in that type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        return parse_section(hint, value, key)
    if origin is tuple:
        length_ok = ... in args or len(args) == len(value or ())
        if not isinstance(value, list | tuple) or not length_ok:
            size = "a list" if ... in args else f"a list of {len(args)}"
            raise ConfigError(f"{key}: expected {size}, got {value!r}")
        item_hints = [args[0]] * len(value) if ... in args else args
        items = zip(value, item_hints, strict=True)
        return tuple(_coerce(v, h, f"{key}[{i}]") for i, (v, h) in enumerate(items))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a group of keys, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 1e3 on the command line is a float to YAML
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {_TYPE_WORDS.get(hint, hint)}, got {value!r}")


@dataclass(frozen=True)
class SampleConfig:
    """Settings of ``scripts/sample.py``."""

    ckpt: str = ""  # a .ckpt file, or a run directory (then its checkpoints/last.ckpt)
    prompt: str = "\n"
    max_new_tokens: int = 500
    temperature: float = 0.8  # 0: greedy; below 1 sharper, above 1 flatter than the model
    top_k: int | None = 200
    top_p: float | None = None
    num_samples: int = 1
    seed: int = 1337
    stream: bool = True  # print characters as they are generated
    use_cache: bool = True
    drop_unknown: bool = False  # drop prompt characters the model has never seen, instead of failing
    device: str = "auto"  # auto: cuda when available, else cpu

    def __post_init__(self) -> None:
        require(bool(self.ckpt), "ckpt", "is required: ckpt=path/to/last.ckpt or a run directory")
        require(bool(self.prompt), "prompt", "must hold at least one character")
        require(
            self.max_new_tokens >= 0, "max_new_tokens", f"must be 0 or more, got {self.max_new_tokens}"
        )
        require(
            self.temperature >= 0, "temperature", f"must be 0 (greedy) or more, got {self.temperature}"
        )
        require(
            self.top_k is None or self.top_k >= 1,
            "top_k",
            f"must be at least 1 (or null for no limit), got {self.top_k}",
        )
        require(
            self.top_p is None or 0 < self.top_p <= 1,
            "top_p",
            f"must be in (0, 1] (or null for no limit), got {self.top_p}",
        )
        require(self.num_samples >= 1, "num_samples", f"must be at least 1, got {self.num_samples}")
