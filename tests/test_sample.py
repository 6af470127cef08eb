"""scripts/sample.py: text from a checkpoint alone, reproducible, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose, run_script

from tinylm.arguments import quote_prompt
from tinylm.command_configs import SampleConfig
from tinylm.config import ModelConfig, TrainConfig
from tinylm.errors import ConfigError
from tinylm.generation.stream import GenerativeLM
from tinylm.sample import COMPILE_PAYS_BACK_AFTER, compiles
from tinylm.train import fit


@pytest.fixture(scope="module")
def checkpoint(small_text: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint from a real short training run; the text it trained on is then deleted."""
    run_dir = tmp_path_factory.mktemp("run")
    text = run_dir / "train.txt"
    text.write_text(small_text.read_text())
    values = compose(
        f"data.source={text}", f"paths.output_dir={run_dir}", "model.layers=2", "model.d_model=32",
        "model.block_size=32", "trainer.max_steps=30", "trainer.val_check_interval=30",
        "trainer.limit_val_batches=2", "callbacks.progress_bar.refresh_rate=0",
        "trainer.enable_model_summary=false", "logger=none",
    )
    fit(TrainConfig.from_dict(values))
    text.unlink()  # sampling must need nothing but the .ckpt
    return run_dir / "checkpoints" / "last.ckpt"


def test_sampling_is_reproducible_and_starts_with_the_prompt(checkpoint: Path) -> None:
    args = [f"ckpt={checkpoint}", "prompt=ROMEO:", "max_new_tokens=200", "seed=1"]
    first, second = run_script("sample.py", *args), run_script("sample.py", *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout.startswith("ROMEO:")
    assert len(first.stdout) == len("ROMEO:") + 200 + 1  # prompt, 200 characters, final newline
    other_seed = run_script("sample.py", *args[:-1], "seed=2")
    assert other_seed.stdout != first.stdout


def test_streaming_and_batch_output_are_the_same_text(checkpoint: Path) -> None:
    args = [f"ckpt={checkpoint.parent.parent}", "prompt=First", "max_new_tokens=50", "num_samples=2"]
    streamed, printed = run_script("sample.py", *args), run_script("sample.py", *args, "stream=false")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == printed.stdout  # a run directory works as ckpt too
    assert streamed.stdout.count("First") >= 2 and "-" * 40 in streamed.stdout


def test_unseen_prompt_characters_are_named(checkpoint: Path) -> None:
    result = run_script("sample.py", f"ckpt={checkpoint}", "prompt=ROMEO€:", "max_new_tokens=5")
    assert result.returncode != 0
    assert "prompt:" in result.stderr and "'€' (U+20AC)" in result.stderr
    assert "drop_unknown=true" in result.stderr and "Traceback" not in result.stderr
    dropped = run_script("sample.py", f"ckpt={checkpoint}", "prompt=ROMEO€:", "max_new_tokens=5",
                         "drop_unknown=true")
    assert dropped.returncode == 0 and dropped.stdout.startswith("ROMEO:")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("temperature=-0.5", "temperature: must be 0 (greedy) or more"),
        ("top_p=1.5", "top_p: must be in (0, 1]"),
        ("top_p=0", "top_p: must be in (0, 1]"),
        ("top_k=0", "top_k: must be at least 1"),
        ("compile=sometimes", "compile: must be auto, true or false, got 'sometimes'"),
    ],
)
def test_bad_settings_are_one_line_errors(checkpoint: Path, override: str, message: str) -> None:
    result = run_script("sample.py", f"ckpt={checkpoint}", override)
    assert result.returncode != 0
    assert f"error: {message}" in result.stderr and "Traceback" not in result.stderr


def test_missing_and_corrupt_checkpoints_are_one_line_errors(checkpoint: Path, tmp_path: Path) -> None:
    missing = run_script("sample.py", f"ckpt={tmp_path / 'none.ckpt'}")
    assert missing.returncode != 0 and "error: ckpt: no checkpoint file at" in missing.stderr
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    result = run_script("sample.py", f"ckpt={truncated}")
    assert result.returncode != 0 and "truncated or corrupt" in result.stderr
    assert "Traceback" not in result.stderr
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    result = run_script("sample.py", f"ckpt={foreign}")
    assert result.returncode != 0 and "not a tinylm checkpoint" in result.stderr


