"""The attention explorer: one self-contained HTML page (script, style and data inline, no
network) showing every head of a model over a probe text, at one step or across training.

The page is a grid of layers × heads; each panel (``div.panel`` with ``data-layer`` and
``data-head``) draws its head's map and, under it, the probe's characters coloured by how
much the chosen query looks at each of them; its title gives the head's scores and ablation.
Hovering a character of the probe (above the grid) or of any panel makes it the query in
every panel; clicking pins it. With several steps a slider (``input#step``) steps through
them. ``write_explorer`` builds it from the arrays of ``tinylm.attention.history``.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np

from tinylm.attention.pictures import GAMMA, MASKED_COLOUR, visible_char


def viridis_stops(count: int = 9) -> list[list[int]]:
    """``count`` RGB stops of the pictures' colour map, for the page to interpolate between."""
    return [[round(255 * c) for c in mpl.colormaps["viridis"](x)[:3]] for x in np.linspace(0, 1, count)]


def explorer_html(labels: Sequence[str], steps: Sequence[int], maps: np.ndarray,
                  scores: dict[str, np.ndarray], title: str = "attention",
                  marks: dict[int, str] | None = None, attribution: dict[str, Any] | None = None) -> str:
    """The page for ``maps`` (S, L, H, n, n) uint8 (weights ×255) at ``steps`` (S,) on the n
    tokens ``labels`` names (``Tokenizer.labels``), with ``scores`` name → (S, L, H).

    ``marks``: step → a line, marked on the slider (where the induction heads formed).
    ``attribution``: who wrote each prediction (``attribution.explorer_data``), shown as bars for the
    clicked character."""
    maps = np.ascontiguousarray(maps, dtype=np.uint8)
    S, L, H, n, _ = maps.shape
    if len(steps) != S or len(labels) != n:
        raise ValueError(f"{len(steps)} steps and {len(labels)} labels for maps of shape {maps.shape}")
    data = {
        "title": title,
        "chars": [visible_char(label) for label in labels],
        "steps": [int(s) for s in steps],
        "layers": L, "heads": H, "n": n,
        # Each step's maps as base64 of their (L, H, n, n) bytes: a third of the JSON numbers' size.
        "maps": [base64.b64encode(maps[i].tobytes()).decode("ascii") for i in range(S)],
        "scores": {name: np.round(np.asarray(v, np.float64), 4).tolist() for name, v in scores.items()},
        "viridis": viridis_stops(), "gamma": GAMMA,
        "masked": [round(255 * c) for c in MASKED_COLOUR],
        "marks": [{"index": list(steps).index(step), "step": int(step), "text": text}
                  for step, text in (marks or {}).items() if step in list(steps)],
        "attribution": attribution,
    }
    return fill_page(title, data)


# Inside <script>, "<!--", "<script" and "</script" change how the HTML parser reads on: with
# every "<" (and ">", "&", the JavaScript line breaks) escaped, no string of the data can.
_SCRIPT_SAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def fill_page(title: str, data: dict) -> str:
    """The page with ``title`` (HTML-escaped, quotes too) and ``data`` (JSON, script-safe) in its
    places: one pass over the template, so nothing substituted is read again as a placeholder."""
    payload = json.dumps(data, ensure_ascii=False)
    payload = re.sub("[<>&\u2028\u2029]", lambda m: _SCRIPT_SAFE[m[0]], payload)
    text = {"<!--TITLE-->": html.escape(title, quote=True), "/*DATA*/": payload}
    return re.sub(r"<!--TITLE-->|/\*DATA\*/", lambda m: text[m[0]], PAGE)


