"""tinylm's models in the layouts of architectures that 🤗 ``transformers`` ships, and back.

    model.position=learned|none, norm=layernorm, mlp=gelu          → GPT-2  (GPT2LMHeadModel)
    model.position=rope, norm=rmsnorm, mlp=swiglu (any kv_heads)    → Llama  (LlamaForCausalLM)
    ... the same with model.qk_norm=true and model.bias=false       → Qwen3  (Qwen3ForCausalLM)

Each is the same maths with other names: GPT-2's ``Conv1D`` keeps its weights transposed,
Llama splits tinylm's fused Q|K|V and gate|up matrices into one Linear each, ``position=none``
is a GPT-2 whose position table is all zeros, ``bias=false`` a GPT-2 whose biases are zeros.
A setting none of them has is ``NotExportable`` naming its key. This module needs neither
``transformers`` nor ``tokenizers``: the export command (``tinylm.export``) builds the files
with them; reading an exported directory back (``read_export``) needs only safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from tinylm.config import ModelConfig
from tinylm.errors import ConfigError
from tinylm.tokenizer import Tokenizer
from tinylm.weights import DamagedWeights, from_record, tensors_sha256, tinylm_record

NORM_EPS = 1e-5  # nn.LayerNorm's default and tinylm.model.RMSNorm's
ROPE_BASE = 10_000.0  # tinylm.model.rope_angles


class NotExportable(ConfigError):
    """The model has a setting that no architecture transformers ships can hold."""


def architecture(config: ModelConfig) -> str:
    """"gpt2", "llama" or "qwen3": the transformers architecture that computes exactly what
    ``config`` does; ``NotExportable`` naming the first key none of them has."""
    if config.learner_attention is not None:
        raise NotExportable(f"model.attention: {config.attention} is your own class, which transformers "
                            f"cannot run; export a model trained with tinylm's attention "
                            f"(model.attention=sdpa)")
    refusal = _refusal(config)
    if refusal is not None:
        key, why = refusal
        raise NotExportable(f"model.{key}: {why}, which no architecture in transformers has; tinylm export "
                            f"takes GPT-2's settings (learned positions, layernorm, gelu) or Llama's "
                            f"(rope, rmsnorm, swiglu)")
    if config.position == "rope":
        return "qwen3" if config.qk_norm else "llama"
    return "gpt2"


def _refusal(config: ModelConfig) -> tuple[str, str] | None:
    """(key, what it does) of the first setting that neither GPT-2 nor Llama (nor Qwen3) has."""
    if config.logit_softcap is not None:
        return "logit_softcap", f"logit_softcap={config.logit_softcap} squashes the logits"
    if config.mlp == "relu2":
        return "mlp", "relu2 is a squared-ReLU MLP"
    position = f"position={config.position}"
    if config.position == "rope":
        wanted = [("norm", "rmsnorm"), ("mlp", "swiglu")]
    else:
        wanted = [("norm", "layernorm"), ("mlp", "gelu"), ("kv_heads", config.heads), ("qk_norm", False)]
    for key, value in wanted:
        if getattr(config, key) != value:
            return key, f"{key}={_yaml(getattr(config, key))} with {position}"
    if config.qk_norm and config.bias:
        return "bias", "bias=true with qk_norm=true (Qwen3, the Llama with QK-norm, has no MLP biases)"
    return None


CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
NAMES = {"gpt2": "GPT-2", "llama": "Llama", "qwen3": "Qwen3"}


def hf_config(config: ModelConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    """The keyword arguments of the transformers config of ``config``'s architecture, with
    ``model_type``; tinylm's own settings ride along under "tinylm" (``read_export``)."""
    kind = architecture(config)
    common = {"model_type": kind, "vocab_size": tokenizer.vocab_size,
              "tie_word_embeddings": config.tie_embeddings,
              "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
              "architectures": [CLASSES[kind]], "tinylm": tinylm_record(config, tokenizer)}
    if kind == "gpt2":
        return {**common, "n_positions": config.block_size, "n_embd": config.d_model,
                "n_layer": config.layers, "n_head": config.heads, "n_inner": config.mlp_hidden,
                "activation_function": "gelu",  # the exact (erf) GELU, as F.gelu
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": NORM_EPS}
    return {**common, "hidden_size": config.d_model, "intermediate_size": config.mlp_hidden,
            "num_hidden_layers": config.layers, "num_attention_heads": config.heads,
            "num_key_value_heads": config.kv_heads, "head_dim": config.head_dim, "hidden_act": "silu",
            "max_position_embeddings": config.block_size, "rms_norm_eps": NORM_EPS,
            "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_BASE},
            "attention_bias": config.bias, "attention_dropout": 0.0,
            **({} if kind == "qwen3" else {"mlp_bias": config.bias})}


def to_hf(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """tinylm's state dict (of ``TransformerLM``) under the names and layouts of its architecture."""
    kind = architecture(config)
    d, hd, H, G = config.d_model, config.head_dim, config.heads, config.kv_heads
    out: dict[str, Tensor] = {}
    if kind == "gpt2":
        out["transformer.wte.weight"] = state["token_embedding.weight"]
        out["transformer.wpe.weight"] = state.get("position_embedding.weight",
                                                  torch.zeros(config.block_size, d))  # position=none
        for i in range(config.layers):
            src, dst = f"blocks.{i}.", f"transformer.h.{i}."
            for ours, theirs in [("ln_1", "ln_1"), ("ln_2", "ln_2")]:
                out[f"{dst}{theirs}.weight"] = state[f"{src}{ours}.weight"]
                out[f"{dst}{theirs}.bias"] = state.get(f"{src}{ours}.bias", torch.zeros(d))
            for ours, theirs in [("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                                 ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")]:
                weight = state[f"{src}{ours}.weight"]  # (out, in); Conv1D keeps (in, out)
                out[f"{dst}{theirs}.weight"] = weight.t().contiguous()
                out[f"{dst}{theirs}.bias"] = state.get(f"{src}{ours}.bias", torch.zeros(weight.size(0)))
        out["transformer.ln_f.weight"] = state["ln_f.weight"]
        out["transformer.ln_f.bias"] = state.get("ln_f.bias", torch.zeros(d))
    else:
        out["model.embed_tokens.weight"] = state["token_embedding.weight"]
        for i in range(config.layers):
            src, dst = f"blocks.{i}.", f"model.layers.{i}."
            out[f"{dst}input_layernorm.weight"] = state[f"{src}ln_1.weight"]
            out[f"{dst}post_attention_layernorm.weight"] = state[f"{src}ln_2.weight"]
            for part in ("weight", "bias"):
                if f"{src}attn.qkv.{part}" not in state:
                    continue
                # Q | K | V rows: H heads of queries, then G of keys, then G of values.
                q, k, v = state[f"{src}attn.qkv.{part}"].split([H * hd, G * hd, G * hd])
                out[f"{dst}self_attn.q_proj.{part}"] = q
                out[f"{dst}self_attn.k_proj.{part}"] = k
                out[f"{dst}self_attn.v_proj.{part}"] = v
                out[f"{dst}self_attn.o_proj.{part}"] = state[f"{src}attn.proj.{part}"]
                gate, up = state[f"{src}mlp.fc.{part}"].chunk(2)  # SiLU(gate) ⊙ up
                out[f"{dst}mlp.gate_proj.{part}"] = gate
                out[f"{dst}mlp.up_proj.{part}"] = up
                out[f"{dst}mlp.down_proj.{part}"] = state[f"{src}mlp.proj.{part}"]
            if config.qk_norm:
                out[f"{dst}self_attn.q_norm.weight"] = state[f"{src}attn.q_norm.weight"]
                out[f"{dst}self_attn.k_norm.weight"] = state[f"{src}attn.k_norm.weight"]
        out["model.norm.weight"] = state["ln_f.weight"]
    if not config.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return {name: tensor.detach().contiguous() for name, tensor in out.items()}


def from_hf(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """The inverse of ``to_hf``: an exported state dict under tinylm's names."""
    kind = architecture(config)
    out: dict[str, Tensor] = {}
    if kind == "gpt2":
        out["token_embedding.weight"] = state["transformer.wte.weight"]
        if config.position == "learned":
            out["position_embedding.weight"] = state["transformer.wpe.weight"]
        for i in range(config.layers):
            src, dst = f"transformer.h.{i}.", f"blocks.{i}."
            for ours, theirs in [("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.qkv", "attn.c_attn"),
                                 ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
                                 ("mlp.proj", "mlp.c_proj")]:
                weight = state[f"{src}{theirs}.weight"]
                out[f"{dst}{ours}.weight"] = weight if ours.startswith("ln") else weight.t().contiguous()
                if config.bias:
                    out[f"{dst}{ours}.bias"] = state[f"{src}{theirs}.bias"]
        out["ln_f.weight"] = state["transformer.ln_f.weight"]
        if config.bias:
            out["ln_f.bias"] = state["transformer.ln_f.bias"]
    else:
        out["token_embedding.weight"] = state["model.embed_tokens.weight"]
        for i in range(config.layers):
            src, dst = f"model.layers.{i}.", f"blocks.{i}."
            out[f"{dst}ln_1.weight"] = state[f"{src}input_layernorm.weight"]
            out[f"{dst}ln_2.weight"] = state[f"{src}post_attention_layernorm.weight"]
            for part in ("weight", "bias") if config.bias else ("weight",):
                attn, mlp = f"{src}self_attn.", f"{src}mlp."
                out[f"{dst}attn.qkv.{part}"] = torch.cat([state[f"{attn}{p}_proj.{part}"] for p in "qkv"])
                out[f"{dst}attn.proj.{part}"] = state[f"{attn}o_proj.{part}"]
                out[f"{dst}mlp.fc.{part}"] = torch.cat([state[f"{mlp}gate_proj.{part}"],
                                                        state[f"{mlp}up_proj.{part}"]])
                out[f"{dst}mlp.proj.{part}"] = state[f"{mlp}down_proj.{part}"]
            if config.qk_norm:
                out[f"{dst}attn.q_norm.weight"] = state[f"{src}self_attn.q_norm.weight"]
                out[f"{dst}attn.k_norm.weight"] = state[f"{src}self_attn.k_norm.weight"]
        out["ln_f.weight"] = state["model.norm.weight"]
    out["lm_head.weight"] = state.get("lm_head.weight", out["token_embedding.weight"])
    return out


def _yaml(value: object) -> str:
    """``value`` as it is written in an override: true, not True."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a directory that ``tinylm export`` wrote."""
    config = Path(path).expanduser() / "config.json"
    return config.is_file() and "tinylm" in json.loads(config.read_text(encoding="utf-8"))


def seal(path: Path) -> None:
    """Record the sha256 of the tensors ``save_pretrained`` wrote in the export's config.json, so
    that reading it back can tell a damaged model.safetensors (transformers records none)."""
    config_file = path / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["tinylm"]["sha256"] = tensors_sha256(load_file(path / "model.safetensors"))
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def read_export(path: str | Path) -> tuple[ModelConfig, Tokenizer, dict[str, Tensor]]:
    """An exported directory's model settings, tokenizer and weights (under tinylm's names); weights
    that differ from those it was exported with are a ``DamagedWeights``."""
    path = Path(path).expanduser()
    record = json.loads((path / "config.json").read_text(encoding="utf-8"))["tinylm"]
    config, tokenizer = from_record(record)
    state = load_file(path / "model.safetensors")
    if "sha256" in record and tensors_sha256(state) != record["sha256"]:
        raise DamagedWeights(f"ckpt: {path / 'model.safetensors'} is damaged (its tensors' sha256 differs "
                             f"from the one it was exported with); export it again: tinylm export")
    return config, tokenizer, from_hf(state, config)
