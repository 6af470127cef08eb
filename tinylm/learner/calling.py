"""How to call a learner's attention so that it hides the future, found by trying it on a
small probe: its forward signature, each mask convention it runs with, and the one under
which a later position leaves every earlier output unchanged (the one that agrees with
tinylm's reference, when several do). Training calls the class this way
(``tinylm.learner.module``); the checklist reports what was found."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tinylm.learner.adapter import (
    CONVENTIONS,
    Built,
    MaskConvention,
    Result,
    Signature,
    failing,
    read_result,
)
from tinylm.learner.reference import TOLERANCE, find_weights, reference_output

SHAPE = (2, 7)  # batch and positions of the probe: 7 is no head count or head width we build
Tried = list[tuple[MaskConvention | None, Result]]


@dataclass
class Probe:
    """The module under check, how to call it, and the input it is checked on."""

    module: Any
    signature: Signature
    heads: int
    x: Any  # (B, T, d)
    generator: Any  # every random draw on the probe, so its figures repeat

    @classmethod
    def of(cls, built: Built, positions: int = SHAPE[1]) -> Probe:
        """A probe of ``positions`` positions (the checklist's 7, or the training block_size)."""
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(SHAPE[0], positions, built.d_model, generator=generator)
        return cls(built.module, Signature.of(built.module), built.heads, x, generator)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape)

    def run(self, inputs: Any, convention: MaskConvention | None, dtype: Any = torch.float32) -> Result:
        B, T, d = self.shape
        mask = None if convention is None else convention.make(B, T, dtype)
        return read_result(self.signature.call(self.module, inputs, mask), B, T, d)


def reason(error: BaseException) -> str:
    """What the learner's code raised, in one line, with where in their file."""
    return str(failing("", error)).removeprefix(": ")


def try_conventions(probe: Probe) -> tuple[Tried, list[str]]:
    """Each mask convention (none: no mask argument) it runs with, with its result; and the
    errors of those it does not run with."""
    conventions: list[MaskConvention | None] = [*CONVENTIONS] if probe.signature.mask_name else [None]
    tried: Tried = []
    errors: list[str] = []
    with torch.no_grad():
        for convention in conventions:
            try:
                tried.append((convention, probe.run(probe.x, convention)))
            except Exception as error:
                errors.append(reason(error))
        if not tried and probe.signature.mask_name:
            try:
                tried.append((None, probe.run(probe.x, None)))
            except Exception as error:
                errors.append(reason(error))
    return tried, errors


def same_rows(a: Any, b: Any) -> Any:
    """(T,) whether each position's outputs agree across the batch: a NaN where the other has
    the same NaN agrees (non-finite output has a line of its own), one where it has a number not."""
    both_nan = torch.isnan(a) & torch.isnan(b)
    close = (a - b).abs() <= TOLERANCE
    return (close | both_nan).all(dim=2).all(dim=0)


def causal_break(probe: Probe, convention: MaskConvention | None, output: Any) -> tuple[int, int] | None:
    """(earlier, later) positions where a change at ``later`` moved the output at ``earlier``."""
    B, T, d = probe.shape
    for later in range(T - 1, 0, -1):
        changed_x = probe.x.clone()
        changed_x[:, later:] = torch.randn(B, T - later, d, generator=probe.generator)
        other = probe.run(changed_x, convention).output
        moved = ~same_rows(other[:, :later], output[:, :later])
        if moved.any():
            return int(moved.nonzero()[0].item()), later
    return None


def choose_convention(probe: Probe, tried: Tried, reference: Any
                      ) -> tuple[MaskConvention | None, Result, tuple[int, int] | None]:
    """The call that makes it causal (the one agreeing with ``reference``, if several), its
    result, and None; or, when none does, the first call and where it sees the future."""
    chosen = None
    with torch.no_grad():
        for convention, attempt in tried:
            output = attempt.output
            if output is None or tuple(output.shape) != probe.shape or not torch.isfinite(output).all():
                continue
            try:
                broken = causal_break(probe, convention, output)
            except Exception:
                continue
            if broken is not None:
                continue
            agrees = reference is not None and (output - reference).abs().max().item() <= TOLERANCE
            if chosen is None or agrees:
                chosen = (convention, attempt, None)
            if agrees:
                break
        if chosen is None:
            convention, attempt = tried[0]
            chosen = (convention, attempt, causal_break(probe, convention, attempt.output))
    return chosen


def reference_for(probe: Probe, mapping: dict[str, str] | None = None, outputs: list[Any] = ()
                  ) -> tuple[Any, dict | None, str]:
    """tinylm's reference output on the probe with the learner's weights (None when they are not
    found), the weights, and which layers they came from (or why they were not found). Matrices
    held as Parameters are read as ``x @ W``, or as ``W @ x`` when that agrees with one of
    ``outputs`` and the first does not."""
    found = None
    for orientation in ("x@W", "W@x"):
        try:
            weights, used = find_weights(probe.module, probe.shape[-1], mapping, orientation)
        except LookupError as error:
            return (None, None, str(error)) if found is None else found
        reference = reference_output(weights, probe.x, probe.heads)
        agrees = any(o is not None and tuple(o.shape) == tuple(reference.shape)
                     and (o - reference).abs().max().item() <= TOLERANCE for o in outputs)
        if found is None or agrees:
            found = (reference, weights, used)
        if agrees or "Parameters used" not in used:
            break
    return found


@dataclass
class Calling:
    """How to call a learner's class: found once per (file, class, shape)."""

    cls: type
    signature: Signature
    convention: MaskConvention | None
    causal: bool
    returns_weights: bool


def find_calling(built: Built) -> Calling:
    """How to call ``built``'s class: the signature and the mask convention that make it causal."""
    probe = Probe.of(built)
    tried, _ = try_conventions(probe)
    if not tried or tried[0][1].output is None or tuple(tried[0][1].output.shape) != probe.shape:
        return Calling(type(built.module), probe.signature, None, False, False)  # the checklist says why
    reference, _, _ = reference_for(probe)
    convention, _, broken = choose_convention(probe, tried, reference)
    return Calling(type(built.module), probe.signature, convention, broken is None,
                   tried[0][1].weights is not None)