def write_explorer(path: str | Path, labels: Sequence[str], steps: Sequence[int], maps: np.ndarray,
                   scores: dict[str, np.ndarray], title: str = "attention",
                   marks: dict[int, str] | None = None, attribution: dict[str, Any] | None = None) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(explorer_html(labels, steps, maps, scores, title, marks, attribution), encoding="utf-8")
    return path


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title><!--TITLE--></title>
<style>
  body { font: 13px system-ui, sans-serif; margin: 16px; color: #222; background: #fff; }
  h1 { font-size: 16px; margin: 0 0 8px; }
  #controls { display: flex; gap: 12px; align-items: center; margin-bottom: 8px; }
  #step { width: 320px; }
  #text, .row { font: 13px "DejaVu Sans Mono", monospace; white-space: pre; line-height: 1.6; }
  #text span, .row span { cursor: pointer; padding: 0 1px; }
  #text span.query { outline: 2px solid #d62728; }
  #grid { display: grid; gap: 12px; margin-top: 10px; }
  .panel { border: 1px solid #ccc; border-radius: 4px; padding: 6px; }
  .panel .name { font-weight: 600; }
  .panel .scores { color: #555; font-size: 11px; margin: 2px 0 4px; }
  .panel canvas { width: 100%; image-rendering: pixelated; display: block; }
  .row { overflow-x: auto; font-size: 11px; margin-top: 4px; }
  .row span.hot { outline: 2px solid #d62728; outline-offset: -1px; }
  .row span.query { text-decoration: underline 2px #d62728; }
  #marks { color: #8c564b; margin-bottom: 6px; }
  #marks button { font: inherit; color: inherit; background: none; border: 1px dashed #8c564b;
    border-radius: 3px; cursor: pointer; }
  #attribution { margin-top: 8px; font-size: 12px; }
  #attribution .bar-row { display: grid; grid-template-columns: 160px 260px 70px; align-items: center; }
  #attribution .track { position: relative; height: 10px; background: #f2f2f2; }
  #attribution .bar { position: absolute; top: 0; height: 10px; }
</style>
</head>
<body>
<h1><!--TITLE--></h1>
<div id="controls">
  <label for="step">training</label>
  <input type="range" id="step" min="0" value="0">
  <span id="step-label"></span>
  <span id="query-label"></span>
</div>
<datalist id="step-marks"></datalist>
<div id="marks"></div>
<div id="text"></div>
<div id="attribution"></div>
<div id="grid"></div>
<script>
"use strict";
const DATA = /*DATA*/;
const L = DATA.layers, H = DATA.heads, N = DATA.n;
const slider = document.getElementById("step");
let step = DATA.steps.length - 1, query = N - 1, pinned = false;
const decoded = DATA.maps.map(b64 => Uint8Array.from(atob(b64), c => c.charCodeAt(0)));

function weight(s, l, h, q, k) { return decoded[s][((l * H + h) * N + q) * N + k] / 255; }
function colour(w) {  // the pictures' scale: viridis on sqrt(weight)
  const stops = DATA.viridis, x = Math.pow(Math.min(Math.max(w, 0), 1), DATA.gamma) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
  return stops[i].map((c, j) => Math.round(c + f * (stops[i + 1][j] - c)));
}
function css(rgb) { return "rgb(" + rgb.join(",") + ")"; }
function textColour(rgb) { return rgb[0] * 0.3 + rgb[1] * 0.6 + rgb[2] * 0.1 > 140 ? "#000" : "#fff"; }

const text = document.getElementById("text");
DATA.chars.forEach((c, i) => {
  const span = document.createElement("span");
  span.textContent = c; span.dataset.pos = i;
  text.appendChild(span);
});
const grid = document.getElementById("grid");
grid.style.gridTemplateColumns = "repeat(" + H + ", minmax(180px, 1fr))";
const CELL = Math.max(2, Math.floor(240 / N));
const panels = [];
for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) {
  const panel = document.createElement("div");
  panel.className = "panel"; panel.dataset.layer = l; panel.dataset.head = h;
  panel.innerHTML = '<div class="name">layer ' + l + ' · head ' + h + '</div><div class="scores"></div>';
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = N * CELL;
  const row = document.createElement("div");
  row.className = "row";
  DATA.chars.forEach((c, i) => {
    const span = document.createElement("span");
    span.textContent = c; span.dataset.pos = i;
    row.appendChild(span);
  });
  panel.appendChild(canvas); panel.appendChild(row);
  grid.appendChild(panel);
  panels.push({l, h, panel, canvas, cells: Array.from(row.children), scores: panel.querySelector(".scores")});
}

function scoreText(l, h) {
  const s = DATA.scores, f = (name, digits) => s[name] ? s[name][step][l][h].toFixed(digits) : "–";
  let out = "prev " + f("prev_token", 2) + " · prefix " + f("prefix_matching", 2) + " · dup "
    + f("duplicate_token", 2) + " · first " + f("first_token", 2)
    + " · " + f("entropy", 1) + " bits";
  if (s.copying) out += " · copying " + f("copying", 2);
  if (s.ablation) {
    const a = s.ablation[step][l][h];
    out += " · ablation " + (a >= 0 ? "+" : "") + a.toFixed(3) + " nats";
  }
  return out;
}

function drawMap(p) {
  const ctx = p.canvas.getContext("2d");
  for (let q = 0; q < N; q++) for (let k = 0; k < N; k++) {
    ctx.fillStyle = k > q ? css(DATA.masked) : css(colour(weight(step, p.l, p.h, q, k)));
    ctx.fillRect(k * CELL, q * CELL, CELL, CELL);
  }
  ctx.strokeStyle = "#d62728"; ctx.lineWidth = Math.max(1, CELL / 3);
  ctx.strokeRect(0, query * CELL, (query + 1) * CELL, CELL);  // the query's row
}

function drawRow(p) {
  let most = 0;
  for (let k = 0; k <= query; k++) most = Math.max(most, weight(step, p.l, p.h, query, k));
  p.cells.forEach((cell, k) => {
    const w = k <= query ? weight(step, p.l, p.h, query, k) : 0;
    const rgb = k <= query ? colour(w) : DATA.masked;
    cell.style.background = css(rgb); cell.style.color = textColour(rgb);
    cell.dataset.weight = w.toFixed(3);
    cell.title = "weight " + w.toFixed(3);
    cell.classList.toggle("hot", k <= query && w >= 0.5 * most && w > 0);
    cell.classList.toggle("query", k === query);
  });
}

function render(full) {
  const marked = (DATA.marks || []).some(m => m.index === step);
  document.getElementById("step-label").textContent = "step " + DATA.steps[step]
    + " (" + (step + 1) + " of " + DATA.steps.length + ")" + (marked ? " ◆" : "");
  document.getElementById("query-label").textContent = "query: position " + query + " '"
    + DATA.chars[query] + "'" + (pinned ? " (pinned: click again to free)" : "");
  Array.from(text.children).forEach((c, i) => c.classList.toggle("query", i === query));
  for (const p of panels) {
    if (full) p.scores.textContent = scoreText(p.l, p.h);
    drawMap(p); drawRow(p);
  }
}

function choose(event, click) {
  const pos = event.target.dataset && event.target.dataset.pos;
  if (pos === undefined) return;
  if (click) pinned = !(pinned && Number(pos) === query);
  else if (pinned) return;
  query = Number(pos);
  render(false);
}
for (const area of [text, grid]) {
  area.addEventListener("mouseover", e => choose(e, false));
  area.addEventListener("click", e => choose(e, true));
}
slider.max = DATA.steps.length - 1; slider.value = step;
slider.disabled = DATA.steps.length < 2;
slider.addEventListener("input", () => { step = Number(slider.value); render(true); });
// Marked steps (where the induction heads formed): a tick on the slider and a button to go there.
const marksBox = document.getElementById("marks");
for (const mark of DATA.marks || []) {
  const option = document.createElement("option");
  option.value = mark.index; option.label = "step " + mark.step;
  document.getElementById("step-marks").appendChild(option);
  slider.setAttribute("list", "step-marks");
  const button = document.createElement("button");
  button.textContent = "◆ " + mark.text; button.dataset.step = mark.step; button.className = "mark";
  button.addEventListener("click", () => { step = mark.index; slider.value = step; render(true); });
  marksBox.appendChild(button);
}
// Who wrote the prediction at the pinned character: one bar per component, its direct part of
// the logit of the character that came next (and of the top alternative, in the last column).
const attributionBox = document.getElementById("attribution");
function drawAttribution() {
  const A = DATA.attribution;
  attributionBox.textContent = "";
  if (!A || !pinned || !A.positions[query]) return;
  const p = A.positions[query];
  const head = document.createElement("div");
  head.textContent = "who wrote the prediction after position " + query + ": logit of '" + p.target
    + "' (" + p.kind + ") " + p.total.toFixed(2) + ", top alternative '" + p.alternative + "' "
    + p.alt_total.toFixed(2) + "; each component's direct part, " + A.note;
  attributionBox.appendChild(head);
  const most = Math.max(1e-9, ...p.t.map(Math.abs));
  A.names.forEach((name, c) => {
    const row = document.createElement("div");
    row.className = "bar-row"; row.dataset.component = name; row.dataset.value = p.t[c].toFixed(4);
    const label = document.createElement("span"); label.textContent = name;
    const track = document.createElement("span"); track.className = "track";
    const bar = document.createElement("span"); bar.className = "bar";
    const width = 50 * Math.abs(p.t[c]) / most;
    bar.style.width = width + "%"; bar.style.left = (p.t[c] >= 0 ? 50 : 50 - width) + "%";
    bar.style.background = p.t[c] >= 0 ? "#1f77b4" : "#d62728";
    track.appendChild(bar);
    const value = document.createElement("span");
    value.textContent = (p.t[c] >= 0 ? "+" : "") + p.t[c].toFixed(2) + " / " + p.a[c].toFixed(2);
    row.appendChild(label); row.appendChild(track); row.appendChild(value);
    attributionBox.appendChild(row);
  });
}
for (const area of [text, grid]) area.addEventListener("click", drawAttribution);
render(true);
document.body.dataset.ready = "true";
</script>
</body>
</html>
"""
