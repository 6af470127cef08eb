"""Reading tinylm checkpoints: everything needed to rebuild the model is inside the .ckpt.

Every load uses ``torch.load(weights_only=True)``: a checkpoint can hold tensors and plain
Python values only, so a file carrying a pickled payload is refused and none of it runs.
"""

from __future__ import annotations

import ast
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
from tinylm.integrity import DamagedCheckpoint, refusal, verify
from tinylm.learner.registry import registered, source_sha256
from tinylm.learner.source import AttentionSource, sha256_of
from tinylm.rundir import preferred
from tinylm.schema import build
from tinylm.tokenizer import Tokenizer, tokenizer_from
from tinylm.weights import is_weights, read_weights

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
    verified(path, key)
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


def verified(path: str | Path, key: str = "ckpt") -> Path:
    """``path``, once its content is checked against the checksum it was written with
    (``tinylm.integrity``); a damaged file is a CheckpointError naming an intact one to use."""
    path = Path(path).expanduser()
    try:
        verify(path)
    except DamagedCheckpoint as error:
        raise _corrupt(key, path, error.reason) from None
    except OSError as error:
        raise CheckpointError(f"{key}: {path} cannot be read ({error.strerror or error})") from None
    return path


def _corrupt(key: str, path: Path, reason: str) -> CheckpointError:
    return CheckpointError(refusal(key, path, reason))


def model_config_of(checkpoint: dict[str, Any]) -> ModelConfig:
    return build(ModelConfig, checkpoint["hyper_parameters"]["model"], "model")


def tokenizer_of(checkpoint: dict[str, Any]) -> Tokenizer:
    """The tokenizer a checkpoint was trained with (files from before byte tokens: "char")."""
    hyper = checkpoint["hyper_parameters"]
    return tokenizer_from(hyper.get("tokenizer", "char"), hyper["vocab"])


def with_attention_file(config: ModelConfig, attention_file: str | None, key: str = "attention_file",
                        record: AttentionSource | None = None, run_dir: Path | None = None,
                        changed: bool = False) -> ModelConfig:
    """``config`` with its learner's attention class taken from ``attention_file``, the file the
    user names: a checkpoint records the file and class it was trained with (``record``: its
    hash, where it was), and never imports code by itself. A file with another hash is refused
    unless ``changed`` (``attention_file_changed=true``) accepts it knowingly."""
    if config.learner_attention is None:
        return config
    file, name = config.learner_attention
    if file.startswith(f"{NOTEBOOK_CLASS}@"):
        return with_notebook_class(config, attention_file, key, record)
    if attention_file is None:
        which = _which_file(key, record, run_dir)
        raise CheckpointError(f"{key}: this checkpoint's attention is the class {name} of a file of yours; "
                              f"tinylm imports no code a checkpoint names; {which}")
    path = Path(attention_file).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{key}: no file {path.resolve()} (the checkpoint was trained with the class "
                              f"{name}; {_which_file(key, record, run_dir)})")
    if record is not None and not changed and (digest := sha256_of(path)) != record.sha256:
        raise CheckpointError(
            f"{key}: {path} has sha256 {digest[:16]}, the checkpoint was trained with a file of sha256 "
            f"{record.short()}; name that file, or load this one knowingly with attention_file_changed=true"
        )
    defined, names = _classes_in(path)
    if defined is not None and name not in names:
        raise CheckpointError(f"{key}: {path} has no class {name}, the class the checkpoint was trained with "
                              f"(it defines {', '.join(defined) or 'none'}); name the file that defines it")
    return dataclasses.replace(config, attention=f"{attention_file}:{name}")


