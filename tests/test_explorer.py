"""The attention explorer (``tinylm attention ... out=x.html``): one self-contained page, opened
in a real headless Chromium: a panel per layer × head, a hover moves the highlighted cells, the
slider steps through training."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from browser import Browser, chromium_binary

from tinylm.attention.explorer import write_explorer
from tinylm.attention.render import render_attention
from tinylm.command_configs import AttentionScriptConfig
from tinylm.errors import ConfigError

LAYERS, HEADS = 2, 4  # the `trained` run of conftest


@pytest.fixture(scope="module")
def pages(trained, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    run_dir, _, _ = trained
    out = tmp_path_factory.mktemp("explorer")
    pages = {"run": out / "run.html", "checkpoint": out / "checkpoint.html"}
    report = render_attention(AttentionScriptConfig(ckpt=str(run_dir), out=str(pages["run"])))
    assert "3 steps (0 to 40)" in report
    render_attention(AttentionScriptConfig(ckpt=str(run_dir / "checkpoints" / "best.ckpt"),
                                           prompt="ROMEO: What say you?", out=str(pages["checkpoint"])))
    return pages


@pytest.mark.parametrize("page", ["run", "checkpoint"])
def test_the_page_is_self_contained(pages: dict[str, Path], page: str) -> None:
    html = pages[page].read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("<script>") == 1
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)=", html)  # nothing fetched
    assert not re.search(r"url\(|@import|fetch\(|XMLHttpRequest", html)


@pytest.fixture(scope="module")
def browser():
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium here (.ci/run installs Debian's chromium package)")
    browser = Browser(binary)
    yield browser
    browser.close()


def panel_rows(browser: Browser) -> list[list[str]]:
    """Each panel's key cells under the current query: their weights, * marking the hot ones."""
    return browser.evaluate(
        "Array.from(document.querySelectorAll('.panel')).map(p => "
        "Array.from(p.querySelectorAll('.row span'))"
        ".map(s => s.dataset.weight + (s.classList.contains('hot') ? '*' : '')))"
    )


def test_in_chromium_a_panel_per_head_hover_and_slider(browser: Browser, pages: dict[str, Path],
                                                       tmp_path: Path) -> None:
    browser.open(pages["run"])
    shots = Path(os.environ.get("TINYLM_SCREENSHOTS", tmp_path))
    panels = browser.evaluate(
        "Array.from(document.querySelectorAll('.panel')).map(p => [Number(p.dataset.layer), "
        "Number(p.dataset.head), p.querySelector('canvas').width, p.querySelector('.scores').textContent])"
    )
    grid = [(layer, head) for layer in range(LAYERS) for head in range(HEADS)]
    assert [(layer, head) for layer, head, *_ in panels] == grid
    assert all(width > 0 and "ablation" in scores for *_, width, scores in panels)
    # The page drew the maps: a canvas holds pixels of more than one colour.
    assert browser.evaluate(
        "(() => { const c = document.querySelector('.panel canvas'); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data;"
        " return new Set(Array.from(d.filter((_, i) => i % 4 === 1))).size; })()"
    ) > 5
    assert browser.evaluate("document.getElementById('step-label').textContent").startswith("step 40")
    browser.screenshot(shots / "explorer-last-step.png")

    before = panel_rows(browser)
    browser.hover('#text span[data-pos="5"]')
    after = panel_rows(browser)
    assert after != before
    assert browser.evaluate("document.querySelector('#text span.query').dataset.pos") == "5"
    assert all(row[6:] == ["0.000"] * (len(row) - 6) for row in after)  # the future of position 5
    browser.screenshot(shots / "explorer-hover.png")

    scores = browser.evaluate("document.querySelector('.panel .scores').textContent")
    _, y = browser.centre("#step")
    left = browser.evaluate("document.getElementById('step').getBoundingClientRect().x")
    browser.click(left + 2, y)  # the slider's left end: the first step
    assert browser.evaluate("document.getElementById('step').value") == "0"
    assert browser.evaluate("document.getElementById('step-label').textContent").startswith("step 0 ")
    assert browser.evaluate("document.querySelector('.panel .scores').textContent") != scores
    assert panel_rows(browser) != after  # the same query, other weights
    browser.screenshot(shots / "explorer-step-0.png")


def test_in_chromium_a_checkpoint_page_has_one_step(browser: Browser, pages: dict[str, Path]) -> None:
    browser.open(pages["checkpoint"])
    assert browser.evaluate("document.querySelectorAll('.panel').length") == LAYERS * HEADS
    assert browser.evaluate("document.getElementById('step').disabled") is True
    assert browser.evaluate("document.querySelectorAll('#text span').length") == len("ROMEO: What say you?")


