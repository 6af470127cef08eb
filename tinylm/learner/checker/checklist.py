"""The checklist of ``tinylm check-attention``, one function per check, each giving one line:

1. ``check_shape``: it takes (B, T, d) and gives (B, T, d) back, called with the forward
   signature and return form found (``forward(x)``, ``forward(q, k, v, mask=None)``; a tensor,
   ``(out, weights)``, a dict);
2. ``check_causal``: changing a later position leaves every earlier output unchanged; a ``mask``
   argument gets a causal mask, in the first of the usual conventions that works
   (``choose_convention``);
3. ``check_attention``: with its own Q/K/V/O weights copied into tinylm's explicit reference,
   the outputs agree to 1e-5; where they do not, the known mistakes that reproduce its
   output exactly are named;
4. ``check_gradients``: gradients reach every parameter; 5. ``check_bf16``: it runs in bf16.

``check`` runs them in order on a built module and returns a Report.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from tinylm.learner.adapter import Built, MaskConvention, Settings, build_module, load_class, read_result
from tinylm.learner.calling import (
    Probe,
    Tried,
    choose_convention,
    reason,
    reference_for,
    try_conventions,
)
from tinylm.learner.checker.gates import at_context, dropout_given, finite, not_finite, repeatable
from tinylm.learner.checker.mistakes import explain, mistake
from tinylm.learner.checker.report import Line, Report
from tinylm.learner.reference import TOLERANCE, find_weights, head_widths


def check_shape(probe: Probe, tried: Tried, errors: list[str]) -> Line:
    """Its output's shape, called the first way it runs (``try_conventions``)."""
    B, T, d = probe.shape
    text = probe.signature.text
    if not tried:
        return Line(False, f"shape: calling {text} on (B, T, d) = ({B}, {T}, {d}) failed: {errors[0]}")
    result = tried[0][1]
    if result.output is None or tuple(result.output.shape) != (B, T, d):
        shape = None if result.output is None else tuple(result.output.shape)
        return Line(False, f"shape: {text} returned {result.form}{f' of shape {shape}' if shape else ''}, "
                           f"expected ({B}, {T}, {d}); return the attention's output (B, T, d_model)")
    return Line(True, f"shape: {text} → {result.form}, ({B}, {T}, {d}) from ({B}, {T}, {d})")


def check_attention(report: Report, probe: Probe, output: Any, weights: dict | None, used: str,
                    reference: Any, mapping: dict[str, str] | None = None) -> Line:
    """Agreement with tinylm's reference, or the known mistakes that explain the difference
    (recorded in ``report.mistakes``)."""
    if reference is None:
        return Line(False, f"attention: cannot compare with tinylm's reference: {used}")
    difference = (output - reference).abs().max().item()
    if difference <= TOLERANCE:
        report.agrees = True
        return Line(True, f"attention: agrees with tinylm's reference to {difference:.0e} "
                          f"(its weights: {used})")
    found = explain(weights, probe.x, probe.heads, output)
    if not found and "Parameters used as x@W" in used:  # its matrices may be used as W @ x
        try:
            other, _ = find_weights(probe.module, probe.shape[-1], mapping, "W@x")
            found = explain(other, probe.x, probe.heads, output)
        except LookupError:
            pass
    if not found:
        return Line(False, f"attention: differs from tinylm's reference by {difference:.3g} (its weights: "
                           f"{used}), and no known mistake explains it; compare with "
                           f"softmax(Q·Kᵀ/√head_dim + causal mask)·V, head by head")
    report.mistakes = found
    names = " + ".join(mistake(m).name for m in found)
    fixes = "; ".join(mistake(m).fix for m in found)
    return Line(False, f"attention: differs from tinylm's reference by {difference:.3g}; {names} "
                       f"reproduces it exactly. Fix: {fixes}")


def check_causal(report: Report, probe: Probe, broken: tuple[int, int] | None) -> Line:
    """Whether a later position moves an earlier output; the report keeps how, for a refusal."""
    if report.causal:
        convention = report.convention
        how = f"with mask= {convention.name}" if convention else "it masks the future itself"
        return Line(True, f"causal: changing a later position leaves every earlier output unchanged ({how})")
    earlier, later = broken
    masked = probe.signature.mask_name is not None
    report.future = (f"output {earlier} changes when position {later} changes"
                     f"{' with every usual causal mask' if masked else ''}")
    report.causal_fix = ("apply the mask to the scores before the softmax, with float('-inf')" if masked
                         else mistake("no_mask").fix)
    return Line(False, report.not_causal())


