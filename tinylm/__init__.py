"""tinylm: train, sample and look inside small character-level Transformer language models.

``import tinylm`` is cheap; the names below load torch on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["ByteTokenizer", "CharTokenizer", "ModelConfig", "TransformerLM", "load_checkpoint"]

_LAZY = {
    "ByteTokenizer": "tinylm.tokenizer",
    "CharTokenizer": "tinylm.tokenizer",
    "ModelConfig": "tinylm.config",
    "TransformerLM": "tinylm.model",
    "load_checkpoint": "tinylm.checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tinylm' has no attribute {name!r}")
