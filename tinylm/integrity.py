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
import os
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

SEAL = "tinylm.sha256"  # the record's name inside the archive's top-level directory
CHUNK = 1 << 20


class DamagedCheckpoint(Exception):
    """A checkpoint's content differs from the content it was sealed with; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _digest(archive: zipfile.ZipFile, file: BinaryIO) -> str:
    """The SHA-256 of every byte torch.save wrote before its index (each record's header, padding
    and data), which is where the seal record goes; every record is also read back through
    zipfile, which checks its CRC-32 and that the index agrees with it."""
    records = [info for info in archive.infolist() if info.filename.rpartition("/")[2] != SEAL]
    last = max(records, key=lambda info: info.header_offset)
    file.seek(last.header_offset)
    header = file.read(30)  # a zip local header: signature ... name length, extra length
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile("a record's header is damaged")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    end = last.header_offset + 30 + name_length + extra_length + last.compress_size
    sha = hashlib.sha256()
    file.seek(0)
    while (left := end - file.tell()) > 0 and (chunk := file.read(min(CHUNK, left))):
        sha.update(chunk)
    for info in records:
        with archive.open(info) as record:
            while record.read(CHUNK):
                pass
    return sha.hexdigest()


def seal(path: str | Path) -> str:
    """Add the checksum record to the checkpoint at ``path`` (a zip archive torch.save wrote);
    returns the checksum."""
    with open(path, "r+b") as file, zipfile.ZipFile(file, "a") as archive:
        top = archive.namelist()[0].partition("/")[0]
        digest = _digest(archive, file)
        archive.writestr(f"{top}/{SEAL}", digest)
    return digest


CHANGED = "its checksum does not match its content: it changed after it was written"


# The files this process has checked, by where they are and their identity then: a command's
# torch-free check and its loader read a checkpoint once between them, not twice.
_checked: dict[Path, tuple[tuple[int, int, int], bool]] = {}


def verify(path: str | Path) -> bool:
    """Check the checkpoint at ``path`` against its checksum: True when it matches, False when
    the file carries none (written before checksums, or by another program). Raises
    DamagedCheckpoint when its content is not what was sealed, OSError when it cannot be read.
    A file checked before and unchanged since (same inode, size and mtime) is not read again."""
    where = Path(path).resolve()
    with open(where, "rb") as file:
        stat = os.fstat(file.fileno())
        identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if (known := _checked.get(where)) is not None and known[0] == identity:
            return known[1]
        try:
            archive = zipfile.ZipFile(file)
        except Exception:  # BadZipFile, or whatever a damaged index makes zipfile raise
            raise DamagedCheckpoint("not a complete zip archive, as torch.save writes") from None
        sealed = _matches(archive, file)
    _checked[where] = (identity, sealed)
    return sealed


def _matches(archive: zipfile.ZipFile, file: BinaryIO) -> bool:
    with archive:
        seals = [n for n in archive.namelist() if n.rpartition("/")[2] == SEAL]
        if not seals:
            return False
        try:
            recorded = archive.read(seals[-1]).decode("ascii", "replace").strip()
            found = _digest(archive, file)
        except Exception:  # a record's CRC-32, header or offset: whatever damage makes zipfile raise
            raise DamagedCheckpoint(CHANGED) from None
    if found != recorded:
        raise DamagedCheckpoint(CHANGED)
    return True


def refusal(key: str, path: Path, reason: str) -> str:
    """The line refusing the damaged checkpoint ``path``, named by setting ``key``: what is wrong,
    and the intact checkpoint beside it to use instead, if there is one."""
    intact = intact_alternatives(path)
    instead = (f"use the intact {intact[0].name} beside it: {key}={intact[0]}" if intact
               else "no intact checkpoint is beside it: train again")
    return f"{key}: {path} is truncated or corrupt ({reason}); {instead}"


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
