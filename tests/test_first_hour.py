"""What a new user met in their first hour (issue 15), each as they typed it: one line on
stderr naming the key or file and the fix, exit status 2, no traceback, nothing left behind,
within seconds; and what a run now says and writes."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from conftest import CONFIG_CPU_SECONDS, CONFIG_WALL_SECONDS, assert_one_line_error, local_server, train_cli

QUICK = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
         "model.layers=1", "model.d_model=32", "model.block_size=16", "callbacks.attention.enabled=false",
         "callbacks.samples.enabled=false", "callbacks.progress_bar.refresh_rate=0",
         "trainer.enable_model_summary=false"]


# ---------------------------------------------------------------- text that is not UTF-8 text


@pytest.fixture
def bad_texts(tmp_path: Path) -> Path:
    root = tmp_path / "texts"
    root.mkdir()
    (root / "latin1.txt").write_bytes("crème brûlée, à la carte\n".encode("latin-1") * 40)
    (root / "program").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    (root / "empty").mkdir()
    (root / "pictures").mkdir()
    (root / "pictures" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return root


@pytest.mark.parametrize(
    ("source", "starts", "contains"),
    [
        ("latin1.txt", "data.source: {root}/latin1.txt is not utf-8 text: byte 2 (0xe8) does not decode",
         "data.encoding=latin-1"),
        ("program", "data.source: {root}/program is not text: it holds a NUL byte at byte 7",
         "a binary file"),
        ("empty", "data.source: the directory {root}/empty is empty", "a directory of text files"),
        ("pictures", "data.source: the directory {root}/pictures holds 1 file(s), none of them text",
         ".txt"),
    ],
)
def test_text_that_cannot_be_read_is_one_line_before_torch(source, starts, contains, bad_texts, workdir,
                                                           no_torch) -> None:
    result, seconds, cpu = train_cli(workdir, f"data.source={bad_texts / source}", env=no_torch)
    assert_one_line_error(result, workdir, starts.format(root=bad_texts), contains)
    assert cpu < CONFIG_CPU_SECONDS and seconds < CONFIG_WALL_SECONDS, f"{cpu:.1f} s CPU, {seconds:.1f} s"


def test_the_byte_offset_is_exact_across_chunks(tmp_path: Path) -> None:
    from tinylm.sources import CHECK_CHUNK, DataError, check_text_files

    path = tmp_path / "big.txt"
    straddling = "a" * (CHECK_CHUNK - 1) + "é"  # its two bytes fall in two chunks: fine
    path.write_bytes(straddling.encode() + b"b" * 10 + b"\xff" + b"c" * 10)
    with pytest.raises(DataError, match=f"byte {CHECK_CHUNK + 11:,} \\(0xff\\) does not decode"):
        check_text_files([str(path)])
    check_text_files([str(path)], "latin-1")


def test_an_unknown_encoding_is_a_config_error(workdir, no_torch) -> None:
    result, _, _ = train_cli(workdir, "data.encoding=latin-9000", env=no_torch)
    assert_one_line_error(result, workdir, "data.encoding: 'latin-9000' is not an encoding Python knows")


def test_data_encoding_reads_latin_1_and_the_run_says_what_it_loaded(bad_texts, workdir) -> None:
    text = "crème brûlée, à la carte\n" * 40
    result, _, _ = train_cli(workdir, f"data.source={bad_texts / 'latin1.txt'}", "data.encoding=latin-1",
                             *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    first = next(line for line in result.stdout.splitlines() if line.startswith("data: "))
    n_train = int(len(text) * 0.9)
    assert first == (f"data: {bad_texts / 'latin1.txt'} (1 file, read and cached): {n_train:,} training "
                     f"and {len(text) - n_train:,} validation characters, a vocabulary of {len(set(text))}")
    # The sample command it ends with has a prompt this model can read (its text has no R).
    (sample,) = [line for line in result.stdout.splitlines() if line.startswith("sample: ")]
    prompt = re.search(r"prompt='(.*)'$", sample)[1]
    assert prompt and set(prompt) <= set(text), sample
    # Named by its overrides (those that are not paths), as a sweep's jobs are.
    (run_dir,) = (workdir / "outputs").glob("*/*")
    assert re.fullmatch(r"\d{2}-\d{2}-\d{2}_callbacks.attention.enabled=false,callbacks.samples.enabled"
                        r"=false,data.encoding=latin-1,model.block_size=16,.*", run_dir.name), run_dir.name
    again, _, _ = train_cli(workdir, f"data.source={bad_texts / 'latin1.txt'}", "data.encoding=latin-1",
                            *QUICK, "hydra.run.dir=again")
    assert "(1 file, read back from the datasets cache)" in again.stdout


def test_a_directory_of_text_shards_uses_every_file(tmp_path: Path, workdir, small_text: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    text = small_text.read_text()[:9000]
    for i in range(3):
        (shards / f"part-{i}.txt").write_text(text[i * 3000:(i + 1) * 3000])
    result, _, _ = train_cli(workdir, f"data.source={shards}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"data: {shards} (3 files, read and cached): 8,100 training and 900 validation" in result.stdout


# ---------------------------------------------------------------- the command line


def test_cfg_job_with_a_typo_is_one_line(workdir, no_torch) -> None:
    result, seconds, _ = train_cli(workdir, "--cfg", "job", "model.head=2", env=no_torch)
    assert_one_line_error(result, workdir, "model.head: unknown key; did you mean model.heads?")
    assert seconds < CONFIG_WALL_SECONDS


def test_a_trainer_argument_of_the_wrong_type_is_one_line(workdir) -> None:
    result, _, _ = train_cli(workdir, "+trainer.max_epochs=x")
    assert_one_line_error(result, workdir, "trainer.max_epochs: expected an integer or null, got 'x'")


def test_a_checkpoint_path_named_by_overrides_needs_no_quotes(tmp_path: Path) -> None:
    from tinylm.cli import check_command

    run = "outputs/2026-12-01/19-26-44_model.heads=8,trainer.max_steps=20"
    check_command(["sample", f"ckpt={run}", "prompt=ROMEO:"])
    check_command(["train", f"ckpt_path={run}/checkpoints/last.ckpt", "model.heads=8"])


def test_pip_install_leaves_nothing_git_would_add() -> None:
    from conftest import REPO

    ignored = (REPO / ".gitignore").read_text().split()
    assert "build/" in ignored and "*.egg-info/" in ignored


def test_a_run_is_named_by_its_overrides() -> None:
    from tinylm.rundir import MAX_NAME_CHARS, run_name_suffix

    assert run_name_suffix("") == ""  # outputs/<date>/<time>, as before
    assert run_name_suffix("model.heads=8") == "_model.heads=8"
    assert run_name_suffix("model.attention=my/attn.py:A") == "_model.attention=my-attn.py:A"
    assert len(run_name_suffix("x" * 500)) == MAX_NAME_CHARS + 1


# ---------------------------------------------------------------- memory, and a run that hangs


@pytest.mark.parametrize(
    ("overrides", "starts", "contains"),
    [
        (["model.block_size=100000"], "model.block_size: 100,000 needs about 1.1 TB of memory for the "
         "attention pictures", "callbacks.attention.enabled=false"),
        (["model.block_size=1000000", "callbacks.attention.enabled=false"],
         "model.block_size: 1,000,000 needs about", "for a training batch"),
        (["model.d_model=100000"], "model.d_model: 100,000 needs about 7.7 TB of memory for the model's "
         "weights", "the largest model.d_model that fits is"),
        (["data.batch_size=100000000"], "data.batch_size: 100,000,000 needs about", "for a training batch"),
        (["model.attention=explicit", "model.block_size=50000", "callbacks.attention.enabled=false"],
         "model.block_size: 50,000 needs about", "the largest model.block_size that fits is"),
    ],
)
def test_a_run_that_cannot_fit_in_memory_is_refused_before_torch(overrides, starts, contains, workdir,
                                                                 no_torch) -> None:
    result, seconds, cpu = train_cli(workdir, *overrides, "trainer.accelerator=cpu", env=no_torch)
    assert_one_line_error(result, workdir, starts, contains, "available")
    assert cpu < CONFIG_CPU_SECONDS and seconds < CONFIG_WALL_SECONDS, f"{cpu:.1f} s CPU, {seconds:.1f} s"


def test_the_largest_value_that_fits_does_fit() -> None:
    from conftest import compose

    from tinylm.config import TrainConfig
    from tinylm.errors import ConfigError
    from tinylm.memory import check_fits, numbers, total

    config = TrainConfig.from_dict(compose("model.block_size=100000", "paths.output_dir=."))
    with pytest.raises(ConfigError) as refused:
        check_fits(config, 8e9)
    best = int(re.search(r"the largest model.block_size that fits is ([\d,]+)", str(refused.value))[1]
               .replace(",", ""))
    fits = TrainConfig.from_dict(compose(f"model.block_size={best}", "paths.output_dir=."))
    too_big = TrainConfig.from_dict(compose(f"model.block_size={best + 1}", "paths.output_dir=."))
    assert total(numbers(fits)) <= 8e9 < total(numbers(too_big))
    check_fits(TrainConfig.from_dict(compose("paths.output_dir=.")), 8e9)  # the default fits in 8 GB


BLOCKED = '''
import ctypes, sys, time
from pathlib import Path
from lightning.pytorch.callbacks import Callback
sys.path.insert(0, {tests!r})
from conftest import compose, quick_overrides
from tinylm.config import TrainConfig
from tinylm.train import fit

class NativeKernel(Callback):
    """At step 3, block in C for a minute as a long kernel does: no Python runs meanwhile."""
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step != 3:
            return
        libc = ctypes.CDLL(None)
        mutex, cond = ctypes.create_string_buffer(64), ctypes.create_string_buffer(64)
        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
        libc.pthread_mutex_lock(mutex)
        Path({marker!r}).touch()
        libc.pthread_cond_timedwait(cond, mutex, ctypes.byref(Timespec(int(time.time()) + 90, 0)))

values = compose(*quick_overrides(Path({text!r}), Path({run!r}), "trainer.max_steps=10", "logger=none"))
fit(TrainConfig.from_dict(values), extra_callbacks=[NativeKernel()])
'''


def test_a_second_ctrl_c_stops_a_run_blocked_in_a_native_kernel(small_text: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    marker = tmp_path / "blocked"
    code = BLOCKED.format(tests=str(REPO / "tests"), marker=str(marker), text=str(small_text),
                          run=str(tmp_path / "run"))
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), process.communicate()[1][-3000:]
        process.send_signal(signal.SIGINT)
        time.sleep(1)
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, stderr = process.communicate(timeout=60)
        waited = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-3000:]
    assert waited < 30, f"{waited:.0f} s: the second Ctrl-C waited for the kernel"  # it blocks for 90 s
    lines = stderr.strip().splitlines()
    assert "Ctrl-C again stops at once, without saving" in lines[-2]
    assert lines[-1].startswith("stopped: Ctrl-C twice: stopped at once, without saving")


# ---------------------------------------------------------------- a Hub that stalls


def answered_the_probe(connection) -> bool:
    """Read a request; if it is tinylm's reachability probe (HEAD /), answer it, close the
    connection and return True."""
    connection.settimeout(5)
    try:
        request = connection.recv(65536)
    except OSError:
        request = b""
    if not request.startswith(b"HEAD / "):
        return False
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    connection.close()
    return True


@pytest.fixture
def stalling_hub():
    """A server on 127.0.0.1 that answers tinylm's reachability probe (HEAD /) and then never
    answers anything else: the connection stays open, silent."""

    def answer_the_probe_only(connection) -> bool:
        return not answered_the_probe(connection)  # anything else is never answered

    with local_server(answer_the_probe_only) as port:
        yield port


@pytest.fixture
def trickling_hub():
    """A server on 127.0.0.1 that answers the probe, then answers every request with a body of
    a megabyte sent one byte every half second: each read comes well inside any read timeout."""

    def trickle(connection) -> None:
        try:
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                               b"Content-Length: 1048576\r\n\r\n")
            for _ in range(240):  # two minutes at most
                connection.sendall(b" ")
                time.sleep(0.5)
        except OSError:
            pass  # the client gave up
        connection.close()

    def answer_slowly(connection) -> bool:
        if not answered_the_probe(connection):
            threading.Thread(target=trickle, args=(connection,), daemon=True).start()
        return False

    with local_server(answer_slowly) as port:
        yield port


@pytest.mark.parametrize("hub", ["stalling_hub", "trickling_hub"])
def test_a_hub_that_answers_the_probe_then_stalls_fails_fast(hub: str, workdir, request) -> None:
    port = request.getfixturevalue(hub)
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    result, seconds, _ = train_cli(workdir, "data.source=karpathy/tiny_shakespeare", env=env)
    assert_one_line_error(result, workdir, "data.source='karpathy/tiny_shakespeare': the Hub at "
                          f"http://127.0.0.1:{port} stopped answering", "HF_HUB_OFFLINE=1")
    assert seconds < 45, f"{seconds:.0f} s"  # datasets' own retries took 409 s


# ---------------------------------------------------------------- labels in every script


def _label_pixels(figure, index: int):
    """The pixels of tick label ``index`` of the figure's first panel (x axis)."""
    import numpy as np

    renderer = figure.canvas.get_renderer()
    box = figure.axes[0, 0].get_xticklabels()[index].get_window_extent(renderer)
    pixels = figure.to_array()
    top, bottom = int(figure.height - box.y1), int(figure.height - box.y0) + 1
    return np.asarray(pixels[top:bottom, int(box.x0):int(box.x1) + 1])


