"""tinylm: train, sample and look inside small character-level Transformer language models.

``import tinylm`` is cheap; the names below load torch on first use.
"""

from __future__ import annotations

import gc
import importlib
import sys
import types
from collections.abc import Sequence
from typing import Any

__version__ = "0.1.0"
__all__ = ["ByteTokenizer", "CharTokenizer", "ModelConfig", "TransformerLM", "check_attention", "compare",
           "load", "load_checkpoint", "train"]

# name -> (module, attribute). tinylm.TransformerLM is the network with its sampling methods.
_LAZY = {
    "ByteTokenizer": ("tinylm.tokenizer", "ByteTokenizer"),
    "CharTokenizer": ("tinylm.tokenizer", "CharTokenizer"),
    "ModelConfig": ("tinylm.config", "ModelConfig"),
    "TransformerLM": ("tinylm.generation.stream", "GenerativeLM"),
    "load_checkpoint": ("tinylm.checkpoint", "load_checkpoint"),
    # the notebook API: tinylm.train(...), tinylm.check_attention(...), tinylm.load(...), tinylm.compare(...)
    "train": ("tinylm.notebook.api", "train"),
    "check_attention": ("tinylm.notebook.api", "check_attention"),
    "load": ("tinylm.notebook.api", "load"),
    "compare": ("tinylm.notebook.api", "compare"),
}


def command(argv: Sequence[str] | None = None) -> Any:
    """The ``tinylm`` command (``tinylm.cli.main``), which a Ctrl-C stops in one line even while
    it is still loading. A process's entry point: the process ends when it returns."""
    try:
        from tinylm.cli import main  # here, inside the try: a Ctrl-C while it loads is caught too
    except KeyboardInterrupt:
        print("stopped: Ctrl-C while tinylm was starting: nothing was written", file=sys.stderr)
        raise SystemExit(130) from None
    try:
        return main(argv)
    finally:
        # The interpreter's exit would otherwise search every object that torch's and Lightning's
        # imports made for reference cycles, which the OS frees anyway (docs/performance.md).
        gc.freeze()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'tinylm' has no attribute {name!r}")


class _Package(types.ModuleType):
    """``tinylm.train`` and ``tinylm.compare`` stay the notebook API's functions once the
    commands' modules of the same names are imported: Python's import system would set the
    package's attribute to the submodule, which stays reachable as ``sys.modules[...]``."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name, ("",))[0] == "tinylm.notebook.api":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
