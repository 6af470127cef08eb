"""``model.safetensors``: a run's final weights in a file that holds tensors and text only, so
loading it runs no pickle at all. Its metadata (text, as safetensors allows) holds what rebuilds
the model: the model's settings, the tokenizer and its vocabulary, and the step.

Every run writes it beside ``last.ckpt`` when training ends (``tinylm.callbacks.checkpoints``);
Lightning's ``.ckpt`` stays, for the training state an exact resume needs. Loaders prefer it
(``preferred``) wherever it holds the weights asked for: a run directory, or its last.ckpt.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tinylm.config import ModelConfig
from tinylm.rundir import WEIGHTS
from tinylm.schema import build
from tinylm.tokenizer import Tokenizer, tokenizer_from

TIED = "lm_head.weight"  # the token embedding itself when tied: stored once


def tinylm_record(config: ModelConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    """What rebuilds a tinylm model: its settings, tokenizer and vocabulary (plain values)."""
    return {"model": asdict(config), **tokenizer.spec()}


def from_record(record: dict[str, Any]) -> tuple[ModelConfig, Tokenizer]:
    return build(ModelConfig, record["model"], "model"), tokenizer_from(record["tokenizer"], record["vocab"])


def save_weights(path: str | Path, model: nn.Module, config: ModelConfig, tokenizer: Tokenizer,
                 step: int) -> Path:
    """Write ``model``'s weights (a ``TransformerLM``) to ``path``, whole or not at all."""
    path = Path(path)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    if config.tie_embeddings:
        state.pop(TIED, None)
    record = json.dumps(tinylm_record(config, tokenizer), ensure_ascii=False)
    metadata = {"format": "pt", "tinylm": record, "step": str(step)}  # "pt": as transformers marks them
    partial = path.with_name(f".{path.name}.partial")
    save_file(state, partial, metadata=metadata)
    os.replace(partial, path)
    return path


def read_weights(path: str | Path) -> tuple[ModelConfig, Tokenizer, dict[str, Tensor]]:
    """The model settings, tokenizer and weights of a ``model.safetensors`` tinylm wrote."""
    config, tokenizer = from_record(json.loads(weights_metadata(path)["tinylm"]))
    state = load_file(Path(path).expanduser())
    if config.tie_embeddings:
        state[TIED] = state["token_embedding.weight"]
    return config, tokenizer, state


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


def preferred(path: str | Path) -> Path:
    """The file to load for ``path`` (a checkpoint): the ``model.safetensors`` beside it when
    ``path`` is a run's last.ckpt and that file was written after it, else ``path`` itself."""
    path = Path(path).expanduser()
    weights = path.with_name(WEIGHTS)
    if path.name == "last.ckpt" and weights.is_file() and (
            not path.is_file() or weights.stat().st_mtime >= path.stat().st_mtime):
        return weights
    return path