CJK_FONT = pytest.mark.skipif(
    "not any('CJK' in family for family, _ in __import__('tinylm.attention.pictures', "
    "fromlist=['_fallbacks'])._fallbacks({'行'}))",
    reason="no CJK font installed (apt-get install fonts-noto-cjk; .ci/run installs it)")


@CJK_FONT
@pytest.mark.parametrize("text", ["行列の計算を実装しよう", "안녕하세요", "矩阵乘法", "Привет Γειά"])
def test_labels_in_every_script_are_drawn_not_boxes(text: str, capsys) -> None:
    import warnings

    import numpy as np

    from tinylm.attention.pictures import AttentionFigure

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure = AttentionFigure(text)
        figure.draw(np.tril(np.ones((len(text), len(text))))[None, None] / 2, ["layer 0 · head 0"])
    assert not [w for w in caught if "missing from font" in str(w.message)]
    assert capsys.readouterr().err == ""  # no font is missing
    glyphs = [_label_pixels(figure, i) for i, c in enumerate(text) if not c.isspace()]
    # Empty boxes all look alike; characters do not.
    distinct = {g.tobytes() for g in glyphs}
    assert len(distinct) == len({c for c in text if not c.isspace()})


def test_without_a_font_the_package_to_install_is_named_once(monkeypatch, capsys) -> None:
    import warnings

    import numpy as np

    from tinylm.attention import pictures

    monkeypatch.setattr(pictures, "_fallbacks", lambda chars: [])  # a machine with DejaVu only
    monkeypatch.setattr(pictures, "_REPORTED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            figure = pictures.AttentionFigure("行列 ab")
            figure.draw(np.full((1, 1, 5, 5), 0.2), ["layer 0 · head 0"])
    assert not [w for w in caught if "missing from font" in str(w.message)]
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: no installed font draws 列 (U+5217), 行 (U+884C);")
    assert "apt-get install fonts-noto-cjk" in line
    assert [t.get_text() for t in figure.axes[0, 0].get_xticklabels()] == ["?", "?", "␣", "a", "b"]


def test_the_key_named_is_the_one_the_command_line_set() -> None:
    from conftest import compose

    from tinylm.config import TrainConfig
    from tinylm.errors import ConfigError
    from tinylm.memory import check_fits

    config = TrainConfig.from_dict(compose("model.layers=10000", "paths.output_dir=."))
    with pytest.raises(ConfigError, match=r"^model.layers: 10,000 needs about .* the largest model.layers"):
        check_fits(config, 8e9, overrides=["model.layers=10000"])
