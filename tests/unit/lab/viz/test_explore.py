"""The explorer's logic (twinlab.viz.explore_state.Explorer) and its Panel shell, on an
in-memory HEALPix H128 dataset: exact cells under clicks, time steps, projections, pan/zoom."""

from __future__ import annotations

import math
from types import SimpleNamespace

import healpy
import numpy as np
import pytest
import xarray as xr

import twinlab.grids as tg
import twinlab.viz as viz
from twinlab.viz import colourize, forward, nearest_index, render_view, view_lonlat
from twinlab.viz.explore_state import Explorer

TIMES = np.array(
    ["2020-01-01T00", "2020-01-01T06", "2020-01-01T12", "2020-01-01T18"], dtype="datetime64[ns]"
)


def h128(nest: bool = True, levels: bool = False) -> xr.Dataset:
    """A smooth but everywhere-different field per time step (and level), grid attributes
    on the variables as the lake writes them."""
    g = tg.HEALPix(128, nest=nest)
    lon, lat = g.centers()
    rng = np.random.default_rng(3)
    base = np.stack(
        [
            280 + 25 * np.cos(np.deg2rad(lat)) * np.sin(np.deg2rad(2 * lon + 45 * k))
            + rng.normal(0, 0.5, g.size)
            for k in range(len(TIMES))
        ]
    )  # fmt: skip
    attrs = {"units": "K", "long_name": "2 metre temperature", **tg.grid_attrs(g)}
    if not levels:
        return xr.Dataset({"2t": (("time", "cell"), base, attrs)}, coords={"time": TIMES})
    data = np.stack([base, base[:, ::-1] - 40.0], axis=1)  # level 500: another pattern
    return xr.Dataset(
        {
            "t": (("time", "level", "cell"), data, {**attrs, "long_name": "Temperature"}),
            "2t": (("time", "cell"), base + 1.0, attrs),
        },
        coords={"time": TIMES, "level": [850, 500]},
    )


@pytest.fixture(scope="module")
def ds() -> xr.Dataset:
    return h128()


def colours(img: np.ndarray) -> int:
    return len(np.unique(img.reshape(-1, 4), axis=0))


def test_click_returns_the_exact_cell_series(ds: xr.Dataset) -> None:
    ex = Explorer(ds)
    rng = np.random.default_rng(11)
    for lon, lat in zip(rng.uniform(-180, 180, 25), rng.uniform(-90, 90, 25), strict=True):
        s = ex.click(float(lon), float(lat))
        want = int(healpy.ang2pix(128, lon, lat, nest=True, lonlat=True))
        assert s.index == want
        np.testing.assert_array_equal(s.values, ds["2t"].values[:, want])
        np.testing.assert_array_equal(s.times, TIMES)
        clon, clat = healpy.pix2ang(128, want, nest=True, lonlat=True)
        assert math.isclose(s.lat, clat, abs_tol=1e-9)
        assert math.isclose(np.mod(s.lon - clon + 180, 360) - 180, 0.0, abs_tol=1e-9)
    assert s.units == "K" and s.variable == "2t"
    with pytest.raises(ValueError, match="no map point"):
        ex.click(math.nan, 10.0)


def test_click_on_a_pixel_is_the_cell_drawn_there(ds: xr.Dataset) -> None:
    ex = Explorer(ds, width=400, height=200)
    img = ex.image()
    lon, lat = view_lonlat(ex.view)
    for col, row in [(13, 17), (200, 100), (399, 0), (0, 199), (250, 33)]:
        x, y = ex.to_plot(col + 0.3, row + 0.8)  # anywhere inside the pixel
        s = ex.click_plot(float(x), float(y))
        assert s is not None
        assert s.index == int(nearest_index(ex.grid, lon[row, col], lat[row, col]))
        want = colourize(np.array([s.values[ex.t]]), ex.cmap, ex.vmin, ex.vmax)[0]
        np.testing.assert_array_equal(img[row, col], want)
        mx, my = ex.marker()  # the marker sits on the cell's centre
        px, py = forward(ex.view, s.lon, s.lat)
        assert (mx, my) == pytest.approx((float(px), ex.view.height - float(py)))
    ex.set_projection("orthographic")
    assert ex.click_plot(2.0, 2.0) is None  # a corner is off the globe


def test_set_time_changes_the_image_exactly(ds: xr.Dataset) -> None:
    ex = Explorer(ds, width=360, height=180)
    first = ex.image()
    lon, lat = view_lonlat(ex.view)
    idx = nearest_index(ex.grid, lon, lat)
    for t in range(len(TIMES)):
        ex.set_time(t)
        img = ex.image()
        np.testing.assert_array_equal(
            img, colourize(ds["2t"].values[t][idx], ex.cmap, ex.vmin, ex.vmax)
        )
        np.testing.assert_array_equal(
            img, render_view(ex.field, t, ex.view, cmap=ex.cmap, vmin=ex.vmin, vmax=ex.vmax)
        )
    assert (img != first).any(axis=-1).mean() > 0.5
    ex.set_time("2020-01-01T07:00")  # a time: the nearest valid time
    assert ex.t == 1 and ex.state()["time"] == "2020-01-01 06:00"
    with pytest.raises(IndexError):
        ex.set_time(9)


