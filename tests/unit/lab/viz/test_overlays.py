"""Explorer overlays from real files: GeoJSON / shapefile (geopandas + pyogrio), GeoTIFF
(rioxarray, EPSG:4326 and a projected CRS), another layer on its own grid, tile URLs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import twinlab.grids as tg
from twinlab.viz import View, colourize, forward, nearest_index, render, view_lonlat
from twinlab.viz.explore_state import Explorer
from twinlab.viz.overlays import (
    LayerOverlay,
    RasterOverlay,
    VectorOverlay,
    WMTSOverlay,
    overlay_from,
)

gpd = pytest.importorskip("geopandas")
shapely = pytest.importorskip("shapely")
rioxarray = pytest.importorskip("rioxarray")


def h128() -> xr.Dataset:
    g = tg.HEALPix(128)
    lon, lat = g.centers()
    v = 280 + 20 * np.sin(np.deg2rad(3 * lon)) * np.cos(np.deg2rad(lat))
    return xr.Dataset({"2t": (("cell",), v, {"units": "K", **tg.grid_attrs(g)})})


@pytest.fixture()
def geojson(tmp_path: Path) -> Path:
    frame = gpd.GeoDataFrame(
        {"name": ["equator", "dateline", "box", "rome"]},
        geometry=[
            shapely.LineString([(-30, 0), (0, 0), (30, 0)]),
            shapely.LineString([(170, 10), (-170, 10)]),  # crosses the antimeridian
            shapely.Polygon([(10, 40), (20, 40), (20, 50), (10, 50)]),
            shapely.Point(12.5, 41.9),
        ],
        crs="EPSG:4326",
    )
    path = tmp_path / "features.geojson"
    frame.to_file(path, driver="GeoJSON", engine="pyogrio")
    return path


def test_geojson_lines_lie_where_forward_puts_them(geojson: Path) -> None:
    o = overlay_from(str(geojson))
    assert isinstance(o, VectorOverlay) and o.features == 4 and o.name == "features.geojson"
    view = View("platecarree", 720, 360)  # 2 px per degree, centre (0, 0)
    xs, ys = o.paths(view)
    assert len(xs) == 3  # two lines and the box's ring
    np.testing.assert_allclose(xs[0], [300.0, 360.0, 420.0])
    np.testing.assert_allclose(ys[0], [180.0, 180.0, 180.0])
    # the antimeridian crossing is broken, not drawn across the whole map
    assert np.isnan(xs[1]).sum() == 1
    np.testing.assert_allclose(xs[1][[0, 2]], [700.0, 20.0])
    np.testing.assert_allclose(xs[2][:4], [380.0, 400.0, 400.0, 380.0])
    px, py = o.point_xy(view)
    np.testing.assert_allclose([px[0], py[0]], [385.0, 180 - 2 * 41.9])
    globe = View("orthographic", 400, 400, center_lon=-160.0)  # Europe on the far side
    gx, _ = o.paths(globe)
    assert len(gx) == 1 and np.isfinite(gx[0]).all()  # only the dateline line shows
    assert np.isnan(o.point_xy(globe)[0]).all()


def test_shapefile_in_another_crs_is_reprojected(tmp_path: Path) -> None:
    frame = gpd.GeoDataFrame(
        geometry=[shapely.LineString([(-20, -10), (25, 35)])], crs="EPSG:4326"
    ).to_crs("EPSG:3857")
    path = tmp_path / "lines.shp"
    frame.to_file(path, engine="pyogrio")
    o = overlay_from(path)
    view = View("robinson", 800, 400, zoom=2.0)
    xs, ys = o.paths(view)
    x, y = forward(view, [-20, 25], [-10, 35])
    np.testing.assert_allclose(xs[0], x, atol=1e-6)
    np.testing.assert_allclose(ys[0], y, atol=1e-6)


def _geotiff(tmp_path: Path, crs: str) -> tuple[Path, xr.DataArray]:
    if crs == "EPSG:4326":  # 1-degree cells over Europe, north-up
        x = np.arange(-10.5, 30.0, 1.0) + 0.5
        y = np.arange(60.0, 35.0, -1.0) - 0.5
    else:  # 50 km cells in Web Mercator
        x = np.arange(-1_000_000.0, 3_000_000.0, 50_000.0) + 25_000
        y = np.arange(7_000_000.0, 4_000_000.0, -50_000.0) - 25_000
    values = np.arange(y.size * x.size, dtype=np.float32).reshape(y.size, x.size)
    da = xr.DataArray(values, dims=("y", "x"), coords={"y": y, "x": x}, name="v")
    da = da.rio.write_crs(crs).rio.write_nodata(np.nan)
    path = tmp_path / f"r-{crs.replace(':', '')}.tif"
    da.rio.to_raster(path)
    return path, da


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857"])
def test_geotiff_sampled_at_pixel_centres(tmp_path: Path, crs: str) -> None:
    path, da = _geotiff(tmp_path, crs)
    o = overlay_from(str(path))
    assert isinstance(o, RasterOverlay)
    o.alpha, o.cmap, o.vmin, o.vmax = 0.5, "gray", 0.0, float(da.size)
    view = View("platecarree", 720, 360, center_lon=10.0, center_lat=48.0, zoom=4.0)
    lon, lat = view_lonlat(view)
    got = o.sample(lon, lat)
    if crs == "EPSG:4326":
        x, y = lon, lat
    else:
        x = 6378137.0 * np.deg2rad(lon)
        y = 6378137.0 * np.log(np.tan(np.pi / 4 + np.deg2rad(lat) / 2))
    res = float(da.x[1] - da.x[0])
    col = np.floor((x - (float(da.x[0]) - res / 2)) / res)
    row = np.floor(((float(da.y[0]) + res / 2) - y) / res)
    inside = (col >= 0) & (col < da.sizes["x"]) & (row >= 0) & (row < da.sizes["y"])
    assert 0.1 < inside.mean() < 1.0
    np.testing.assert_array_equal(np.isfinite(got), inside)
    want = da.values[row[inside].astype(int), col[inside].astype(int)]
    np.testing.assert_array_equal(got[inside], want)
    img = o.image(lon, lat)
    assert set(np.unique(img[..., 3])) == {0, 128}  # alpha 0.5; transparent outside
    np.testing.assert_array_equal(img[inside][:, :3], colourize(want, "gray", 0.0, da.size)[:, :3])


def test_layer_overlay_renders_its_own_grid() -> None:
    g = tg.Octahedral(32)
    lon, lat = g.centers()
    times = np.array(["2020-01-01T00", "2020-01-02T00"], dtype="datetime64[ns]")
    data = np.stack([lat, -lat])
    other = xr.Dataset({"tp": (("time", *g.dims), data, tg.grid_attrs(g))}, coords={"time": times})
    o = LayerOverlay(other, cmap="Blues", vmin=-90.0, vmax=90.0, alpha=1.0)
    assert o.variable == "tp" and o.time_index(np.datetime64("2020-01-01T20")) == 1
    view = View("mollweide", 300, 150)
    vlon, vlat = view_lonlat(view)
    img = o.image(vlon, vlat, np.datetime64("2020-01-02"))
    idx = nearest_index(g, vlon, vlat)
    want = colourize(np.where(idx >= 0, data[1][idx], np.nan), "Blues", -90.0, 90.0)
    assert (idx < 0).any() and (want[idx < 0] == 0).all()  # off the map: transparent
    np.testing.assert_array_equal(img, want)
    np.testing.assert_array_equal(
        img, render(o.field, 1, vlon, vlat, cmap="Blues", vmin=-90.0, vmax=90.0)
    )


def test_wmts_urls_and_dispatch(tmp_path: Path) -> None:
    o = overlay_from(
        "https://hub.example/services/tiles/wmts/1.0.0/i/2t/default/t/WebMercatorQuad/{z}/{y}/{x}.png"
    )
    assert isinstance(o, WMTSOverlay) and o.bokeh_url.endswith("/{Z}/{Y}/{X}.png")
    with pytest.raises(ValueError, match=r"\{z\}, \{x\} and \{y\}"):
        WMTSOverlay("https://hub.example/tiles/{z}/{x}.png")
    with pytest.raises(ValueError, match="not a vector"):
        overlay_from(str(tmp_path / "notes.txt"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        overlay_from(str(tmp_path / "missing.geojson"))
    with pytest.raises(ValueError, match="alpha"):
        WMTSOverlay("https://a/{z}/{x}/{y}.png", alpha=2.0)
    with pytest.raises(TypeError, match="overlay of int"):
        overlay_from(3)


def test_explorer_draws_its_overlays(tmp_path: Path, geojson: Path) -> None:
    tif, _ = _geotiff(tmp_path, "EPSG:4326")
    url = "https://hub.example/{z}/{x}/{y}.png"
    ex = Explorer(h128(), width=360, height=180, overlays=[geojson, tif, url])
    images = ex.overlay_images()
    assert [name for name, _ in images] == [tif.name]
    assert images[0][1].shape == (180, 360, 4) and (images[0][1][..., 3] > 0).any()
    ((name, xs, ys),) = ex.overlay_paths()
    assert name == geojson.name
    np.testing.assert_allclose(ys[0], [90.0, 90.0, 90.0])  # the equator, in plot units
    assert [o.url for o in ex.wmts_overlays()] == [url]
    ex.set_projection("webmercator")
    ((_, xs, ys),) = ex.overlay_paths()  # plot units are now EPSG:3857 metres
    np.testing.assert_allclose(xs[0], 6378137.0 * np.deg2rad([-30.0, 0.0, 30.0]))
    np.testing.assert_allclose(ys[0], 0.0, atol=1e-6)


def test_panel_shell_draws_overlays(tmp_path: Path, geojson: Path) -> None:
    from twinlab.viz.explore_panel import ExplorerApp

    tif, _ = _geotiff(tmp_path, "EPSG:4326")
    url = "https://hub.example/{z}/{x}/{y}.png"
    app = ExplorerApp(
        lambda: Explorer(h128(), width=360, height=180, overlays=[geojson, tif, url]),
        width=360,
        height=180,
    )
    (raster,), (lines,), (tile,) = app._raster_srcs, app._line_srcs, app._tiles
    assert raster.data["image"][0].shape == (180, 360)
    assert (raster.data["image"][0] >> 24 > 0).any()  # some of the raster shows (alpha)
    assert len(lines.data["xs"]) == 3 and lines.data["ys"][0] == [90.0, 90.0, 90.0]
    assert tile.tile_source.url == "https://hub.example/{Z}/{X}/{Y}.png"
    assert tile.visible is False  # tiles are Web Mercator squares: not on plate carrée
    app.projection.value = "webmercator"
    assert tile.visible is True
    assert app.map.x_range.start == pytest.approx(app.ex.extent()[0])  # metres now