def _classes_in(path: Path) -> tuple[list[str] | None, set[str]]:
    """The classes a Python file defines at its top level, and every name it binds there (a class
    may be imported), read without running it (None when it cannot tell: importing it says why)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None, set()
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    bound = {alias.asname or alias.name for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)
             for alias in node.names}
    bound |= {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
              if isinstance(target, ast.Name)}
    if "*" in bound:  # a star import may bind any name
        return None, set()
    return classes, bound | set(classes)


def with_notebook_class(config: ModelConfig, attention: str | None, key: str,
                        record: AttentionSource | None) -> ModelConfig:
    """``config`` with its attention class, defined in a notebook, taken from ``attention``, that
    class as registered in this process (``tinylm.learner.registry``): the run recorded only its
    name and the hash of its source. A class whose source changed since is loaded with a note."""
    file, name = config.learner_attention
    cls = registered(attention or "")
    if cls is None or cls.__name__ != name:
        raise CheckpointError(f"{key}: this model's attention is the class {name} defined in a notebook "
                              f"(source hash {file.partition('@')[2]}); tinylm keeps no code, so pass "
                              f"the class: tinylm.load(..., {key}={name})")
    trained = record.sha256 if record is not None else file.partition("@")[2]
    if not source_sha256(cls).startswith(trained):
        print(f"note: the class {name} given has changed since this model was trained (source sha256 "
              f"{source_sha256(cls)[:16]}, trained with {trained[:16]})", file=sys.stderr)
    return dataclasses.replace(config, attention=attention)


def _which_file(key: str, record: AttentionSource | None, run_dir: Path | None) -> str:
    """What to pass: a file the checkpoint points at only when its hash matches, saying it runs."""
    if record is None:
        return f"pass the file you trained with as {key}=path/to/file.py (tinylm will execute it)"
    matching = record.matching_files(run_dir or Path("."))
    if matching:
        return (f"{key}={matching[0]} has the sha256 it was trained with ({record.short()}); pass it if you "
                f"trust it: tinylm will execute that file")
    return (f"no file where it was trained has its sha256 {record.short()}; pass the file you trained with "
            f"as {key}=path/to/file.py (tinylm will execute it)")


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a checkpoint file: <run>/checkpoints/last.ckpt → <run>."""
    parent = Path(path).expanduser().absolute().parent
    return parent.parent if parent.name == "checkpoints" else parent


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", key: str = "ckpt",
                    attention_file: str | None = None, attention_file_changed: bool = False,
                    attention_key: str = "attention_file") -> tuple[GenerativeLM, Tokenizer]:
    """Rebuild the model, for inference (in eval mode, built with dropout 0), and its tokenizer
    from a .ckpt file alone; ``key`` names the setting that gave the path, for errors. A model
    trained with a learner's attention class also needs ``attention_file``, that class's file
    (the one it was trained with, unless ``attention_file_changed``). ``path`` may also be a
    directory ``tinylm export`` wrote (the Hugging Face layout), or a model.safetensors: a run's
    last.ckpt is read from the model.safetensors beside it when that holds the same weights."""
    record, run_dir = None, None
    path = preferred(path)  # a run's model.safetensors over its last.ckpt: no pickle at all
    if is_weights(path):
        config, tokenizer, state, source = read_weights(path)
        record = AttentionSource.from_checkpoint({"tinylm": {"attention_source": source}})
        run_dir = run_dir_of(path)
    elif is_export(path):
        config, tokenizer, state = read_export(path)
    else:
        checkpoint = read_checkpoint(path, key)
        tokenizer, config = tokenizer_of(checkpoint), model_config_of(checkpoint)
        state = {name.removeprefix("model."): tensor for name, tensor in checkpoint["state_dict"].items()
                 if name.startswith("model.")}
        record, run_dir = AttentionSource.from_checkpoint(checkpoint), run_dir_of(path)
    config = with_attention_file(config, attention_file, attention_key, record=record, run_dir=run_dir,
                                 changed=attention_file_changed)
    # In eval mode dropout does nothing; a model built without it skips the calls (sampling).
    config = dataclasses.replace(config, dropout=0.0)
    model = GenerativeLM(config, tokenizer.vocab_size)
    if config.learner_attention is not None:
        _check_parameters(model, state, config.learner_attention)
    model.load_state_dict(state)
    return model.to(map_location).eval(), tokenizer


def _check_parameters(model: torch.nn.Module, state: dict[str, Any], learner: tuple[str, str]) -> None:
    """One line, not load_state_dict's report, when a learner's class holds other parameters
    than the checkpoint (another class under the same name, or an edited one)."""
    own = model.state_dict()
    missing = [n for n in own if n not in state]
    unexpected = [n for n in state if n not in own]
    resized = [n for n in own if n in state and tuple(own[n].shape) != tuple(state[n].shape)]
    if not (missing or unexpected or resized):
        return
    file, name = learner
    parts = [f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
             for label, names in (("not in the checkpoint", missing), ("only in the checkpoint", unexpected),
                                  ("other shapes", resized))
             if names]
    raise CheckpointError(f"attention_file: the class {name} in {file} holds other parameters than the "
                          f"checkpoint ({'; '.join(parts)}); name the file it was trained with")
