"""``tinylm export ckpt=RUN_DIR out=DIR``: a checkpoint as a Hugging Face model directory.

The directory is what ``transformers`` loads offline, with no remote code, and what the Hub
takes as a model repository: ``config.json`` and ``model.safetensors`` of the architecture
``tinylm.hf`` maps the model to (GPT-2, Llama or Qwen3), a tokenizer that ``AutoTokenizer``
reads (``tokenizer.json``: a character vocabulary, or GPT-2's byte-level alphabet in byte
order), and a short model card. Before anything is written, the exported model's logits are
compared with tinylm's; the directory appears whole or not at all.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from tinylm.checkpoint import load_checkpoint
from tinylm.command_configs import ExportConfig
from tinylm.hf import CLASSES, NAMES, architecture, hf_config, seal, to_hf
from tinylm.model import TransformerLM
from tinylm.rundir import checkpoint_path
from tinylm.tokenizer import Tokenizer

PARITY_TOLERANCE = 1e-5  # the largest difference of a logit allowed between tinylm and transformers


def run(config: ExportConfig) -> None:
    """``tinylm export``."""
    print(export(config))


def export(config: ExportConfig) -> str:
    """Write ``config.ckpt``'s model to ``config.out``; return the lines that say what was written."""
    model, tokenizer = load_checkpoint(checkpoint_path(config.ckpt))
    kind = architecture(model.config)  # a setting no architecture has stops here, before any file
    out = Path(config.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        hf_model = to_transformers(model, tokenizer)
        difference = max_logit_difference(model, hf_model)
        if difference > PARITY_TOLERANCE:  # a bug of the mapping, never a user's mistake
            raise RuntimeError(f"the exported model's logits differ from tinylm's by {difference:.2e}")
        hf_model.save_pretrained(staging)
        seal(staging)
        hf_tokenizer(tokenizer, model.config.block_size).save_pretrained(staging)
        (staging / "README.md").write_text(model_card(model, tokenizer, kind), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return (f"wrote {out}: {NAMES[kind]} ({CLASSES[kind]}), {model.num_parameters():,} parameters, "
            f"logits within {difference:.1e} of tinylm's\n"
            f"load it: AutoModelForCausalLM.from_pretrained({str(out)!r}) and "
            f"AutoTokenizer.from_pretrained({str(out)!r}); upload it: hf upload <you>/<name> {out}")


def to_transformers(model: TransformerLM, tokenizer: Tokenizer) -> PreTrainedModel:
    """The transformers model computing what ``model`` does, with its weights, in eval mode."""
    hf_model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf_config(model.config, tokenizer)))
    missing, unexpected = hf_model.load_state_dict(to_hf(model.state_dict(), model.config), strict=False)
    tied = {"lm_head.weight"} if model.config.tie_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"exporting: weights missing {missing}, unexpected {unexpected}")
    return hf_model.eval()


@torch.no_grad()
def max_logit_difference(model: TransformerLM, hf_model: PreTrainedModel, batch: int = 2) -> float:
    """The largest difference between the two models' logits on random tokens, a full context."""
    ids = torch.randint(model.vocab_size, (batch, model.config.block_size),
                        generator=torch.Generator().manual_seed(0))
    ours = model.eval()(ids)
    theirs = hf_model(input_ids=ids).logits
    return float((ours - theirs).abs().max())


def hf_tokenizer(tokenizer: Tokenizer, block_size: int) -> PreTrainedTokenizerFast:
    """A fast tokenizer giving the ids ``tokenizer`` gives: one token per character of its
    vocabulary (a BPE model without merges), or one per byte (GPT-2's byte-level alphabet, with
    the token of byte b at id b)."""
    if tokenizer.kind == "byte":
        alphabet = bytes_to_unicode()
        inner = HFTokenizer(models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
        inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        inner.decoder = decoders.ByteLevel()
    else:
        inner = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(tokenizer.vocab)}, merges=[]))
        inner.decoder = decoders.Fuse()  # characters join as they are, no spaces between
    return PreTrainedTokenizerFast(tokenizer_object=inner, clean_up_tokenization_spaces=False,
                                   model_max_length=block_size)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: itself where printable, else 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b], extra = chr(256 + extra), extra + 1
    return mapping


def model_card(model: TransformerLM, tokenizer: Tokenizer, kind: str) -> str:
    """The README.md the Hub shows on the model's page."""
    config = model.config
    return (f"---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [tinylm, {kind}]\n---\n\n"
            f"# A tinylm model\n\nA {tokenizer.kind}-level language model trained with tinylm: "
            f"{config.layers} layers, {config.heads} heads, width {config.d_model}, context "
            f"{config.block_size}, {model.num_parameters():,} parameters, as {NAMES[kind]} "
            f"({CLASSES[kind]}).\n\n```python\nfrom transformers import pipeline\n"
            f"generate = pipeline(\"text-generation\", model=\"<this directory or repo id>\")\n"
            f"print(generate(\"ROMEO:\", max_new_tokens=100, do_sample=True)[0][\"generated_text\"])\n```\n")
