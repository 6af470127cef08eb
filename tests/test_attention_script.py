"""scripts/attention.py: any checkpoint and prompt to a PNG of its maps and a table of scores."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose, run_script
from PIL import Image

from tinylm.attention.maps import ProbeError
from tinylm.attention.render import render_attention
from tinylm.command_configs import AttentionScriptConfig
from tinylm.config import TrainConfig
from tinylm.errors import ConfigError
from tinylm.train import fit

LAYERS, HEADS, BLOCK = 2, 4, 32


@pytest.fixture(scope="module")
def checkpoint(small_text: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    text = run_dir / "train.txt"  # a copy: small_text's encoding stays out of the datasets cache,
    text.write_text(small_text.read_text())  # which tests/test_data.py expects to write itself
    values = compose(
        f"data.source={text}", f"paths.output_dir={run_dir}", f"model.layers={LAYERS}",
        f"model.heads={HEADS}", "model.d_model=32", f"model.block_size={BLOCK}", "trainer.max_steps=20",
        "trainer.val_check_interval=20", "trainer.limit_val_batches=2", "logger=none",
        "callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false",
    )
    fit(TrainConfig.from_dict(values))
    return run_dir / "checkpoints" / "last.ckpt"


def table_rows(output: str) -> list[list[str]]:
    lines = [line for line in output.splitlines() if line.startswith("| ") and line[2].isdigit()]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_the_script_writes_a_png_and_prints_every_heads_scores(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "pictures" / "attn.png"
    result = run_script("attention.py", f"ckpt={checkpoint}", "prompt=To be, or not to be", f"out={out}")
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 1000 and image.height > 500  # 2 × 4 maps
        image.verify()
    rows = table_rows(result.stdout)
    expected = [(layer, head) for layer in range(LAYERS) for head in range(HEADS)]
    assert [(int(row[0]), int(row[1])) for row in rows] == expected
    header = next(line for line in result.stdout.splitlines() if line.startswith("| layer"))
    assert header.endswith("| first_token | copying | ablation |")
    for row in rows:
        entropy, *weights, copying, ablation = map(float, row[2:])
        assert 0 <= entropy <= 5 and len(weights) == 4 and all(0 <= w <= 1 for w in weights)
        assert -1 <= copying <= 1  # the share of positive eigenvalues of the head's OV circuit
        assert -1 < ablation < 5  # the loss rise on the prompt without the head, in nats
    assert f"wrote {out}: 2 layer(s) × 4 head(s) on 19 characters" in result.stdout


def test_one_layer_and_head(checkpoint: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole.png"
    render_attention(AttentionScriptConfig(ckpt=str(checkpoint), out=str(whole)))
    one = tmp_path / "one.png"
    report = render_attention(AttentionScriptConfig(ckpt=str(checkpoint.parent.parent), out=str(one),
                                                    layer=-1, head=2))
    assert [row[:2] for row in table_rows(report)] == [["1", "2"]]  # layer -1 is the last
    with Image.open(whole) as big, Image.open(one) as small:
        assert small.width < big.width / 3 and small.height < big.height / 1.5


def test_a_long_prompt_is_drawn_up_to_max_chars(checkpoint: Path, tmp_path: Path) -> None:
    report = render_attention(AttentionScriptConfig(ckpt=str(checkpoint), prompt="First Citizen: Before we",
                                                    out=str(tmp_path / "a.png"), max_chars=10))
    assert "on 10 characters (the first 10 of 24; max_chars= shows more)" in report


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("x" * (BLOCK + 8), "error: prompt: 40 characters is longer than the model's block_size=32"),
        ("To be €", "error: prompt: 1 character(s) not in the model's vocabulary: '€' (U+20AC)"),
    ],
)
def test_a_prompt_the_model_cannot_read_is_one_clear_line(checkpoint: Path, tmp_path: Path, prompt: str,
                                                           message: str) -> None:
    out = tmp_path / "attn.png"
    result = run_script("attention.py", f"ckpt={checkpoint}", f"prompt={prompt}", f"out={out}")
    assert result.returncode == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        (dict(layer=2), ConfigError, r"layer: the model has 2 layers \(0 to 1\), got 2"),
        (dict(head=-5), ConfigError, r"head: the model has 4 heads \(0 to 3\), got -5"),
        (dict(prompt="T"), ProbeError, "prompt: 'T' is too short"),
        (dict(max_chars=1), ConfigError, "max_chars: must be at least 2"),
    ],
)
def test_bad_settings_name_their_key(checkpoint: Path, tmp_path: Path, settings: dict, error: type,
                                     message: str) -> None:
    with pytest.raises(error, match=message):
        render_attention(AttentionScriptConfig(ckpt=str(checkpoint), out=str(tmp_path / "a.png"), **settings))


def test_without_a_checkpoint_the_script_says_so(tmp_path: Path) -> None:
    result = run_script("attention.py", f"out={tmp_path / 'a.png'}")
    assert result.returncode == 2
    assert result.stderr == "error: ckpt: is required; set it on the command line: ckpt=...\n"
    missing = run_script("attention.py", f"ckpt={tmp_path / 'none.ckpt'}", f"out={tmp_path / 'a.png'}")
    assert missing.returncode == 2 and "error: ckpt: no checkpoint file at" in missing.stderr
