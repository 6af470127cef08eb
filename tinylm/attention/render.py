"""What ``tinylm attention`` does: render a checkpoint's attention on a prompt to a PNG
and report every head's diagnostics, with the same code as the TensorBoard callback."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from tinylm.attention import attribution
from tinylm.attention.ablation import ablation_scores, can_ablate
from tinylm.attention.explorer import write_explorer
from tinylm.attention.formation import find_formation
from tinylm.attention.history import load_history
from tinylm.attention.maps import attention_maps, encode_probe, head_scores
from tinylm.attention.pictures import AttentionFigure
from tinylm.attention.scores import HeadScores
from tinylm.checkpoint import load_checkpoint, read_checkpoint
from tinylm.command_configs import AttentionScriptConfig
from tinylm.errors import ConfigError
from tinylm.rundir import checkpoint_path, run_dir

DEFAULT_PROMPT = "To be, or not to be"


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
    """Draw the maps ``config`` asks for to ``config.out`` (a PNG, or with ``.html`` the
    explorer page); return the diagnostics as a markdown table and a line saying what was drawn."""
    run_history = run_dir(config.ckpt).attention_history
    if Path(config.out).suffix.lower() == ".html" and run_history.is_file():
        return explore_run(config, run_history)
    config = dataclasses.replace(config, prompt=DEFAULT_PROMPT if config.prompt is None else config.prompt)
    model, tokenizer = load_checkpoint(checkpoint_path(config.ckpt), attention_file=config.attention_file,
                                       attention_file_changed=config.attention_file_changed)
    ids = encode_probe(config.prompt, tokenizer, model.config.block_size, key="prompt")  # (1, T)
    layers = pick(config.layer, model.config.layers, "layer", "layers")
    heads = pick(config.head, model.config.heads, "head", "heads")

    maps = attention_maps(model, ids)  # (L, 1, H, T, T)
    scores = head_scores(model, ids, maps)
    # The prompt is the one window of the ablation: its characters predict the next.
    if config.ablation is not None and can_ablate(model):
        scores = dataclasses.replace(scores, ablation=ablation_scores(model, ids, config.ablation))
    labels = tokenizer.labels(config.prompt)  # one per token: a byte's shows its character
    n = min(config.max_chars, len(labels))  # causal: the first n rows and columns are
    shown = maps[layers][:, 0][:, heads][..., :n, :n].numpy()  # the map of the first n tokens
    titles = [scores.title(layer, head) for layer in layers for head in heads]
    out = Path(config.out).expanduser()
    written = attribution.attribute(model, ids)  # who wrote each prediction: cheap, one pass
    decode, softcap = (lambda token: tokenizer.decode([token])), model.config.logit_softcap
    if out.suffix.lower() == ".html":
        picked = {name: values[layers][:, heads].numpy()[None] for name, values in scores.items()}
        weights = (shown * 255).round().astype("uint8")[None]  # (1, L, H, n, n)
        bars = attribution.explorer_data(written, ids, n, decode, softcap) if n == ids.size(1) else None
        write_explorer(out, labels[:n], [checkpoint_step(config.ckpt)], weights, picked,
                       title=f"attention of {config.ckpt}", attribution=bars)
    else:
        figure = AttentionFigure(labels[:n], rows=len(layers), cols=len(heads))
        figure.draw(shown, titles)
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.save(out)

    cropped = ""
    if n < len(labels):
        cropped = f" (the first {n} of {len(labels)}; max_chars= shows more)"
    attributed = ""
    if config.attribute:
        T = ids.size(1)
        position = T - 2 if config.position is None else config.position  # T - 2 predicts the last
        if not -T <= position < T:
            raise ConfigError(f"position: the prompt has {T} positions (0 to {T - 1}), got {position}")
        position %= T
        attributed = attribution.table(written, ids, position, decode, softcap) + "\n\n"
    return (
        f"{scores.table(layers, heads)}\n\n{attributed}"
        f"wrote {out}: {len(layers)} layer(s) × {len(heads)} head(s) on {n} characters{cropped}"
    )


def checkpoint_step(ckpt: str) -> int:
    """The optimizer step at which ``ckpt`` (a file or a run directory) was saved."""
    return int(read_checkpoint(checkpoint_path(ckpt), key="ckpt").get("global_step", 0))


def explore_run(config: AttentionScriptConfig, path: Path) -> str:
    """The explorer of a run directory: its probe at every step the run recorded."""
    history = load_history(path, key="ckpt")
    if config.prompt is not None and config.prompt != "".join(history.labels):
        raise ConfigError(
            f"prompt: the page of a run directory shows the probe the run recorded at each step "
            f"({''.join(history.labels)!r}); no other prompt can be drawn at those steps, as only the "
            f"last checkpoints are kept: drop prompt=, or draw it at the last step with "
            f"ckpt={run_dir(config.ckpt).last}"
        )
    _, L, H, n, _ = history.maps.shape
    layers, heads = pick(config.layer, L, "layer", "layers"), pick(config.head, H, "head", "heads")
    maps = history.maps[:, layers][:, :, heads]  # (S, layers, heads, n, n)
    scores = {name: values[:, layers][:, :, heads] for name, values in history.scores.items()}
    formed = None
    if "prefix_matching" in history.scores:
        formed = find_formation(history.steps, history.scores["prefix_matching"],
                                history.scores.get("prev_token"))
    marks = {formed.step: formed.line()} if formed is not None else None
    out = write_explorer(config.out, history.labels, history.steps.tolist(), maps, scores,
                         title=f"attention of {config.ckpt} over training", marks=marks)
    last = {name: torch.from_numpy(values[-1]) for name, values in history.scores.items()}
    table = HeadScores.from_mapping(last).table(layers, heads)
    return (
        f"{table}\n\n(the scores at step {int(history.steps[-1])})\n"
        + (f"{formed.line()} (marked on the slider)\n" if formed is not None else "")
        + f"wrote {out}: {len(layers)} layer(s) × {len(heads)} head(s) on the run's probe of {n} "
        f"characters, {len(history.steps)} steps ({int(history.steps[0])} to {int(history.steps[-1])})"
    )
