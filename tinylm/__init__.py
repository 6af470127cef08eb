"""tinylm: train, sample and look inside small character-level Transformer language models.

``import tinylm`` is cheap; the names below load torch on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["ByteTokenizer", "CharTokenizer", "ModelConfig", "TransformerLM", "load_checkpoint"]

# name -> (module, attribute). tinylm.TransformerLM is the network with its sampling methods.
_LAZY = {
    "ByteTokenizer": ("tinylm.tokenizer", "ByteTokenizer"),
    "CharTokenizer": ("tinylm.tokenizer", "CharTokenizer"),
    "ModelConfig": ("tinylm.config", "ModelConfig"),
    "TransformerLM": ("tinylm.generation.stream", "GenerativeLM"),
    "load_checkpoint": ("tinylm.checkpoint", "load_checkpoint"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'tinylm' has no attribute {name!r}")
