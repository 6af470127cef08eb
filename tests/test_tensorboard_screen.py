"""What TensorBoard shows first for a run, read back from its event files with TensorBoard's
own readers: the run's name, the custom-scalars layout, HPARAMS' first columns, the pictures."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata
from tensorboard.plugins.hparams import backend_context, metadata

from tinylm.callbacks.watch import CARD_CHARS
from tinylm.rundir import RunDir
from tinylm.runs import find_runs
from tinylm.tensorboard import leading_keys


@pytest.fixture(scope="module")
def events(trained) -> EventAccumulator:
    accumulator = EventAccumulator(str(RunDir(trained[0]).tensorboard),
                                   size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_the_run_is_listed_by_its_directory_name(trained) -> None:
    run_dir = trained[0]
    assert list(EventMultiplexer().AddRunsFromDirectory(str(run_dir)).Runs()) == [run_dir.name]
    below = EventMultiplexer().AddRunsFromDirectory(str(run_dir.parent)).Runs()  # as --logdir outputs
    assert f"{run_dir.name}/{run_dir.name}" in below, below
    assert [run.name for run in find_runs([run_dir])] == [run_dir.name]  # tinylm compare reads it


def test_the_custom_scalars_tab_opens_on_the_losses(events: EventAccumulator) -> None:
    (content,) = [e.tensor_proto.string_val[0] for e in events.Tensors(layout_metadata.CONFIG_SUMMARY_TAG)]
    layout = layout_pb2.Layout.FromString(content)
    assert [c.title for c in layout.category] == ["loss", "training", "heads"]
    loss_tags = [tag.strip("^$") for chart in layout.category[0].chart for tag in chart.multiline.tag]
    assert loss_tags == ["train/loss", "val/loss", "val/bpc"]
    assert set(loss_tags) <= set(events.Tags()["scalars"])


def test_hparams_leads_with_model_and_optimiser_keys(events: EventAccumulator) -> None:
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(content)
    every = {info.name for info in experiment.hparam_infos}
    backend_context._sort_and_reduce_to_hparams_limit(experiment, 5)  # the tab's own order and first columns
    assert [info.name for info in experiment.hparam_infos] == [
        "model.block_size", "model.d_model", "model.heads", "model.layers", "optim.lr"]
    assert "callbacks.attention.max_chars" in every  # the rest is still there, after


@pytest.mark.parametrize(("overrides", "first"), [
    ((), ["model.layers", "model.heads", "model.d_model", "model.block_size", "optim.lr"]),
    (("data.batch_size=8", "model=baby"),
     ["data.batch_size", "model.layers", "model.heads", "model.d_model", "model.block_size"]),
    (tuple(f"{key}=1" for key in ("a", "b", "c", "d", "e", "f")), ["a", "b", "c", "d", "e", "f"]),
])
def test_keys_set_on_the_command_line_lead_then_model_and_optimiser(overrides, first) -> None:
    params = ["a", "b", "c", "d", "e", "f", "callbacks.attention.max_chars", "data.batch_size",
              "model.layers", "model.heads", "model.d_model", "model.block_size", "optim.lr"]
    assert leading_keys(overrides, params) == first


def test_attention_pictures_show_few_enough_characters_for_a_card(trained, events: EventAccumulator) -> None:
    with np.load(RunDir(trained[0]).attention_history) as history:
        assert history["maps"].shape[-1] == 32 > CARD_CHARS  # the explorer keeps the whole probe
    picture = events.Images("attention/layer_0/head_0")[-1]
    assert picture.width <= 450, (picture.width, picture.height)  # about a card's width: little scaling
