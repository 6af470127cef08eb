"""Sampling text from a checkpoint: ``tinylm sample ckpt=PATH prompt="ROMEO:"``.

Needs nothing but the checkpoint: the vocabulary and the model's shape are inside it.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from tinylm.checkpoint import load_checkpoint
from tinylm.command_configs import SampleConfig
from tinylm.errors import ConfigError
from tinylm.generation.decode import DecodeCompileError
from tinylm.rundir import checkpoint_path
from tinylm.tokenizer import describe_char

SEPARATOR = "\n" + "-" * 40 + "\n"


def sample(config: SampleConfig, write: Callable[[str], Any] = sys.stdout.write) -> list[str]:
    """Generate ``config.num_samples`` texts, each the prompt and its continuation, together in
    one batch.

    With ``config.stream`` each character of the first text is written as soon as it is sampled.
    """
    path = checkpoint_path(config.ckpt)
    device = "cuda" if config.device == "auto" and torch.cuda.is_available() else config.device
    if device == "auto":
        device = "cpu"
    model, tokenizer = load_checkpoint(path, map_location=device, attention_file=config.attention_file,
                                       attention_file_changed=config.attention_file_changed)

    prompt = config.prompt
    if not config.drop_unknown:
        tokenizer.check_known(prompt, "prompt", fix="remove them, or pass drop_unknown=true to drop them")
    unknown = tokenizer.unknown_characters(prompt)
    if unknown:
        prompt = "".join(c for c in prompt if c not in unknown)
        print(f"dropped from the prompt: {', '.join(describe_char(c) for c in unknown)}", file=sys.stderr)
        if not prompt:
            raise ConfigError("prompt: no character is left after dropping the unknown ones")

    generator = torch.Generator(device=device).manual_seed(config.seed)
    # All samples in one batch: a step costs about the same for 1 row or 8 on a CPU.
    context = torch.tensor([tokenizer.encode(prompt)] * config.num_samples, device=device)
    rows: list[list[int]] = [[] for _ in range(config.num_samples)]
    decode = tokenizer.stream_decoder()  # bytes: a character comes out once it is whole
    if config.stream:  # the first sample streams; the others follow when it is done
        write(prompt)
    tokens = generation(model, context, config, generator, compiles(config, device, model))
    for token in tokens:  # (num_samples, 1)
        for row, t in zip(rows, token[:, 0].tolist(), strict=True):
            row.append(t)
        if config.stream:
            write(decode(rows[0][-1:]))
            sys.stdout.flush()
    texts = [prompt + tokenizer.decode(row) for row in rows]
    for i, text in enumerate(texts):
        if i:
            write(SEPARATOR)
        if i or not config.stream:
            write(text)
    write("\n")
    return texts


def generation(model: Any, context: Any, config: SampleConfig, generator: Any,
               compile: bool) -> Iterator[Any]:
    """``model.stream`` of ``context`` with ``config``'s settings, compiled if ``compile``. A
    compile that fails is an error for compile=true; for auto a note, and the text is sampled
    uncompiled (the same text: nothing was drawn from ``generator`` yet)."""
    def stream(compile: bool) -> Iterator[Any]:
        return model.stream(context, config.max_new_tokens, config.temperature, config.top_k,
                            config.top_p, config.use_cache, generator, compile=compile)

    tokens = stream(compile)
    try:
        first = list(itertools.islice(tokens, 1))  # the step is compiled before the first token
    except DecodeCompileError as error:
        if config.compile == "true":
            raise ConfigError(f"compile: {error}; pass compile=false") from error
        print(f"{error}; sampling uncompiled", file=sys.stderr)
        tokens = stream(False)
        first = list(itertools.islice(tokens, 1))
    return itertools.chain(first, tokens)


# Compiling the one-token step takes a while, once per process; each step then saves a
# little on a CPU. compile=auto compiles from this many new tokens on,
# where the saving has paid for the compile (docs/performance.md#compiling-the-decode-step).
COMPILE_PAYS_BACK_AFTER = 50_000


def compiles(config: SampleConfig, device: str, model: Any = None) -> bool:
    """Whether ``config.compile`` (auto, true or false) compiles the one-token step here.
    compile=true without what the compile needs on ``device`` is an error; auto then does not
    compile. A ``model`` whose attention keeps no KV cache (a learner's class) has no one-token
    step to compile: compile=true says so in one line and samples uncompiled."""
    if config.compile == "false" or not config.use_cache:
        return False
    uncached = [b.attn for b in getattr(model, "blocks", ()) if not getattr(b.attn, "supports_cache", True)]
    if uncached:
        if config.compile == "true":
            attention = getattr(uncached[0], "inner", uncached[0])  # a learner's class inside its adapter
            print(f"compile: not compiling: this model's attention ({type(attention).__name__}) keeps no "
                  "KV cache, so each token recomputes its window uncompiled", file=sys.stderr)
        return False
    if config.compile == "auto" and config.max_new_tokens < COMPILE_PAYS_BACK_AFTER:
        return False
    missing = compile_needs(device)
    if missing is None:
        return True
    if config.compile == "true":
        raise ConfigError(f"compile: compiling the decode step needs {missing}; install it, or pass "
                          "compile=false")
    print(f"not compiling the decode step: it needs {missing}", file=sys.stderr)
    return False


def compile_needs(device: str) -> str | None:
    """What compiling the decode step (AOTInductor, tinylm.generation.decode) needs on ``device`` and this
    machine lacks, or None: triton on a GPU, a C++ compiler to build its library on either."""
    if device.startswith("cuda") and not importlib.util.find_spec("triton"):
        return "the triton package (pip install triton)"
    compiler = os.environ.get("CXX", "g++")
    if not shutil.which(compiler):
        return f"a C++ compiler ({compiler}; set CXX to use another)"
    return None


def run(config: SampleConfig) -> None:
    """``tinylm sample``."""
    sample(config)
