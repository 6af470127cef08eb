"""Muon: momentum, then each matrix's update orthogonalised by Newton–Schulz iterations.

The update is ``torch.optim.Muon``'s (Keller Jordan's): Nesterov momentum, the update scaled to
spectral norm at most 1 (divided by its Frobenius norm), five quintic Newton–Schulz iterations,
decoupled weight decay, and the rate scaled by √max(1, rows/columns). Three things differ, all
for speed on small matrices: every matrix of one shape goes through the iterations together (a
batched matmul per product instead of one matmul per matrix); the iterations run in
``ns_dtype``, bfloat16 as torch's always does or float32 on a CPU where bfloat16 matmuls are the
slower (``tinylm.machine``); and in float32 a wide matrix iterates on its Gram matrix.

Why the Gram matrix: every iterate of X (r × c, r ≤ c) is Q·X₀ with Q a polynomial in
G = X₀·X₀ᵀ (r × r), so the iterations can update Q alone, in r × r products, and touch X₀ once
at the end. Each iteration then costs 8r³ flops instead of 4r²c + 2r³: for nano's 128 × 512
matrices, 117 instead of 189 MFLOP in all. The same numbers in exact arithmetic; in float32,
relative to the largest entry, within 1e-5 of float64's iterations for a full-rank update and
1e-3 for a rank-deficient one, where torch's bfloat16 iterations are within 2e-2 and 1.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

# torch.optim.Muon's (from Keller Jordan's post): the quintic's coefficients, steps, epsilon.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
EPS = 1e-7
NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def orthogonalise(updates: Tensor, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  steps: int = NS_STEPS, eps: float = EPS) -> Tensor:
    """Newton–Schulz iterations on a batch of matrices ``updates`` (N, rows, cols), rows ≤
    cols, in their dtype: each tends to U·Vᵀ of its singular value decomposition U·S·Vᵀ.
    float32 matrices wide enough for it to pay iterate on their Gram matrix (the module's docstring)."""
    a, b, c = coefficients
    x = updates / updates.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm ≤ 1
    rows, cols = x.shape[-2:]
    if x.dtype == torch.float32 and 16 * cols > 26 * rows:  # fewer flops over all the steps
        return _orthogonalise_by_gram(x, coefficients, steps)
    for _ in range(steps):
        gram = x @ x.mT  # (N, rows, rows)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b·G + c·G²
        x = torch.baddbmm(x, poly, x, beta=a)  # a·X + (b·G + c·G²)·X
    return x


def _orthogonalise_by_gram(x: Tensor, coefficients: tuple[float, float, float], steps: int) -> Tensor:
    """The iterations of ``orthogonalise`` on X = Q·x, updating Q (N, r, r) only: X·Xᵀ = Q·G·Q
    (Q is symmetric and commutes with G = x·xᵀ, both polynomials in G), and a·X + (b·A + c·A²)·X
    = (a + b·A + c·A²)·Q·x for A = X·Xᵀ."""
    a, b, c = coefficients
    g = x @ x.mT  # (N, r, r): the only product with x's c columns before the last
    q = None  # the identity, before the first step
    for _ in range(steps):
        gram = g if q is None else q @ (g @ q)  # X·Xᵀ (N, r, r)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b·A + c·A²
        poly.diagonal(dim1=-2, dim2=-1).add_(a)  # + a·I
        q = poly if q is None else poly @ q
    return x if q is None else q @ x  # (N, r, c)


class Muon(torch.optim.Optimizer):
    """``torch.optim.Muon``'s update for 2-D parameters, the Newton–Schulz iterations batched
    by shape and run in ``ns_dtype`` ("bfloat16" or "float32"). Its groups hold torch's keys
    (and ``ns_dtype``), and its state torch's ``momentum_buffer``, so checkpoints written with
    ``torch.optim.Muon`` load into it."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 weight_decay: float = 0.1, momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = EPS,
                 ns_steps: int = NS_STEPS, ns_dtype: str = "bfloat16") -> None:
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"ns_dtype must be one of {', '.join(NS_DTYPES)}, got {ns_dtype!r}")
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
                    "ns_coefficients": ns_coefficients, "eps": eps, "ns_steps": ns_steps,
                    "adjust_lr_fn": None, "ns_dtype": ns_dtype}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D parameters only, got one of shape {tuple(p.shape)}")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint's groups and state, keeping this optimiser's ``ns_dtype``: it is a
        property of the machine, not of the run (a checkpoint may come from another machine)."""
        dtypes = [group["ns_dtype"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, dtype in zip(self.param_groups, dtypes, strict=True):
            group["ns_dtype"] = dtype

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._step_group(group, params)
        return loss

    def _step_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        grads = [p.grad for p in params]
        buffers = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            buffers.append(state["momentum_buffer"])
        torch._foreach_lerp_(buffers, grads, 1 - momentum)  # B ← μ·B + (1 − μ)·g
        updates = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers
        dtype = NS_DTYPES[group["ns_dtype"]]
        # Tall matrices are orthogonalised transposed, as torch's does: the Gram matrix is the
        # smaller side's. Matrices of one (wide) shape go through the iterations together.
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, update in enumerate(updates):
            by_shape[tuple(_wide(update).shape)].append(i)
        orthogonal: list[Tensor] = [torch.empty(0)] * len(updates)
        for indices in by_shape.values():
            batch = torch.stack([_wide(updates[i]) for i in indices]).to(dtype)
            batch = orthogonalise(batch, group["ns_coefficients"], group["ns_steps"], group["eps"])
            for i, matrix in zip(indices, batch.unbind(0), strict=True):
                orthogonal[i] = matrix.mT if _tall(updates[i]) else matrix
        if decay:
            torch._foreach_mul_(params, 1 - lr * decay)
        for p, update in zip(params, orthogonal, strict=True):
            rows, cols = p.shape
            p.add_(update, alpha=-lr * math.sqrt(max(1.0, rows / cols)))  # torch's "original" scaling


def _tall(matrix: Tensor) -> bool:
    return matrix.shape[0] > matrix.shape[1]


def _wide(matrix: Tensor) -> Tensor:
    """``matrix``, transposed if it has more rows than columns."""
    return matrix.mT if _tall(matrix) else matrix
