"""The notebook API in a real Jupyter kernel: tinylm.train composes the CLI's config with its
checks and returns the run, twice in one kernel; a mistake raises the CLI's line; a class
defined in a cell is checked, trained, recorded by name and source hash only, and asked for
when loading; the explorer shows inline, isolated; interrupting the kernel saves and stops."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from conftest import quick_overrides
from jupyter_client.manager import start_new_kernel

from tinylm.checkpoint import read_checkpoint

ATTENTION = '''
import math, torch
from torch import nn

class MultiHeadAttention(nn.Module):
    def __init__(self, d_model, num_heads):
        super().__init__()
        self.num_heads, self.d_k = num_heads, d_model // num_heads
        self.W_Q, self.W_K = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.W_V, self.W_O = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def forward(self, x, mask=None):
        B, T, D = x.shape
        Q, K, V = (w(x).view(B, T, self.num_heads, self.d_k).transpose(1, 2)
                   for w in (self.W_Q, self.W_K, self.W_V))
        scores = Q @ K.transpose(-2, -1) / math.sqrt({scale})
        if mask is not None:
            scores = scores.masked_fill(mask == 0, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ V
        return self.W_O(out.transpose(1, 2).contiguous().view(B, T, D))
'''


class Kernel:
    """A Jupyter kernel (ipykernel) and its client; ``run`` executes a cell and gathers what it showed."""

    def __init__(self, cwd: Path) -> None:
        self.manager, self.client = start_new_kernel(kernel_name="python3", cwd=str(cwd))

    def run(self, code: str, timeout: float = 600, interrupt_when: str | None = None) -> dict:
        msg_id = self.client.execute(code)
        shown = {"stdout": "", "stderr": "", "html": [], "error": None, "result": None}
        deadline = time.monotonic() + timeout
        while True:
            message = self.client.get_iopub_msg(timeout=max(1.0, deadline - time.monotonic()))
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                shown[content["name"]] += content["text"]
                if interrupt_when and interrupt_when in shown["stdout"] + shown["stderr"]:
                    self.manager.interrupt_kernel()
                    interrupt_when = None
            elif kind in ("execute_result", "display_data"):
                shown["html"].append(content["data"].get("text/html", ""))
                shown["result"] = content["data"].get("text/plain")
            elif kind == "error":
                shown["error"] = f"{content['ename']}: {content['evalue']}"
            elif kind == "status" and content["execution_state"] == "idle":
                return shown

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel(small_text: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("notebook")
    kernel = Kernel(work)
    small = [o for o in quick_overrides(small_text, work)
             if not o.startswith(("paths.", "trainer.max_steps"))]
    assert kernel.run(f"import tinylm\nSMALL = {small!r}")["error"] is None
    yield kernel
    kernel.close()


def test_train_returns_the_run_and_a_second_run_works(kernel: Kernel) -> None:
    first = kernel.run("run = tinylm.train(*SMALL, 'trainer.max_steps=20')\n"
                       "print('best', run.best_val_loss, sorted(run.history), run.checkpoint.is_file())")
    assert first["error"] is None, first
    assert "best val/loss" in first["stdout"]  # the closing lines the command line prints
    best = first["stdout"].split("best ")[-1]
    assert float(best.split()[0]) > 0 and "['train/loss', 'val/bpc', 'val/loss'] True" in best
    second = kernel.run("run2 = tinylm.train(*SMALL, trainer={'max_steps': 20}, model={'heads': 2})\n"
                        "print(run2.best_val_loss, run2.dir != run.dir)")
    assert second["error"] is None, second
    assert second["stdout"].strip().endswith("True")
    shown = kernel.run("tinylm.compare(run, run2)")
    assert "model.heads" in shown["result"] and 'src="data:image/png;base64,' in shown["html"][0]


def test_a_mistake_raises_the_command_line_s_line(kernel: Kernel) -> None:
    shown = kernel.run("tinylm.train('model.heads=5')")
    assert shown["error"] == ("ConfigError: model.heads: 5 heads do not divide model.d_model=128 evenly; "
                              "use one of [1, 2, 4, 8, 16] or change model.d_model")


def test_a_class_of_a_cell_is_checked_trained_and_asked_for(kernel: Kernel, tmp_path: Path) -> None:
    wrong = kernel.run(ATTENTION.replace("{scale}", "D") + "tinylm.check_attention(MultiHeadAttention)")
    assert "✗ attention" in wrong["result"] and "√d_model" in wrong["result"]
    code = ATTENTION.replace("{scale}", "self.d_k")
    right = kernel.run(code + "print(tinylm.check_attention(MultiHeadAttention).ok)")
    assert right["stdout"].strip() == "True", right
    trained = kernel.run("mine = tinylm.train(*SMALL, 'trainer.max_steps=10', attention=MultiHeadAttention)\n"
                         "print(mine.dir)")
    assert trained["error"] is None, trained
    run_dir = Path(trained["stdout"].strip().splitlines()[-1])
    saved = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["hyper_parameters"]["model"]["attention"]
    assert saved.startswith("notebook@") and saved.endswith(":MultiHeadAttention")
    hyper_parameters = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["hyper_parameters"]
    assert "forward" not in json.dumps(hyper_parameters)  # its name and hash, never its code
    asked = kernel.run("tinylm.load(str(mine.dir))")
    assert asked["error"].startswith("CheckpointError: attention: this model's attention is the class "
                                     "MultiHeadAttention defined in a notebook")
    given = kernel.run("model = tinylm.load(str(mine.dir), attention=MultiHeadAttention)\n"
                       "text = model.sample('ROMEO:', max_new_tokens=12)")
    assert given["error"] is None and given["stdout"].startswith("ROMEO:")


def test_the_explorer_shows_inline_isolated_and_offline(kernel: Kernel) -> None:
    shown = kernel.run("run.explorer()")
    frame = shown["html"][0]
    assert frame.startswith('<iframe srcdoc="<!DOCTYPE html>') or frame.startswith('<iframe srcdoc="&lt;')
    assert 'sandbox="allow-scripts"' in frame and "allow-same-origin" not in frame
    assert "http://" not in frame and "https://" not in frame


def test_interrupting_the_kernel_saves_and_stops(kernel: Kernel) -> None:
    shown = kernel.run("shown = [o for o in SMALL if 'refresh_rate' not in o]\n"
                       "long = tinylm.train(*shown, trainer={'max_steps': 100000, 'val_check_interval': 5})\n"
                       "print('stopped:', long.stopped, long.checkpoint.is_file())",
                       interrupt_when="val/loss=")  # the progress bar, after a validation
    assert shown["error"] is None, shown
    assert "SIGINT received; training stopped after step" in shown["stdout"]
    assert re.search(r"val/loss=\d\.\d{4}\b", shown["stdout"] + shown["stderr"])  # the closing lines' digits
    assert shown["stdout"].strip().endswith("True")
    again = kernel.run("print(tinylm.train(*SMALL, 'trainer.max_steps=5').steps)")  # the kernel goes on
    assert again["stdout"].strip().endswith("5"), again
