"""tinylm's Muon: torch.optim.Muon's update, its Newton–Schulz iterations batched by shape and
run in the dtype the machine is fastest in."""

from __future__ import annotations

import pytest
import torch

from tinylm.muon import Muon, orthogonalise

# nano's block matrices (Q/K/V, output, MLP in and out) and a tall and a wide odd one.
SHAPES = [(48, 16), (16, 16), (64, 16), (16, 64), (48, 16), (64, 16), (7, 5), (5, 9)]


def run(optimizer_class, dtype: str | None = None, steps: int = 3, **options) -> list[torch.Tensor]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in SHAPES]
    extra = {"ns_dtype": dtype} if dtype else {}
    optimizer = optimizer_class(params, lr=0.02, **options, **extra)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("options", [{}, {"nesterov": False, "weight_decay": 0.0, "momentum": 0.9}])
def test_in_bfloat16_it_is_torchs_muon(options: dict) -> None:
    for ours, theirs in zip(run(Muon, "bfloat16", **options), run(torch.optim.Muon, **options), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_in_float32_it_is_torchs_muon_to_bfloat16s_rounding() -> None:
    start = run(Muon, "float32", steps=0)
    for ours, theirs, before in zip(run(Muon, "float32"), run(torch.optim.Muon), start, strict=True):
        step, reference = ours - before, theirs - before
        assert (step - reference).abs().max() <= 0.04 * reference.abs().max()  # bfloat16 keeps 8 bits
        assert not torch.equal(ours, theirs)  # float32 iterations, not bfloat16's


def test_a_checkpoint_of_torchs_muon_loads_and_keeps_the_machines_dtype() -> None:
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in SHAPES]
    theirs = torch.optim.Muon(params, lr=0.02)
    for p in params:
        p.grad = torch.randn(p.shape)
    theirs.step()
    ours = Muon(params, lr=0.05, ns_dtype="float32")
    ours.load_state_dict(theirs.state_dict())
    assert ours.param_groups[0]["ns_dtype"] == "float32" and ours.param_groups[0]["lr"] == 0.02
    buffer = "momentum_buffer"
    torch.testing.assert_close(ours.state[params[0]][buffer], theirs.state[params[0]][buffer])
    ours.step()


def test_it_takes_matrices_only() -> None:
    with pytest.raises(ValueError, match="2-D parameters only"):
        Muon([torch.nn.Parameter(torch.zeros(3))])


@pytest.mark.parametrize("shape", [(3, 16, 64), (2, 128, 384), (5, 9, 31)])
@pytest.mark.parametrize("rank", [None, 2])
def test_in_float32_wide_matrices_iterate_on_their_gram_matrix_to_the_same_result(shape, rank) -> None:
    """The Gram-matrix iterations are the same iterations: float32 gives float64's within 1e-5 of
    the result's largest entry, and 1e-3 for a rank-deficient update (bfloat16's: 2e-2 and 1)."""
    generator = torch.Generator().manual_seed(0)
    updates = torch.randn(shape, dtype=torch.float64, generator=generator)
    if rank is not None:  # (N, r, rank) @ (N, rank, c): rank-deficient, as an early gradient can be
        n, r, c = shape
        updates = (torch.randn(n, r, rank, dtype=torch.float64, generator=generator)
                   @ torch.randn(n, rank, c, dtype=torch.float64, generator=generator))
    exact = orthogonalise(updates)  # float64: the direct iterations
    ours = orthogonalise(updates.float()).double()
    assert (ours - exact).abs().max() <= (1e-5 if rank is None else 3e-3) * exact.abs().max()
    scale = torch.linalg.matrix_norm(exact, ord=2)  # every iterate's singular values end near 1
    assert scale.min() > 0.5 and scale.max() < 1.5
