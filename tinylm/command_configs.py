"""The settings of every command but ``train`` (whose are ``tinylm.config``), typed and checked:
``sample``, ``attention``, ``patch``, ``compare``, ``check-attention``, and the lab tools ``bench``
and ``soak``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from tinylm.config import SamplingConfig, TrainConfig, check_ablation
from tinylm.errors import require


@dataclass(frozen=True)
class AttentionScriptConfig:
    """Settings of ``tinylm attention`` (configs/attention.yaml)."""

    ckpt: str = MISSING  # a .ckpt file, or a run directory (then its checkpoints/last.ckpt)
    # at least 2 and at most model.block_size characters; null: "To be, or not to be" (a run
    # directory's .html page: the probe the run recorded)
    prompt: str | None = None
    out: str = "attention.png"  # a PNG; or .html: the interactive explorer (a run directory: over training)
    layer: int | None = None  # null: every layer; -1: the last
    head: int | None = None  # null: every head
    max_chars: int = 64  # the picture shows the first max_chars positions of the prompt
    ablation: str | None = "zero"  # each head's loss rise on the prompt without it; "mean"; null: off
    attention_file: str | None = None  # the file of the learner's attention class a checkpoint names
    attention_file_changed: bool = False  # true: load an attention_file whose sha256 is not the checkpoint's
    # Who wrote a prediction: each component's direct part of the logit of the next character, as
    # a table (the explorer always has it: click a character).
    attribute: bool = False
    position: int | None = None  # the prediction made at this position; null: of the prompt's last character

    def __post_init__(self) -> None:
        require(bool(self.out), "out", "is empty; give a path for the PNG (or .html), e.g. out=attention.png")
        check_ablation(self.ablation, "ablation")
        require(self.max_chars >= 2, "max_chars", f"must be at least 2, got {self.max_chars}")


@dataclass(frozen=True)
class PatchConfig:
    """Settings of ``tinylm patch`` (configs/patch.yaml): activation patching per head."""

    ckpt: str = MISSING  # a .ckpt file, or a run directory (then its checkpoints/last.ckpt)
    clean: str = MISSING  # a prompt whose next character the model gets right
    corrupt: str = MISSING  # the same length, changed where it matters: the model predicts otherwise
    out: str = "patch.png"  # the layer × head heatmap of the recovery
    attention_file: str | None = None  # the file of the learner's attention class a checkpoint names

    def __post_init__(self) -> None:
        for key, text in (("clean", self.clean), ("corrupt", self.corrupt)):
            require(len(text) >= 2, key, f"needs at least 2 characters, got {text!r}")
        require(len(self.clean) == len(self.corrupt), "corrupt",
                f"must be as long as clean: {len(self.corrupt)} characters against {len(self.clean)}; "
                f"change the characters that matter, keep the length")
        require(bool(self.out), "out", "is empty; give a path for the PNG, e.g. out=patch.png")


@dataclass(frozen=True)
class SampleConfig(SamplingConfig):
    """Settings of ``tinylm sample`` (configs/sample.yaml)."""

    ckpt: str = MISSING  # a .ckpt file, or a run directory (then its checkpoints/last.ckpt)
    prompt: str = "\n"
    num_samples: int = 1
    stream: bool = True  # print characters as they are generated
    use_cache: bool = True  # the KV cache: the same text, faster
    drop_unknown: bool = False  # drop prompt characters the model has never seen, instead of failing
    device: str = "auto"  # auto: cuda when available, else cpu
    attention_file: str | None = None  # the file of the learner's attention class a checkpoint names
    attention_file_changed: bool = False  # true: load an attention_file whose sha256 is not the checkpoint's
    # compile the one-token step (tinylm.generation.decode): true, false, or auto: when the
    # generation is long enough to pay the compile back (docs/sampling.md#compiling-the-decode-step)
    compile: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.ckpt), "ckpt", "is required: ckpt=path/to/last.ckpt or a run directory")
        require(str(self.compile).lower() in ("auto", "true", "false"), "compile",
                f"must be auto, true or false, got {self.compile!r}")
        object.__setattr__(self, "compile", str(self.compile).lower())  # a YAML true is a bool
        require(bool(self.prompt), "prompt", "must hold at least one character")
        require(self.num_samples >= 1, "num_samples", f"must be at least 1, got {self.num_samples}")


@dataclass(frozen=True)
class ExportConfig:
    """Settings of ``tinylm export`` (configs/export.yaml): a checkpoint in the Hugging Face format."""

    ckpt: str = MISSING  # a .ckpt file, or a run directory (then its checkpoints/last.ckpt)
    out: str = MISSING  # the directory to write: config.json, model.safetensors, the tokenizer
    overwrite: bool = False  # replace what an earlier export wrote in out

    def __post_init__(self) -> None:
        require(bool(self.ckpt), "ckpt", "is required: ckpt=path/to/last.ckpt or a run directory")
        require(bool(self.out), "out", "is required: the directory to write, e.g. out=my-model")


@dataclass(frozen=True)
class BenchConfig:
    """``bench.*``: what ``tinylm bench`` measures (tinylm.tools.bench)."""

    # train: tinylm vs a bare loop; sample: generation with/without cache (and nanoGPT's);
    # data: preparing data.source cold and cached, and the memory of a bench.steps-step run on
    # it; norms: LayerNorm vs RMSNorm; speedrun: experiment=speedrun vs nanoGPT's CPU run;
    # step: a training step's forward + backward against its optimiser update; gpu (a CUDA GPU):
    # experiment=shakespeare_char beside nanoGPT's train.py, ddp over NCCL, the compiled decode step
    task: str = "train"
    steps: int = 200  # timed training steps (data: the steps of the training run)
    warmup: int = 20  # untimed steps before them (allocator, caches, lazy init)
    bare: bool = True  # also time the same model and data in a bare PyTorch loop
    data_prep: bool = True  # also time data preparation, cold and cached (two subprocesses)
    new_tokens: int = 500  # sample: tokens generated per timing
    repeats: int = 3  # sample, speedrun: timings per setting; the median is reported
    vocab_size: int = 65  # sample: the model is untrained; speed does not depend on weights
    num_samples: int = 1  # sample: rows generated together, in one batch
    top_k: int | None = 200  # sample: as tinylm sample's default; null: no limit
    compile: bool = False  # sample: also the compiled decode step (its compile time, then its speed)

    def __post_init__(self) -> None:
        require(self.task in BENCH_TASKS, "bench.task",
                f"must be one of {', '.join(BENCH_TASKS)}, got {self.task!r}")
        require(self.top_k is None or self.top_k >= 1, "bench.top_k",
                f"must be at least 1 (or null for no limit), got {self.top_k}")
        for key in ("steps", "new_tokens", "repeats", "vocab_size", "num_samples"):
            require(getattr(self, key) >= 1, f"bench.{key}", f"must be at least 1, got {getattr(self, key)}")
        require(self.warmup >= 0, "bench.warmup", f"must be 0 or more, got {self.warmup}")


BENCH_TASKS = ("train", "sample", "data", "norms", "speedrun", "step", "gpu")


@dataclass(frozen=True)
class BenchRunConfig(TrainConfig):
    """Settings of ``tinylm bench``: every training key, plus ``bench.*``."""

    bench: BenchConfig = field(default_factory=BenchConfig)


@dataclass(frozen=True)
class SoakConfig:
    """``soak.*``: the memory windows of ``tinylm soak`` (tinylm.tools.soak)."""

    warmup: int = 100  # steps before the first window
    window: int = 300  # steps per window: each holds at least one validation and checkpoint
    tolerance_mb: float = 20.0  # growth of the peak beyond this fails the soak

    def __post_init__(self) -> None:
        require(self.warmup >= 0, "soak.warmup", f"must be 0 or more, got {self.warmup}")
        require(self.window >= 1, "soak.window", f"must be at least 1, got {self.window}")
        require(self.tolerance_mb >= 0, "soak.tolerance_mb", f"must be 0 or more, got {self.tolerance_mb}")


@dataclass(frozen=True)
class SoakRunConfig(TrainConfig):
    """Settings of ``tinylm soak``: every training key, plus ``soak.*``."""

    soak: SoakConfig = field(default_factory=SoakConfig)


@dataclass(frozen=True)
class CompareConfig:
    """Settings of ``tinylm compare`` (configs/compare.yaml); the directories may also be given
    as plain arguments: ``tinylm compare multirun/<date>/<time> sort=val_bpc``."""

    # Run dirs, sweep dirs (multirun/<date>/<time>) or outputs/: one path or a list of them
    # (typed Any, as data.source: the schema cannot say "a string or a list of strings").
    dirs: Any = MISSING
    sort: str = "run"  # a column: run, a metric (val_bpc, ...) or a hyperparameter (model.heads)
    csv: bool = False  # CSV with plain numbers instead of a markdown table
    plot: str | None = None  # also draw every run's loss curves into this PNG

    def __post_init__(self) -> None:
        dirs = [self.dirs] if isinstance(self.dirs, str) else self.dirs
        require(isinstance(dirs, list | tuple) and bool(dirs) and all(isinstance(d, str) and d for d in dirs),
                "dirs", f"give a run or sweep directory, or a list of them: dirs=[a,b]; got {self.dirs!r}")
        object.__setattr__(self, "dirs", tuple(dirs))
        require(bool(self.sort), "sort", "is empty; give a column such as sort=val_bpc")
        require(self.plot is None or bool(self.plot), "plot",
                "is empty; give a PNG path, e.g. plot=curves.png")


@dataclass(frozen=True)
class LayerNames:
    """``map.*``: which of a learner's Linear layers are its Q, K, V and O projections, when their
    names are unusual (``map.q=W_Q map.k=W_K map.v=W_V map.o=W_O``, or ``map.qkv=c_attn``); a
    ``+`` joins several in order (one Linear per head: ``map.q=heads.0.query+heads.1.query``)."""

    q: str | None = None
    k: str | None = None
    v: str | None = None
    o: str | None = None
    qkv: str | None = None  # Q, K and V fused, of width 3·d_model


@dataclass(frozen=True)
class CheckAttentionConfig:
    """Settings of ``tinylm check-attention`` (configs/check_attention.yaml)."""

    attention: str = MISSING  # path/to/file.py:ClassName; also accepted as the first argument, without key
    d_model: int = 48  # the width it is built with, unless kwargs names its width argument
    heads: int = 4  # the heads it is built with, unless kwargs names its head argument
    block_size: int = 64  # every check also runs at this context, as training calls it (model.block_size)
    # its constructor's arguments as given (kwargs.dropout_p=0.0): free-form, no + needed
    kwargs: dict[str, Any] = field(default_factory=dict, metadata={"open": True})
    map: LayerNames = field(default_factory=LayerNames)

    def __post_init__(self) -> None:
        require(bool(self.attention), "attention",
                "is required: tinylm check-attention path/to/file.py:ClassName")
        require(self.d_model >= 1, "d_model", f"must be at least 1, got {self.d_model}")
        require(self.block_size >= 2, "block_size", f"must be at least 2, got {self.block_size}")
        require(self.heads >= 1 and self.d_model % self.heads == 0, "heads",
                f"{self.heads} heads do not divide d_model={self.d_model}; choose a divisor of d_model")
