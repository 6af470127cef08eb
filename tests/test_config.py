"""Every preset composes; every bad value stops the run with one line naming its key."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import CONFIGS, REPO, compose

from tinylm.cli import check_command
from tinylm.config import LOGGERS, OPTIMIZERS, ModelConfig, TrainConfig
from tinylm.errors import ConfigError

PRESET_GROUPS = ["model", "experiment", "data", "debug", "trainer"]
PRESETS = [
    f"{group}={path.stem}" for group in PRESET_GROUPS for path in sorted((CONFIGS / group).glob("*.yaml"))
] + [f"logger={logger}" for logger in LOGGERS] + [f"optim.name={name}" for name in OPTIMIZERS]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_validates(preset: str, tmp_path) -> None:
    overrides = [preset, f"paths.output_dir={tmp_path}"]
    if preset == "data=text_file":
        overrides.append("data.source=some.txt")
    config = TrainConfig.from_dict(compose(*overrides))
    assert config.max_steps > 0


def test_presets_reproduce_nanogpt(tmp_path) -> None:
    quick = TrainConfig.from_dict(compose("experiment=cpu_quick", f"paths.output_dir={tmp_path}"))
    shape = (quick.model.layers, quick.model.heads, quick.model.d_model, quick.model.block_size)
    assert shape == (4, 4, 128, 64)
    assert quick.data.batch_size == 12 and quick.model.dropout == 0.0 and quick.max_steps == 2000
    assert (quick.optim.lr, quick.optim.min_lr, quick.optim.betas[1]) == (1e-3, 1e-4, 0.99)
    assert (quick.optim.warmup_steps, quick.optim.weight_decay, quick.optim.grad_clip) == (100, 0.1, 1.0)
    char = TrainConfig.from_dict(compose("experiment=shakespeare_char", f"paths.output_dir={tmp_path}"))
    shape = (char.model.layers, char.model.heads, char.model.d_model, char.model.block_size)
    assert shape == (6, 6, 384, 256)
    assert char.data.batch_size == 64 and char.model.dropout == 0.2 and char.max_steps == 5000
    assert char.data.source == "builtin:tiny_shakespeare" and char.data.revision == "refs/convert/parquet"


def test_command_line_overrides_win_over_presets(tmp_path) -> None:
    config = TrainConfig.from_dict(
        compose("model=baby", "data.batch_size=3", "model.heads=4", f"paths.output_dir={tmp_path}")
    )
    assert config.data.batch_size == 3 and config.model.heads == 4 and config.model.d_model == 384


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.heads=four", "model.heads: expected an integer, got 'four'"),
        ("model.heads=5", "model.heads: 5 heads do not divide model.d_model=128"),
        ("model.dropout=-0.1", "model.dropout: must be in [0, 1), got -0.1"),
        ("model.dropout=1.0", "model.dropout: must be in [0, 1)"),
        ("model.block_size=0", "model.block_size: must be at least 1"),
        ("model.attention=flash", "model.attention: must be one of sdpa, explicit"),
        ("+model.head=4", "model.head: unknown key; did you mean model.heads?"),
        ("+seeed=1", "seeed: unknown key; did you mean seed?"),
        ("data.val_fraction=0", "data.val_fraction: must be in (0, 1)"),
        ("optim.lr=-1", "optim.lr: must be positive"),
        ("optim.name=sgd", "optim.name: must be one of adamw, muon, got 'sgd'"),
        ("logger=wandb", "logger: must be one of tensorboard, none, got 'wandb'"),
        ("optim.betas=[0.9]", "optim.betas: expected a list of 2"),
        ("trainer.max_steps=-1", "trainer.max_steps: must be set"),
        ("+trainer.gradient_clip_val=1", "trainer.gradient_clip_val: is set by tinylm; use optim.grad_clip"),
    ],
)
def test_bad_values_name_their_key(override: str, message: str, tmp_path) -> None:
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict(compose(override, f"paths.output_dir={tmp_path}"))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("override", "message"), [
    ("logger.kind=none", "logger.kind: write logger=none"),
    ("+logger.kind=tensorboard", "logger.kind: write logger=tensorboard"),
    ("optim=muon", "optim: write optim.name=muon"),
])
@pytest.mark.parametrize("command", ["train", "bench", "soak"])
def test_a_retired_spelling_names_the_one_setting(command: str, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_command([command, "model.heads=2", override])
    assert str(error.value) == message


def test_numbers_from_yaml_are_coerced_sensibly() -> None:
    assert ModelConfig(mlp_ratio=4).mlp_hidden == 4 * 128
    config = TrainConfig.from_dict({"trainer": {"max_steps": 10}, "model": {"layers": "2", "dropout": 0}})
    assert config.model.layers == 2 and isinstance(config.model.dropout, float)
    with pytest.raises(ConfigError, match=r"^model.layers: expected an integer, got 2.5$"):
        TrainConfig.from_dict({"trainer": {"max_steps": 10}, "model": {"layers": 2.5}})


def test_validating_a_config_does_not_import_torch() -> None:
    code = (
        "import sys; from tinylm.config import TrainConfig; "
        "TrainConfig.from_dict({'trainer': {'max_steps': 1}}); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
