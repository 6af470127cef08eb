"""Compare runs: one table row per TensorBoard run, and their loss curves on one figure.

``tinylm compare multirun/<date>/<time>`` prints a markdown table: each run's name,
the hyperparameters that differ between the runs, its size, how far it trained, its final and
best validation loss and bits per character, the step its induction heads formed at (if they
did), its throughput and wall time. Everything is read
from the runs' TensorBoard event files (``tinylm.runs``).
"""

from __future__ import annotations

import csv
import io
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tinylm.attention.formation import find_formation
from tinylm.command_configs import CompareConfig
from tinylm.errors import TinyLMError
from tinylm.runs import Run, find_runs

# Hyperparameters that differ between runs without saying anything about them.
IGNORED_HPARAMS = ("paths.",)  # the run's own directory


class CompareError(TinyLMError):
    """A ``tinylm compare`` setting is wrong; the message names it."""


@dataclass
class Row:
    """What the table says about one run. None: not logged (yet)."""

    run: str
    hparams: dict[str, bool | float | str]
    params: int | None
    steps: int | None
    val_loss: float | None  # at the last validation
    best_val_loss: float | None
    val_bpc: float | None
    best_val_bpc: float | None
    induction_step: int | None  # where its induction heads formed (tinylm.attention.formation)
    tokens_per_sec: float | None
    wall_time: float  # seconds

    @property
    def validated(self) -> bool:
        return self.val_loss is not None


METRICS = ("params", "steps", "val_loss", "best_val_loss", "val_bpc", "best_val_bpc",
           "induction_step", "tokens_per_sec", "wall_time")
HEADINGS = ("params", "steps", "val/loss", "best val/loss", "val/bpc", "best val/bpc", "induction heads",
            "tokens/s", "wall time")
HEAD_TAG = re.compile(r"heads/(prefix_matching|prev_token)/layer_(\d+)_head_(\d+)")


def induction_step(run: Run) -> int | None:
    """The step its induction heads formed at, by the rule of ``tinylm.attention.formation`` on
    its logged ``heads/prefix_matching`` and ``heads/prev_token`` curves; None: none formed."""
    points = {}  # (score, layer, head) → {step: value}
    for tag, values in run.scalars.items():
        if (match := HEAD_TAG.fullmatch(tag)) is not None:
            name, layer, head = match[1], int(match[2]), int(match[3])
            points[name, layer, head] = {p.step: p.value for p in values}
    if not any(key[0] == "prefix_matching" for key in points):
        return None
    steps = sorted({step for values in points.values() for step in values})
    layers = 1 + max(key[1] for key in points)
    heads = 1 + max(key[2] for key in points)
    shape = (len(steps), layers, heads)
    curves = {name: np.full(shape, np.nan) for name in ("prefix_matching", "prev_token")}
    for (name, layer, head), values in points.items():
        curves[name][:, layer, head] = [values.get(step, np.nan) for step in steps]
    formed = find_formation(steps, curves["prefix_matching"], curves["prev_token"])
    return formed.step if formed is not None else None


def summarize(run: Run) -> Row:
    """The table row of ``run``, from its scalars."""

    def values(tag: str) -> list[float]:
        return [p.value for p in run.scalars.get(tag, [])]

    def last(tag: str) -> float | None:
        return values(tag)[-1] if values(tag) else None

    def best(tag: str) -> float | None:
        return min(values(tag)) if values(tag) else None

    # The steps trained: train/ values of step n are logged at n - 1 (the loss of the batch
    # that step n learned from), a validation after n steps at n.
    logged_steps = [p.step + tag.startswith("train/") for tag, points in run.scalars.items()
                    if tag.startswith(("train/", "val/")) for p in points]
    params = last("hp/params")
    # hp/tokens_per_sec is the run's mean; older runs have only the windowed train/ rate.
    tokens_per_sec = last("hp/tokens_per_sec")
    if tokens_per_sec is None and values("train/tokens_per_sec"):
        tokens_per_sec = statistics.mean(values("train/tokens_per_sec"))
    return Row(
        run=run.name, hparams=run.hparams,
        params=int(params) if params is not None else None,
        steps=max(logged_steps) if logged_steps else None,
        val_loss=last("val/loss"), best_val_loss=best("val/loss"),
        val_bpc=last("val/bpc"), best_val_bpc=best("val/bpc"), induction_step=induction_step(run),
        tokens_per_sec=tokens_per_sec, wall_time=run.wall_time,
    )


def differing_hparams(rows: Sequence[Row]) -> list[str]:
    """The hyperparameters whose values are not the same in every run (missing counts)."""
    keys = sorted({key for row in rows for key in row.hparams if not key.startswith(IGNORED_HPARAMS)})
    return [key for key in keys if len({repr(row.hparams.get(key)) for row in rows}) > 1]


