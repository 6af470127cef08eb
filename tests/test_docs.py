"""Every command and every error message shown in README.md and docs/*.md, checked, so the
docs cannot drift from the code.

- ``python scripts/<name>.py ARGS`` and ``tinylm <name> ARGS``: composed and validated with
  ``tinylm.cli.check_command`` (nothing runs);
- a command followed by an ``error: ...`` line, and every row of docs/reliability.md's error
  table: run for real, and stderr must be exactly that line, with exit status 2;
- the README's install and test commands are CI's; every other command must be one this
  file knows how to check; relative links point to files that exist.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO

from tinylm.sources import embedded_corpus

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SCRIPTS = {"train", "sample", "attention", "patch", "compare", "export", "bench", "soak", "check-attention"}
FENCE = re.compile(r"^```(\w*)\s*$")
# Shell variables the docs use inside commands, and a value for each.
SHELL_VARS = {"NODE_RANK": "0", "SLURM_JOB_ID": "1"}


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str
    error: str | None = None  # the `error: ...` line the docs show it printing

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _name(path: Path) -> str:
    return str(path.relative_to(REPO))


def _strip_comment(line: str) -> str:
    """A shell line without its trailing ``# comment`` (a ``#`` inside quotes stays)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def commands_of(path: Path) -> list[Command]:
    """The commands of every bash / console / sh block of ``path`` (and of plain ``` blocks
    whose lines start with ``$ ``), with the error line each is shown printing."""
    lines = path.read_text().splitlines()
    found: list[Command] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        lang, body = fence.group(1), list(enumerate(lines[i + 1:end], start=i + 2))
        prompt = any(text.startswith("$ ") for _, text in body)
        if lang in ("console",) or (lang in ("", "sh", "bash") and prompt):
            found += _console(path, body)
        elif lang in ("bash", "sh"):
            found += _script(path, body)
        i = end + 1
    return found


def _console(path: Path, body: list[tuple[int, str]]) -> list[Command]:
    found, k = [], 0
    while k < len(body):
        number, text = body[k]
        k += 1
        if not text.startswith("$ "):
            continue
        output = []
        while k < len(body) and not body[k][1].startswith("$ "):
            output.append(body[k][1])
            k += 1
        errors = [line for line in output if line.startswith("error: ")]
        found.append(Command(_name(path), number, text[2:], errors[0] if errors else None))
    return found


def _script(path: Path, body: list[tuple[int, str]]) -> list[Command]:
    found, pending, start = [], "", 0
    for number, text in body:
        text = _strip_comment(text)
        if not text and not pending:
            continue
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        found.append(Command(_name(path), start, (pending + text).strip()))
        pending = ""
    return found


ALL = [command for doc in DOCS for command in commands_of(doc)]


def error_table() -> list[Command]:
    """The rows of docs/reliability.md's table: | what | `command` | `error: ...` | what to do |."""
    path = REPO / "docs" / "reliability.md"
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2].startswith("`error: "):
            rows.append(Command(_name(path), number, cells[1].strip("`"), cells[2].strip("`")))
    return rows


TABLE = error_table()


# ---------------------------------------------------------------- commands, split like a shell


def expand(text: str, variables: dict[str, str]) -> str:
    """``text`` with the shell variables it uses replaced by their values."""
    for name, value in {**SHELL_VARS, **variables}.items():
        text = text.replace(f"${name}", value)
    return text


def words(text: str) -> tuple[dict[str, str], list[str]]:
    """The environment assignments in front of a command line, and its words."""
    argv = shlex.split(text)
    env = {}
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        key, value = argv.pop(0).split("=", 1)
        env[key] = value
    return env, argv


def entry_point(argv: list[str]) -> list[str] | None:
    """``[name, *args]`` for a tinylm entry point (``python scripts/x.py``, ``tinylm x``, also
    behind ``torchrun``/``srun``), or None for any other command."""
    if argv and argv[0] == "srun":
        argv = argv[1:]
    if argv and argv[0] == "torchrun":
        script = next((k for k, word in enumerate(argv) if word.endswith(".py")), None)
        argv = ["python", *argv[script:]] if script is not None else argv
    if len(argv) >= 2 and argv[0] == "python" and (m := re.fullmatch(r"scripts/(\w+)\.py", argv[1])):
        name = m.group(1).replace("_", "-")  # scripts/check_attention.py is check-attention
        return [name, *argv[2:]] if name in SCRIPTS else None
    if len(argv) >= 2 and argv[0] == "tinylm" and argv[1] in SCRIPTS:
        return argv[1:]
    return None


