"""The attention a run logged, step by step, in one compact file beside its checkpoints
(``checkpoints/attention.npz``): what ``tinylm attention ckpt=<run dir> out=x.html`` steps
through.

One ``numpy.savez_compressed`` archive, read without pickle:

- ``probe``: the labels of the tokens shown, (n,) unicode: the probe's characters, or with
  byte tokens one label per byte (``Tokenizer.labels``);
- ``steps``: (S,) the optimizer step of each record, increasing;
- ``maps``: (S, L, H, n, n) uint8, the weights on the probe's first n tokens, ×255 and
  rounded (a picture's precision; float16 would double the file for nothing visible);
- one (S, L, H) float32 array per head score (``entropy``, ``prev_token`` …, ``ablation``).

Each record rewrites the archive (atomically: a temporary file, then a rename). A resumed run
drops the records at and after its first step before adding its own.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinylm.errors import ConfigError


@dataclass
class History:
    labels: list[str]  # (n,): one per token shown
    steps: np.ndarray  # (S,) int64
    maps: np.ndarray  # (S, L, H, n, n) uint8
    scores: dict[str, np.ndarray]  # name → (S, L, H) float32

    def weights(self, index: int) -> np.ndarray:
        """The maps of record ``index`` as weights in [0, 1]: (L, H, n, n) float32."""
        return self.maps[index].astype(np.float32) / 255.0


# Scores renamed since older runs recorded them: the old name → today's (the same definition).
RENAMED = {"induction": "prefix_matching"}


def load_history(path: str | Path, key: str = "ckpt") -> History:
    """The archive at ``path``, checked: anything else (another archive, a pickled array, one
    missing a part or of the wrong shape) is a ConfigError naming ``key``, in one line."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = [name for name in archive.files if name not in ("probe", "steps", "maps")]
            history = History(labels=archive["probe"].tolist(), steps=archive["steps"],
                              maps=archive["maps"],
                              scores={RENAMED.get(name, name): archive[name] for name in names})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ConfigError(f"{key}: {path} is not an attention history tinylm can read "
                          f"({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
                          f"delete it, or draw a checkpoint: ckpt=<run>/checkpoints/last.ckpt") from None
    S = len(history.steps)
    wrong = [what for what, bad in [
        ("steps is not (S,) integers", history.steps.ndim != 1 or history.steps.dtype.kind not in "iu"),
        ("maps is not (S, L, H, n, n) uint8", history.maps.ndim != 5 or history.maps.dtype != np.uint8
         or history.maps.shape[0] != S or history.maps.shape[3:] != (len(history.labels),) * 2),
        ("probe is not (n,) text", not all(isinstance(label, str) for label in history.labels)),
        ("a score is not (S, L, H) numbers", any(v.shape != history.maps.shape[:3] or v.dtype.kind != "f"
                                                 for v in history.scores.values())),
    ] if bad]
    if wrong:
        raise ConfigError(f"{key}: {path} is not an attention history tinylm wrote ({wrong[0]}); delete it, "
                          f"or draw a checkpoint: ckpt=<run>/checkpoints/last.ckpt")
    return history


def append_history(path: str | Path, step: int, labels: Sequence[str], weights: np.ndarray,
                   scores: dict[str, np.ndarray]) -> History:
    """Add the record of ``step`` (weights (L, H, n, n) in [0, 1] on the n tokens ``labels``
    name, scores name → (L, H)) to the archive at ``path``, creating it; returns what the
    archive now holds."""
    labels = list(labels)
    path = Path(path)
    record = np.rint(np.clip(weights, 0.0, 1.0) * 255).astype(np.uint8)[None]  # (1, L, H, n, n)
    new = {name: np.asarray(values, np.float32)[None] for name, values in scores.items()}
    history = History(labels, np.array([step], np.int64), record, new)
    if path.is_file():
        old = load_history(path)
        keep = old.steps < step
        if old.labels == labels and old.maps.shape[1:] == record.shape[1:] and set(old.scores) == set(new):
            history = History(
                labels, np.concatenate([old.steps[keep], history.steps]),
                np.concatenate([old.maps[keep], record]),
                {name: np.concatenate([old.scores[name][keep], new[name]]) for name in new},
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as file:
        np.savez_compressed(file, probe=np.array(labels), steps=history.steps, maps=history.maps,
                            **history.scores)
    os.replace(partial, path)
    return history
