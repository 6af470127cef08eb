"""The settings of a training run, typed and checked: one frozen dataclass per section.

Each field's type and default are said here once; each ``__post_init__`` checks its values, so
a bad value stops the run with one line that names the key and the fix, before torch is
imported, data is loaded or a model is built. The other commands' settings are in
``tinylm.command_configs``; how Hydra composes against these classes is ``tinylm.schema``.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tinylm.errors import ConfigError, require
from tinylm.schema import build, check_trainer_settings

ATTENTION_PATHS = ("sdpa", "explicit")
POSITIONS = ("learned", "rope", "none")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu", "relu2", "none")
OPTIMIZERS = ("adamw", "muon")
MUON_DTYPES = ("auto", "float32", "bfloat16")
SWIGLU_MULTIPLE = 8  # SwiGLU's hidden width is rounded up to a multiple of this
LOGGERS = ("tensorboard", "none")
DEFAULT_VAL_FRACTION = 0.1
TOKENIZERS = ("char", "byte")  # tinylm.tokenizer: CharTokenizer, ByteTokenizer
NOTEBOOK_CLASS = "notebook"  # model.attention=notebook@<hash>:Class: a class of a notebook cell


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
    # "sdpa": fused kernel (fast); "explicit": softmax(QKᵀ/√d)V by hand; "path/to/file.py:ClassName":
    # your own attention class inside tinylm's blocks (checked first: tinylm check-attention)
    attention: str = "sdpa"
    # the other arguments of that class's constructor (model.attention_kwargs.context_length=64),
    # free-form, no + needed; recorded in checkpoints and used again on load
    attention_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"open": True})
    # Architecture variants; the defaults are nanoGPT's (GPT-2's) choices.
    position: str = "learned"  # "learned" embeddings, "rope" (rotary), "none" (causal mask only)
    norm: str = "layernorm"  # or "rmsnorm": no centring, no bias
    # "swiglu": a gated MLP with 2/3 the hidden width (see mlp_hidden); "relu2": ReLU(x)²;
    # "none": no MLP, an attention-only model (experiment=induction)
    mlp: str = "gelu"
    kv_heads: int | None = None  # heads of keys and values; null: heads (plain multi-head attention)
    qk_norm: bool = False  # normalise each head's queries and keys before their dot product
    zero_init: bool = False  # the projections into the residual stream start at 0: blocks start as identities
    tie_embeddings: bool = True  # the output head is the token embedding (nanoGPT); false: a head of its own
    logit_softcap: float | None = None  # logits = cap · tanh(logits / cap), within (-cap, cap); null: off

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
            self.attention in ATTENTION_PATHS or self.learner_attention is not None,
            "model.attention",
            f"must be one of {', '.join(ATTENTION_PATHS)} or path/to/file.py:ClassName, "
            f"got {self.attention!r}",
        )
        require(not self.attention_kwargs or self.learner_attention is not None, "model.attention_kwargs",
                f"are for a class of your own (model.attention=path/to/file.py:ClassName), not "
                f"model.attention={self.attention}; remove them")
        if self.learner_attention is not None:
            fixed = [("position", self.position, "learned"), ("qk_norm", self.qk_norm, False),
                     ("kv_heads", self.kv_heads, self.heads)]
            for key, value, default in fixed:
                require(value == default, f"model.{key}",
                        f"{key}={value!r} acts inside tinylm's own attention; with model.attention="
                        f"{self.attention} keep model.{key}={default!r}")
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
        require(self.logit_softcap is None or self.logit_softcap > 0, "model.logit_softcap",
                f"must be positive (or null: off), got {self.logit_softcap}")
        require(
            self.position != "rope" or self.head_dim % 2 == 0,
            "model.position",
            f"rope needs an even head_dim (it turns pairs of coordinates), got model.d_model / "
            f"model.heads = {self.d_model} / {self.heads} = {self.head_dim}; change one of them",
        )

    @property
    def learner_attention(self) -> tuple[str, str] | None:
        """(file, class) when model.attention names a learner's class, else None. A class of a
        notebook cell has no file: "notebook@<hash of its source>" (tinylm.learner.registry)."""
        file, sep, name = self.attention.rpartition(":")
        from_file = file.endswith(".py") or file.startswith(f"{NOTEBOOK_CLASS}@")
        return (file, name) if sep and from_file and name.isidentifier() else None

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

    # "builtin:tiny_shakespeare" ships inside tinylm; "builtin:pydocs" is Python's own
    # documentation. Both need no network.
    # A Hub dataset id, a local directory laid out like one, a text file, a glob, or a list
    # of files (typed Any: the schema cannot say "a string or a list of strings").
    source: Any = "builtin:tiny_shakespeare"  # null: none given (configs/data/text_file.yaml)
    revision: str | None = None  # Hub revision (branch, tag or ref); ignored for local sources
    text_column: str = "text"
    encoding: str = "utf-8"  # of text, CSV and JSON files: e.g. latin-1, cp1252, shift_jis, gb18030
    # "char": one token per character, the vocabulary the characters of the text (nanoGPT's);
    # "byte": one token per UTF-8 byte, 256 of them, for any text (enwik8's results are per byte)
    tokenizer: str = "char"
    # The characters of a "char" vocabulary, given up front as one string (no vocabulary pass);
    # needed with streaming, where the text is not known in advance. null: from the text.
    vocab: str | None = None
    # Train from the source without downloading it whole (a Hub dataset or a Hub-layout
    # directory): its "train" split streamed, its validation split held in memory.
    streaming: bool = False
    # With streaming: rows held in memory by datasets' shuffle buffer, drawn from at random
    # (seeded by `seed`); its memory is this many rows of text. 0: the source's own order.
    shuffle_buffer: int = 10_000
    # The last fraction of the concatenated text, as in nanoGPT; null: 0.1. Not with streaming,
    # whose validation split is the source's own.
    val_fraction: float | None = None
    # A test split after the validation split (enwik8's 90/5/5): evaluated once, on the best
    # checkpoint, when training ends (test/loss, test/bpc). 0: none.
    test_fraction: float = 0.0
    batch_size: int = 12
    val_batch_size: int = 64
    # This fraction of each training batch's windows (rounded) are not text but a random string
    # of repeat_length tokens repeated to fill the window: text that only induction predicts
    # (experiment=induction). Validation stays the text alone. 0: text only.
    repeat_fraction: float = 0.0
    repeat_length: int = 32
    num_workers: int = 0  # batches are cut from a memory-mapped file: workers only add overhead

    def __post_init__(self) -> None:
        source = self.source
        require(source is not None, "data.source",
                "is required; set it on the command line: data.source=path/to/file.txt")
        if isinstance(source, list | tuple):
            require(all(isinstance(s, str) and s for s in source), "data.source",
                    f"a list of sources must hold paths or globs, got {list(source)!r}")
            object.__setattr__(self, "source", tuple(source))
        else:
            require(isinstance(source, str), "data.source",
                    f"expected a Hub id, a path, or a list of paths, got {source!r}")
        require(bool(self.source), "data.source", "is empty; give a Hub id or a path")
        require(self.tokenizer in TOKENIZERS, "data.tokenizer",
                f"must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}")
        require(self.vocab is None or (isinstance(self.vocab, str) and self.vocab != ""), "data.vocab",
                f"must be a non-empty string of characters or null, got {self.vocab!r}")
        require(not self.streaming or self.tokenizer == "byte" or self.vocab is not None, "data.streaming",
                "needs the vocabulary up front: set data.tokenizer=byte, or data.vocab to its characters")
        require(not self.streaming or self.num_workers == 0, "data.num_workers",
                f"must be 0 with data.streaming=true (the stream's position is kept in this process), "
                f"got {self.num_workers}")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigError(f"data.encoding: {self.encoding!r} is not an encoding Python knows; "
                              f"use e.g. utf-8, latin-1, cp1252, shift_jis or gb18030") from None
        require(self.shuffle_buffer >= 0, "data.shuffle_buffer",
                f"must be 0 (no shuffling) or more rows, got {self.shuffle_buffer}")
        require(not self.streaming or self.val_fraction is None, "data.val_fraction",
                "is not used with data.streaming=true (the validation split is the source's own); "
                "leave it out, or set data.streaming=false")
        if self.val_fraction is None:
            object.__setattr__(self, "val_fraction", 0.0 if self.streaming else DEFAULT_VAL_FRACTION)
        require(
            self.streaming or 0.0 < self.val_fraction < 1.0,
            "data.val_fraction",
            f"must be in (0, 1), got {self.val_fraction}",
        )
        require(
            0.0 <= self.test_fraction < 1.0 - self.val_fraction,
            "data.test_fraction",
            f"must be in [0, 1 - data.val_fraction), got {self.test_fraction}",
        )
        require(not self.streaming or self.test_fraction == 0, "data.test_fraction",
                "must be 0 with data.streaming=true (its validation split is the source's)")
        require(self.batch_size >= 1, "data.batch_size", f"must be at least 1, got {self.batch_size}")
        require(0.0 <= self.repeat_fraction <= 1.0, "data.repeat_fraction",
                f"must be in [0, 1], got {self.repeat_fraction}")
        require(self.repeat_length >= 1, "data.repeat_length",
                f"must be at least 1, got {self.repeat_length}")
        require(not self.streaming or self.repeat_fraction == 0, "data.repeat_fraction",
                "must be 0 with data.streaming=true (repeats are mixed into random windows only)")
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
    """AdamW with linear warm-up then cosine decay to min_lr, as nanoGPT trains; or Muon for the
    blocks' matrices with AdamW for the rest (embeddings, head, gains, biases)."""

    name: str = "adamw"  # "muon": Muon (tinylm.muon) for the blocks' 2-D weights, AdamW for the rest
    lr: float = 1e-3  # AdamW's peak rate (with optim.name=muon: that of the embeddings, head, gains, biases)
    min_lr: float = 1e-4
    weight_decay: float = 0.1  # applied to 2-D weights only (matmuls and embeddings)
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    warmup_steps: int = 100
    decay_steps: int | None = None  # where the cosine reaches min_lr; None: trainer.max_steps
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    fused: bool = True  # one kernel for the whole update: faster on CPU than a loop (docs/performance.md)
    muon_lr: float = 0.02  # optim.name=muon: Muon's peak rate (torch's "original" per-shape adjustment)
    muon_momentum: float = 0.95  # optim.name=muon: Muon's (Nesterov) momentum
    # optim.name=muon: the dtype of its Newton–Schulz iterations; "auto": bfloat16 where this
    # machine runs bfloat16 matmuls faster than float32 (measured once: tinylm.machine), else float32
    muon_dtype: str = "auto"

    def __post_init__(self) -> None:
        require(self.name in OPTIMIZERS, "optim.name",
                f"must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        require(self.lr > 0, "optim.lr", f"must be positive, got {self.lr}")
        require(self.muon_lr > 0, "optim.muon_lr", f"must be positive, got {self.muon_lr}")
        require(0 <= self.muon_momentum < 1, "optim.muon_momentum",
                f"must be in [0, 1), got {self.muon_momentum}")
        require(self.muon_dtype in MUON_DTYPES, "optim.muon_dtype",
                f"must be one of {', '.join(MUON_DTYPES)}, got {self.muon_dtype!r}")
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
        require(len(self.betas) == 2, "optim.betas", f"expected a list of 2 numbers, got {list(self.betas)}")
        object.__setattr__(self, "betas", tuple(self.betas))
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


ABLATIONS = ("zero", "mean")


def check_ablation(value: str | None, key: str) -> None:
    require(value is None or value in ABLATIONS, key,
            f"must be one of {', '.join(ABLATIONS)} (or null: off), got {value!r}")


@dataclass(frozen=True)
class AttentionMapsConfig:
    """Attention maps and head scores on a fixed probe text, logged to TensorBoard."""

    enabled: bool = True
    every_n_steps: int | None = None  # null: at step 0 and after every validation
    probe: str | None = None  # null: the start of the validation text, up to model.block_size
    max_chars: int = 64  # the explorer shows the first max_chars positions; TensorBoard at most 16
    # Head importance: the rise of the loss on ablation_windows validation windows (block_size
    # + 1 characters each, the same every time) when each head's output is removed; one
    # forward pass of those windows per head. "zero", "mean" (its mean output instead), or null: off.
    ablation: str | None = "zero"
    ablation_windows: int = 8  # also the windows of icl/score
    # The random sequences repeated twice that prefix_matching, duplicate_token and
    # icl/induction_loss are measured on: this many distinct tokens each (at most the vocabulary
    # and block_size / 2). null: as many as those allow.
    repeat_length: int | None = None

    def __post_init__(self) -> None:
        _check_every_n_steps(self.every_n_steps, "callbacks.attention.every_n_steps")
        check_ablation(self.ablation, "callbacks.attention.ablation")
        require(self.ablation_windows >= 1, "callbacks.attention.ablation_windows",
                f"must be at least 1, got {self.ablation_windows}")
        require(self.repeat_length is None or self.repeat_length >= 2, "callbacks.attention.repeat_length",
                f"must be at least 2 (or null: as long as the vocabulary and context allow), "
                f"got {self.repeat_length}")
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
class SamplingConfig:
    """How a prompt is continued: the rules shared by ``tinylm sample``, the samples logged
    during training and ``TransformerLM.generate``."""

    KEY: ClassVar[str] = ""  # where these settings sit in their config, for error messages
    MIN_NEW_TOKENS: ClassVar[int] = 0

    max_new_tokens: int = 500
    temperature: float = 0.8  # 0: greedy; below 1 sharper, above 1 flatter than the model
    top_k: int | None = 200  # keep the k likeliest characters; null: all
    top_p: float | None = None  # keep the likeliest characters up to this mass; null: all
    seed: int = 1337  # the same seed gives the same text

    def __post_init__(self) -> None:
        key = self.KEY
        least = "at least 1" if self.MIN_NEW_TOKENS else "0 or more"
        require(self.max_new_tokens >= self.MIN_NEW_TOKENS, f"{key}max_new_tokens",
                f"must be {least}, got {self.max_new_tokens}")
        require(self.temperature >= 0, f"{key}temperature",
                f"must be 0 (greedy) or more, got {self.temperature}")
        require(self.top_k is None or self.top_k >= 1, f"{key}top_k",
                f"must be at least 1 (or null for no limit), got {self.top_k}")
        require(self.top_p is None or 0 < self.top_p <= 1, f"{key}top_p",
                f"must be in (0, 1] (or null for no limit), got {self.top_p}")


@dataclass(frozen=True)
class SamplesConfig(SamplingConfig):
    """Text sampled from a fixed prompt and seed, logged to TensorBoard as ``samples``; the
    seed never changes, so samples of different steps differ only by what was learned."""

    KEY: ClassVar[str] = "callbacks.samples."
    MIN_NEW_TOKENS: ClassVar[int] = 1

    max_new_tokens: int = 200
    top_k: int | None = None
    enabled: bool = True
    every_n_steps: int | None = None  # null: at step 0 and after every validation
    prompt: str | None = None  # null: a newline (the first validation character if none)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_every_n_steps(self.every_n_steps, f"{self.KEY}every_n_steps")
        require(self.prompt is None or len(self.prompt) >= 1, f"{self.KEY}prompt",
                "is empty; give at least one character, or null for a newline")


@dataclass(frozen=True)
class CallbacksConfig:
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    progress_bar: ProgressBarConfig = field(default_factory=ProgressBarConfig)
    attention: AttentionMapsConfig = field(default_factory=AttentionMapsConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)


@dataclass(frozen=True)
class PathsConfig:
    output_dir: str = "outputs/run"  # this run's directory: Hydra's run dir (configs/paths/default.yaml)


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``scripts/train.py`` needs, checked."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    logger: str = "tensorboard"  # one TensorBoard run per job, in <run dir>/<its name>; "none": no logger
    paths: PathsConfig = field(default_factory=PathsConfig)
    trainer: dict[str, Any] = field(default_factory=dict)  # lightning.Trainer arguments
    seed: int = 1337
    ckpt_path: str | None = None  # resume from this checkpoint
    # Seconds a process of a data-parallel run waits for the others before it gives up (the
    # process group's timeout): the bound on how long a job outlives a process that hangs.
    ddp_timeout: int = 300

    def __post_init__(self) -> None:
        require(self.ddp_timeout >= 1, "ddp_timeout", f"must be at least 1 second, got {self.ddp_timeout}")
        require(self.logger in LOGGERS, "logger", f"must be one of {', '.join(LOGGERS)}, got {self.logger!r}")
        check_trainer_settings(self.trainer, open_ended=self.optim.decay_steps is not None)

    @property
    def max_steps(self) -> int:
        return self.trainer.get("max_steps", -1)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build and check from plain values, e.g. a composed config as a nested dict."""
        return build(cls, values)
