"""Colour maps, value -> RGBA, PNG encoding and legends.

Lookup tables come from matplotlib's colormap registry (256 entries, built once per name);
NaN and infinite values are transparent.  PNGs use Pillow at a fast compression level:
encoding is on every tile's hot path.
"""

from __future__ import annotations

import io
import threading
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORMAPS: tuple[str, ...] = (
    "viridis", "magma", "inferno", "plasma", "cividis", "turbo",
    "coolwarm", "RdBu_r", "Spectral_r", "Blues", "YlGnBu", "gray",
)  # fmt: skip

_luts: dict[str, np.ndarray] = {}
_lock = threading.Lock()


def colormap_lut(name: str) -> np.ndarray:
    """(256, 4) uint8 RGBA table of a colour map; ValueError listing the names."""
    lut = _luts.get(name)
    if lut is not None:
        return lut
    if name not in COLORMAPS:
        raise ValueError(f"unknown colour map {name!r}; known: {', '.join(COLORMAPS)}")
    import matplotlib  # start-up cost: only when a colour map is first needed

    rgba = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))
    lut = np.round(np.asarray(rgba) * 255.0).astype(np.uint8)
    lut.flags.writeable = False
    with _lock:
        _luts[name] = lut
    return lut


def check_range(vmin: float, vmax: float) -> tuple[float, float]:
    """(vmin, vmax) as floats; ValueError unless both are finite and vmax > vmin."""
    lo, hi = float(vmin), float(vmax)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"colour range must be finite, got vmin={vmin!r}, vmax={vmax!r}")
    if not hi > lo:
        raise ValueError(f"colour range needs vmax > vmin, got vmin={vmin!r}, vmax={vmax!r}")
    return lo, hi


def colour_indices(values: Any, vmin: float, vmax: float) -> np.ndarray:
    """LUT index of each value (int16; -1 for NaN/inf): clip(floor((v-vmin)/(vmax-vmin)*256))."""
    lo, hi = check_range(vmin, vmax)
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        t = np.floor((v - lo) * (256.0 / (hi - lo)))
        i = np.clip(t, 0, 255)
    i = np.where(np.isfinite(v), i, -1)
    return i.astype(np.int16)


def colourize(values: Any, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """(..., 4) uint8 RGBA; NaN/inf -> (0, 0, 0, 0); vmax <= vmin -> ValueError."""
    lut = colormap_lut(cmap)
    idx = colour_indices(values, vmin, vmax)
    # one extra transparent row at 256: index -1 picks it up without a mask
    table = _lut_with_clear(cmap, lut)
    out: np.ndarray = table[idx]
    return out


_clear: dict[str, np.ndarray] = {}


def _lut_with_clear(name: str, lut: np.ndarray) -> np.ndarray:
    t = _clear.get(name)
    if t is None:
        t = np.concatenate([lut, np.zeros((1, 4), np.uint8)])
        t.flags.writeable = False
        with _lock:
            _clear[name] = t
    return t


def encode_png(rgba: np.ndarray) -> bytes:
    """RGBA PNG of an (h, w, 4) uint8 array (fast compression)."""
    arr = np.ascontiguousarray(rgba, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 4:
        raise ValueError(f"encode_png needs an (h, w, 4) array, got shape {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr, "RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def legend_png(
    cmap: str, vmin: float, vmax: float, *, label: str = "", width: int = 256, height: int = 48
) -> bytes:
    """A horizontal colour bar with the min/max values and a label below it, as PNG."""
    lo, hi = check_range(vmin, vmax)
    if not (16 <= width <= 4096 and 24 <= height <= 1024):
        raise ValueError(f"legend size must be 16..4096 x 24..1024 pixels, got {width}x{height}")
    lut = colormap_lut(cmap)
    img = Image.new("RGBA", (width, height), (255, 255, 255, 230))
    bar_h = max(8, height // 2 - 4)
    pad = 4
    ramp = lut[np.linspace(0, 255, width - 2 * pad).astype(np.int64)]
    bar = np.broadcast_to(ramp[None, :, :], (bar_h, width - 2 * pad, 4))
    img.paste(Image.fromarray(np.ascontiguousarray(bar), "RGBA"), (pad, 2))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    ty = 2 + bar_h + 2
    left, right = _fmt(lo), _fmt(hi)
    draw.text((pad, ty), left, fill=(0, 0, 0, 255), font=font)
    rw = draw.textlength(right, font=font)
    draw.text((width - pad - rw, ty), right, fill=(0, 0, 0, 255), font=font)
    if label:
        lw = draw.textlength(label, font=font)
        draw.text(((width - lw) / 2, ty), label, fill=(0, 0, 0, 255), font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
