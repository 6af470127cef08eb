"""What ``tinylm patch`` does: activation patching per head on a clean and a corrupted prompt
(``tinylm.attention.patching``), as a layer × head heatmap PNG and a table in the terminal."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tinylm.attention.maps import encode_probe
from tinylm.attention.patching import HeadsUnreachable, Patching, patch_heads
from tinylm.checkpoint import load_checkpoint
from tinylm.command_configs import PatchConfig
from tinylm.errors import ConfigError
from tinylm.rundir import checkpoint_path
from tinylm.tokenizer import Tokenizer

TOP = 3  # heads named in the closing line


def run(config: PatchConfig) -> None:
    """``tinylm patch``: patch every head, draw the heatmap, print the table."""
    print(patch_report(config))


def patch_report(config: PatchConfig) -> str:
    model, tokenizer = load_checkpoint(checkpoint_path(config.ckpt), attention_file=config.attention_file)
    block_size = model.config.block_size
    clean = encode_probe(config.clean, tokenizer, block_size, key="clean")  # (1, T)
    corrupt = encode_probe(config.corrupt, tokenizer, block_size, key="corrupt")
    if clean.shape != corrupt.shape:  # bytes: the same characters need not be as many tokens
        raise ConfigError(f"corrupt: {corrupt.size(1)} tokens against clean's {clean.size(1)}; "
                          f"use characters that take as many bytes as those they replace")
    try:
        result = patch_heads(model, clean, corrupt)
    except HeadsUnreachable as error:
        raise ConfigError(f"ckpt: {error}") from None
    except ValueError as same:
        shown = tokenizer.decode([int(same.args[0])])
        raise ConfigError(f"corrupt: the model predicts {shown!r} after both prompts, so there is nothing "
                          f"to recover; change corrupt where the prediction depends on it") from None
    out = Path(config.out).expanduser()
    draw(result, out, tokenizer)
    return report(result, tokenizer, out)


def _char(tokenizer: Tokenizer, token: int) -> str:
    return repr(tokenizer.decode([token]))


def report(result: Patching, tokenizer: Tokenizer, out: Path) -> str:
    """The recovery as a markdown table (a row per layer, a column per head), what it measured,
    and the heads that recover most."""
    recovery = result.recovery
    layers, heads = recovery.shape
    good, bad = _char(tokenizer, result.clean_next), _char(tokenizer, result.corrupt_next)
    lines = [
        f"next character: clean {good}, corrupt {bad}; metric logit({good}) - logit({bad}) at the last "
        f"position: clean {result.clean_metric:+.3f}, corrupt {result.corrupt_metric:+.3f}",
        "recovery (m_patched - m_corrupt) / (m_clean - m_corrupt), each head patched from the clean run:",
        "",
        "| layer | " + " | ".join(f"head {h}" for h in range(heads)) + " |",
        "|---:|" + "---:|" * heads,
    ]
    for layer in range(layers):
        lines.append(f"| {layer} | " + " | ".join(f"{recovery[layer, h]:+.3f}" for h in range(heads)) + " |")
    order = recovery.flatten().argsort(descending=True)[:TOP].tolist()
    top = ", ".join(f"layer {i // heads} head {i % heads} ({recovery.flatten()[i]:+.2f})" for i in order)
    lines += ["", f"most recovered: {top}", f"wrote {out}: {layers} layer(s) × {heads} head(s)"]
    return "\n".join(lines)


def draw(result: Patching, out: Path, tokenizer: Tokenizer) -> None:
    """The recovery as a layer × head heatmap, each cell labelled with its value."""
    recovery = result.recovery.numpy()
    layers, heads = recovery.shape
    figure = Figure(figsize=(1.2 + 0.9 * heads, 1.2 + 0.7 * layers), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    image = axes.imshow(recovery, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    for layer in range(layers):
        for head in range(heads):
            value = recovery[layer, head]
            axes.text(head, layer, f"{value:+.2f}", ha="center", va="center", fontsize=8,
                      color="white" if abs(value) > 0.6 else "black")
    axes.set_xticks(range(heads))
    axes.set_yticks(range(layers))
    axes.set_xlabel("head")
    axes.set_ylabel("layer")
    good, bad = _char(tokenizer, result.clean_next), _char(tokenizer, result.corrupt_next)
    axes.set_title(f"recovery of logit({good}) - logit({bad})", fontsize=9)
    figure.colorbar(image, ax=axes, shrink=0.8)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
