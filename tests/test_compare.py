"""``tinylm compare``'s table, sorting, CSV, plot, grammar and errors, on event files written
here in a blink."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_script
from torch.utils.tensorboard import SummaryWriter

from tinylm.cli import main
from tinylm.runs import find_runs
from tinylm.tensorboard import session_start_summary


def write_run(run_dir: Path, heads: int, val_losses: list[float] | None, steps: int = 20) -> None:
    """A run laid out as tinylm writes one: <run dir>/.hydra and <run dir>/tb/events...."""
    (run_dir / ".hydra").mkdir(parents=True)
    writer = SummaryWriter(str(run_dir / "tb"))
    writer.file_writer.add_summary(session_start_summary(
        {"model.heads": heads, "model.layers": 2, "model.bias": True, "paths.output_dir": str(run_dir)}))
    writer.add_scalar("hp/params", 1000 * heads, 0)
    for step in range(1, steps, 2):
        writer.add_scalar("train/loss", 4.0 - step / steps, step)
    for i, loss in enumerate(val_losses or []):
        step = (i + 1) * steps // len(val_losses)  # a validation after n steps is logged at n
        writer.add_scalar("val/loss", loss, step)
        writer.add_scalar("val/bpc", loss / 0.6931471805599453, step)
    writer.add_scalar("hp/tokens_per_sec", 500.0 * heads, steps - 1)
    writer.close()


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    write_run(tmp_path / "2_model.heads=4", 4, [3.0, 2.5])
    write_run(tmp_path / "10_model.heads=8", 8, [3.0, 2.6, 2.7])  # best is not the last
    write_run(tmp_path / "1_model.heads=2", 2, None)  # no validation yet
    return tmp_path


@pytest.fixture
def compare(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
            ) -> Callable[..., tuple[str, str, int]]:
    """``tinylm compare ARGS`` in this process: its stdout, its stderr and its exit status."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the CLI hands Hydra a command line there
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")

    def run(*args: str) -> tuple[str, str, int]:
        try:
            main(["compare", *args])
            status = 0
        except SystemExit as exit:
            status = exit.code
        out, err = capsys.readouterr()
        return out, err, status

    return run


@pytest.fixture
def table(compare: Callable[..., tuple[str, str, int]]) -> Callable[..., str]:
    """What ``tinylm compare ARGS`` prints, when it succeeds."""

    def run(*args: str) -> str:
        out, err, status = compare(*args)
        assert status == 0, err
        return out.rstrip("\n")

    return run


@pytest.fixture
def error(compare: Callable[..., tuple[str, str, int]]) -> Callable[..., str]:
    """The one line ``tinylm compare ARGS`` fails with (exit status 2)."""

    def run(*args: str) -> str:
        out, err, status = compare(*args)
        assert (status, out) == (2, ""), err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        return err.removeprefix("error: ").rstrip("\n")

    return run


def rows_of(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()]


def test_table_has_a_row_per_run_and_a_column_per_differing_hyperparameter(sweep: Path, table) -> None:
    header, _, *rows = rows_of(table(str(sweep)))
    assert header == ["run", "model.heads", "params", "steps", "val/loss", "best val/loss", "val/bpc",
                      "best val/bpc", "tokens/s", "wall time"]  # layers and bias are the same everywhere
    assert [row[0] for row in rows] == ["1_model.heads=2", "2_model.heads=4", "10_model.heads=8"]
    by_name = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    eight = by_name["10_model.heads=8"]
    assert eight["model.heads"] == "8" and eight["params"] == "8,000" and eight["steps"] == "20"
    assert eight["val/loss"] == "2.7000" and eight["best val/loss"] == "2.6000"
    assert eight["best val/bpc"] == f"{2.6 / 0.6931471805599453:.4f}"
    assert eight["tokens/s"] == "4,000"


def test_a_run_without_validation_is_listed_and_marked(sweep: Path, table) -> None:
    header, _, *rows = rows_of(table(str(sweep)))
    row = dict(zip(header, rows[0], strict=True))
    assert row["run"] == "1_model.heads=2"
    assert row["val/loss"] == "no validation yet" and row["best val/bpc"] == "—"
    assert row["steps"] == "20"


def test_sort_by_a_metric_puts_runs_without_it_last(sweep: Path, table) -> None:
    _, _, *rows = rows_of(table(str(sweep), "sort=val_bpc"))
    assert [row[0] for row in rows] == ["2_model.heads=4", "10_model.heads=8", "1_model.heads=2"]
    _, _, *rows = rows_of(table(str(sweep), "sort=model.heads"))
    assert [row[1] for row in rows] == ["2", "4", "8"]


def test_csv_holds_plain_numbers(sweep: Path, table) -> None:
    records = list(csv.DictReader(io.StringIO(table(str(sweep), "csv=true"))))
    assert [r["run"] for r in records] == ["1_model.heads=2", "2_model.heads=4", "10_model.heads=8"]
    assert records[0]["validated"] == "false" and records[0]["val_loss"] == ""
    assert float(records[2]["best_val_loss"]) == pytest.approx(2.6)
    assert records[2]["model.heads"] == "8" and records[2]["params"] == "8000"


