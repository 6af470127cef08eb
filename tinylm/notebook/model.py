"""A model loaded in a notebook: ``model, tokenizer = tinylm.load(...)``, and the same object's
``sample`` (streamed into the cell), ``attention`` (the pictures) and ``explorer`` (the page)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinylm.attention.render import render_attention
from tinylm.checkpoint import CheckpointError, load_checkpoint
from tinylm.command_configs import AttentionScriptConfig
from tinylm.config import SamplingConfig
from tinylm.learner.registry import register
from tinylm.notebook.display import Page, Picture
from tinylm.rundir import checkpoint_path
from tinylm.tokenizer import Tokenizer


@dataclass
class Model:
    """A trained model and its tokenizer, from ``source`` (a run directory, a checkpoint, a
    model.safetensors or an exported directory); unpacks as ``model, tokenizer``."""

    model: Any  # tinylm.TransformerLM, in eval mode
    tokenizer: Tokenizer
    source: Path
    attention_file: str | None = None  # what names a learner's class to the commands

    def __iter__(self):
        return iter((self.model, self.tokenizer))

    def __repr__(self) -> str:
        config = self.model.config
        return (f"tinylm model from {self.source}: {config.layers} layers, {config.heads} heads, width "
                f"{config.d_model}, context {config.block_size}, {self.model.num_parameters():,} "
                f"parameters, a vocabulary of {self.tokenizer.vocab_size}")

    def sample(self, prompt: str = "\n", max_new_tokens: int = 200, temperature: float = 0.8,
               top_k: int | None = 200, top_p: float | None = None, seed: int = 1337,
               stream: bool = True) -> str:
        """The prompt and its continuation; with ``stream`` each character is printed into the
        cell as it is sampled. The settings are ``tinylm sample``'s, checked the same way."""
        SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
        self.tokenizer.check_known(prompt, "prompt")
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        context = torch.tensor([self.tokenizer.encode(prompt)], device=device)
        decode, pieces = self.tokenizer.stream_decoder(), [prompt]
        if stream:
            print(prompt, end="", flush=True)
        tokens = self.model.stream(context, max_new_tokens, temperature, top_k, top_p, generator=generator)
        for token in tokens:  # (1, 1)
            pieces.append(decode(token[0].tolist()))
            if stream:
                print(pieces[-1], end="", flush=True)
        if stream:
            print(flush=True)
        text = "".join(pieces)
        return text if not stream else _Quiet(text)

    def attention(self, prompt: str = "To be, or not to be", layer: int | None = None,
                  head: int | None = None, max_chars: int = 64) -> Picture:
        """The attention maps of ``prompt`` with each head's scores, as ``tinylm attention`` draws them."""
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "attention.png"
            table = render_attention(self._config(out, prompt=prompt, layer=layer, head=head,
                                                  max_chars=max_chars))
            return Picture(out.read_bytes(), table.rsplit("\n\nwrote", 1)[0])

    def explorer(self, prompt: str | None = None, height: int = 720) -> Page:
        """The attention explorer inline: every head over ``prompt``; for a run directory and no
        prompt, its probe at every step the run recorded, with a slider."""
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "explorer.html"
            settings = {} if prompt is None else {"prompt": prompt}
            source = self.source if prompt is None else self._file()
            render_attention(self._config(out, ckpt=source, **settings))
            return Page(out.read_text(encoding="utf-8"), height)

    def _file(self) -> Path:
        """The file the commands load this model from (a run directory gives its checkpoint)."""
        return checkpoint_path(self.source)

    def _config(self, out: Path, ckpt: Path | None = None, **settings: Any) -> AttentionScriptConfig:
        ckpt = ckpt if ckpt is not None else self._file()
        return AttentionScriptConfig(ckpt=str(ckpt), out=str(out), attention_file=self.attention_file,
                                     **settings)


def load(source: str | Path, attention: type | str | None = None) -> Model:
    """The model and tokenizer of ``source``: a run directory (its model.safetensors, else its
    last.ckpt), a checkpoint, a model.safetensors, or a directory ``tinylm export`` wrote. A model
    trained with a learner's attention needs it again: ``attention`` is the class (defined in
    the notebook) or its file."""
    path = checkpoint_path(source)
    if not path.exists():
        raise CheckpointError(f"ckpt: no checkpoint file at {path.resolve()}")
    attention_file = register(attention) if isinstance(attention, type) else attention
    model, tokenizer = load_checkpoint(path, key="ckpt", attention_key="attention",
                                       attention_file=attention_file)
    return Model(model, tokenizer, Path(source).expanduser(), attention_file)


class _Quiet(str):
    """Sampled text already streamed into the cell: not shown a second time as the cell's value."""

    def __repr__(self) -> str:
        return ""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        pass
