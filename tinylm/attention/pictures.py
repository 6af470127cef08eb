"""Attention maps as labelled pictures: rows are query positions, columns key positions,
both labelled with the probe's characters; the causal triangle (keys in the future, which
no query may see) is drawn grey, and a colour bar gives the weights.

The colour scale is fixed at [0, 1] so that maps of different heads and steps compare at
a glance; it is a square-root scale, so the diffuse attention of an untrained head (every
weight near 1/(t+1)) stays visible next to the sharp weights of a trained one.

Pictures are made to be cheap, as the training callback draws L·(H + 1) of them each time:
matplotlib draws the still parts once (axes, 2·T tick labels per panel, colour bar) onto an
Agg canvas of its own (no pyplot, no global state); each map is then pasted in as whole
pixels, since its axes are snapped to an exact number of pixels per position, and only the
titles are drawn again. PNGs are encoded with one filter for every row and one zlib call,
where Pillow tries every filter on every row (docs/performance.md#library-pieces).
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
import sys
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font

# How characters are shown as tick labels: whitespace made visible, others as they are.
VISIBLE = {"\n": "¶", " ": "␣", "\t": "⇥", "\r": "␍"}  # ¶: legible at 6.5 pt, unlike ⏎
CELL_INCHES = 0.1  # one position: 10 pixels at 100 dpi, room for a 6.5 pt character label
MIN_PANEL_INCHES = 3.0  # wide enough for a two-line title of scores
MASKED_COLOUR = (0.85, 0.85, 0.85)  # keys after the query: masked out by causality
LABEL_FONT = "DejaVu Sans Mono"  # ships with matplotlib: Latin, Greek, Cyrillic, ¶, ␣ and ⇥
LABEL_SIZE = 6.5
# Fonts for the characters it lacks, in order of preference (matplotlib falls back glyph by glyph
# along the list): Noto's CJK fonts cover Chinese, Japanese and Korean, {lang} the script's variant.
FALLBACK_FONTS = ("Noto Sans Mono CJK {lang}", "Noto Sans CJK {lang}", "Noto Sans Mono", "Noto Sans",
                  "DejaVu Sans")
MISSING = "?"  # drawn for a character no installed font has, instead of an empty box
CMAP, GAMMA = "viridis", 0.5


def visible_char(char: str) -> str:
    """A character as a readable tick label: '\\n' → '¶', ' ' → '␣', control characters escaped."""
    if char in VISIBLE:
        return VISIBLE[char]
    if not char.isprintable():
        return repr(char)[1:-1]
    return char


def label_fonts(labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """The font families that draw ``labels`` (LABEL_FONT first, then installed fonts that have
    the characters it lacks, for matplotlib's glyph-by-glyph fallback), and the labels with every
    character no installed font has replaced by MISSING. Those characters are reported once per
    process, on stderr, with the font package to install; matplotlib's warning per glyph never
    comes, as every glyph it is given has a font."""
    needed = {c for label in labels for c in label if not c.isspace()}
    families = [LABEL_FONT]
    missing = {c for c in needed if ord(c) not in _charmap(_font_path(LABEL_FONT))}
    if missing:
        for family, path in _fallbacks(missing):
            covered = {c for c in missing if ord(c) in _charmap(path)}
            if covered:
                families.append(family)
                missing -= covered
            if not missing:
                break
    if missing:
        _report_missing(missing)
        labels = ["".join(MISSING if c in missing else c for c in label) for label in labels]
    return families, list(labels)


_REPORTED: set[str] = set()


def _report_missing(missing: set[str]) -> None:
    new = sorted(missing - _REPORTED)
    if not new:
        return
    _REPORTED.update(new)
    cjk = any(_is_cjk(c) for c in new)
    package = "fonts-noto-cjk" if cjk else "fonts-noto-core"
    shown = ", ".join(f"{c} (U+{ord(c):04X})" for c in new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5
                                                                   else "")
    print(f"warning: no installed font draws {shown}; the attention pictures show them as "
          f"'{MISSING}'. Install a font that does, e.g. {package} (apt-get install {package}; "
          f"Noto fonts: https://fonts.google.com/noto)", file=sys.stderr, flush=True)


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (0x2E80 <= code <= 0x9FFF or 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF
            or 0xF900 <= code <= 0xFAFF or 0xFF00 <= code <= 0xFFEF or 0x20000 <= code <= 0x3FFFF)


def _language(chars: set[str]) -> str:
    """The CJK variant to prefer: Japanese with kana, Korean with Hangul, else Simplified Chinese."""
    if any(0x3040 <= ord(c) <= 0x30FF for c in chars):
        return "JP"
    if any(0xAC00 <= ord(c) <= 0xD7AF or 0x1100 <= ord(c) <= 0x11FF for c in chars):
        return "KR"
    return "SC"


@functools.cache
def _font_path(family: str) -> str:
    return font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=True)


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def _fallbacks(chars: set[str]) -> list[tuple[str, str]]:
    """Installed fonts as (family, file), the preferred ones first, then every other one."""
    _add_system_fonts()
    fonts: dict[str, str] = {}
    regular_first = sorted(font_manager.fontManager.ttflist,
                           key=lambda f: (f.weight != 400, f.style != "normal"))
    for entry in regular_first:
        fonts.setdefault(entry.name, entry.fname)
    preferred = [name.format(lang=_language(chars)) for name in FALLBACK_FONTS]
    order = [n for n in preferred if n in fonts] + sorted(n for n in fonts if n not in preferred)
    # "Last Resort" fonts draw every character as a box with its code: no better than a box.
    return [(name, fonts[name]) for name in order
            if name != LABEL_FONT and not name.startswith("Last Resort")]


@functools.cache
def _add_system_fonts() -> None:
    """Make fonts installed after matplotlib built its font cache known to it (it never looks
    again by itself): a font package installed for our pictures then works at once."""
    known = {entry.fname for entry in font_manager.fontManager.ttflist}
    for path in font_manager.findSystemFonts():
        if path not in known:
            with contextlib.suppress(Exception):  # a font file matplotlib cannot read
                font_manager.fontManager.addfont(path)


def colour(weights: np.ndarray) -> np.ndarray:
    """Attention maps (..., T, T) as RGBA pixels (..., T, T, 4) uint8: the colour bar's scale,
    with keys after the query in grey."""
    lut = (mpl.colormaps[CMAP](np.linspace(0, 1, 256)) * 255).round().astype(np.uint8)  # (256, 4)
    level = np.clip(weights, 0.0, 1.0) ** GAMMA  # the PowerNorm of the colour bar, by hand
    rgba = lut[(level * 255).round().astype(np.intp)]
    T = weights.shape[-1]
    future = np.triu(np.ones((T, T), dtype=bool), k=1)  # key > query
    rgba[..., future, :] = (*(round(255 * c) for c in MASKED_COLOUR), 255)
    return rgba


class AttentionFigure:
    """A grid of ``rows`` × ``cols`` attention maps over one probe, drawn again on each ``draw``.

    ``labels`` are the probe's characters (T of them); every panel shows a (T, T) map, with
    its own tick labels and title, and one colour bar serves them all. ``label_size`` (points):
    larger labels for fewer, wider cells (MIN_PANEL_INCHES keeps a short probe's panel wide).
    """

    def __init__(self, labels: Sequence[str], rows: int = 1, cols: int = 1, dpi: int = 100,
                 label_size: float = LABEL_SIZE) -> None:
        self.length, self.rows, self.cols = len(labels), rows, cols
        T = self.length
        panel = max(MIN_PANEL_INCHES, CELL_INCHES * T)
        self.figure = Figure(figsize=(cols * (panel + 0.5) + 1.0, rows * (panel + 0.8)), dpi=dpi,
                             layout="constrained")
        self.canvas = FigureCanvasAgg(self.figure)
        self.axes = self.figure.subplots(rows, cols, squeeze=False)  # (rows, cols) array of Axes
        families, shown = label_fonts([visible_char(c) for c in labels])
        font = {"family": families, "size": label_size}
        for ax in self.axes.ravel():
            ax.set_xlim(-0.5, T - 0.5)  # position i fills [i - 0.5, i + 0.5], as with imshow
            ax.set_ylim(T - 0.5, -0.5)  # query 0 at the top
            ax.set_aspect("equal")
            ax.set_xticks(range(T), shown, fontdict=font)
            ax.set_yticks(range(T), shown, fontdict=font)
            ax.tick_params(length=0, pad=1.5)
            ax.set_xlabel("key position", fontsize=8)
            ax.set_ylabel("query position", fontsize=8)
            ax.set_title("two lines\nof title", fontsize=8)  # reserves their room in the layout
        scale = mpl.cm.ScalarMappable(PowerNorm(GAMMA, vmin=0.0, vmax=1.0), CMAP)
        colorbar = self.figure.colorbar(scale, ax=self.axes.ravel().tolist(), shrink=0.8,
                                        fraction=0.04 / cols, pad=0.01)
        colorbar.set_label("attention weight", fontsize=8)
        colorbar.set_ticks([0, 0.02, 0.1, 0.25, 0.5, 0.75, 1.0])
        colorbar.ax.tick_params(labelsize=7)

        # Constrained layout places everything, placeholder titles included (a layout pass, no
        # pixels); then nothing moves again but the snapped axes, and the one full drawing
        # of the still parts becomes the background.
        self.figure.draw_without_rendering()
        self.figure.set_layout_engine("none")
        self.width, self.height = int(self.figure.bbox.width), int(self.figure.bbox.height)
        self.cells = [self._snap(ax) for ax in self.axes.ravel()]
        renderer = self.canvas.get_renderer()
        self.panel_boxes = [self._pixels(ax.get_tightbbox(renderer)) for ax in self.axes.ravel()]
        self.colorbar_box = self._pixels(colorbar.ax.get_tightbbox(renderer))
        self.titles = [ax.title for ax in self.axes.ravel()]
        for title in self.titles:
            title.set_animated(True)  # left out of full draws: drawn by hand in ``draw``
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(self.figure.bbox)

    def _snap(self, ax) -> tuple[int, int, int]:
        """Shrink ``ax`` to a whole number of pixels per position; its (top row, left column,
        pixels per position) in the pixel array."""
        box = ax.get_window_extent()
        cell = max(1, int(min(box.width, box.height) // self.length))
        size = cell * self.length
        left = round(box.x0 + (box.width - size) / 2)
        bottom = round(box.y0 + (box.height - size) / 2)
        ax.set_position([left / self.width, bottom / self.height, size / self.width, size / self.height])
        return self.height - bottom - size, left, cell

    def _pixels(self, box, pad: int = 4) -> tuple[slice, slice]:
        """A display box (origin bottom left) as (rows, columns) slices of the pixel array."""
        top = max(0, int(self.height - box.y1) - pad)
        bottom = min(self.height, int(self.height - box.y0) + pad)
        left, right = max(0, int(box.x0) - pad), min(self.width, int(box.x1) + pad)
        return slice(top, bottom), slice(left, right)

    def draw(self, maps: np.ndarray, titles: Sequence[str] = ()) -> None:
        """Fill the panels with ``maps`` (rows, cols, T, T) and row-major ``titles``."""
        maps = np.asarray(maps, dtype=np.float32)
        expected = (self.rows, self.cols, self.length, self.length)
        if maps.shape != expected:
            raise ValueError(f"expected maps of shape {expected}, got {maps.shape}")
        pixels = colour(maps).reshape(-1, self.length, self.length, 4)  # (panels, T, T, 4)
        self.canvas.restore_region(self.background)
        buffer = np.asarray(self.canvas.buffer_rgba())  # (height, width, 4), the canvas itself
        for i, (ax, (top, left, cell)) in enumerate(zip(self.axes.ravel(), self.cells, strict=True)):
            size = cell * self.length
            buffer[top : top + size, left : left + size] = pixels[i].repeat(cell, 0).repeat(cell, 1)
            for spine in ax.spines.values():  # the frame, half covered by the paste
                self.figure.draw_artist(spine)
            self.titles[i].set_text(titles[i] if i < len(titles) else "")
            self.figure.draw_artist(self.titles[i])

    def _rgba(self) -> np.ndarray:
        """The canvas, (height, width, 4) uint8: a view, valid until the next ``draw``."""
        return np.asarray(self.canvas.buffer_rgba())

    def _panel_pieces(self, pixels: np.ndarray, index: int) -> list[np.ndarray]:
        """Panel ``index`` of ``pixels`` (with its title and labels) and the colour bar."""
        rows, cols = self.panel_boxes[index]
        return [pixels[rows, cols], pixels[rows, self.colorbar_box[1]]]

    def to_array(self) -> np.ndarray:
        """The last drawing as RGB pixels, (height, width, 3) uint8."""
        return self._rgba()[..., :3].copy()

    def panel(self, row: int, col: int) -> np.ndarray:
        """One panel of the last drawing, with its title and labels, beside the colour bar:
        (height, width, 3) uint8. In a one-row grid this is a complete picture of one map."""
        return np.concatenate(self._panel_pieces(self._rgba(), row * self.cols + col), axis=1)[..., :3]

    def pictures(self) -> list[list[np.ndarray]]:
        """The last drawing whole, then each panel beside the colour bar (row-major), as
        pieces for ``encode_pngs``: views of one copy of the canvas, so the next ``draw`` may
        start before they are encoded."""
        pixels = self._rgba().copy()  # (height, width, 4); a plain copy, cheap
        return [[pixels]] + [self._panel_pieces(pixels, i) for i in range(self.rows * self.cols)]

    def save(self, path: str | Path) -> None:
        """Write the last drawing as a PNG."""
        Path(path).write_bytes(encode_png(self._rgba()))


def encode_pngs(pictures: Sequence[Sequence[np.ndarray]]) -> list[bytes]:
    """``encode_png(*pieces)`` for each picture, on all cores: zlib and numpy let go of
    Python's lock while they work, so the pictures compress in parallel."""
    if len(pictures) <= 1:
        return [encode_png(*pieces) for pieces in pictures]
    with ThreadPoolExecutor(max_workers=min(len(pictures), os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda pieces: encode_png(*pieces), pictures))


def encode_png(*pieces: np.ndarray, level: int = 3) -> bytes:
    """Pixels (height, width, 3 or 4) uint8, RGB or RGBA, as PNG bytes; several pieces of the
    same height and kind are placed side by side.

    Every row is stored with PNG's "Up" filter (its difference from the row above): a map is
    made of blocks several pixels tall, so most rows come out all zeros and compress to almost
    nothing. One numpy subtraction and one zlib call, where Pillow's encoder tries every filter
    on every row.
    """
    height, channels = pieces[0].shape[0], pieces[0].shape[-1]
    for piece in pieces:
        if piece.ndim != 3 or piece.shape[0] != height or piece.shape[2] != channels \
                or channels not in (3, 4) or piece.dtype != np.uint8:
            raise ValueError(f"expected uint8 pixels (height={height}, width, {channels}) with 3 or 4 "
                             f"channels, got {piece.dtype} {piece.shape}")
    width = sum(piece.shape[1] for piece in pieces)
    rows = np.empty((height, 1 + width * channels), np.uint8)  # each row: filter type, then bytes
    rows[:, 0] = 2  # "Up"
    start = 1
    for piece in pieces:
        flat = piece.reshape(height, -1)  # (height, w·channels): a view, rows stay contiguous
        end = start + flat.shape[1]
        rows[0, start:end] = flat[0]  # the row above the first is taken as zeros
        np.subtract(flat[1:], flat[:-1], out=rows[1:, start:end])  # wraps modulo 256, as PNG wants
        start = end

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour_type = {3: 2, 4: 6}[channels]  # truecolour, truecolour with alpha
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)  # 8 bits, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows, level)) + chunk(b"IEND", b""))
