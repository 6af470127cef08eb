"""What the notebook API shows in a cell, with no widget extension and no network: each object
has a ``_repr_html_`` that Jupyter, VS Code and Colab all render.

A whole page (the attention explorer) goes into an ``<iframe srcdoc>``: its script and style
run inside the frame, sandboxed (``allow-scripts`` without same-origin), so they can neither
reach the notebook's page nor be broken by its styles. Pictures are PNGs inline, as base64.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path


def iframe(page: str, height: int) -> str:
    """``page`` (a complete HTML document) isolated in a frame of the cell's width."""
    return (f'<iframe srcdoc="{html.escape(page, quote=True)}" sandbox="allow-scripts" '
            f'style="width:100%;height:{height}px;border:0" loading="lazy"></iframe>')


@dataclass
class Page:
    """A self-contained HTML page (the explorer), shown in the cell; ``save`` writes it out."""

    html: str
    height: int = 720

    def _repr_html_(self) -> str:
        return iframe(self.html, self.height)

    def save(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        path.write_text(self.html, encoding="utf-8")
        return path


@dataclass
class Picture:
    """A PNG (attention maps, loss curves), shown in the cell; ``text`` is printed beside it."""

    png: bytes
    text: str = ""

    def _repr_png_(self) -> bytes:
        return self.png

    def _repr_html_(self) -> str:
        image = base64.b64encode(self.png).decode("ascii")
        caption = f"<pre>{html.escape(self.text)}</pre>" if self.text else ""
        return f'{caption}<img src="data:image/png;base64,{image}" style="max-width:100%">'

    def __repr__(self) -> str:
        return self.text or f"<PNG of {len(self.png):,} bytes>"

    def save(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        path.write_bytes(self.png)
        return path


@dataclass
class Text:
    """Text shown as it is printed (a checklist, a table): monospaced, nothing escaped away."""

    text: str

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.text)}</pre>"


@dataclass
class Checklist(Text):
    """``tinylm check-attention``'s checklist; ``ok`` when every line is ✓."""

    ok: bool = False
