"""The checks that come before any verdict about the attention itself, so that no later line
blames causality, gradients or precision for what they explain:

- ``repeatable``: two identical calls in eval mode give the same output (dropout left on at
  eval, ``F.dropout(w, p)`` without ``training=self.training``, gives random output);
- ``finite``: the output has no NaN or inf (a mask row that hides every key, the diagonal
  included, makes that row's softmax NaN);
- ``at_context``: the same class at the training block_size (a mask buffer built for fewer
  positions fails only there);
- ``dropout_given``: whether a ✓ held only because kwargs set its dropout to 0.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from tinylm.learner.adapter import DROPOUT_NAMES, Built, MaskConvention
from tinylm.learner.calling import Probe, Tried, causal_break, reason, same_rows
from tinylm.learner.checker.mistakes import explain, mistake
from tinylm.learner.checker.report import Line
from tinylm.learner.reference import TOLERANCE, reference_output


def finite(output: Any) -> bool:
    return output is not None and bool(torch.isfinite(output).all())


def repeatable(probe: Probe, convention: MaskConvention | None) -> Line | None:
    """None when two identical calls agree; else the line saying its output is random."""
    with torch.no_grad():
        first, second = (probe.run(probe.x, convention).output for _ in range(2))
    if bool(same_rows(first, second).all()):
        return None
    return Line(False, "repeatable: its output changes between two identical calls in eval mode: dropout "
                       "with training=self.training? (F.dropout(w, p, training=self.training), or an "
                       "nn.Dropout module); the other checks wait for this one")


def not_finite(probe: Probe, tried: Tried, weights: dict | None) -> tuple[Line, list[str]]:
    """The line for output with NaN or inf under every mask tried: which positions, the likely
    cause, and the mistakes that reproduce its finite rows exactly."""
    output = tried[0][1].output
    bad = (~torch.isfinite(output)).any(dim=2).any(dim=0)  # (T,)
    rows = bad.nonzero().flatten().tolist()
    T = probe.shape[1]
    where = f"position{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows))} of {T}"
    found = []
    if weights is not None and len(rows) < T:
        found = explain(weights, probe.x, probe.heads, output, rows=~bad) or []
    if found:
        named = " + ".join(mistake(m).name for m in found)
        cause = f"{named} reproduces its other rows exactly. Fix: {'; '.join(mistake(m).fix for m in found)}"
    else:
        cause = ("likely a mask row that hides every key, the diagonal included (softmax over nothing "
                 "but -inf is NaN); " + mistake("diagonal_hidden").fix)
    kind = "NaN" if bool(torch.isnan(output).any()) else "inf"
    return Line(False, f"finite: its output is {kind} at {where}: {cause}; the other checks wait for "
                       f"this one"), found


def short_buffers(module: Any, block_size: int) -> list[tuple[str, int]]:
    """Its square (…, n, n) buffers with n < block_size: masks built for a shorter context."""
    return [(name, b.size(-1)) for name, b in module.named_buffers()
            if b.dim() >= 2 and b.size(-1) == b.size(-2) and b.size(-1) < block_size]


def at_context(built: Built, convention: MaskConvention | None, block_size: int, causal: bool,
               agrees: bool, weights: dict | None) -> Line | None:
    """None when the class runs as well at ``block_size`` positions as on the probe (causal and
    agreeing with the reference there if it was on the probe); else the line saying what fails
    there, naming a mask buffer built for fewer positions."""
    probe = Probe.of(built, block_size)
    buffers = short_buffers(built.module, block_size)
    named = "; ".join(f"mask buffer {name} built for {n} positions; the model trains with {block_size}"
                      for name, n in buffers)
    fix = ("build it for the whole context (a block_size/context_length argument, or "
           "torch.tril(torch.ones(block_size, block_size)))" if buffers else "")
    prefix = f"at T={block_size}, the training block_size,"
    try:
        with torch.no_grad():
            output = probe.run(probe.x, convention).output
            failure = None
            if output is None or tuple(output.shape) != probe.shape:
                failure = f"it returns {None if output is None else tuple(output.shape)}, not {probe.shape}"
            elif not finite(output):
                failure = "its output is not finite"
            elif causal and (broken := causal_break(probe, convention, output)) is not None:
                failure = f"output {broken[0]} changes when position {broken[1]} changes"
            elif agrees and weights is not None:
                gap = (output - reference_output(weights, probe.x, probe.heads)).abs().max().item()
                if gap > TOLERANCE:
                    failure = f"it differs from tinylm's reference by {gap:.3g} (at T=7 it agrees)"
    except Exception as error:
        failure = f"it fails: {reason(error)}"
    if failure is None:
        return None
    if named:
        return Line(False, f"context: {named}: {prefix} {failure}; {fix}")
    return Line(False, f"context: {prefix} {failure}")


PROBE_DROPOUT = 0.1  # a dropout that shows whether eval mode turns it off


def _chosen_dropout(built: Built) -> tuple[str, dict] | None:
    """When tinylm itself built the class with dropout 0 (a required ``dropout`` argument, or a
    config object's ``config.dropout``): how that was spelled, and the kwargs that build it with
    ``PROBE_DROPOUT`` instead."""
    drop_names = (*DROPOUT_NAMES, "resid_pdrop", "embd_pdrop")
    if built.config_arg is not None:
        own = dict(built.given.get(built.config_arg) or {})
        if any(n in own for n in drop_names):
            return None
        return (f"{built.config_arg}.dropout=0.0",
                built.given | {built.config_arg: own | dict.fromkeys(drop_names, PROBE_DROPOUT)})
    chosen = [k for k, v in built.kwargs.items() if k in DROPOUT_NAMES and k not in built.given and not v]
    if not chosen:
        return None
    return f"{chosen[0]}=0.0", built.given | {chosen[0]: PROBE_DROPOUT}


def dropout_given(built: Built, rebuild: Callable[[dict], Built], convention: MaskConvention | None
                  ) -> Line | None:
    """When its dropout was 0 (set by kwargs, or chosen by tinylm for a required argument or a
    config object): None if the class is also repeatable in eval mode at its own default (or at
    ``PROBE_DROPOUT``); else the line saying the ✓ lines held only with dropout 0."""
    given = [(k, v) for k, v in built.given.items() if k in DROPOUT_NAMES and not v]
    chosen = None if given else _chosen_dropout(built)
    if not given and chosen is None:
        return None
    other_kwargs = ({k: v for k, v in built.given.items() if k != given[0][0]} if given else chosen[1])
    try:
        other = rebuild(other_kwargs)
        line = repeatable(Probe.of(other), convention)
    except Exception:  # without it the class does not build or run: the ✓ lines stand as given
        return None
    if line is None:
        return None
    if chosen is not None:
        return Line(False, f"repeatable: built with dropout {PROBE_DROPOUT} its output changes between two "
                           f"identical calls in eval mode: dropout with training=self.training? "
                           f"(F.dropout(w, p, training=self.training), or an nn.Dropout module); the ✓ "
                           f"lines hold only because tinylm built it with {chosen[0]}")
    name, value = given[0]
    default = inspect.signature(type(other.module).__init__).parameters[name].default
    return Line(False, f"repeatable: with {name}={default!r} (its default) its output changes between two "
                       f"identical calls in eval mode: dropout with training=self.training? The ✓ "
                       f"lines hold only because kwargs.{name}={value!r}")
