"""TensorBoard, written once: the writer of a trainer, images and text under exact tags, and the
HPARAMS tab (a run's hyperparameters and the metrics shown beside them).

The HPARAMS tab reads three summaries from each run, in the layout that
``tensorboard/plugins/hparams/summary.py`` documents (that module needs TensorFlow, so the
same protos are built here from TensorBoard's own ``api_pb2`` / ``plugin_data_pb2``):

- ``_hparams_/experiment``: the columns, i.e. which hyperparameters and which metrics;
- ``_hparams_/session_start_info``: this run's hyperparameter values;
- ``_hparams_/session_end_info``: how the run ended.

The metrics are ordinary scalars logged in the same run (``hp/val_loss`` ...); the tab shows
the last value of each. The experiment names exactly these metrics: without it TensorBoard
would turn every scalar of every run into a column.
``torch.utils.tensorboard.summary.hparams`` builds the same three summaries, but it cannot
mark the hyperparameters set on the command line (``differs``), describes no metric, and
always ends the session with "success"; so they are built here.

This module imports neither torch nor Lightning at the top: ``tinylm.runs`` reads event files
with it.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.tensorboard import SummaryWriter

# The metrics of the tab, with the description TensorBoard shows for each.
HP_METRICS = {
    "hp/val_loss": "validation loss (nats per character) at the last validation",
    "hp/val_bpc": "validation bits per character at the last validation",
    "hp/best_val_loss": "lowest validation loss so far",
    "hp/params": "trainable parameters (the tied embedding counted once)",
    "hp/tokens_per_sec": "training tokens per second, averaged over the run (validation excluded)",
}

STATUS = ("unknown", "success", "failure", "running")  # api_pb2.Status, in enum order


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"heads": 4}} → {"model.heads": 4}; lists and None become strings, as
    TensorBoard's HPARAMS tab takes only numbers, strings and booleans."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def overridden_keys(overrides: Iterable[str], params: Collection[str]) -> list[str]:
    """The hyperparameters among ``params`` that command-line overrides set: ``model.heads=4``,
    ``+x=1``, ``~x``; a config-group choice (``model=baby``) is not one of them."""
    keys = (item.split("=", 1)[0].lstrip("+~") for item in overrides)
    return [key for key in keys if key in params]


# What a learner reads a run by, shown in HPARAMS when the command line set fewer keys than the
# tab's first columns (TensorBoard orders them: marked as differing first, then by name).
HEADLINE_KEYS = ("model.layers", "model.heads", "model.d_model", "model.block_size", "optim.lr")


def leading_keys(overrides: Iterable[str], params: Collection[str]) -> list[str]:
    """The keys HPARAMS shows first: those the command line set, then model and optimiser
    keys up to the tab's five, rather than the alphabet's ``callbacks.attention.*``."""
    keys = overridden_keys(overrides, params)
    for key in HEADLINE_KEYS:
        if len(keys) >= len(HEADLINE_KEYS):
            break
        if key in params and key not in keys:
            keys.append(key)
    return keys


# The custom-scalars tab, in the order a learner reads a run: the losses, then how training
# went, then one chart per head score (every head of the score on it).
LOSS_CHARTS = {"train/loss and val/loss": ("train/loss", "val/loss"), "val/bpc": ("val/bpc",)}
TRAINING_CHARTS = {"train/lr": ("train/lr",), "train/tokens_per_sec": ("train/tokens_per_sec",)}


def layout_summary(head_scores: Iterable[str] = ()) -> summary_pb2.Summary:
    """The layout of TensorBoard's custom-scalars tab: a "loss" category first, then
    "training", then "heads" with one chart per score in ``head_scores``. Built as
    ``tensorboard.plugins.custom_scalar.summary.pb`` builds it, without TensorFlow."""

    def category(title: str, charts: dict[str, Iterable[str]]) -> layout_pb2.Category:
        return layout_pb2.Category(title=title, chart=[
            layout_pb2.Chart(title=name, multiline=layout_pb2.MultilineChartContent(tag=list(tags)))
            for name, tags in charts.items()])

    charts = {**LOSS_CHARTS, **TRAINING_CHARTS}
    exactly = {name: [f"^{tag}$" for tag in tags] for name, tags in charts.items()}
    layout = layout_pb2.Layout(category=[
        category("loss", {name: exactly[name] for name in LOSS_CHARTS}),
        category("training", {name: exactly[name] for name in TRAINING_CHARTS}),
        *([category("heads", {f"heads/{s}": [f"^heads/{s}/"] for s in head_scores})] if head_scores else []),
    ])
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[layout.SerializeToString()],
                                    tensor_shape=tensor_shape_pb2.TensorShapeProto())
    value = summary_pb2.Summary.Value(tag=layout_metadata.CONFIG_SUMMARY_TAG, tensor=tensor,
                                      metadata=layout_metadata.create_summary_metadata())
    return summary_pb2.Summary(value=[value])


def tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    """The trainer's TensorBoard logger, or None."""
    from lightning.pytorch.loggers import TensorBoardLogger  # here: compare reads runs without Lightning

    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def tensorboard_writer(trainer: L.Trainer) -> SummaryWriter | None:
    """The SummaryWriter of the trainer's TensorBoard logger, or None."""
    logger = tensorboard_logger(trainer)
    return None if logger is None else logger.experiment


