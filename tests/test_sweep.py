"""A real sweep (``train.py -m``): one named run per job, the HPARAMS tab, tinylm compare on it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata

from tinylm.config import ModelConfig
from tinylm.errors import ConfigError
from tinylm.model import TransformerLM
from tinylm.preflight import check_sweep_strategy
from tinylm.rundir import RunDir
from tinylm.tensorboard import HP_METRICS

TINY = ["model.layers=1", "model.d_model=32", "model.block_size=16", "optim.warmup_steps=2",
        "trainer.max_steps=10", "trainer.val_check_interval=5", "trainer.limit_val_batches=2",
        "trainer.log_every_n_steps=2", "trainer.enable_model_summary=false",
        "callbacks.progress_bar.refresh_rate=0"]


@pytest.fixture(scope="module")
def text(shakespeare_text: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "first20k.txt"
    path.write_text(shakespeare_text[:20_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sweep(text: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("sweep")
    result = run_script("train.py", "-m", "model.heads=1,2", f"data.source={text}", *TINY,
                        f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir())


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(RunDir(run_dir).tensorboard),
                                   size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.slow
def test_each_job_gets_a_run_dir_named_from_its_overrides(sweep: Path) -> None:
    jobs = job_dirs(sweep)
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]
    assert "model.heads=1" in jobs[0].name.split(",") and "model.heads=2" in jobs[1].name.split(",")
    assert all("data.source" not in p.name for p in jobs)  # a path would nest directories
    for job in jobs:
        assert len(list((job / job.name).glob("events.out.tfevents.*"))) == 1
        assert (job / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_hparams_plugin_data_holds_the_config_and_real_metrics(sweep: Path, text: Path) -> None:
    for heads, job in zip((1, 2), job_dirs(sweep), strict=True):
        accumulator = events(job)
        content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)

        experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
        assert [m.name.tag for m in experiment.metric_infos] == list(HP_METRICS)
        types = {info.name: info.type for info in experiment.hparam_infos}
        assert types["model.heads"] == api_pb2.DATA_TYPE_FLOAT64  # sortable and filterable by range
        assert types["model.bias"] == api_pb2.DATA_TYPE_BOOL
        assert types["data.source"] == api_pb2.DATA_TYPE_STRING
        # The keys set on the command line come first in the tab (it shows five at the start).
        differs = {info.name for info in experiment.hparam_infos if info.differs}
        assert {"model.heads", "data.source", "model.layers"} <= differs
        assert "optim.lr" not in differs and "paths.output_dir" not in differs

        hparams = metadata.parse_session_start_info_plugin_data(
            content[metadata.SESSION_START_INFO_TAG]).hparams
        assert hparams["model.heads"].number_value == heads
        assert hparams["model.bias"].bool_value is True
        assert hparams["data.source"].string_value == str(text)
        assert hparams["optim.betas"].string_value == "[0.9, 0.99]"  # lists become strings
        assert {"seed", "trainer.max_steps", "optim.lr"} <= set(hparams)
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        assert end.status == api_pb2.STATUS_SUCCESS

        last = {tag: accumulator.Scalars(tag)[-1].value for tag in HP_METRICS}
        val_loss = [e.value for e in accumulator.Scalars("val/loss")]
        assert last["hp/val_loss"] == pytest.approx(val_loss[-1])
        assert last["hp/val_bpc"] == pytest.approx(val_loss[-1] / math.log(2))
        assert last["hp/best_val_loss"] == pytest.approx(min(val_loss))
        model = TransformerLM(ModelConfig(layers=1, d_model=32, block_size=16, heads=heads),
                              vocab_size=len(set(text.read_text())))
        assert last["hp/params"] == model.num_parameters()
        assert last["hp/tokens_per_sec"] > 0


@pytest.mark.slow
def test_compare_prints_both_runs_and_draws_their_curves(sweep: Path, tmp_path: Path) -> None:
    png = tmp_path / "curves.png"
    result = run_script("compare.py", str(sweep), f"plot={png}", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    header, _, *rows = [[c.strip() for c in line.strip("|").split("|")] for line in
                        result.stdout.splitlines()]
    assert header[:2] == ["run", "model.heads"]  # the only hyperparameter that differs
    assert [row[0] for row in rows] == [p.name for p in job_dirs(sweep)]
    assert [row[1] for row in rows] == ["1", "2"]
    assert all(row[header.index("steps")] == "10" for row in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(png).ndim == 3


@pytest.mark.parametrize("trainer, refused", [
    ({"strategy": "ddp", "devices": 2}, True),
    ({"strategy": "auto", "devices": 4}, True),  # auto picks ddp for several devices
    ({"strategy": "ddp_find_unused_parameters_true", "devices": 2}, True),
    ({"strategy": "ddp_spawn", "devices": 2}, False),
    ({"devices": 1}, False),
])
def test_a_sweep_refuses_ddp_that_reruns_the_script(trainer: dict, refused: bool) -> None:
    if refused:
        with pytest.raises(ConfigError, match=r"trainer.strategy: .* use trainer.strategy=ddp_spawn"):
            check_sweep_strategy(trainer)
    else:
        check_sweep_strategy(trainer)


def test_a_ddp_sweep_is_refused_before_its_first_job(text: Path, tmp_path: Path) -> None:
    from tinylm.cli import check_command

    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    with pytest.raises(ConfigError, match=r"trainer.strategy: .* use trainer.strategy=ddp_spawn"):
        check_command(["train", "-m", "model.heads=1,2", f"data.source={text}", *ddp])

    sweep_dir = tmp_path / "sweep"
    result = run_script("train.py", "-m", "model.heads=1,2", f"data.source={text}", *TINY, *ddp,
                        f"hydra.sweep.dir={sweep_dir}", timeout=120)
    assert result.returncode != 0
    assert "use trainer.strategy=ddp_spawn" in result.stderr and "Traceback" not in result.stderr
    assert not sweep_dir.exists() or not job_dirs(sweep_dir)  # no job started
