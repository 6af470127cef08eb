"""Every bad input, from the command line, as a user meets it: one line on stderr that names
the key or file and the fix, exit status 2, no traceback, and nothing written.

The README's "When things go wrong" table lists the same cases.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import (
    CONFIG_CPU_SECONDS,
    CONFIG_WALL_SECONDS,
    assert_one_line_error,
    closed_port,
    local_server,
    quick_overrides,
    train_cli,
)

HUB_SECONDS = 30  # an unreachable Hub: the probe's deadline, not datasets' minutes of retries


# ---------------------------------------------------------------- config: before torch, < 3 s


@pytest.mark.parametrize(
    ("override", "starts", "contains"),
    [
        ("model.foo=1", "model.foo: unknown key", "known keys are layers, heads"),
        ("model.head=4", "model.head: unknown key", "did you mean model.heads?"),
        # a run directory named on the command line is locked before Hydra reads the rest
        ("hydra.run.dir=runs/a model.head=4", "model.head: unknown key", "did you mean model.heads?"),
        ("trainer.max_step=10", "trainer.max_step: unknown key", "did you mean trainer.max_steps?"),
        ("model.heads=four", "model.heads: expected an integer, got 'four'", ""),
        ("model.heads=5", "model.heads: 5 heads do not divide model.d_model=128", "use one of [1, 2, 4, 8"),
        ("model.block_size=0", "model.block_size: must be at least 1", ""),
        ("model.dropout=1.0", "model.dropout: must be in [0, 1)", ""),
        ("model.dropout=-0.1", "model.dropout: must be in [0, 1)", ""),
        ("model=nano2", "model: no preset 'nano2'", "choose one of baby, modern, nano"),
        ("model.heads=[4", "model.heads=[4: ", "quote"),
        ("hydra.run.dir=runs/a model.heads=[4", "model.heads=[4: ", "quote"),
        ("data=text_file", "data.source: is required", ""),
        ("data.source=/no/such/file.txt", "data.source: file not found: /no/such/file.txt", "data=pydocs"),
        ("ckpt_path=/no/such/last.ckpt", "ckpt_path: no checkpoint file at /no/such/last.ckpt", ""),
    ],
)
def test_a_config_mistake_is_one_line_within_seconds(override, starts, contains, workdir, no_torch) -> None:
    result, seconds, cpu = train_cli(workdir, *override.split(), env=no_torch)
    assert_one_line_error(result, workdir, starts, contains)
    assert cpu < CONFIG_CPU_SECONDS and seconds < CONFIG_WALL_SECONDS, f"{cpu:.1f} s CPU, {seconds:.1f} s"


def test_a_mistake_in_any_job_of_a_sweep_stops_it_before_the_first(workdir, no_torch, small_text) -> None:
    result, _, _ = train_cli(workdir, "-m", "model.heads=2,5", f"data.source={small_text}", env=no_torch)
    assert_one_line_error(result, workdir, "model.heads: 5 heads do not divide")


# ---------------------------------------------------------------- data


def test_a_hub_id_while_offline(workdir) -> None:
    offline = {"HF_HUB_OFFLINE": "1"}
    result, seconds, _ = train_cli(workdir, "data.source=karpathy/tiny_shakespeare", env=offline)
    assert_one_line_error(result, workdir, "data.source='karpathy/tiny_shakespeare'",
                          "not in your Hugging Face cache", "data=pydocs")
    assert seconds < HUB_SECONDS, f"{seconds:.1f} s"


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A server on 127.0.0.1 that accepts connections and never answers; closed afterwards."""
    with local_server(lambda connection: True) as port:
        yield port


@pytest.fixture
def trickling_listener() -> Iterator[int]:
    """A server on 127.0.0.1 that answers every request, the probe included, a byte a second:
    each read comes well inside any read timeout, the answer never within a minute."""

    def trickle(connection) -> bool:
        def send() -> None:
            try:
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n":
                    connection.sendall(bytes([byte]))
                    time.sleep(1)
            except OSError:
                pass  # the client gave up, or the test ended

        threading.Thread(target=send, daemon=True).start()
        return True

    with local_server(trickle) as port:
        yield port


HUBS = {"never answers": "silent_listener", "trickles a byte a second": "trickling_listener"}


@pytest.mark.parametrize("hub", ["closed port", *HUBS])
def test_an_unreachable_hub_fails_fast(hub: str, workdir, request) -> None:
    port = closed_port() if hub == "closed port" else request.getfixturevalue(HUBS[hub])
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    result, seconds, _ = train_cli(workdir, "data.source=karpathy/tiny_shakespeare", env=env)
    assert_one_line_error(result, workdir, "data.source='karpathy/tiny_shakespeare'",
                          f"the Hub at http://127.0.0.1:{port} cannot be reached", "data=pydocs",
                          "HF_HUB_OFFLINE=1")
    assert seconds < HUB_SECONDS, f"{seconds:.1f} s"


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    root = tmp_path / "texts"
    root.mkdir()
    (root / "empty.txt").write_text("")
    (root / "short.txt").write_text("hello world, " * 20)  # 260 characters: val has 26
    (root / "table.csv").write_text("content,label\nTo be or not to be,1\n" * 200)
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "starts", "contains"),
    [
        ("empty.txt", "data.source=", "holds no text"),
        ("table.csv", "data.text_column='text' is not a column", "its columns are ['content', 'label']"),
        ("short.txt", "data.source=", "model.block_size + 1 = 65"),
        ("/proc/self/status", "data.source='/proc/self/status' could not be read: OSError",
         "copy it into a regular file and give that"),
    ],
)
def test_unusable_text(source, starts, contains, texts, workdir) -> None:
    result, _, _ = train_cli(workdir, f"data.source={texts / source}")
    assert_one_line_error(result, workdir, starts, contains)


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint(trained) -> Path:
    """A real last.ckpt of a 2-layer model."""
    return trained[0] / "checkpoints" / "last.ckpt"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "starts", "contains"),
    [
        ("truncated", "ckpt_path: ", "is truncated or corrupt"),
        ("random bytes", "ckpt_path: ", "is truncated or corrupt"),
        ("not tinylm", "ckpt_path: ", "is not a tinylm checkpoint"),
        ("other shape", "ckpt_path: the checkpoint's model differs", "model.layers=2 there, 3 here"),
    ],
)
def test_a_checkpoint_that_cannot_be_resumed(damage, starts, contains, checkpoint, small_text, tmp_path,
                                            workdir) -> None:
    path, extra = tmp_path / "bad.ckpt", []
    if damage == "truncated":
        path.write_bytes(checkpoint.read_bytes()[:5000])
    elif damage == "random bytes":
        path.write_bytes(os.urandom(5000))
    elif damage == "not tinylm":
        torch.save({"state_dict": {}, "global_step": 3}, path)
    else:
        path, extra = checkpoint, ["model.layers=3"]
    args = quick_overrides(small_text, workdir / "run", f"ckpt_path={path}", *extra, script=True)
    result, _, _ = train_cli(workdir, *args)
    assert_one_line_error(result, workdir, starts, contains)


def test_tinylm_debug_shows_the_traceback(workdir) -> None:
    result, _, _ = train_cli(workdir, "model.heads=5", env={"TINYLM_DEBUG": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError: model.heads: 5 heads" in result.stderr
