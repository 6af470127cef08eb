"""When a run's induction heads formed, found from its logged curves by one stated rule.

The curve is the highest ``prefix_matching`` score of any head at each record (step 0 and
every validation). The rule: between consecutive records, take the steepest rise of that curve
per optimizer step among those that end at or above ``THRESHOLD``; the induction heads formed
around the step of the record that ends it. No such rise: none formed. The induction head is
the head with the highest prefix matching at that record; the head that helps it is the one
of an earlier layer with the highest ``prev_token`` score at the run's last record (an induction
head needs a previous-token head before it to know which token came before each key).

Used by the training callback (the line a run prints and logs), ``tinylm compare`` (a column)
and the explorer (a mark on its slider): plain numpy, arrays (S, L, H) over S records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

THRESHOLD = 0.3  # the highest prefix matching must reach this: below it no head does induction


@dataclass(frozen=True)
class Formation:
    """Where the induction heads formed, and the scores that show it."""

    step: int  # the record at the end of the steepest rise
    layer: int
    head: int
    before: float  # the induction head's prefix matching at the record before the rise
    after: float  # ... at the run's last record
    helper: tuple[int, int, float, float] | None  # layer, head, prev_token before and after

    def line(self) -> str:
        """"induction heads formed around step N: layer l head h (prefix matching a → b), helped
        by layer l' head h' (previous token c → d)"."""
        text = (f"induction heads formed around step {self.step}: layer {self.layer} head {self.head} "
                f"(prefix matching {self.before:.2f} → {self.after:.2f})")
        if self.helper is not None:
            layer, head, before, after = self.helper
            text += f", helped by layer {layer} head {head} (previous token {before:.2f} → {after:.2f})"
        return text


def find_formation(steps: Sequence[int], prefix_matching: np.ndarray,
                   prev_token: np.ndarray | None = None) -> Formation | None:
    """The rule above on records at ``steps`` (S,) of ``prefix_matching`` and ``prev_token``
    scores (S, L, H); None when no rise ends at or above the threshold."""
    steps = np.asarray(steps, np.int64)
    prefix = np.nan_to_num(np.asarray(prefix_matching, np.float64), nan=0.0)  # (S, L, H)
    if len(steps) < 2 or prefix.shape[0] != len(steps):
        return None
    best = prefix.reshape(len(steps), -1).max(-1)  # (S,): the highest of any head
    rates = np.diff(best) / np.maximum(np.diff(steps), 1)  # (S-1,): rise per step
    rates[best[1:] < THRESHOLD] = -np.inf  # a rise counts only when it ends at the threshold
    if not np.isfinite(rates).any() or rates.max() <= 0:
        return None
    end = int(np.argmax(rates)) + 1
    layer, head = np.unravel_index(int(np.argmax(prefix[end])), prefix.shape[1:])
    helper = None
    if prev_token is not None and layer > 0:
        prev = np.nan_to_num(np.asarray(prev_token, np.float64), nan=0.0)
        earlier = prev[-1, :layer]  # (layer, H): the heads of the layers before
        hl, hh = np.unravel_index(int(np.argmax(earlier)), earlier.shape)
        helper = (int(hl), int(hh), float(prev[end - 1, hl, hh]), float(prev[-1, hl, hh]))
    return Formation(step=int(steps[end]), layer=int(layer), head=int(head),
                     before=float(prefix[end - 1, layer, head]), after=float(prefix[-1, layer, head]),
                     helper=helper)


def none_formed(prefix_matching: np.ndarray) -> str:
    """The line for a run whose curve never rose to the threshold."""
    prefix = np.nan_to_num(np.asarray(prefix_matching, np.float64), nan=0.0)
    if prefix.size == 0:
        return "induction heads: no scores recorded"
    layer, head = np.unravel_index(int(np.argmax(prefix[-1])), prefix.shape[1:])
    return (f"no induction heads formed: the highest prefix matching is {prefix[-1].max():.2f} "
            f"(layer {layer} head {head}), below the rule's {THRESHOLD}")
