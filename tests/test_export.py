"""tinylm export: a checkpoint as a Hugging Face model directory that transformers loads offline,
computing what tinylm computes; a setting no architecture has is one line naming its key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import VARIANTS, compose, make_model, quick_overrides, run_script
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from tinylm.attention.maps import attention_maps
from tinylm.checkpoint import load_checkpoint
from tinylm.command_configs import ExportConfig, SampleConfig
from tinylm.config import ModelConfig, TrainConfig
from tinylm.errors import TinyLMError
from tinylm.export import export, max_logit_difference, to_transformers
from tinylm.hf import NotExportable, architecture
from tinylm.model import TransformerLM
from tinylm.preflight import check_checkpoint
from tinylm.sample import sample
from tinylm.tokenizer import CharTokenizer
from tinylm.train import fit

# What each variant of conftest.VARIANTS exports to, or the key its refusal names.
EXPORTS = {
    "nanogpt": "GPT2LMHeadModel", "no-position": "GPT2LMHeadModel", "untied": "GPT2LMHeadModel",
    "modern": "LlamaForCausalLM", "everything": "model.bias", "rope": "model.norm",
    "rmsnorm": "model.norm", "swiglu": "model.mlp", "gqa": "model.kv_heads", "multi-query": "model.kv_heads",
    "qk-norm": "model.qk_norm", "relu2": "model.mlp", "softcap": "model.logit_softcap",
    "speedrun": "model.logit_softcap",
}
# Llama-family settings beyond the modern preset, each exported on its own.
LLAMA_FAMILY = {
    "modern-gqa": dict(kv_heads=2), "modern-multi-query": dict(kv_heads=1),
    "modern-untied": dict(tie_embeddings=False),
    "modern-no-bias": dict(bias=False), "everything-no-bias": dict(kv_heads=2, qk_norm=True, bias=False),
}
CHARS = CharTokenizer(sorted(chr(ord("0") + i) for i in range(37)))  # make_model's vocabulary


def test_every_variant_is_exported_or_refused_by_name() -> None:
    assert set(EXPORTS) == set(VARIANTS), "a new variant: say what it exports to"


@pytest.mark.parametrize("variant", list(EXPORTS))
def test_a_variant_exports_with_equal_logits_or_names_its_key(variant: str) -> None:
    model = make_model(variant)
    if EXPORTS[variant].startswith("model."):
        with pytest.raises(NotExportable, match=rf"^{EXPORTS[variant]}: "):
            to_transformers(model, CHARS)
        return
    exported = to_transformers(model, CHARS)
    assert type(exported).__name__ == EXPORTS[variant]
    assert max_logit_difference(model, exported) < 1e-5


@pytest.mark.parametrize("overrides", list(LLAMA_FAMILY.values()), ids=list(LLAMA_FAMILY))
def test_llama_family_settings_export_with_equal_logits(overrides: dict) -> None:
    model = make_model("modern", **overrides)
    assert max_logit_difference(model, to_transformers(model, CHARS)) < 1e-5


@pytest.mark.parametrize("preset", ["nano", "baby", "modern"])
def test_every_model_preset_is_exportable(preset: str, tmp_path: Path) -> None:
    values = compose(f"model={preset}", f"paths.output_dir={tmp_path}")
    config = TrainConfig.from_dict(values).model
    assert architecture(config) in ("gpt2", "llama")
    torch.manual_seed(0)
    small = ModelConfig(**{**values["model"], "layers": 1})  # the preset's kind, one layer: quick
    model = TransformerLM(small, CHARS.vocab_size).eval()
    assert max_logit_difference(model, to_transformers(model, CHARS), batch=1) < 1e-5


@pytest.fixture(scope="module")
def runs(small_text: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two short real runs, nano's kind and model=modern, and each exported by the command."""
    exported = {}
    for preset in ("nano", "modern"):
        run = tmp_path_factory.mktemp(preset)
        fit(TrainConfig.from_dict(compose(*quick_overrides(small_text, run, f"model={preset}",
                                                           "trainer.max_steps=10", "logger=none"))))
        if preset == "nano":  # as a user runs it
            result = run_script("export.py", f"ckpt={run}", f"out={run / 'hf'}")
            assert result.returncode == 0, result.stderr[-3000:]
            assert "logits within" in result.stdout
        else:  # the same function, without a second process's imports
            export(ExportConfig(ckpt=str(run), out=str(run / "hf")))
        exported[preset] = run
    return exported


