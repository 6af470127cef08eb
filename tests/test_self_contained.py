"""The suite runs on a fresh clone: the test-support code (tests/ and CI's script) reaches no
file beside the repo, neither by climbing out of it nor by naming the folder where a corpus
once lay; the corpus the tests train on is the one the package ships."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from conftest import REPO, SHAKESPEARE_SHA256

# Every file but this one, which spells out what the others must not hold.
SUPPORT = sorted(p for folder in ("tests", ".ci") for p in (REPO / folder).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts and p != Path(__file__).resolve())
# Ways out of the repo: a ".." path component, the root's parent, or a file's third parent
# (a file in tests/ is one below the root: parents[1] is the root, parents[2] beside it).
CLIMBS = re.compile(r"""(?<![\w.])\.\.(?=[/\\"']|$)|REPO\.parents?\b|parents\[[2-9]\]|(?:\.parent){3}""")
# The folder beside the repo that held the corpus, as a path component (absolute paths too).
NAMED = re.compile(r"""[/\\"']shared(?=[/\\"'])""")
# CI's script moves from its own folder, .ci, up to the root: that ".." stays inside the repo.
INSIDE = {(".ci/run", 'cd "$(dirname "$0")/.."')}


def offences(pattern: re.Pattern[str]) -> list[str]:
    found = []
    for path in SUPPORT:
        name = str(path.relative_to(REPO))
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if pattern.search(line) and (name, line.strip()) not in INSIDE:
                found.append(f"{name}:{number}: {line.strip()}")
    return found


def test_test_support_code_climbs_out_of_the_repo_nowhere() -> None:
    assert SUPPORT and REPO / ".ci" / "run" in SUPPORT
    assert offences(CLIMBS) == []


def test_test_support_code_names_no_corpus_folder_beside_the_repo() -> None:
    assert offences(NAMED) == []


@pytest.mark.parametrize(("line", "pattern"), [
    ('SHAKESPEARE = REPO.parent / "shared" / "data"', CLIMBS),
    ("data.source=../shared/data/tinyshakespeare/input.txt", CLIMBS),
    ("Path(__file__).resolve().parents[2]", CLIMBS),
    ('os.path.join(REPO, "..", "x")', CLIMBS),
    ('Path("/work/shared/data")', NAMED),
    ('ROOT / "shared" / "input.txt"', NAMED),
])
def test_the_checks_catch_the_ways_out(line: str, pattern: re.Pattern[str]) -> None:
    assert pattern.search(line)


@pytest.mark.parametrize("line", [
    "from .conftest import REPO", "tmp_path / 'run..1'", "positions 0 .. T - 1", "x = parents[1]",
    "run_dir = checkpoint.parent.parent", "shared memory", "a shared/memory-mapped file",
])
def test_the_checks_pass_what_stays_inside(line: str) -> None:
    assert not CLIMBS.search(line) and not NAMED.search(line)


def test_the_tests_train_on_the_packaged_corpus(shakespeare_path: Path, small_text: Path) -> None:
    assert hashlib.sha256(shakespeare_path.read_bytes()).hexdigest() == SHAKESPEARE_SHA256
    assert shakespeare_path.read_text().startswith(small_text.read_text())
    assert REPO not in shakespeare_path.parents  # a copy in pytest's temporary folder
