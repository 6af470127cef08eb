"""Reading tinylm checkpoints: everything needed to rebuild the model is inside the .ckpt.

Every load uses ``torch.load(weights_only=True)``: a checkpoint can hold tensors and plain
Python values only, so a file carrying a pickled payload is refused and none of it runs.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from tinylm.config import NOTEBOOK_CLASS, ModelConfig
from tinylm.errors import TinyLMError
from tinylm.generation.stream import GenerativeLM
from tinylm.hf import is_export, read_export
from tinylm.learner.registry import registered
from tinylm.schema import build
from tinylm.tokenizer import Tokenizer, tokenizer_from
from tinylm.weights import is_weights, preferred, read_weights

FORMAT_VERSION = 1


class CheckpointError(TinyLMError):
    """A checkpoint is missing, unreadable or not a tinylm checkpoint."""


def read_checkpoint(path: str | Path, key: str = "ckpt", mmap: bool = False) -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict, checked to be a tinylm checkpoint.

    ``key`` is the config key that named the file, so errors say which setting to fix. With
    ``mmap`` the tensors are mapped, not read: a look at the settings costs no weights' worth
    of reading (a resume checks the checkpoint, then Lightning loads it).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{key}: no checkpoint file at {path.resolve()}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its index is at the end
        raise _corrupt(key, path, "not a complete zip archive, as torch.save writes")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        raise CheckpointError(
            f"{key}: {path} holds Python objects{f' ({found[1]})' if found else ''} besides "
            f"tensors and plain values, so it was not loaded and nothing in it ran "
            f"(weights_only=True); use a checkpoint that tinylm wrote"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise _corrupt(key, path, str(error).splitlines()[0]) from None
    if not isinstance(checkpoint, dict) or "tinylm" not in checkpoint:
        raise CheckpointError(f"{key}: {path} is not a tinylm checkpoint (it has no 'tinylm' entry)")
    return checkpoint


def _corrupt(key: str, path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"{key}: {path} is truncated or corrupt ({reason}); use another "
                           f"checkpoint, e.g. checkpoints/best.ckpt of the same run")


def model_config_of(checkpoint: dict[str, Any]) -> ModelConfig:
    return build(ModelConfig, checkpoint["hyper_parameters"]["model"], "model")


def tokenizer_of(checkpoint: dict[str, Any]) -> Tokenizer:
    """The tokenizer a checkpoint was trained with (files from before byte tokens: "char")."""
    hyper = checkpoint["hyper_parameters"]
    return tokenizer_from(hyper.get("tokenizer", "char"), hyper["vocab"])


def with_attention_file(config: ModelConfig, attention_file: str | None, key: str = "attention_file"
                        ) -> ModelConfig:
    """``config`` with its learner's attention class taken from ``attention_file``, the file the
    user names: a checkpoint records the file and class it was trained with, and never imports
    code by itself. A class defined in a notebook is recorded by its name and a hash of its
    source; ``attention_file`` is then that class as registered (``tinylm.learner.registry``)."""
    if config.learner_attention is None:
        return config
    file, name = config.learner_attention
    if file.startswith(f"{NOTEBOOK_CLASS}@"):
        given = (attention_file or "").rpartition(":")[::2]  # (notebook@<hash>, class) as registered
        if registered(attention_file or "") is None or given[1] != name:
            raise CheckpointError(f"{key}: this model's attention is the class {name} defined in a notebook "
                                  f"(source hash {file.partition('@')[2]}); tinylm keeps no code, so pass "
                                  f"the class: tinylm.load(..., {key}={name})")
        if given[0] != file:
            print(f"note: the class {name} given has changed since this model was trained (source hash "
                  f"{given[0].partition('@')[2]}, trained with {file.partition('@')[2]})", file=sys.stderr)
        return dataclasses.replace(config, attention=attention_file)
    if attention_file is None:
        raise CheckpointError(f"{key}: this checkpoint's attention is the class {name} of {file}; tinylm "
                              f"imports no code a checkpoint names, so name the file: {key}={file}")
    if not Path(attention_file).expanduser().is_file():
        raise CheckpointError(f"{key}: no file {Path(attention_file).resolve()} (the checkpoint was trained "
                              f"with the class {name} of {file})")
    return dataclasses.replace(config, attention=f"{attention_file}:{name}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", key: str = "ckpt",
                    attention_file: str | None = None, attention_key: str = "attention_file"
                    ) -> tuple[GenerativeLM, Tokenizer]:
    """Rebuild the model, for inference (in eval mode, built with dropout 0), and its tokenizer
    from a .ckpt file alone (or the run's model.safetensors, when it holds the same weights; or a
    model.safetensors or directory ``tinylm export`` wrote); ``key`` names the setting that gave
    the path, for errors. A model trained with a learner's attention class also needs
    ``attention_file``, that class's file."""
    path = preferred(path)  # a run's model.safetensors over its last.ckpt: no pickle at all
    if is_weights(path):
        config, tokenizer, state = read_weights(path)
    elif is_export(path):  # a directory tinylm export wrote: the Hugging Face layout
        config, tokenizer, state = read_export(path)
    else:
        checkpoint = read_checkpoint(path, key)
        tokenizer, config = tokenizer_of(checkpoint), model_config_of(checkpoint)
        state = {name.removeprefix("model."): tensor for name, tensor in checkpoint["state_dict"].items()
                 if name.startswith("model.")}
    config = with_attention_file(config, attention_file, attention_key)
    # In eval mode dropout does nothing; a model built without it skips the calls (sampling).
    config = dataclasses.replace(config, dropout=0.0)
    model = GenerativeLM(config, tokenizer.vocab_size)
    model.load_state_dict(state)
    return model.to(map_location).eval(), tokenizer
