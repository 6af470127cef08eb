"""Checkpoints that prove their integrity: a SHA-256 of a checkpoint's content, kept inside it.

``torch.save`` writes a zip archive whose records ``torch.load`` reads back unchecked: a flipped
bit in a tensor loads as a wrong number, silently. So every checkpoint tinylm writes carries one
more record, ``<archive>/tinylm.sha256``: the SHA-256 of every other record's name, size and
bytes, in order. ``seal`` adds it to a file just written, before the file is renamed into place,
so the checksum arrives atomically with the content; ``verify`` recomputes it. Every reader
calls ``verify`` (training's resume, sampling, the attention pictures, ``tinylm.load_checkpoint``),
and so may anything else that reads a checkpoint or writes beside one.

Torch-free (zipfile and hashlib), so the torch-free checks can use it too.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

SEAL = "tinylm.sha256"  # the record's name inside the archive's top-level directory
CHUNK = 1 << 20


class DamagedCheckpoint(Exception):
    """A checkpoint's content differs from the content it was sealed with; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _digest(archive: zipfile.ZipFile) -> str:
    sha = hashlib.sha256()
    for info in archive.infolist():
        if info.filename.rpartition("/")[2] == SEAL:
            continue
        sha.update(info.filename.encode() + b"\0" + info.file_size.to_bytes(8, "little"))
        with archive.open(info) as record:  # zipfile also checks each record's CRC-32
            while chunk := record.read(CHUNK):
                sha.update(chunk)
    return sha.hexdigest()


def seal(path: str | Path) -> str:
    """Add the checksum record to the checkpoint at ``path`` (a zip archive torch.save wrote);
    returns the checksum."""
    with zipfile.ZipFile(path, "a") as archive:
        top = archive.namelist()[0].partition("/")[0]
        digest = _digest(archive)
        archive.writestr(f"{top}/{SEAL}", digest)
    return digest


def verify(path: str | Path) -> bool:
    """Check the checkpoint at ``path`` against its checksum: True when it matches, False when
    the file carries none (written before checksums, or by another program). Raises
    DamagedCheckpoint when its content is not what was sealed, OSError when it cannot be read."""
    try:
        with zipfile.ZipFile(path) as archive:
            seals = [n for n in archive.namelist() if n.rpartition("/")[2] == SEAL]
            if not seals:
                return False
            recorded = archive.read(seals[-1]).decode("ascii", "replace").strip()
            found = _digest(archive)
    except (zipfile.BadZipFile, EOFError, ValueError) as error:  # a damaged index, a bad CRC-32
        raise DamagedCheckpoint(f"its records do not read back whole: {error}") from None
    if found != recorded:
        raise DamagedCheckpoint("its checksum does not match its content: it changed after it was written")
    return True


def intact_alternatives(path: str | Path) -> list[Path]:
    """The other checkpoints beside ``path`` that carry a checksum and match it, newest first:
    what to use instead of a damaged one."""
    path = Path(path)
    good = []
    for other in path.parent.glob("*.ckpt"):
        if other.name == path.name:
            continue
        try:
            if verify(other):
                good.append(other)
        except (DamagedCheckpoint, OSError):
            continue
    return sorted(good, key=lambda p: p.stat().st_mtime, reverse=True)