def check_gradients(probe: Probe, convention: MaskConvention | None) -> Line:
    """Every trainable parameter gets a gradient."""
    params = [(name, p) for name, p in probe.module.named_parameters() if p.requires_grad]
    try:
        for _, p in params:
            p.grad = None
        output = probe.run(probe.x, convention).output
        (output * torch.randn(output.shape, generator=probe.generator)).sum().backward()
        nan = [name for name, p in params if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        dead = [name for name, p in params
                if p.grad is None or (name not in nan and not p.grad.abs().sum() > 0)]
        for _, p in params:
            p.grad = None
    except Exception as error:
        return Line(False, f"gradients: backward failed: {reason(error)}")
    if not params:
        return Line(False, "gradients: it has no trainable parameters; make its projections nn.Linear")
    if nan:
        return Line(False, f"gradients: {', '.join(nan)} get NaN or inf gradients; keep every softmax row "
                           f"over at least one visible key, and fill with -inf only where a key is hidden")
    if dead:
        return Line(False, f"gradients: {', '.join(dead)} get none: used nowhere in forward, or detached; "
                           f"use them or remove them")
    return Line(True, f"gradients: reach all {len(params)} parameters")


def check_bf16(probe: Probe, convention: MaskConvention | None, full: Any) -> Line:
    """It runs in bfloat16 near its float32 output ``full``; a float16 overflow is noted."""
    B, T, d = probe.shape

    def attempt(dtype: Any) -> tuple[Any, str | None]:
        copied = copy.deepcopy(probe.module).to(dtype)
        mask = None if convention is None else convention.make(B, T, dtype)
        try:
            with torch.no_grad():
                result = probe.signature.call(copied, probe.x.to(dtype), mask)
            return read_result(result, B, T, d).output, None
        except Exception as error:
            return None, reason(error)

    out, error = attempt(torch.bfloat16)
    if error:
        return Line(False, f"bf16: it fails in bfloat16: {error}; make masks and constants follow the "
                           f"input's dtype")
    if out is None or not torch.isfinite(out.float()).all():
        return Line(False, "bf16: its output in bfloat16 is not finite; fill masked scores with "
                           "float('-inf') or torch.finfo(scores.dtype).min, and keep the softmax in float32")
    gap = (out.float() - full).abs().max().item()
    if gap > 0.05 * (full.abs().max().item() or 1.0):
        return Line(False, f"bf16: its bfloat16 output is {gap:.3g} from float32's; keep the softmax in "
                           f"float32")
    _, half_error = attempt(torch.float16)
    note = ""
    if half_error and "overflow" in half_error:
        note = " (in float16 it overflows: fill masked scores with float('-inf'), not -1e9)"
    return Line(True, f"bf16: runs in bfloat16, within {gap:.2g} of float32{note}")


def check(built: Built, mapping: dict[str, str] | None = None, block_size: int = 64,
          rebuild: Callable[[dict], Built] | None = None) -> Report:
    """Run the checklist on a built module; ``mapping`` names its Q, K, V, O layers (role → name);
    ``block_size`` is the context training calls it with; ``rebuild`` builds the class again with
    other kwargs (to see whether a ✓ held only because of a kwargs value)."""
    probe = Probe.of(built)
    B, T, d = probe.shape
    heads, width = head_widths(built.module, d, built.heads)
    report = Report(f"{built.call}: {heads} head(s) of width {width}, on x of shape "
                    f"(B, T, d) = ({B}, {T}, {d}) and at T={block_size}", signature=probe.signature)
    tried, errors = try_conventions(probe)
    report.lines.append(shape := check_shape(probe, tried, errors))
    if not shape.ok:
        return report
    report.returns_weights = tried[0][1].weights is not None
    if (random := repeatable(probe, tried[0][0])) is not None:
        report.lines.append(random)
        return report
    runs = [(c, r) for c, r in tried if finite(r.output) and tuple(r.output.shape) == probe.shape]
    reference, weights, used = reference_for(probe, mapping, [r.output for _, r in tried])
    if not runs:
        line, report.mistakes = not_finite(probe, tried, weights)
        report.lines.append(line)
        return report
    convention, result, broken = choose_convention(probe, runs, reference)
    report.convention, report.causal = convention, broken is None
    attention = check_attention(report, probe, result.output, weights, used, reference, mapping)
    context = at_context(built, convention, block_size, report.causal, report.agrees,
                                    weights) if block_size != T else None
    given = dropout_given(built, rebuild, convention) if rebuild is not None else None
    report.context_ok = context is None
    report.lines += [
        context or Line(True, f"runs: the same output twice in eval mode, finite, at T={T} and at "
                              f"T={block_size} (the training block_size)"),
        *([given] if given else []),
        check_causal(report, probe, broken),  # after the attention check: it may name the mistake
        attention,
        check_gradients(probe, convention),
        check_bf16(probe, convention, result.output),
    ]
    return report


def check_target(target: str, d_model: int = 48, heads: int = 4, kwargs: dict | None = None,
                 mapping: dict[str, str] | None = None, key: str = "attention",
                 settings: Settings | None = None, kwargs_key: str = "kwargs") -> tuple[Report, Built]:
    """Load, build and check ``file.py:Class``; ``key`` is the setting that named it, ``settings``
    the model's (its block_size, dropout, bias), ``kwargs_key`` where constructor arguments go."""
    settings = settings or Settings(d_model, heads)
    cls = load_class(target, key)

    def rebuild(other: dict) -> Built:
        return build_module(cls, d_model, heads, other, key, settings, kwargs_key)

    built = rebuild(kwargs or {})
    return check(built, mapping, settings.block_size, rebuild), built