@pytest.mark.parametrize("prompt", ["ROMEO€:", "it's", "a=b c", "back\\slash\\", "'quoted'"])
def test_any_prompt_reaches_the_sampler_unchanged(prompt: str) -> None:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl  # noqa: F401  (grammar)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(quote_prompt(f"prompt={prompt}"))
    expected = prompt[1:-1] if prompt.startswith("'") and prompt.endswith("'") else prompt
    assert override.value() == expected


@pytest.mark.slow
def test_the_compiled_decode_step_writes_the_same_text(checkpoint: Path) -> None:
    """compile=true runs every one-token step compiled (tinylm.generation.decode): the same characters, also
    past block_size (32 here), where the window slides and the cache is refilled."""
    args = [f"ckpt={checkpoint}", "prompt=ROMEO:", "max_new_tokens=80", "num_samples=2", "seed=3"]
    eager = run_script("sample.py", *args, "compile=false")
    compiled = run_script("sample.py", *args, "compile=true")
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert compiled.stdout == eager.stdout


@pytest.mark.parametrize(("setting", "new_tokens", "use_cache", "expected"), [
    ("auto", 500, True, False),  # the compile would cost more than it saves
    ("auto", COMPILE_PAYS_BACK_AFTER, True, True),
    ("true", 10, True, True),
    ("true", 10, False, False),  # without the cache there is no one-token step to compile
    ("false", COMPILE_PAYS_BACK_AFTER, True, False),
])
def test_compile_auto_compiles_only_generations_long_enough_to_pay_back(
        setting: str, new_tokens: int, use_cache: bool, expected: bool) -> None:
    config = SampleConfig(ckpt="x.ckpt", compile=setting, max_new_tokens=new_tokens, use_cache=use_cache)
    assert compiles(config, "cpu") is expected


def test_compile_without_a_compiler_is_an_error_or_for_auto_a_note(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(ConfigError, match=r"^compile: compiling the decode step needs a C\+\+ compiler "
                                          r"\(no-such-compiler; set CXX to use another\); install it, or "
                                          r"pass compile=false$"):
        compiles(SampleConfig(ckpt="x.ckpt", compile="true"), "cpu")
    assert not compiles(SampleConfig(ckpt="x.ckpt", max_new_tokens=COMPILE_PAYS_BACK_AFTER), "cpu")
    assert "not compiling the decode step: it needs a C++ compiler" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["true", "auto"])
def test_a_compile_that_fails_is_an_error_or_for_auto_a_note(checkpoint: Path, tmp_path: Path,
                                                             setting: str) -> None:
    """A C++ compiler that exists but fails (CXX=/bin/false) gets past the check and fails in
    torch: compile=true says so in one line and writes no text; auto, at a length it compiles
    for, notes it and writes the uncompiled text."""
    env = {"CXX": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # no cached build
    args = [f"ckpt={checkpoint}", "prompt=ROMEO:", f"max_new_tokens={COMPILE_PAYS_BACK_AFTER}",
            "stream=false", "seed=3"]
    result = run_script("sample.py", *args, f"compile={setting}", env=env)
    reason = "compiling the decode step failed: InvalidCxxCompiler: No working C++ compiler found"
    if setting == "true":
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith(f"error: compile: {reason}")
        assert result.stderr.rstrip().endswith("; pass compile=false")
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"{reason}" in result.stderr and "; sampling uncompiled" in result.stderr
        assert result.stdout == run_script("sample.py", *args, "compile=false").stdout


def test_compile_true_on_a_learners_attention_says_in_one_line_it_cannot(capsys) -> None:
    correct = Path(__file__).resolve().parents[1] / "docs" / "attention-examples" / "correct.py"
    model = GenerativeLM(ModelConfig(layers=1, d_model=32, heads=2, block_size=8,
                                     attention=f"{correct}:MultiHeadAttention"), 11)
    assert not compiles(SampleConfig(ckpt="x.ckpt", compile="true"), "cpu", model)
    said = capsys.readouterr().err
    assert said == ("compile: not compiling: this model's attention (MultiHeadAttention) keeps no KV cache, "
                    "so each token recomputes its window uncompiled\n")
    assert not compiles(SampleConfig(ckpt="x.ckpt", compile="auto", max_new_tokens=10**6), "cpu", model)
    assert capsys.readouterr().err == ""
