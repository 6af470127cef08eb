"""docs/tutorial*.ipynb: the learner's journey in one notebook, stored without outputs, the same
code in every language, and run end to end in a real Jupyter kernel."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient

TUTORIAL = REPO / "docs" / "tutorial.ipynb"
TRANSLATIONS = [REPO / "docs" / f"tutorial.{lang}.ipynb" for lang in ("ja", "zh-Hant", "ko")]


def code_cells(path: Path) -> list[str]:
    return [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


@pytest.mark.parametrize("translation", TRANSLATIONS, ids=lambda p: p.name)
def test_a_translation_runs_the_same_code(translation: Path) -> None:
    assert code_cells(translation) == code_cells(TUTORIAL)
    markdown = [c.source for c in nbformat.read(translation, as_version=4).cells if c.cell_type == "markdown"]
    english = [c.source for c in nbformat.read(TUTORIAL, as_version=4).cells if c.cell_type == "markdown"]
    assert len(markdown) == len(english) and all(m != e for m, e in zip(markdown, english, strict=True))


@pytest.mark.parametrize("notebook", [TUTORIAL, *TRANSLATIONS], ids=lambda p: p.name)
def test_a_notebook_is_stored_without_outputs(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.slow
def test_the_tutorial_runs_end_to_end(tmp_path: Path) -> None:
    nb = nbformat.read(TUTORIAL, as_version=4)
    where = {"metadata": {"path": str(tmp_path)}}  # the kernel's working directory
    NotebookClient(nb, timeout=300, kernel_name="python3", resources=where).execute()
    shown = [(cell.source, out) for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]

    def text(source_start: str) -> str:
        return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                       for s, o in shown if s.startswith(source_start))

    checks = [o.data["text/plain"] for s, o in shown if "check_attention" in s and "data" in o]
    assert "✗ attention" in checks[0] and "√d_model" in checks[0]  # the mistake, named
    assert "✗" not in checks[1]  # fixed
    assert "best val/loss" in text("small = ")
    frames = [o.data["text/html"] for s, o in shown if s == "run.explorer()" and "data" in o]
    assert frames and frames[0].startswith("<iframe srcdoc=") and "https://" not in frames[0]
    assert text('run.sample("ROMEO:"').startswith("ROMEO:") and len(text('run.sample("ROMEO:"')) > 100
    compared = [o for s, o in shown if "tinylm.compare" in s and o.output_type == "execute_result"]
    assert "image/png" in compared[0].data and "model.heads" in compared[0].data["text/plain"]
    assert (tmp_path / "outputs").is_dir()  # runs are written where the notebook is, as from a shell
