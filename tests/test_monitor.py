"""The TensorBoard callbacks in a real training run: attention pictures for every layer and
head, the four diagnostics for every head, and text samples, read back from the event file."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import compose
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tinylm.model
from tinylm.attention.scores import SCORES
from tinylm.config import TrainConfig
from tinylm.errors import ConfigError, TinyLMError
from tinylm.rundir import RunDir
from tinylm.train import fit

LAYERS, HEADS, BLOCK = 2, 4, 32


def overrides(text: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.source={text}", f"paths.output_dir={run_dir}",
        f"model.layers={LAYERS}", f"model.heads={HEADS}", "model.d_model=64", f"model.block_size={BLOCK}",
        "data.batch_size=16", "optim.warmup_steps=5", "trainer.max_steps=20",
        "trainer.val_check_interval=10", "trainer.limit_val_batches=4", "trainer.log_every_n_steps=5",
        "callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false",
        "callbacks.samples.max_new_tokens=60", *extra,
    ]


def events(run_dir: Path) -> EventAccumulator:
    everything = {"images": 0, "scalars": 0, "tensors": 0}  # the default keeps only a few of each
    accumulator = EventAccumulator(str(RunDir(run_dir).tensorboard), size_guidance=everything)
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def run(small_text: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EventAccumulator]:
    """A real short run with the default callbacks, and what it wrote to TensorBoard."""
    run_dir = tmp_path_factory.mktemp("run")
    values = compose(*overrides(small_text, run_dir))
    fit(TrainConfig.from_dict(values))
    return run_dir, events(run_dir)


def test_every_layer_and_head_has_an_image_at_each_validation(run) -> None:
    _, logged = run
    expected = {f"attention/layer_{layer}" for layer in range(LAYERS)} | {
        f"attention/layer_{layer}/head_{head}" for layer in range(LAYERS) for head in range(HEADS)
    }
    assert set(logged.Tags()["images"]) == expected
    for tag in expected:
        assert [image.step for image in logged.Images(tag)] == [0, 10, 20]  # baseline + 2 validations


def test_a_validation_logs_everything_at_one_step(run) -> None:
    """val/loss, the pictures and the head scores of a validation share its step: the number
    of optimizer steps behind the weights, as at the step-0 baseline."""
    _, logged = run
    validations = [event.step for event in logged.Scalars("val/loss")]
    assert validations == [10, 20]
    assert [event.step for event in logged.Scalars("hp/val_loss")] == validations
    assert [i.step for i in logged.Images("attention/layer_0")] == [0, *validations]
    assert [s.step for s in logged.Scalars("heads/prev_token/layer_1_head_2")] == [0, *validations]
    assert [t.step for t in logged.Tensors("samples")] == [0, *validations]
    assert "step" not in logged.Tags()["scalars"]  # the step is where values go, not a value


def test_images_are_pngs_wider_for_a_layer_than_for_a_head(run) -> None:
    _, logged = run
    layer, head = logged.Images("attention/layer_1")[-1], logged.Images("attention/layer_1/head_3")[-1]
    for image in (layer, head):
        with Image.open(io.BytesIO(image.encoded_image_string)) as png:
            assert png.format == "PNG" and png.size == (image.width, image.height)
    assert layer.width > 2 * head.width


def test_the_diagnostics_of_every_head_and_of_the_model(run) -> None:
    _, logged = run
    scalars = logged.Tags()["scalars"]
    for tag in ("icl/score", "icl/induction_loss"):
        assert [event.step for event in logged.Scalars(tag)] == [0, 10, 20]
    # When training ends, one TEXT line says whether and where induction heads formed.
    [said] = logged.Tensors("induction")
    assert said.step == 20
    assert re.match(r"\s*(no induction heads formed|induction heads formed around step)",
                    said.tensor_proto.string_val[0].decode())
    # An untrained model predicts the repeated random characters no better than chance.
    assert logged.Scalars("icl/induction_loss")[0].value > 3.0  # about ln(vocabulary)
    for name in (*SCORES, "copying"):
        for layer in range(LAYERS):
            for head in range(HEADS):
                tag = f"heads/{name}/layer_{layer}_head_{head}"
                assert tag in scalars, tag
                values = [event.value for event in logged.Scalars(tag)]
                assert [event.step for event in logged.Scalars(tag)] == [0, 10, 20]
                if name == "entropy":  # the probe is BLOCK characters long
                    assert all(0 <= v <= math.log2(BLOCK) for v in values)
                elif name == "copying":  # a share of signed eigenvalues
                    assert all(-1 <= v <= 1 for v in values)
                else:
                    assert all(0 <= v <= 1 for v in values)


def test_ablation_for_every_head_at_each_validation(run) -> None:
    _, logged = run
    for layer in range(LAYERS):
        for head in range(HEADS):
            events = logged.Scalars(f"heads/ablation/layer_{layer}_head_{head}")
            assert [event.step for event in events] == [0, 10, 20]
            assert all(abs(event.value) < 5 for event in events)  # Δ nats per character


def test_the_run_keeps_its_attention_beside_the_checkpoints(run) -> None:
    from tinylm.attention.history import load_history

    run_dir, logged = run
    history = load_history(run_dir / "checkpoints" / "attention.npz")
    assert history.steps.tolist() == [0, 10, 20]
    assert history.maps.shape == (3, LAYERS, HEADS, BLOCK, BLOCK) and history.maps.dtype.name == "uint8"
    assert len(history.labels) == BLOCK
    assert set(history.scores) == {*SCORES, "copying", "ablation"}
    logged_prev = [e.value for e in logged.Scalars("heads/prev_token/layer_1_head_2")]
    assert history.scores["prev_token"][:, 1, 2].tolist() == pytest.approx(logged_prev, abs=1e-6)


def test_untrained_heads_attend_nearly_uniformly(run) -> None:
    _, logged = run
    uniform = sum(math.log2(t + 1) for t in range(1, BLOCK)) / (BLOCK - 1)
    at_start = logged.Scalars("heads/entropy/layer_0_head_0")[0]
    assert at_start.step == 0 and at_start.value == pytest.approx(uniform, abs=0.1)


def test_text_samples_at_each_validation(run) -> None:
    _, logged = run
    assert "samples" in logged.Tags()["tensors"]  # exactly "samples", no "/text_summary"
    samples = logged.Tensors("samples")
    assert [event.step for event in samples] == [0, 10, 20]
    texts = [event.tensor_proto.string_val[0].decode() for event in samples]
    # A Markdown code block: every line indented, so TensorBoard keeps the line breaks.
    for text in texts:
        lines = text.split("\n")
        assert all(line.startswith("    ") for line in lines)
        assert sum(len(line) - 4 for line in lines) + len(lines) - 1 == 1 + 60  # "\n" + 60 characters
    assert len(set(texts)) > 1  # same prompt and seed: only the model changed


def test_the_probe_runs_on_the_explicit_path_only(small_text: Path, tmp_path: Path, monkeypatch) -> None:
    """Training batches take the fused kernel; only the probe (batch 1) and the induction
    sequences (batch 8) go through the explicit path, which materialises the weights."""
    batches = []
    explicit = tinylm.model.causal_attention

    def recording(q, *args, **kwargs):
        batches.append(q.size(0))
        return explicit(q, *args, **kwargs)

    monkeypatch.setattr(tinylm.model, "causal_attention", recording)
    values = compose(*overrides(small_text, tmp_path, "trainer.max_steps=10",
                                "callbacks.samples.enabled=false"))
    fit(TrainConfig.from_dict(values))
    assert batches and set(batches) <= {1, 8}


@pytest.mark.slow
def test_every_n_steps_logs_without_validation(small_text: Path, tmp_path: Path) -> None:
    values = compose(*overrides(small_text, tmp_path, "trainer.limit_val_batches=0", "trainer.max_steps=12",
                                "callbacks.attention.every_n_steps=4", "callbacks.samples.every_n_steps=6"))
    fit(TrainConfig.from_dict(values))
    logged = events(tmp_path)
    assert [i.step for i in logged.Images("attention/layer_0/head_0")] == [0, 4, 8, 12]
    assert [s.step for s in logged.Scalars("heads/prefix_matching/layer_1_head_3")] == [0, 4, 8, 12]
    assert [t.step for t in logged.Tensors("samples")] == [0, 6, 12]


def test_callbacks_can_be_turned_off(small_text: Path, tmp_path: Path) -> None:
    values = compose(*overrides(small_text, tmp_path, "trainer.max_steps=10",
                                "callbacks.attention.enabled=false", "callbacks.samples.enabled=false"))
    fit(TrainConfig.from_dict(values))
    logged = events(tmp_path)
    assert not logged.Tags()["images"] and "samples" not in logged.Tags()["tensors"]
    assert not [tag for tag in logged.Tags()["scalars"] if tag.startswith("heads/")]


def test_a_custom_probe_is_drawn_up_to_max_chars(small_text: Path, tmp_path: Path) -> None:
    values = compose(*overrides(small_text, tmp_path, "trainer.max_steps=5",
                                "callbacks.samples.enabled=false",
                                "callbacks.attention.probe='First Citizen: Before we'",
                                "callbacks.attention.max_chars=12"))
    fit(TrainConfig.from_dict(values))
    assert events(tmp_path).Images("attention/layer_0")  # TensorBoard's pictures show at most 16
    with np.load(RunDir(tmp_path).attention_history) as history:  # the explorer's: all 12
        assert "".join(history["probe"]) == "First Citizen"[:12] and history["maps"].shape[-1] == 12


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("callbacks.attention.probe='To be €'", r"callbacks.attention.probe: 1 character\(s\) not in the "
                                                r"model's vocabulary: '€' \(U\+20AC\)"),
        (f"callbacks.attention.probe='{'x' * (BLOCK + 1)}'", "callbacks.attention.probe: 33 characters is "
                                                             "longer than the model's block_size=32"),
        ("callbacks.samples.prompt='ROMEO€'", "callbacks.samples.prompt: 1 character"),
    ],
)
def test_a_bad_probe_or_prompt_stops_the_run_before_training(small_text: Path, tmp_path: Path,
                                                              override: str, message: str) -> None:
    values = compose(*overrides(small_text, tmp_path, override))
    with pytest.raises(TinyLMError, match=message):
        fit(TrainConfig.from_dict(values))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("callbacks.attention.every_n_steps=0", "callbacks.attention.every_n_steps: must be at least 1"),
        ("callbacks.attention.max_chars=1", "callbacks.attention.max_chars: must be at least 2"),
        ("callbacks.attention.probe=x", "callbacks.attention.probe: must be at least 2 characters"),
        ("callbacks.samples.temperature=-1", "callbacks.samples.temperature: must be 0"),
        ("callbacks.samples.max_new_tokens=0", "callbacks.samples.max_new_tokens: must be at least 1"),
        ("callbacks.samples.top_p=2", r"callbacks.samples.top_p: must be in \(0, 1\]"),
    ],
)
def test_bad_callback_settings_name_their_key(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(compose(override, f"paths.output_dir={tmp_path}"))
