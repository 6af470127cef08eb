"""How the Trainer writes checkpoints: atomically. Beside the callbacks that decide when to write
(``checkpoints``); reading them back is ``tinylm.checkpoint``, which sampling imports without
Lightning."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from tinylm.checkpoint import verified
from tinylm.integrity import seal


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<file>.<pid>.tmp`` beside the checkpoint (named per process: two writers never
    share one), seals it with its checksum (``tinylm.integrity``), syncs it to disk, then renames
    it over the old file. A rename within a directory is atomic, so whoever reads the file,
    including a resume after ``kill -9`` in the middle of a save, finds the old checkpoint or the
    new one, checksum included; a kill leaves only the .tmp file, which the next run removes.

    Lightning's own save writes to a temp file in $TMPDIR and moves it: a rename only when
    $TMPDIR is on the checkpoint's filesystem, otherwise a copy that a kill can cut short
    (and a kill leaves the temp file in $TMPDIR). Loads check the checksum, and are always
    ``weights_only=True``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: fsspec's way
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as file:
                torch.save(checkpoint, file)
            seal(temp)
            with open(temp, "rb") as file:
                os.fsync(file.fileno())  # the data is on disk before the name points at it
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def load_checkpoint(self, path: str | Path, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if "://" not in str(path):
            verified(path, key="ckpt_path")
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