@pytest.mark.parametrize("projection", viz.PROJECTIONS)
def test_projections_give_many_colours(ds: xr.Dataset, projection: str) -> None:
    ex = Explorer(ds, projection=projection, width=500, height=250)
    img = ex.image()
    assert img.shape == (250, 500, 4)
    assert colours(img) > 100
    lon, _ = ex.lonlat()
    # exactly the pixels off the map are transparent
    np.testing.assert_array_equal(img[..., 3] == 0, np.isnan(lon))
    if projection == "platecarree":  # the whole globe, poles included: no gaps
        assert (img[..., 3] == 255).all()


def test_globe_rotates_when_dragged(ds: xr.Dataset) -> None:
    ex = Explorer(ds, projection="orthographic", width=400, height=400)
    before = ex.image()
    # a drag 50 px to the right: the ranges move 50 px left; the point that was 50 px left
    # of the centre comes to the centre
    lon0, lat0 = ex.pixel_lonlat(150.0, 200.0)
    assert ex.set_ranges(-50, 350, 0, 400)
    assert (ex.view.center_lon, ex.view.center_lat) == pytest.approx((lon0, lat0))
    assert (ex.image() != before).any()
    assert ex.view.zoom == 1.0


def test_pan_and_zoom_of_a_flat_map(ds: xr.Dataset) -> None:
    ex = Explorer(ds, width=720, height=360)  # 2 px per degree
    assert ex.set_ranges(180, 540, 90, 270)  # the middle half, 2x
    v = ex.view
    assert (v.zoom, v.center_lon, v.center_lat) == pytest.approx((2.0, 0.0, 0.0), abs=1e-9)
    assert ex.extent() == (0.0, 720.0, 0.0, 360.0)  # ranges snap back to the image
    assert ex.set_ranges(40, 760, 0, 360)  # 40 px right at zoom 2 = 10 degrees east
    assert ex.view.center_lon == pytest.approx(10.0, abs=1e-9)
    assert ex.set_ranges(0, 720, 80, 440)  # 80 px up = 20 degrees north
    assert ex.view.center_lat == pytest.approx(20.0, abs=1e-6)
    ex.set_ranges(0, 720, 3000, 3360)  # far beyond the pole: clamped to it
    assert ex.view.center_lat == pytest.approx(90.0)
    ex.reset_view()
    assert (ex.view.zoom, ex.view.center_lon, ex.view.center_lat) == (1.0, 0.0, 0.0)
    assert not ex.set_ranges(10, 10, 0, 1)  # an empty range: nothing to do


def test_web_mercator_plot_units_are_epsg3857_metres(ds: xr.Dataset) -> None:
    ex = Explorer(ds, projection="webmercator", width=512, height=512)
    ex.set_view(center_lon=20.0, center_lat=40.0, zoom=4.0)
    lon = np.array([10.0, 20.0, 31.5])
    lat = np.array([35.0, 40.0, 47.25])
    x, y = ex.to_plot(*forward(ex.view, lon, lat))
    r = 6378137.0
    np.testing.assert_allclose(x, r * np.deg2rad(lon), rtol=1e-9)
    np.testing.assert_allclose(y, r * np.log(np.tan(np.pi / 4 + np.deg2rad(lat) / 2)), rtol=1e-9)
    x0, x1, y0, y1 = ex.extent()
    assert x1 - x0 == pytest.approx(y1 - y0)  # square pixels
    assert ex.set_ranges(
        x0 + (x1 - x0) / 4, x1 - (x1 - x0) / 4, y0 + (y1 - y0) / 4, y1 - (y1 - y0) / 4
    )
    assert ex.view.zoom == pytest.approx(8.0) and ex.view.center_lon == pytest.approx(20.0)
    assert ex.view.center_lat == pytest.approx(40.0, abs=1e-6)


