"""The HPARAMS tab's data, built and parsed with TensorBoard's own protos."""

from __future__ import annotations

from tensorboard.plugins.hparams import api_pb2, metadata

from tinylm.tensorboard import (
    HP_METRICS,
    experiment_summary,
    flatten,
    overridden_keys,
    read_session_hparams,
    session_end_summary,
    session_start_summary,
)


def content(summary) -> bytes:
    (value,) = summary.value
    assert value.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME
    return value.metadata.plugin_data.content


def test_flatten_gives_plain_values() -> None:
    flat = flatten({"model": {"heads": 4, "bias": True}, "optim": {"betas": [0.9, 0.99]}, "ckpt_path": None})
    assert flat == {"model.heads": 4, "model.bias": True, "optim.betas": "[0.9, 0.99]", "ckpt_path": "None"}


def test_values_keep_their_types() -> None:
    params = {"model.heads": 4, "model.bias": True, "optim.lr": 1e-3, "data.source": "a.txt"}
    assert read_session_hparams(content(session_start_summary(params))) == params  # 4 == 4.0
    start = metadata.parse_session_start_info_plugin_data(content(session_start_summary(params)))
    assert start.hparams["model.bias"].WhichOneof("kind") == "bool_value"  # not the number 1
    experiment = metadata.parse_experiment_plugin_data(content(experiment_summary(params)))
    assert {i.name: i.type for i in experiment.hparam_infos} == {
        "model.heads": api_pb2.DATA_TYPE_FLOAT64, "model.bias": api_pb2.DATA_TYPE_BOOL,
        "optim.lr": api_pb2.DATA_TYPE_FLOAT64, "data.source": api_pb2.DATA_TYPE_STRING}
    assert [m.name.tag for m in experiment.metric_infos] == list(HP_METRICS)


def test_session_end_records_the_status() -> None:
    end = metadata.parse_session_end_info_plugin_data(content(session_end_summary("failure")))
    assert end.status == api_pb2.STATUS_FAILURE


def test_overridden_keys_are_the_hyperparameters_set_on_the_command_line() -> None:
    params = {"model.heads": 4, "x": 1, "seed": 0}
    assert overridden_keys(["model.heads=4", "+x=1", "model=baby", "trainer.nope=2"], params) == [
        "model.heads", "x"]
