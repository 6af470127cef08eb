"""tinylm: train, sample and look inside small character-level Transformer language models.

``import tinylm`` is cheap; the names below load torch on first use.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
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


def command(argv: Sequence[str] | None = None) -> Any:
    """The ``tinylm`` command (``tinylm.cli.main``), which a Ctrl-C stops in one line even while
    it is still loading."""
    try:
        from tinylm.cli import main  # here, inside the try: a Ctrl-C while it loads is caught too
    except KeyboardInterrupt:
        print("stopped: Ctrl-C while tinylm was starting: nothing was written", file=sys.stderr)
        raise SystemExit(130) from None
    return main(argv)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'tinylm' has no attribute {name!r}")