def test_several_dirs_are_named_from_their_common_parent(sweep: Path) -> None:
    runs = find_runs([sweep / "2_model.heads=4", sweep / "10_model.heads=8"])
    assert sorted(run.name for run in runs) == ["10_model.heads=8", "2_model.heads=4"]
    (only,) = find_runs([sweep / "2_model.heads=4"])
    assert only.name == "2_model.heads=4"


def test_a_resumed_run_reads_all_its_event_files(tmp_path: Path) -> None:
    write_run(tmp_path / "run", 4, [3.0])
    writer = SummaryWriter(str(tmp_path / "run" / "tb"))  # the resume: a second file, same dir
    writer.add_scalar("val/loss", 2.0, 40)
    writer.close()
    (run,) = find_runs([tmp_path])
    assert len(list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))) == 2
    assert [p.step for p in run.scalars["val/loss"]] == [20, 40]
    assert run.hparams["model.heads"] == 4


def test_plot_draws_a_png(sweep: Path, tmp_path: Path, compare) -> None:
    import matplotlib.image

    png = tmp_path / "curves.png"
    out, err, status = compare(str(sweep), f"plot={png}")
    assert status == 0 and err == f"wrote {png}\n" and out.startswith("| run |")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(png).shape[:2] == (450, 800)


def a_file(d: Path) -> Path:
    (d / "a.txt").write_text("not a run")
    return d / "a.txt"


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "nowhere", "no such directory"),
    (lambda d: d, "no TensorBoard event files"),
    (a_file, "not a directory"),
])
def test_a_dir_without_runs_is_a_clear_error(tmp_path: Path, make, message: str, error) -> None:
    path = make(tmp_path)
    assert error(str(path)).startswith(f"{path}: {message}")


def test_unknown_sort_column_is_a_clear_error(sweep: Path, error) -> None:
    assert error(str(sweep), "sort=bpc").startswith("sort: no column 'bpc'; use one of run, params")


def test_dirs_given_as_a_key_or_as_plain_arguments_are_the_same(sweep: Path, table) -> None:
    runs = [str(sweep / "2_model.heads=4"), str(sweep / "10_model.heads=8")]
    plain = table(*runs, "sort=val_bpc")
    assert plain == table(f"dirs=['{runs[0]}','{runs[1]}']", "sort=val_bpc")
    assert [row[0] for row in rows_of(plain)[2:]] == ["2_model.heads=4", "10_model.heads=8"]
    (single,) = rows_of(table(f"dirs='{sweep / '1_model.heads=2'}'"))[2:]
    assert single[0] == "1_model.heads=2"


@pytest.mark.parametrize("old, new", [
    (["--sort", "val_bpc"], "--sort: tinylm takes key=value; write sort=val_bpc"),
    (["--sort=val_bpc"], "--sort: tinylm takes key=value; write sort=val_bpc"),
    (["--csv"], "--csv: tinylm takes key=value; write csv=true"),
    (["--plot", "curves.png"], "--plot: tinylm takes key=value; write plot=curves.png"),
    (["sortt=val_bpc"], "sortt: unknown key; did you mean sort? known keys are dirs, sort, csv, plot"),
    (["dirs=[a]"], "dirs: given twice, as plain arguments and as dirs=; give one of them"),
])
def test_a_flag_or_key_it_does_not_take_names_the_right_spelling(sweep: Path, old: list[str], new: str,
                                                                  error) -> None:
    assert error(str(sweep), *old) == new


def test_compare_writes_nothing_but_its_plot(sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             table) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    table(str(sweep), "plot=curves.png")
    assert sorted(p.name for p in cwd.iterdir()) == ["curves.png"]  # no outputs/, no .hydra/, no log


def test_the_script_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    result = run_script("compare.py", str(tmp_path / "nowhere"), timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'nowhere'}: no such directory\n"
    result = run_script("compare.py", str(tmp_path), timeout=60)  # exists, but empty
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {tmp_path}: no TensorBoard event files")
    assert result.stderr.count("\n") == 1


def test_a_column_names_the_step_induction_heads_formed_at(tmp_path: Path, compare) -> None:
    write_run(tmp_path / "formed", 4, [3.0, 2.5, 2.4, 2.3])
    write_run(tmp_path / "never", 4, [3.0, 2.5, 2.4, 2.3])
    for name, rise in (("formed", [0.02, 0.04, 0.61, 0.72, 0.75]), ("never", [0.02, 0.05, 0.08, 0.1, 0.12])):
        writer = SummaryWriter(str(tmp_path / name / "tb"))
        for step, value in zip([0, 5, 10, 15, 20], rise, strict=True):
            writer.add_scalar("heads/prefix_matching/layer_1_head_2", value, step)
            writer.add_scalar("heads/prefix_matching/layer_0_head_0", 0.01, step)
            writer.add_scalar("heads/prev_token/layer_0_head_0", 0.9, step)
        writer.close()
    out, _, status = compare(str(tmp_path))
    assert status == 0
    header, _, *rows = [line.split(" | ") for line in out.strip().splitlines()]
    column = header.index("induction heads")
    cells = {row[0].strip("| "): row[column] for row in rows}
    assert cells == {"formed": "step 10", "never": "—"}  # the steepest rise to ≥ 0.3 ends at 10