def add_image(writer: SummaryWriter, tag: str, png: bytes, step: int) -> None:
    """Write a PNG as a TensorBoard image. (``SummaryWriter.add_image`` takes pixels and encodes
    them with Pillow, one picture at a time, which costs a run measurably more:
    docs/performance.md#library-pieces.)"""
    width, height, _, colour_type = struct.unpack(">IIBB", png[16:26])  # the PNG's IHDR chunk
    colorspace = {2: 3, 6: 4}[colour_type]  # RGB, RGBA
    image = summary_pb2.Summary.Image(height=height, width=width, colorspace=colorspace,
                                      encoded_image_string=png)
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)])
    writer.file_writer.add_summary(summary, step)


def add_text(writer: SummaryWriter, tag: str, text: str, step: int) -> None:
    """Write ``text`` as TensorBoard text under exactly ``tag`` (``SummaryWriter.add_text``
    appends "/text_summary"), as a Markdown code block so its line breaks survive."""
    from torch.utils.tensorboard.summary import text as text_summary  # here: compare needs no torch

    summary = text_summary(tag, "\n".join("    " + line for line in text.split("\n")))
    summary.value[0].tag = tag
    writer.file_writer.add_summary(summary, step)


def add_summaries(writer: SummaryWriter, *summaries: summary_pb2.Summary) -> None:
    """Write ready-made summaries (those of the HPARAMS tab) and flush them to disk."""
    for summary in summaries:
        writer.file_writer.add_summary(summary)
    writer.flush()


def experiment_summary(params: dict[str, Any], differs: Collection[str] = ()) -> summary_pb2.Summary:
    """The tab's columns: each hyperparameter with its type, and the ``HP_METRICS``.

    The tab shows five hyperparameters until the user picks others: those marked as
    differing between runs first, then in name order. One run cannot know what its siblings
    set, so ``differs`` names the keys set on the command line; in a sweep they include the
    swept ones.
    """

    def data_type(value: Any) -> int:
        if isinstance(value, bool):  # before int: True is an int to isinstance
            return api_pb2.DATA_TYPE_BOOL
        if isinstance(value, int | float):
            return api_pb2.DATA_TYPE_FLOAT64
        return api_pb2.DATA_TYPE_STRING

    experiment = api_pb2.Experiment(
        time_created_secs=time.time(),
        hparam_infos=[api_pb2.HParamInfo(name=k, type=data_type(v), differs=k in differs)
                      for k, v in params.items()],
        metric_infos=[
            api_pb2.MetricInfo(
                name=api_pb2.MetricName(tag=tag),
                description=description,
                dataset_type=api_pb2.DATASET_VALIDATION if "val_" in tag else api_pb2.DATASET_TRAINING,
            )
            for tag, description in HP_METRICS.items()
        ],
    )
    return _summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def session_start_summary(params: dict[str, Any]) -> summary_pb2.Summary:
    """This run's hyperparameter values (flat: numbers, strings and booleans)."""
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for key, value in params.items():
        if isinstance(value, bool):
            start.hparams[key].bool_value = value
        elif isinstance(value, int | float):
            start.hparams[key].number_value = value
        else:
            start.hparams[key].string_value = str(value)
    return _summary(metadata.SESSION_START_INFO_TAG,
                    plugin_data_pb2.HParamsPluginData(session_start_info=start))


def session_end_summary(status: str) -> summary_pb2.Summary:
    """How the run ended: one of ``STATUS`` (TensorBoard shows it in the Status column)."""
    end = plugin_data_pb2.SessionEndInfo(status=STATUS.index(status), end_time_secs=time.time())
    return _summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))


def read_session_hparams(content: bytes) -> dict[str, bool | float | str]:
    """The hyperparameters in a ``_hparams_/session_start_info`` summary's plugin content.

    Numbers come back as floats: the protocol stores every number as a double.
    """
    start = metadata.parse_session_start_info_plugin_data(content)
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in start.hparams.items()
            if value.WhichOneof("kind") in ("bool_value", "number_value", "string_value")}


def _summary(tag: str, plugin_data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
    summary = summary_pb2.Summary()
    # The empty tensor marks the value as data (not a scalar or image) for the event readers.
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(plugin_data),
                      tensor=metadata.NULL_TENSOR)
    return summary
