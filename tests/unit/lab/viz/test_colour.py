"""Colour maps, value -> RGBA, PNG and legends."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
from PIL import Image

from twinlab.viz import colour


@pytest.mark.parametrize("name", colour.COLORMAPS)
def test_luts_match_matplotlib(name: str) -> None:
    lut = colour.colormap_lut(name)
    assert lut.shape == (256, 4) and lut.dtype == np.uint8
    ref = matplotlib.colormaps[name](np.arange(256))
    assert np.abs(lut.astype(int) - np.round(ref * 255)).max() <= 1


def test_unknown_cmap_lists_names() -> None:
    with pytest.raises(ValueError, match="viridis"):
        colour.colormap_lut("jet-ish")


def test_colourize_rule_and_nan() -> None:
    lut = colour.colormap_lut("magma")
    v = np.array([np.nan, np.inf, -np.inf, -5.0, 0.0, 0.5, 0.999, 1.0, 7.0, 0.25])
    out = colour.colourize(v, "magma", 0.0, 1.0)
    assert out.shape == (10, 4)
    assert (out[:3] == 0).all()
    idx = np.clip(np.floor(v[3:] * 256), 0, 255).astype(int)
    assert (out[3:] == lut[idx]).all()
    assert (out[3:, 3] == 255).all()


def test_colourize_bad_range() -> None:
    with pytest.raises(ValueError, match="vmax > vmin"):
        colour.colourize(np.zeros(3), "gray", 1.0, 1.0)


def test_encode_png_roundtrip() -> None:
    rgba = colour.colourize(np.random.default_rng(1).random((20, 30)), "turbo", 0, 1)
    rgba[0, 0] = 0
    back = np.asarray(Image.open(io.BytesIO(colour.encode_png(rgba))))
    assert back.shape == (20, 30, 4) and (back == rgba).all()


def test_legend_png() -> None:
    png = colour.legend_png("viridis", 250.0, 310.0, label="K", width=200, height=40)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
    assert img.shape == (40, 200, 4)
    lut = colour.colormap_lut("viridis")
    # the bar: leftmost colour is the map's first entry, rightmost its last
    assert (img[5, 4, :3] == lut[0, :3]).all()
    assert (img[5, 195, :3] == lut[255, :3]).all()
    # text drawn below the bar (dark pixels)
    assert (img[25:, :, :3].sum(axis=2) < 100).any()
