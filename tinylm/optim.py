"""The optimiser a run trains with (``optim.*``): AdamW, or Muon for the blocks' matrices.

    optim.name=adamw   AdamW for everything; matrices and embeddings decayed, gains and biases not
    optim.name=muon    torch.optim.Muon for the 2-D weights inside the blocks (attention and MLP
                       matrices: it orthogonalises each update, so every direction of a matrix
                       learns at the same rate), AdamW for the rest: the embeddings and the
                       output head (not hidden matrices: one row per character), gains and biases

Both are one ``torch.optim.Optimizer`` with one list of parameter groups, so Lightning, the
learning-rate schedule (which scales every group's rate by the same factor) and checkpoints
see a single optimiser.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tinylm.config import OptimConfig
from tinylm.machine import fastest_dtype
from tinylm.muon import Muon


def build_optimizer(model: nn.Module, config: OptimConfig, fused: bool = True) -> torch.optim.Optimizer:
    """The optimiser ``config`` names for ``model`` (a TransformerLM); ``fused``: AdamW's fused
    kernel where the caller allows it (not under float16 loss scaling)."""
    params = [p for p in model.parameters() if p.requires_grad]
    hidden: list[nn.Parameter] = []
    if config.name == "muon":
        hidden = [p for p in model.blocks.parameters() if p.requires_grad and p.dim() == 2]
    ids = {id(p) for p in hidden}
    rest = [p for p in params if id(p) not in ids]
    # Decay the matrices (and the embedding); leave biases and norm gains alone.
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
    ]
    adamw = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps,
                              fused=fused and config.fused)
    if not hidden:
        return adamw
    muon = Muon(hidden, lr=config.muon_lr, momentum=config.muon_momentum, weight_decay=config.weight_decay,
                ns_dtype=muon_dtype(config, hidden[0].device))
    return MuonWithAdamW(muon, adamw)


def muon_dtype(config: OptimConfig, device: torch.device | str = "cpu") -> str:
    """The dtype Muon's Newton–Schulz iterations run in: ``optim.muon_dtype``, where "auto" is
    the faster of bfloat16 and float32 on ``device`` (measured once per machine)."""
    if config.muon_dtype != "auto":
        return config.muon_dtype
    return "bfloat16" if fastest_dtype(device) == torch.bfloat16 else "float32"


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon and AdamW stepped together as one optimiser: its ``param_groups`` are theirs (Muon's
    first), the same dicts, so a scheduler that sets a group's ``lr`` sets it for the optimiser
    that owns the group; and its ``state`` is theirs, one dict (their parameters are disjoint),
    so ``state_dict`` and ``load_state_dict`` are the base class's."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__([*muon.param_groups, *adamw.param_groups], {})
        self._share()

    def _share(self) -> None:
        """Let the two optimisers work on this one's groups and state."""
        split = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:split], self.param_groups[split:]
        self.muon.state = self.adamw.state = self.state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        dtypes = [group["ns_dtype"] for group in self.muon.param_groups]
        super().load_state_dict(state_dict)  # builds new group dicts and a new state dict
        self._share()
        for group, dtype in zip(self.muon.param_groups, dtypes, strict=True):
            group["ns_dtype"] = dtype  # the machine's, not the checkpoint's (see Muon.load_state_dict)
