"""``tinylm patch``'s mistakes: one line each, naming the key, before or after the model loads.
(Patching itself: tests/test_circuits.py on a hand-wired circuit, tests/test_induction.py on a
trained one.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tinylm.cli import main


@pytest.fixture
def patch(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the CLI hands Hydra a command line there

    def run(*args: str) -> str:
        with pytest.raises(SystemExit) as exit:
            main(["patch", *args])
        out, err = capsys.readouterr()
        assert (exit.value.code, out) == (2, ""), err
        assert err.count("\n") == 1, err
        return err.removeprefix("error: ").rstrip("\n")

    return run


def test_prompts_of_different_lengths_are_refused_before_anything_loads(patch, tmp_path: Path) -> None:
    assert patch(f"ckpt={tmp_path}", "clean=ROMEO:", "corrupt=JULIET:") == (
        "corrupt: must be as long as clean: 7 characters against 6; change the characters that matter, "
        "keep the length")
    assert patch(f"ckpt={tmp_path}", "clean=ab", "corrupt=ab").startswith("ckpt: no checkpoint file at ")


def test_a_character_the_model_never_saw_names_its_prompt(patch, trained) -> None:
    run_dir, _, _ = trained
    message = patch(f"ckpt={run_dir}", "clean=ROMEO: hi", "corrupt=ROMEO: h€")
    assert message.startswith("corrupt: ") and "€" in message