def test_variables_levels_and_style() -> None:
    ds = h128(levels=True)
    ex = Explorer(ds, "t", width=300, height=150)
    assert ex.variables == ["t", "2t"] and ex.levels == {"level": [850, 500]}
    s850 = ex.click(5.0, 5.0)
    img850 = ex.image()
    ex.set_level("level", 500)
    assert ex.selection == {"level": 500}
    s500 = ex.selected
    assert s500 is not None and s500.index == s850.index
    np.testing.assert_array_equal(s500.values, ds["t"].values[:, 1, s500.index])
    assert (ex.image() != img850).any()
    ex.select("2t")
    assert ex.levels == {} and ex.selected is not None
    np.testing.assert_allclose(ex.selected.values, s850.values + 1.0)
    ex.set_style(cmap="magma", vmin=250.0, vmax=300.0, method="bilinear")
    assert (ex.cmap, ex.vmin, ex.vmax, ex.method) == ("magma", 250.0, 300.0, "bilinear")
    assert colours(ex.image()) > 100
    with pytest.raises(ValueError, match="colour map"):
        ex.set_style(cmap="nope")
    with pytest.raises(ValueError, match="vmin < vmax"):
        ex.set_style(vmin=300.0, vmax=250.0)
    with pytest.raises(ValueError, match="known: nearest"):
        ex.set_style(method="cubic")
    with pytest.raises(ValueError, match="not one of"):
        ex.select("t", {"level": 700})
    with pytest.raises(KeyError, match="variables"):
        Explorer(ds, "nope")
    lo, hi = ex.auto_range()
    assert lo < hi and ex.vmin == lo
    ex.set_style(vmin=250.0, vmax=300.0)
    ex.select("t")  # another variable: its own default range
    assert (ex.vmin, ex.vmax) == ex.field.value_range(ex.t) != (250.0, 300.0)
    ex.set_style(vmin=200.0, vmax=210.0)
    ex.set_level("level", 500)  # another level: the range the user chose stays
    assert (ex.vmin, ex.vmax) == (200.0, 210.0)


def test_dataset_level_grid_attributes_and_dataarray() -> None:
    g = tg.Octahedral(24)
    lon, lat = g.centers()
    da = xr.DataArray(np.cos(np.deg2rad(lat)) * lon, dims=g.dims, name="z")
    ds = da.to_dataset().assign_attrs(tg.grid_attrs(g))  # the grid on the dataset only
    ex = Explorer(ds, width=200, height=100)
    assert ex.field.ntimes == 1 and ex.times is None
    s = ex.click(33.0, -12.0)
    assert s.index == int(tg.ops.nearest_cells(g, 33.0, -12.0)[0])
    assert s.values.tolist() == [float(da.values[s.index])]
    ex2 = Explorer(da.assign_attrs(tg.grid_attrs(g)), width=200, height=100)
    assert ex2.variables == ["z"] and colours(ex2.image()) > 50


def test_panel_shell_renders_taps_and_plays(ds: xr.Dataset) -> None:
    pytest.importorskip("panel")
    from twinlab.viz.explore_panel import ExplorerApp

    app = ExplorerApp(lambda: Explorer(ds, width=300, height=150), width=300, height=150)
    ex = app.ex  # outside a server, onload runs at once
    assert ex is not None and app.busy.value is False
    assert "rendered 300x150" in app.status.object
    image = app.image_src.data["image"][0]
    assert image.shape == (150, 300) and image.dtype == np.uint32
    rgba = image.view(np.uint8).reshape(150, 300, 4)[::-1]  # Bokeh rows run bottom-up
    np.testing.assert_array_equal(rgba, ex.image())
    app._on_tap(SimpleNamespace(x=150.5, y=75.5))
    assert ex.selected is not None
    np.testing.assert_array_equal(app.series_src.data["v"], ex.selected.values)
    assert app.marker_src.data["x"] == [pytest.approx(ex.marker()[0])]
    app.player.value = 2  # the player drives the time step, the slider follows
    assert ex.t == 2 and app.time.value == 2
    assert "2020-01-01 12:00" in app.time_text.object
    assert (app.image_src.data["image"][0] != image).any()
    app.projection.value = "orthographic"
    assert ex.view.projection == "orthographic"
    app.vmin.value = 400.0  # a refused range shows in the status line, the app lives on
    assert app.status.object.startswith("Error: colour range")
    assert callable(viz.explore)


def test_state_round_trips_through_text() -> None:
    ds = h128(levels=True)
    ex = Explorer(ds, "t", width=300, height=150)
    ex.set_level("level", 500)
    ex.set_time(3)
    ex.set_view(projection="robinson", center_lon=30.0, center_lat=-10.0, zoom=2.5)
    ex.set_style(cmap="turbo", vmin=230.0, vmax=290.0, method="bilinear")
    state = ex.state()
    assert state["levels"] == {"level": "500"} and state["time"] == "2020-01-01 18:00"
    other = Explorer(ds, width=300, height=150)
    other.apply_state(state)
    assert other.state() == state and other.selection == {"level": 500}
    np.testing.assert_array_equal(other.image(), ex.image())
    with pytest.raises(ValueError, match="unknown projection"):
        other.apply_state({"projection": "gnomonic"})


def test_explore_in_a_notebook_raises_bad_arguments(ds: xr.Dataset) -> None:
    with pytest.raises(KeyError, match="no variable 'nope'"):
        viz.explore(ds, "nope")
    with pytest.raises(ValueError, match="unknown colour map"):
        viz.explore(ds, cmap="rainbowish")
    layout = viz.explore(ds, width=200, height=100)
    assert layout.name == "twinlab-explore"
