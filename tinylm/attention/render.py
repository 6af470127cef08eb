"""What ``tinylm attention`` does: render a checkpoint's attention on a prompt to a PNG
and report every head's diagnostics, with the same code as the TensorBoard callback."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tinylm.config import AttentionScriptConfig, ConfigError


def pick(index: int | None, count: int, key: str, what: str) -> list[int]:
    """All of ``range(count)`` for None, else the one index (negative counts from the end)."""
    if index is None:
        return list(range(count))
    if not -count <= index < count:
        raise ConfigError(f"{key}: the model has {count} {what} (0 to {count - 1}), got {index}")
    return [index % count]


def run(config: AttentionScriptConfig) -> None:
    """``tinylm attention``: draw, then print the head scores and what was drawn."""
    print(render_attention(config))


def render_attention(config: AttentionScriptConfig) -> str:
    """Draw the maps ``config`` asks for to ``config.out``; return the diagnostics as a
    markdown table and a line saying what was drawn."""
    from tinylm.attention.ablation import ablation_scores
    from tinylm.attention.maps import attention_maps, encode_probe, head_scores
    from tinylm.attention.pictures import AttentionFigure
    from tinylm.checkpoint import load_checkpoint
    from tinylm.sample import checkpoint_path

    model, tokenizer = load_checkpoint(checkpoint_path(config.ckpt))
    ids = encode_probe(config.prompt, tokenizer, model.config.block_size, key="prompt")  # (1, T)
    layers = pick(config.layer, model.config.layers, "layer", "layers")
    heads = pick(config.head, model.config.heads, "head", "heads")

    maps = attention_maps(model, ids)  # (L, 1, H, T, T)
    scores = head_scores(model, ids, maps)
    if config.ablation is not None:  # the prompt is the one window: its characters predict the next
        scores = dataclasses.replace(scores, ablation=ablation_scores(model, ids, config.ablation))
    n = min(config.max_chars, len(config.prompt))  # causal: the first n rows and columns are
    shown = maps[layers][:, 0][:, heads][..., :n, :n].numpy()  # the map of the first n characters
    titles = [scores.title(layer, head) for layer in layers for head in heads]
    figure = AttentionFigure(config.prompt[:n], rows=len(layers), cols=len(heads))
    figure.draw(shown, titles)
    out = Path(config.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out)

    cropped = ""
    if n < len(config.prompt):
        cropped = f" (the first {n} of {len(config.prompt)}; max_chars= shows more)"
    return (
        f"{scores.table(layers, heads)}\n\n"
        f"wrote {out}: {len(layers)} layer(s) × {len(heads)} head(s) on {n} characters{cropped}"
    )
