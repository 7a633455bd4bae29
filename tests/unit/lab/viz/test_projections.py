"""Screen views in projections: inverse/forward consistency and known geometry."""

from __future__ import annotations

import numpy as np
import pytest

from twinlab.viz import projections as pj
from twinlab.viz.projections import View


@pytest.mark.parametrize("proj", pj.PROJECTIONS)
@pytest.mark.parametrize(("clon", "clat", "zoom"), [(0, 0, 1), (150, 30, 2.5), (-170, -60, 0.7)])
def test_roundtrip(proj: str, clon: float, clat: float, zoom: float) -> None:
    view = View(proj, 300, 170, clon, clat, zoom)
    lon, lat = pj.view_lonlat(view)
    assert lon.shape == (170, 300)
    ok = np.isfinite(lon)
    assert ok.mean() > 0.15
    assert ((lon[ok] >= -180) & (lon[ok] < 180)).all() and (np.abs(lat[ok]) <= 90).all()
    x, y = pj.forward(view, lon, lat)
    xx, yy = np.meshgrid(np.arange(300) + 0.5, np.arange(170) + 0.5)
    assert np.abs(x[ok] - xx[ok]).max() < 1e-6
    assert np.abs(y[ok] - yy[ok]).max() < 1e-6


def test_platecarree_whole_world_includes_poles() -> None:
    lon, lat = pj.view_lonlat(View("platecarree", 360, 180))
    assert np.isfinite(lon).all()
    assert lat[0, 0] == pytest.approx(89.5) and lat[-1, 0] == pytest.approx(-89.5)
    assert lon[0, 0] == pytest.approx(-179.5)


def test_webmercator_clipped() -> None:
    lon, lat = pj.view_lonlat(View("webmercator", 256, 400))
    ok = np.isfinite(lat)
    assert np.nanmax(np.abs(lat)) < 85.0512
    assert ok.sum() == 256 * 256  # a square of the 256 x 400 raster


def test_orthographic_disc_and_far_side() -> None:
    view = View("orthographic", 200, 200, 10.0, 45.0)
    lon, lat = pj.view_lonlat(view)
    assert lon[100, 100] == pytest.approx(10, abs=1) and lat[100, 100] == pytest.approx(45, abs=1)
    frac = np.isfinite(lon).mean()
    assert frac == pytest.approx(np.pi / 4, abs=0.01)  # the disc fills pi/4 of the square
    x, y = pj.forward(view, np.array([10.0, -170.0]), np.array([45.0, -45.0]))
    assert np.isfinite(x[0]) and np.isnan(x[1]) and np.isnan(y[1])  # antipode hidden


def test_mollweide_robinson_against_pyproj() -> None:
    pyproj = pytest.importorskip("pyproj")
    rng = np.random.default_rng(3)
    lon, lat = rng.uniform(-179, 179, 500), rng.uniform(-89, 89, 500)
    view = View("mollweide", 400, 200)
    x, y = pj.forward(view, lon, lat)
    mx, my = pyproj.Transformer.from_crs(
        "+proj=longlat +R=1", "+proj=moll +R=1", always_xy=True
    ).transform(lon, lat)
    s = 400 / (4 * np.sqrt(2))
    assert np.allclose(x, 200 + mx * s, atol=1e-6) and np.allclose(y, 100 - my * s, atol=1e-6)
    # Robinson: ours interpolates the table linearly, PROJ with splines: close, not equal
    view = View("robinson", 400, 200)
    x, y = pj.forward(view, lon, lat)
    rx, ry = pyproj.Transformer.from_crs(
        "+proj=longlat +R=1", "+proj=robin +R=1", always_xy=True
    ).transform(lon, lat)
    s = min(400 / (2 * 0.8487 * np.pi), 200 / (2 * 1.3523))  # the map fits the raster
    assert np.abs(x - (200 + rx * s)).max() < 1.0 and np.abs(y - (100 - ry * s)).max() < 1.0


def test_center_lon_wraps_antimeridian() -> None:
    lon, _ = pj.view_lonlat(View("platecarree", 360, 180, center_lon=180.0, zoom=2))
    assert lon[90, 179] == pytest.approx(179.75) and lon[90, 180] == pytest.approx(-179.75)


@pytest.mark.parametrize(
    ("view", "word"),
    [
        (View("lambert", 10, 10), "projection"),
        (View("platecarree", 0, 10), "width"),
        (View("platecarree", 10, 10, center_lat=91), "latitude"),
        (View("platecarree", 10, 10, zoom=0), "zoom"),
        (View("platecarree", 10, 10, zoom=float("nan")), "zoom"),
        (View("platecarree", 5000, 5000), "limit of 1000000 pixels"),
    ],
)
def test_check_view(view: View, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        pj.check_view(view, 1_000_000)
