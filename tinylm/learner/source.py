"""Where a learner's attention class came from, as a checkpoint records it: one small typed
record (``AttentionSource``) under ``checkpoint["tinylm"]["attention_source"]``, written by
training and read by every load.

A checkpoint never imports code by itself: the record lets a load check that the file the user
names is the one the model was trained with (its sha256), and lets an error point at a file
only when that file's hash matches. The ``kind`` says what the hash is of: "file", the bytes of
a ``.py`` file (its path kept relative to the run directory and absolute); a later kind (a
class defined in a notebook: its name and the hash of its source, no file) fits the same record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("file",)


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()


@dataclass(frozen=True)
class AttentionSource:
    kind: str  # "file": sha256 of the file's bytes
    class_name: str
    sha256: str
    path: str | None = None  # the file, relative to the run directory
    absolute: str | None = None  # the file, absolute, where training ran

    @classmethod
    def of_file(cls, file: str | Path, class_name: str, run_dir: str | Path) -> AttentionSource:
        absolute = Path(file).expanduser().resolve()
        relative = os.path.relpath(absolute, Path(run_dir).expanduser().resolve())
        return cls("file", class_name, sha256_of(absolute), relative, str(absolute))

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> AttentionSource | None:
        """The record a checkpoint holds; None for one without (written before records were)."""
        record = checkpoint.get("tinylm", {}).get("attention_source")
        if not isinstance(record, dict):
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def short(self) -> str:
        return self.sha256[:16]

    def matching_files(self, run_dir: str | Path) -> list[Path]:
        """The files where the record says the class was, that exist and have its hash."""
        candidates = []
        if self.path is not None:
            candidates.append(Path(run_dir) / self.path)
        if self.absolute is not None:
            candidates.append(Path(self.absolute))
        found = []
        for candidate in candidates:
            if candidate.is_file() and sha256_of(candidate) == self.sha256:
                resolved = Path(os.path.normpath(candidate.absolute()))
                if resolved not in found:
                    found.append(resolved)
        return found