@pytest.mark.parametrize("preset", ["nano", "modern"])
def test_transformers_loads_the_export_offline_with_tinylm_logits(preset: str, runs) -> None:
    run = runs[preset]
    model, tokenizer = load_checkpoint(run / "checkpoints" / "last.ckpt")
    hf_model = AutoModelForCausalLM.from_pretrained(run / "hf", attn_implementation="eager")
    hf_tokenizer = AutoTokenizer.from_pretrained(run / "hf")
    text = "ROMEO:\nWhat say you, my lord?"
    ids = hf_tokenizer(text, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == tokenizer.encode(text)
    with torch.no_grad():
        out = hf_model(input_ids=ids, output_attentions=True)
        ours = model(ids)
    assert (out.logits - ours).abs().max() < 1e-5
    maps = attention_maps(model, ids)  # (L, 1, H, T, T), tinylm's explicit path
    for layer, weights in enumerate(out.attentions):
        assert (weights - maps[layer]).abs().max() < 1e-5
    # tinylm reads the directory back, as it reads a checkpoint
    again, again_tokenizer = load_checkpoint(run / "hf")
    assert again_tokenizer.vocab == tokenizer.vocab
    assert (again(ids) - ours).abs().max() < 1e-6


def test_a_text_generation_pipeline_writes_text(runs) -> None:
    generate = pipeline("text-generation", model=str(runs["nano"] / "hf"))
    text = generate("ROMEO:", max_new_tokens=20, do_sample=True)[0]["generated_text"]
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 20


def test_sampling_reads_an_export_too(runs) -> None:
    config = SampleConfig(ckpt=str(runs["nano"] / "hf"), prompt="ROMEO:", max_new_tokens=20, stream=False)
    check_checkpoint(config)  # the command's own check lets the directory through
    written: list[str] = []
    assert sample(config, write=written.append)[0].startswith("ROMEO:")
    assert len("".join(written)) == len("ROMEO:") + 20 + 1


def test_a_damaged_export_is_refused_in_one_line(runs, tmp_path: Path) -> None:
    export = tmp_path / "hf"
    shutil.copytree(runs["nano"] / "hf", export)
    weights = export / "model.safetensors"
    data = bytearray(weights.read_bytes())
    for i in range(len(data) - 64, len(data) - 44):  # inside the last tensor, past the header
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(TinyLMError, match=r"ckpt: .*model.safetensors is damaged .*export it again"):
        load_checkpoint(export)


def test_a_setting_no_architecture_has_is_refused_by_name(runs, tmp_path: Path) -> None:
    checkpoint = torch.load(runs["nano"] / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["model"]["mlp"] = "relu2"  # the same shapes as gelu
    relu2 = tmp_path / "relu2.ckpt"
    torch.save(checkpoint, relu2)
    with pytest.raises(NotExportable, match=r"^model\.mlp: relu2 ") as refused:
        export(ExportConfig(ckpt=str(relu2), out=str(tmp_path / "hf")))
    assert "\n" not in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relu2.ckpt"]  # nothing written


def test_an_existing_directory_is_kept_unless_overwrite(runs) -> None:
    result = run_script("export.py", f"ckpt={runs['nano']}", f"out={runs['nano'] / 'hf'}")
    assert result.returncode == 2 and result.stderr.startswith("error: out: ")
    assert "overwrite=true" in result.stderr
