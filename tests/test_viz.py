"""Pictures of attention: the right colours in the right cells, labels made visible, valid PNGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tinylm.attention.pictures import MASKED_COLOUR, AttentionFigure, colour, encode_png, visible_char

PROBE = "To be,\nor not"  # 13 characters, a space and a newline among them


def test_whitespace_is_made_visible() -> None:
    assert [visible_char(c) for c in " \n\tA"] == ["␣", "¶", "⇥", "A"]
    assert visible_char("\x07") == "\\x07"


def test_colours_follow_the_colour_bar_and_grey_out_the_future() -> None:
    weights = np.array([[1.0, 0.0], [0.25, 0.75]])
    rgba = colour(weights)  # (2, 2, 4)
    grey = [round(255 * c) for c in MASKED_COLOUR]
    assert rgba[0, 1, :3].tolist() == grey  # key 1 is in query 0's future
    assert rgba[0, 0, :3].tolist() == [253, 231, 37]  # viridis at 1.0 (yellow)
    assert rgba[1, 0, :3].tolist() != rgba[1, 1, :3].tolist()


@pytest.mark.parametrize(("channels", "mode"), [(3, "RGB"), (4, "RGBA")])
def test_encoded_png_decodes_to_the_same_pixels(channels: int, mode: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (17, 23, channels), dtype=np.uint8)
    with Image.open(io.BytesIO(encode_png(pixels))) as image:
        assert image.mode == mode
        assert np.array_equal(np.asarray(image), pixels)


def test_pieces_are_encoded_side_by_side() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (9, 30, 4), dtype=np.uint8)
    left, right = pixels[:, :12], pixels[:, 20:]  # views, rows not contiguous
    with Image.open(io.BytesIO(encode_png(left, right))) as image:
        assert np.array_equal(np.asarray(image), np.concatenate([left, right], axis=1))
    with pytest.raises(ValueError, match="expected uint8 pixels"):
        encode_png(left, right[:5])


def a_figure_with_one_sharp_head() -> tuple[AttentionFigure, np.ndarray]:
    T = len(PROBE)
    maps = np.zeros((1, 2, T, T), dtype=np.float32)
    maps[0, 0, np.arange(T), 0] = 1.0  # head 0: everything on the first character
    maps[0, 1] = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]  # head 1: uniform
    figure = AttentionFigure(PROBE, rows=1, cols=2)
    figure.draw(maps, ["head 0", "head 1"])
    return figure, maps


def test_each_cell_is_painted_with_its_weight() -> None:
    figure, maps = a_figure_with_one_sharp_head()
    pixels = figure.to_array()
    expected = colour(maps)[..., :3]  # (1, 2, T, T, 3)
    T = len(PROBE)
    for panel, (top, left, cell) in enumerate(figure.cells):
        for query in range(T):
            for key in range(T):
                y, x = top + query * cell + cell // 2, left + key * cell + cell // 2  # cell centre
                assert pixels[y, x].tolist() == expected[0, panel, query, key].tolist()


def test_a_panel_is_a_whole_picture_with_the_colour_bar() -> None:
    figure, _ = a_figure_with_one_sharp_head()
    whole, panel = figure.to_array(), figure.panel(0, 1)
    assert panel.shape[0] <= whole.shape[0] and panel.shape[1] < whole.shape[1]
    # Weight 0 (viridis' dark purple) is nowhere in head 1's uniform map: only the colour bar,
    # pasted on the right of the panel, can show it.
    purple = np.abs(panel.astype(int) - [68, 1, 84]).sum(-1) <= 6
    assert purple.any()
    assert not purple[:, : panel.shape[1] * 3 // 4].any()


def test_drawing_again_replaces_the_maps_and_titles() -> None:
    figure, maps = a_figure_with_one_sharp_head()
    first = figure.to_array()
    figure.draw(maps[:, ::-1], ["other", "titles"])
    second = figure.to_array()
    assert first.shape == second.shape and not np.array_equal(first, second)
    figure.draw(maps, ["head 0", "head 1"])
    assert np.array_equal(figure.to_array(), first)  # nothing left over from the last drawing


def test_save_writes_a_png(tmp_path) -> None:
    figure, _ = a_figure_with_one_sharp_head()
    figure.save(tmp_path / "maps.png")
    with Image.open(tmp_path / "maps.png") as image:
        assert image.format == "PNG" and image.size == figure.to_array().shape[1::-1]


def test_maps_of_the_wrong_shape_are_refused() -> None:
    figure, maps = a_figure_with_one_sharp_head()
    with pytest.raises(ValueError, match="expected maps of shape"):
        figure.draw(maps[..., :-1, :-1])
