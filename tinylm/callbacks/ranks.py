"""Training on several processes: every process ends with the same weights, and one that dies
is named by those left.

``Ranks`` learns, as training starts, where every process runs (machine and process id); when
a collective operation fails (a peer closed its connection, or ``ddp_timeout`` passed without
it answering), ``lost`` says which processes are gone. As training ends it compares a digest of
every process's weights: data-parallel processes that disagree are a bug, never noise.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from tinylm.errors import TinyLMError


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A SHA-256 of the tensors' names and bytes: equal digests, equal weights (the same for a
    module's ``state_dict()`` and the ``state_dict`` of a checkpoint it wrote)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class RankLost(TinyLMError):
    """A process of a data-parallel run died or stopped answering; the others stopped."""

    label = "stopped"
    exit_code = 1
    bad_input = False


class WeightsDiffer(TinyLMError):
    """The processes of a data-parallel run ended with different weights."""

    bad_input = False
    exit_code = 1


class Ranks(Callback):
    """Where each process of a run is, and whether they agree at the end (several processes only)."""

    def __init__(self) -> None:
        self.places: list[tuple[str, int]] = []  # (machine, process id) of each rank
        self.digest: str | None = None  # the weights' digest every process agreed on
        self.world_size = 1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.world_size = trainer.world_size
        if self.world_size > 1:
            self.places = [("", 0)] * self.world_size
            dist.all_gather_object(self.places, (socket.gethostname(), os.getpid()))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.world_size == 1:
            return
        digests = [""] * self.world_size
        dist.all_gather_object(digests, weights_digest(pl_module.state_dict()))
        differing = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
        if differing:
            raise WeightsDiffer(f"ranks {differing} ended with weights other than rank 0's: data-parallel "
                                f"processes must agree; please report it with the command you ran")
        self.digest = digests[0]

    def lost_any(self) -> bool:
        """Whether a process of this run on this machine has ended."""
        here = socket.gethostname()
        return any(host == here and not _alive(pid) for host, pid in self.places)

    def lost(self, rank: int) -> str:
        """Which processes are gone, as seen from ``rank``: those on this machine whose process
        has ended are named for sure; those elsewhere cannot be looked at from here."""
        if not self.places:
            return "a process stopped before the others knew where it ran"
        here = socket.gethostname()
        dead = [r for r, (host, pid) in enumerate(self.places) if host == here and not _alive(pid)]
        if dead:
            return ", ".join(f"rank {r} (process {self.places[r][1]})" for r in dead) + " died"
        others = sorted({host for host, _ in self.places if host != here})
        if others:
            return f"a process on {', '.join(others)} died or stopped answering"
        return f"rank {rank} lost its connection to the others"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A dead child not yet waited for (Lightning's launcher starts ranks as rank 0's children).
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