def sort_rows(rows: list[Row], key: str) -> list[Row]:
    """Rows in ascending order of ``key`` (a metric, ``run``, or a hyperparameter); rows
    without a value go last. Run names sort naturally: 2_... before 10_...."""

    def value(row: Row) -> Any:
        if key == "run":
            return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", row.run)]
        return row.hparams.get(key) if key not in METRICS else getattr(row, key)

    def order(row: Row) -> tuple:
        v = value(row)
        return (v is None, isinstance(v, str), v if v is not None else 0)

    choices = ["run", *METRICS, *sorted({k for row in rows for k in row.hparams})]
    if key not in choices:
        raise CompareError(f"sort: no column {key!r}; use one of {', '.join(choices[:len(METRICS) + 1])} "
                           f"or a hyperparameter such as model.heads")
    return sorted(rows, key=order)


def metric_columns(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(metric, heading) of the table's metric columns: "induction heads" only when some run's
    induction heads formed (a run of text alone rarely makes them)."""
    shown = [(m, h) for m, h in zip(METRICS, HEADINGS, strict=True)]
    if all(row.induction_step is None for row in rows):
        shown = [(m, h) for m, h in shown if m != "induction_step"]
    return shown


def markdown(rows: Sequence[Row], keys: Sequence[str]) -> str:
    """A markdown table: run, the hyperparameters ``keys``, then the metrics."""
    columns = metric_columns(rows)
    header = ["run", *keys, *(heading for _, heading in columns)]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "---|" * (1 + len(keys)) + "---:|" * len(columns)]
    for row in rows:
        formatted = {
            "params": _number(row.params, "{:,}"), "steps": _number(row.steps, "{:,}"),
            "val_loss": _number(row.val_loss, "{:.4f}") if row.validated else "no validation yet",
            "best_val_loss": _number(row.best_val_loss, "{:.4f}"), "val_bpc": _number(row.val_bpc, "{:.4f}"),
            "best_val_bpc": _number(row.best_val_bpc, "{:.4f}"),
            "induction_step": _number(row.induction_step, "step {:,}"),
            "tokens_per_sec": _number(row.tokens_per_sec, "{:,.0f}"), "wall_time": _duration(row.wall_time),
        }
        cells = [row.run, *(_hparam(row.hparams.get(k)) for k in keys), *(formatted[m] for m, _ in columns)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def csv_table(rows: Sequence[Row], keys: Sequence[str]) -> str:
    """The same table as CSV, numbers unformatted; empty cells where nothing was logged."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    metrics = [m for m, _ in metric_columns(rows)]
    writer.writerow(["run", *keys, *metrics[:-1], "wall_time_s", "validated"])
    for row in rows:
        writer.writerow([row.run, *(_hparam(row.hparams.get(k), missing="") for k in keys),
                         *("" if getattr(row, m) is None else getattr(row, m) for m in metrics),
                         str(row.validated).lower()])
    return out.getvalue()


def labels(rows: Sequence[Row], keys: Sequence[str]) -> list[str]:
    """Short names for a legend: the differing hyperparameters (``model.heads=4``) where they
    tell the runs apart, else the run names; Hydra's job names repeat every fixed override."""
    short = [", ".join(f"{k}={_hparam(row.hparams.get(k))}" for k in keys) for row in rows]
    if keys and len(set(short)) == len(short):
        return short
    return [row.run if len(row.run) <= 60 else f"{row.run[:28]}…{row.run[-28:]}" for row in rows]


def plot_curves(runs: Sequence[Run], names: Sequence[str], path: str | Path) -> None:
    """val/loss (solid) and train/loss (dashed) against step, one colour per run, to ``path``;
    ``names`` label the runs."""
    fig = Figure(figsize=(8, 4.5), dpi=100)  # no pyplot: files only, no display, nothing global
    ax = fig.subplots()
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (run, name) in enumerate(zip(runs, names, strict=True)):
        colour = colours[i % len(colours)]
        train, val = run.scalars.get("train/loss", []), run.scalars.get("val/loss", [])
        ax.plot([p.step for p in train], [p.value for p in train], "--", color=colour, alpha=0.6,
                linewidth=1, label=None if val else f"{name} (no validation yet)")
        if val:
            ax.plot([p.step for p in val], [p.value for p in val], "-o", color=colour, markersize=3,
                    linewidth=1.8, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per character)")
    ax.set_title("val/loss (solid) and train/loss (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def run(config: CompareConfig, out: Callable[[str], None] = print) -> None:
    """``tinylm compare``; ``out`` receives the table."""
    if config.plot and not Path(config.plot).resolve().parent.is_dir():
        raise CompareError(f"plot: no directory {Path(config.plot).resolve().parent} to write into")

    runs = find_runs(config.dirs)
    rows = sort_rows([summarize(run) for run in runs], config.sort)
    keys = differing_hparams(rows)
    out(csv_table(rows, keys).rstrip("\n") if config.csv else markdown(rows, keys))
    if config.plot:
        by_name = {run.name: run for run in runs}
        plot_curves([by_name[row.run] for row in rows], labels(rows, keys), config.plot)
        print(f"wrote {config.plot}", file=sys.stderr)


def _number(value: float | None, spec: str) -> str:
    return "—" if value is None else spec.format(value)


def _hparam(value: bool | float | str | None, missing: str = "—") -> str:
    if value is None:
        return missing
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return value


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