def ci_line(marker: str) -> str:
    """The command on the line of .ci/run marked ``# README: <marker>``."""
    for line in (REPO / ".ci" / "run").read_text().splitlines():
        if f"# README: {marker}" in line:
            return _strip_comment(line)
    raise AssertionError(f".ci/run has no line marked 'README: {marker}'")


@pytest.fixture(scope="module")
def places(trained, small_text: Path) -> dict[str, str]:
    """The documented placeholders, each with a real path."""
    run_dir = trained[0]
    return {"outputs/<date>/<time>": str(run_dir), "multirun/<date>/<time>": str(run_dir.parent),
            "outputs/<date>": str(run_dir.parent), "path/to/file.txt": str(small_text),
            "path/to/input.txt": str(small_text), "<preset>": "nano",
            "path/to/file.py": str(REPO / "docs" / "attention-examples" / "correct.py"),
            "ClassName": "MultiHeadAttention"}


def substitute(text: str, places: dict[str, str]) -> str:
    for placeholder, value in sorted(places.items(), key=lambda item: -len(item[0])):
        text = text.replace(placeholder, value)
    return text


# ---------------------------------------------------------------- every command is checked


def _variables(command: Command) -> dict[str, str]:
    """Shell variables assigned earlier in the same doc (``S="..."``), for ``$S``."""
    variables = {}
    for other in ALL:
        m = re.fullmatch(r"([A-Z_]+)=(\".*\"|'.*'|\S*)", other.text)
        if m and other.doc == command.doc and other.line < command.line:
            variables[m.group(1)] = shlex.split(m.group(2))[0] if m.group(2) else ""
    return variables


@pytest.mark.parametrize("command", [c for c in ALL if c.error is None], ids=lambda c: c.id)
def test_a_documented_command_is_valid(command: Command, places: dict[str, str]) -> None:
    text = substitute(expand(command.text, _variables(command)), places)
    env, argv = words(text)
    if not argv:  # `S="..."`: an assignment, used by later lines
        assert env, command
        return
    if (args := entry_point(argv)) is not None:
        from tinylm.cli import check_command

        check_command(args)  # raises tinylm.config.TinyLMError for a config that would not run
        return
    match argv:
        case ["python", "-m", "pip", "install", "-e", ".[dev]"]:
            assert text == ci_line("install"), "the README's install command is not CI's"
        case ["pip", "install", "."] | ["python", "-m", "pip", "install", "-e", ".[hf]"]:
            pass
        case ["hf", "upload", repo, folder]:  # docs/huggingface.md: the directory tinylm export wrote
            assert "/" in repo and folder == "my-model", command.text
        case ["python", "-m", "pytest", *workers]:
            assert workers in ([], ["-n", "2"]), command.text
            assert text == ci_line("tests"), "the README's test command is not CI's"
        case ["ruff", "check", "."]:
            pass
        case ["export", assignment] if re.fullmatch(r"[A-Z_]+=\S+", assignment):
            pass
        case ["tensorboard", "--logdir", _, *rest]:
            assert rest == ["--samples_per_plugin", "images=1000"], "keeps 10 pictures a tag"
        case _:
            pytest.fail(f"{command.id}: test_docs does not know how to check {command.text!r}")


INLINE_TENSORBOARD = re.compile(r"`(tensorboard --logdir[^`]*)`")


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_every_tensorboard_command_in_the_text_keeps_every_picture(doc: Path) -> None:
    text = re.sub(r"\s+", " ", doc.read_text())  # inline code may wrap over lines
    for command in INLINE_TENSORBOARD.findall(text):
        assert command.endswith("--samples_per_plugin images=1000"), f"{_name(doc)}: {command!r}"


