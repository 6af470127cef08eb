"""``model.safetensors``: a run's final weights in a file that holds tensors and text only, so
loading it runs no pickle at all. Its metadata (text, as safetensors allows) holds what rebuilds
the model: the model's settings, the tokenizer and its vocabulary, and the step.

Every run writes it beside ``last.ckpt`` when training ends (``tinylm.callbacks.checkpoints``);
Lightning's ``.ckpt`` stays, for the training state an exact resume needs. Loaders prefer it
(``tinylm.rundir.preferred``) wherever it holds the weights asked for: a run directory, or its last.ckpt.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tinylm.config import ModelConfig
from tinylm.errors import TinyLMError
from tinylm.schema import build
from tinylm.tokenizer import Tokenizer, tokenizer_from

TIED = "lm_head.weight"  # the token embedding itself when tied: stored once


def tinylm_record(config: ModelConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    """What rebuilds a tinylm model: its settings, tokenizer and vocabulary (plain values)."""
    return {"model": asdict(config), **tokenizer.spec()}


def from_record(record: dict[str, Any]) -> tuple[ModelConfig, Tokenizer]:
    return build(ModelConfig, record["model"], "model"), tokenizer_from(record["tokenizer"], record["vocab"])


def save_weights(path: str | Path, model: nn.Module, config: ModelConfig, tokenizer: Tokenizer,
                 step: int, attention_source: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights (a ``TransformerLM``) to ``path``, whole or not at all, with the
    SHA-256 of the tensors (``read_weights`` checks it) and, for a learner's attention class, the
    record of where it came from (``tinylm.learner.source``)."""
    path = Path(path)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    if config.tie_embeddings:
        state.pop(TIED, None)
    record = json.dumps(tinylm_record(config, tokenizer), ensure_ascii=False)
    metadata = {"format": "pt", "tinylm": record, "step": str(step),  # "pt": as transformers marks them
                "sha256": tensors_sha256(state)}
    if attention_source is not None:
        metadata["attention_source"] = json.dumps(attention_source, ensure_ascii=False)
    partial = path.with_name(f".{path.name}.partial")
    save_file(state, partial, metadata=metadata)
    os.replace(partial, path)
    return path


def read_weights(path: str | Path, key: str = "ckpt"
                 ) -> tuple[ModelConfig, Tokenizer, dict[str, Tensor], dict[str, Any] | None]:
    """The model settings, tokenizer, weights and attention-class record of a ``model.safetensors``
    tinylm wrote; weights that differ from those it was written with are a ``DamagedWeights``."""
    metadata = weights_metadata(path)
    config, tokenizer = from_record(json.loads(metadata["tinylm"]))
    state = load_file(Path(path).expanduser())
    if "sha256" in metadata and tensors_sha256(state) != metadata["sha256"]:
        raise DamagedWeights(f"{key}: {path} is damaged (its tensors' sha256 differs from the one it was "
                             f"written with); use checkpoints/last.ckpt or best.ckpt of the same run")
    if config.tie_embeddings:
        state[TIED] = state["token_embedding.weight"]
    source = metadata.get("attention_source")
    return config, tokenizer, state, json.loads(source) if source else None


class DamagedWeights(TinyLMError):
    """A model.safetensors whose tensors are not those it was written with."""


def tensors_sha256(state: dict[str, Tensor]) -> str:
    """The SHA-256 of the tensors' names, shapes, dtypes and bytes, in name order."""
    sha = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        sha.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        sha.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return sha.hexdigest()


def weights_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(Path(path).expanduser(), framework="pt") as file:
        return file.metadata() or {}


def is_weights(path: str | Path) -> bool:
    """Whether ``path`` is a safetensors file with tinylm's metadata."""
    path = Path(path).expanduser()
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        return "tinylm" in weights_metadata(path)
    except Exception:  # safetensors raises its own errors for a damaged header
        return False
