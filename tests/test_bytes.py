"""Byte-level text: UTF-8 bytes as tokens, any script, decoded back with U+FFFD for what is not
UTF-8; a byte-level checkpoint samples and draws attention with nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose

from tinylm.command_configs import AttentionScriptConfig, SampleConfig
from tinylm.config import DataConfig, TrainConfig
from tinylm.data import CharDataModule
from tinylm.tokenizer import ByteTokenizer

CJK = ("春眠不覺曉，處處聞啼鳥。夜來風雨聲，花落知多少。\n"
       "東京タワーは333メートルです。\n한국어 텍스트도 됩니다.\n")


def test_byte_round_trip_with_cjk_text() -> None:
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(CJK)
    assert len(ids) == len(CJK.encode("utf-8")) > len(CJK) and max(ids) < 256
    assert tokenizer.decode(ids) == CJK
    assert tokenizer.encode_array(CJK).tolist() == ids


def test_invalid_bytes_decode_as_replacement_characters() -> None:
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("春")  # three bytes
    assert tokenizer.decode(ids[:2]) == "\ufffd"
    assert tokenizer.decode([0xFF, *tokenizer.encode("a")]) == "\ufffda"


def test_streamed_bytes_come_out_as_whole_characters() -> None:
    decode = ByteTokenizer().stream_decoder()
    pieces = [decode([i]) for i in ByteTokenizer().encode("a春b")]
    assert pieces == ["a", "", "", "春", "b"]


def test_attention_labels_one_per_byte() -> None:
    labels = ByteTokenizer().labels("a春")
    assert labels == ["a", "春", "98", "a5"]


def test_byte_data_needs_no_vocabulary_pass(tmp_path: Path) -> None:
    (tmp_path / "cjk.txt").write_text(CJK * 20)
    data = CharDataModule(DataConfig(source=str(tmp_path / "cjk.txt"), tokenizer="byte"), block_size=16)
    data.prepare()
    assert data.tokenizer.vocab_size == 256 and data.train_tokens.dtype.name == "uint8"
    ids = data.train_tokens.tolist() + data.val_tokens.tolist()
    assert data.tokenizer.decode(ids) == CJK * 20


@pytest.mark.slow
def test_byte_level_training_on_cjk_then_sample_and_attention(tmp_path: Path) -> None:
    from tinylm.attention.render import render_attention
    from tinylm.checkpoint import load_checkpoint
    from tinylm.sample import sample
    from tinylm.train import fit

    text = tmp_path / "cjk.txt"
    text.write_text(CJK * 40)
    run_dir = tmp_path / "run"
    values = compose(
        f"data.source={text}", f"paths.output_dir={run_dir}", "data.tokenizer=byte", "model.layers=1",
        "model.d_model=32", "model.block_size=32", "data.batch_size=4", "trainer.max_steps=6",
        "trainer.val_check_interval=6", "trainer.limit_val_batches=2", "trainer.enable_model_summary=false",
        "callbacks.progress_bar.refresh_rate=0", "callbacks.samples.max_new_tokens=8",
        "data.val_fraction=0.2", "data.test_fraction=0.2")
    trainer, _ = fit(TrainConfig.from_dict(values))
    assert {"test/loss", "test/bpc"} <= trainer.callback_metrics.keys()  # the test split, at the end
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    text.unlink()  # the checkpoint is all that is needed
    model, tokenizer = load_checkpoint(checkpoint)
    assert isinstance(tokenizer, ByteTokenizer) and model.config.block_size == 32

    written: list[str] = []
    [texts] = sample(SampleConfig(ckpt=str(checkpoint), prompt="春眠", max_new_tokens=30), written.append)
    assert texts.startswith("春眠") and "".join(written).startswith("春眠")
    assert "".join(written).rstrip("\n") == texts  # streamed pieces join to the decoded whole

    report = render_attention(AttentionScriptConfig(ckpt=str(checkpoint), prompt="春眠不覺曉",
                                                    out=str(tmp_path / "attn.png")))
    assert (tmp_path / "attn.png").is_file() and "on 15 characters" in report

    # The explorer labels every byte, as the pictures do: for the prompt, and for the run's probe.
    render_attention(AttentionScriptConfig(ckpt=str(checkpoint), prompt="春眠", out=str(tmp_path / "a.html")))
    assert explorer_data(tmp_path / "a.html")["chars"] == ["春", "98", "a5", "眠", "9c", "a0"]
    render_attention(AttentionScriptConfig(ckpt=str(run_dir), out=str(tmp_path / "run.html")))
    run_page = explorer_data(tmp_path / "run.html")
    assert len(run_page["chars"]) == run_page["n"] and {"98", "a5"} <= set(run_page["chars"])


def explorer_data(page: Path) -> dict:
    """The data an explorer page embeds (its ``const DATA = {...};`` line)."""
    import json

    line = next(line for line in page.read_text().splitlines() if line.startswith("const DATA = "))
    return json.loads(line.removeprefix("const DATA = ").removesuffix(";"))