def test_the_readme_shows_ci_s_install_and_test_commands() -> None:
    readme = [c.text for c in ALL if c.doc == "README.md"]
    assert ci_line("install") in readme
    assert ci_line("tests") in readme


def test_the_readme_is_short() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move details to docs/"


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_relative_links_point_to_files(doc: Path) -> None:
    missing = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith(("#", "mailto:")):
            continue
        path = target.split("#", 1)[0]
        if not (doc.parent / path).exists():
            missing.append(target)
    assert not missing, f"{_name(doc)} links to files that do not exist: {missing}"


# ---------------------------------------------------------------- every error message is real


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, trained) -> Path:
    """A working directory holding every file the error commands name."""
    import torch

    from tinylm.checkpoint import FORMAT_VERSION

    root = tmp_path_factory.mktemp("docs-work")
    (root / "empty.txt").write_text("")
    (root / "short.txt").write_text("hello world, " * 20)  # 260 characters: val has 26
    (root / "table.csv").write_text("content,label\nTo be or not to be,1\n" * 200)
    (root / "latin1.txt").write_bytes("crème brûlée\n".encode("latin-1") * 40)
    (root / "program.bin").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    (root / "empty-dir").mkdir()
    (root / "utf16.txt").write_text("To be, or not to be\n" * 20, encoding="utf-16")
    (root / "utf16le.txt").write_text("To be, or not to be\n" * 20, encoding="utf-16-le")  # no BOM
    os.mkfifo(root / "fifo")
    (root / "loop.txt").symlink_to("loop.txt")
    (root / "mixed-dir").mkdir()
    (root / "mixed-dir" / "a.txt").write_text("To be, or not to be\n")
    shutil.copy(next((embedded_corpus("tiny_shakespeare") / "data").glob("*.parquet")),
                root / "mixed-dir" / "data.parquet")
    last = trained[0] / "checkpoints" / "last.ckpt"
    (root / "truncated.ckpt").write_bytes(last.read_bytes()[:5000])
    shutil.copytree(trained[0] / "checkpoints", root / "damaged", ignore=shutil.ignore_patterns("*.npz"))
    flipped = bytearray((root / "damaged" / "last.ckpt").read_bytes())
    middle = len(flipped) // 2
    flipped[middle:middle + 64] = bytes(b ^ 0xFF for b in flipped[middle:middle + 64])
    (root / "damaged" / "last.ckpt").write_bytes(bytes(flipped))
    torch.save({"state_dict": {}, "global_step": 3}, root / "not-tinylm.ckpt")
    torch.save({"tinylm": {"format": FORMAT_VERSION}, "state_dict": {}, "payload": _Payload(),
                "hyper_parameters": {"model": {}, "vocab": ["a"]}}, root / "pickled.ckpt")
    return root


class _Payload:
    """Unpickled, this would open a file: the code a poisoned checkpoint carries."""

    def __reduce__(self):
        return open, ("payload-ran", "w")


def run_error(command: Command, places: dict[str, str], workdir: Path) -> None:
    env, argv = words(substitute(command.text, places))
    args = entry_point(argv)
    assert args is not None, f"{command.id}: not a tinylm command: {command.text!r}"
    before = sorted(workdir.iterdir())
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / f"{args[0].replace('-', '_')}.py"), *args[1:]],
        capture_output=True, text=True, timeout=120, cwd=workdir,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )
    assert result.stderr.strip() == command.error, result.stderr[-3000:]
    assert result.returncode == 2
    assert sorted(workdir.iterdir()) == before, "a command stopped by bad input left files behind"


@pytest.mark.parametrize("command", [c for c in ALL if c.error is not None], ids=lambda c: c.id)
def test_a_documented_error_is_what_tinylm_prints(command: Command, places, workdir) -> None:
    run_error(command, places, workdir)


@pytest.mark.slow
@pytest.mark.parametrize("command", TABLE, ids=lambda c: c.id)
def test_the_error_table_is_what_tinylm_prints(command: Command, places, workdir) -> None:
    run_error(command, places, workdir)


def test_the_error_table_was_read() -> None:
    assert len(TABLE) >= 20, "docs/reliability.md's error table has lost its rows (or its columns)"