def test_in_chromium_clicking_a_character_shows_who_wrote_its_prediction(browser: Browser,
                                                                           pages: dict[str, Path]) -> None:
    browser.open(pages["checkpoint"])
    assert browser.evaluate("document.querySelectorAll('#attribution .bar-row').length") == 0
    x, y = browser.centre('#text span[data-pos="3"]')
    browser.click(x, y)  # pins position 3 ('E' of "ROMEO"): the bars of the prediction of 'O'
    bars = browser.evaluate("Array.from(document.querySelectorAll('#attribution .bar-row'))"
                            ".map(r => [r.dataset.component, Number(r.dataset.value)])")
    names = [name for name, _ in bars]
    assert names[0] == "embeddings: tokens" and "layer 1 head 3" in names and names[-1] == "final norm bias"
    header = browser.evaluate("document.querySelector('#attribution div').textContent")
    assert "logit of 'O' (next in the prompt)" in header and "frozen" in header
    total = float(re.search(r"logit of 'O' \(next in the prompt\) (-?[\d.]+)", header)[1])
    assert sum(value for _, value in bars) == pytest.approx(total, abs=0.01)  # the parts make the logit


def test_in_chromium_the_slider_marks_where_induction_heads_formed(browser: Browser, tmp_path: Path) -> None:
    maps = np.tril(np.full((3, 1, 1, 4, 4), 60, np.uint8))
    line = "induction heads formed around step 20: layer 0 head 0 (prefix matching 0.05 → 0.70)"
    page = write_explorer(tmp_path / "marked.html", list("abcd"), [0, 20, 40], maps,
                          {"entropy": np.zeros((3, 1, 1))}, marks={20: line})
    browser.open(page)
    assert browser.evaluate("document.getElementById('step').getAttribute('list')") == "step-marks"
    assert browser.evaluate("Array.from(document.querySelectorAll('#step-marks option')).map(o => o.value)"
                            ) == ["1"]
    assert not browser.evaluate("document.getElementById('step-label').textContent").endswith("◆")
    x, y = browser.centre("#marks button")
    browser.click(x, y)
    assert browser.evaluate("document.getElementById('step-label').textContent") == "step 20 (2 of 3) ◆"
    assert browser.evaluate("document.querySelector('#marks button').textContent") == "◆ " + line


HOSTILE = '<!--<script>" </script> <!--TITLE--> /*DATA*/ &amp;'


def test_in_chromium_a_hostile_title_and_labels_leave_the_page_whole(browser: Browser, tmp_path: Path
                                                                     ) -> None:
    labels = ["<", "!", "-", "-", "<", "/", "s", '"']  # a probe that spells out "<!--</s"
    maps = np.tril(np.full((1, 1, 1, len(labels), len(labels)), 60, np.uint8))
    page = write_explorer(tmp_path / "hostile.html", labels, [7], maps,
                          {"entropy": np.zeros((1, 1, 1))}, title=HOSTILE)
    browser.open(page)  # waits for the script's last line: it ran
    assert browser.evaluate("document.title") == HOSTILE
    assert browser.evaluate("document.querySelector('h1').textContent") == HOSTILE
    assert browser.evaluate("Array.from(document.querySelectorAll('#text span')).map(s => s.textContent)"
                            ) == labels
    assert browser.evaluate("document.querySelectorAll('.panel').length") == 1


def test_a_run_directory_and_another_prompt_is_one_line(trained) -> None:
    run_dir, _, _ = trained
    with pytest.raises(ConfigError, match=r"^prompt: the page of a run directory shows the probe the run "
                                          r"recorded at each step .*ckpt=.*last\.ckpt$"):
        render_attention(AttentionScriptConfig(ckpt=str(run_dir), prompt="ROMEO:", out="x.html"))


@pytest.mark.parametrize("arrays, message", [
    ({"probe": np.array([{"a": 1}], dtype=object), "steps": np.array([0]), "maps": np.zeros(1)},
     "Object arrays cannot be loaded when allow_pickle=False"),
    ({"probe": np.array(["a"]), "steps": np.array([0])}, "maps is not a file in the archive"),
    ({"probe": np.array(["a"]), "steps": np.array([0]), "maps": np.zeros((1, 1, 1, 2, 2), np.uint8)},
     "maps is not (S, L, H, n, n) uint8"),
])
def test_a_malformed_history_is_one_line(tmp_path: Path, arrays: dict, message: str) -> None:
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    np.savez(checkpoints / "attention.npz", **arrays)
    with pytest.raises(ConfigError) as error:
        render_attention(AttentionScriptConfig(ckpt=str(tmp_path / "run"), out=str(tmp_path / "x.html")))
    assert str(error.value).startswith(f"ckpt: {checkpoints / 'attention.npz'} is not an attention history")
    assert message in str(error.value) and "\n" not in str(error.value)
