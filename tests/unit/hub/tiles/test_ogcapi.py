"""OGC API - Tiles (ogcapi.py), views and legends (views.py) through the service's routes over
a real in-memory field (test_wmts.serve_layers: no platform; the integration test runs the
same routes on the platform's lake)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr

import twinlab.viz.tms as tmsmod
from twinhub.services.tiles import ogcapi, serve
from twinhub.services.tiles.layers import Layer
from twinhub.services.tiles.params import native_zoom
from twinlab.grids import HEALPix, grid_attrs
from twinlab.viz.colour import colourize
from twinlab.viz.field import Field
from twinlab.viz.locate import nearest_index
from twinlab.viz.projections import View, view_lonlat

from .test_wmts import BASE, P, memory_layer, png_rgba, serve_layers


@pytest.fixture
def layer():
    return memory_layer()


@pytest.fixture
def client(monkeypatch, tmp_path, layer):
    return serve_layers(monkeypatch, tmp_path, [layer, memory_layer("timeless", 8, 0)])


def test_landing_conformance_and_matrix_sets(client):
    doc = client.get(P).json()
    hrefs = {k["rel"]: k["href"] for k in doc["links"]}
    assert hrefs["self"] == BASE
    assert hrefs[ogcapi.REL + "conformance"] == BASE + "conformance"
    assert hrefs[ogcapi.REL + "data"] == BASE + "collections"
    assert hrefs[ogcapi.REL + "tiling-schemes"] == BASE + "tileMatrixSets"
    browser = client.get(P, headers={"Accept": "text/html,*/*"}, follow_redirects=False)
    assert browser.status_code == 302 and browser.headers["location"] == P + "vizlab"
    assert client.get(P + "?f=json", headers={"Accept": "text/html"}).status_code == 200
    conf = client.get(P + "conformance").json()["conformsTo"]
    for c in ("core", "tileset", "tilesets-list", "geodata-tilesets", "png", "datetime"):
        assert ogcapi.TILES_CONF + c in conf
    sets = client.get(P + "tileMatrixSets").json()["tileMatrixSets"]
    assert [s["id"] for s in sets] == list(tmsmod.TMS_IDS)
    one = client.get(P + "tileMatrixSets/WorldCRS84Quad").json()
    assert one == tmsmod.tms_document("WorldCRS84Quad")
    bad = client.get(P + "tileMatrixSets/EPSG4326")
    assert bad.status_code == 400 and "WebMercatorQuad" in bad.json()["description"]


def test_collections_and_tilesets(client, layer):
    cols = client.get(P + "collections").json()["collections"]
    assert [c["id"] for c in cols] == ["it-h16/2t", "timeless/2t"]
    one = client.get(P + "collections/it-h16/2t").json()
    assert one == cols[0]
    assert one["extent"]["temporal"]["interval"] == [["2030-01-01T00:00:00Z", "2030-01-01T12:00:00Z"]]  # fmt: skip
    assert client.get(P + "collections/timeless/2t").json()["extent"]["temporal"]["values"] == []
    listing = client.get(P + "collections/it-h16/2t/map/tiles").json()["tilesets"]
    assert [t["tileMatrixSetURI"] for t in listing] == [
        tmsmod.tms_document(t, 0)["uri"] for t in tmsmod.TMS_IDS
    ]
    for tms_id in tmsmod.TMS_IDS:
        doc = client.get(P + f"collections/it-h16/2t/map/tiles/{tms_id}").json()
        assert doc["crs"] == tmsmod.tms_document(tms_id, 0)["crs"]
        native = tmsmod.native_zoom(tms_id, layer.field.grid)
        limits = doc["tileMatrixSetLimits"]
        assert len(limits) == native + 4
        (template,) = [k["href"] for k in doc["links"] if k["rel"] == "item"]
        for lim in limits:
            z = int(lim["tileMatrix"])
            cols_, rows = tmsmod.matrix_size(tms_id, z)
            assert (lim["minTileRow"], lim["maxTileRow"]) == (0, rows - 1)
            assert (lim["minTileCol"], lim["maxTileCol"]) == (0, cols_ - 1)
        last = limits[-1]
        url = template.format(tileMatrix=last["tileMatrix"], tileRow=last["maxTileRow"],
                              tileCol=last["maxTileCol"]).removeprefix("http://testserver")  # fmt: skip
        assert client.get(url).status_code == 200
        z = int(last["tileMatrix"])
        deeper = client.get(P + f"collections/it-h16/2t/map/tiles/{tms_id}/{z + 1}/0/0")
        assert deeper.status_code == 400
        assert "TwinhubTiles.max_zoom_beyond_native" in deeper.json()["description"]
        past = client.get(P + f"collections/it-h16/2t/map/tiles/{tms_id}/{z}/0/{last['maxTileCol'] + 1}")  # fmt: skip
        assert past.status_code == 404
    assert client.get(P + "collections/it-h16/nosuch").status_code == 404
    assert client.get(P + "collections/bad%20id/2t").status_code == 400


def test_tiles_by_datetime_and_style(client, layer):
    url = P + "collections/it-h16/2t/map/tiles/WorldCRS84Quad/2/1/5"
    first = client.get(url)
    same = client.get(url, params={"datetime": "2030-01-01T00:00:00Z"})
    later = client.get(url, params={"datetime": "2030-01-01T12:00:00Z", "cmap": "gray",
                                    "vmin": "260", "vmax": "300"})  # fmt: skip
    assert first.status_code == same.status_code == later.status_code == 200
    assert first.content == same.content != later.content
    lon, lat = tmsmod.tile_lonlat("WorldCRS84Quad", 2, 1, 5)
    values = layer.field.read(2, nearest_index(layer.field.grid, lon, lat))
    assert np.array_equal(png_rgba(later.content), colourize(values, "gray", 260, 300))
    for params, word in (
        ({"cmap": "jet"}, "viridis"),
        ({"method": "cubic"}, "bilinear"),
        ({"vmin": "3", "vmax": "3"}, "less than"),
        ({"vmin": "nan"}, "finite"),
        ({"datetime": "yesterday"}, "ISO 8601"),
    ):
        r = client.get(url, params=params)
        assert r.status_code == 400 and word in r.json()["description"], (params, r.text)
    bilinear = client.get(url, params={"method": "bilinear"})
    assert bilinear.status_code == 200 and bilinear.content != first.content


def test_layers_summary(client, layer):
    doc = client.get(P + "layers/it-h16").json()
    assert doc["times"] == ["2030-01-01T00:00:00Z", "2030-01-01T06:00:00Z", "2030-01-01T12:00:00Z"]  # fmt: skip
    assert doc["default_time"] == doc["times"][0]
    assert doc["grid"]["healpix_nside"] == 16
    (var,) = doc["variables"]
    assert var["layer_id"] == "it-h16/2t" and var["units"] == "K"
    assert var["default_range"] == list(layer.field.value_range(0))
    for tms_id in tmsmod.TMS_IDS:
        assert var["native_zoom"][tms_id] == native_zoom(layer.info, tms_id)
        assert var["max_zoom"][tms_id] == var["native_zoom"][tms_id] + 3
    assert var["extra_dims"] == {}
    # the default range is every tile's without vmin/vmax, whatever the time
    r = client.get(P + "collections/it-h16/2t/map/tiles/WorldCRS84Quad/1/0/2",
                   params={"datetime": "2030-01-01T06:00:00Z"})  # fmt: skip
    lon, lat = tmsmod.tile_lonlat("WorldCRS84Quad", 1, 0, 2)
    values = layer.field.read(1, nearest_index(layer.field.grid, lon, lat))
    lo, hi = var["default_range"]
    assert np.array_equal(png_rgba(r.content), colourize(values, "viridis", lo, hi))


def test_views(client, layer):
    r = client.get(P + "view/it-h16/2t.png", params={
        "projection": "orthographic", "center": "30,-20", "width": 200, "height": 160,
        "cmap": "plasma", "vmin": 250, "vmax": 320, "time": "2030-01-01T06:00:00Z"})  # fmt: skip
    assert r.status_code == 200, r.text
    got = png_rgba(r.content)
    assert got.shape == (160, 200, 4)
    view = View("orthographic", 200, 160, center_lon=30.0, center_lat=-20.0)
    lon, lat = view_lonlat(view)
    values = layer.field.read(1, nearest_index(layer.field.grid, lon, lat))
    assert np.array_equal(got, colourize(values, "plasma", 250, 320))
    assert got[0, 0, 3] == 0 and got[80, 100, 3] == 255
    for proj in ("platecarree", "webmercator", "robinson", "mollweide"):
        r = client.get(P + "view/it-h16/2t.png", params={"projection": proj, "width": 64, "height": 32})  # fmt: skip
        assert r.status_code == 200 and png_rgba(r.content).shape == (32, 64, 4)
    for params, word in (
        ({"projection": "gnomonic"}, "orthographic"),
        ({"width": 4000, "height": 2000}, "TwinhubTiles.max_view_pixels 4000000"),
        ({"width": 0}, "at least 1"),
        ({"zoom": "0"}, "zoom"),
        ({"center": "10"}, "lon,lat"),
        ({"center": "10,95"}, "-90..90"),
    ):
        r = client.get(P + "view/it-h16/2t.png", params=params)
        assert r.status_code == 400 and word in r.json()["description"], (params, r.text)


def test_legend(client):
    r = client.get(P + "legend/it-h16/2t.png", params={"cmap": "RdBu_r", "vmin": 250, "vmax": 300})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = png_rgba(r.content)
    assert img.shape[0] >= 16 and len(np.unique(img.reshape(-1, 4), axis=0)) > 50
    assert client.get(P + "legend/it-h16/2t.png").status_code == 200
    assert client.get(P + "legend/it-h16/2t.png", params={"cmap": "x"}).status_code == 400
    assert client.get(P + "legend/it-h16/zz.png").status_code == 404


def test_layers_summary_lists_extra_dims(monkeypatch, tmp_path):
    """A field on pressure levels: the summary lists every level (the field shows the first)."""
    grid = HEALPix(4, True)
    values = np.arange(2 * 2 * grid.size, dtype=np.float64).reshape(2, 2, grid.size)
    ds = xr.Dataset(
        {"t": (("time", "level", "cell"), values, {"units": "K", **grid_attrs(grid)})},
        coords={
            "time": np.array(["2030-01-01T00", "2030-01-01T06"], "datetime64[ns]"),
            "level": [850, 500],
        },
    )
    base = memory_layer("levels", 4, 2)
    info = dataclasses.replace(base.info, variable="t")
    layer = Layer(info=info, field=Field.from_dataset(ds, "t", key="memory://levels#t"))
    client = serve_layers(monkeypatch, tmp_path, [layer])

    asked = []

    async def get_item(ctx, item_id, caller=None, collection=None):
        asked.append(collection)
        return {"id": item_id}

    async def open_layer(ctx, caller, item_id, variable, selection=None):
        if not selection:
            return layer
        key = f"memory://levels#t#{selection}"
        return Layer(info=info, field=Field.from_dataset(ds, "t", selection=selection, key=key))

    monkeypatch.setattr(serve, "get_item", get_item)
    monkeypatch.setattr(serve, "open_dataset", lambda ctx, info, item: ds)
    monkeypatch.setattr(serve, "open_layer", open_layer)
    (var,) = client.get(P + "layers/levels").json()["variables"]
    assert var["extra_dims"] == {"level": [850, 500]}
    # the field recorded every level when it was opened: nothing is opened again
    assert asked == []
    # a field that did not record them (one level kept as a scalar coordinate): the item
    # is opened again, the layer's own collection's (not another's of that id)
    layer.field.levels, layer.field.levels_known = {}, False
    client.app.state.ctx.extras.pop(serve._EXTRA_DIMS, None)
    (var,) = client.get(P + "layers/levels").json()["variables"]
    assert var["extra_dims"] == {"level": [850, 500]}
    assert asked == ["climate-dt"]
    # the tile shows the first level
    r = client.get(P + "collections/levels/t/map/tiles/WorldCRS84Quad/0/0/0",
                   params={"vmin": 0, "vmax": 400})  # fmt: skip
    lon, lat = tmsmod.tile_lonlat("WorldCRS84Quad", 0, 0, 0)
    expected = colourize(values[0, 0][nearest_index(grid, lon, lat)], "viridis", 0, 400)
    assert np.array_equal(png_rgba(r.content), expected)
    # ?level= picks another (by its value, as text or number)
    url = P + "collections/levels/t/map/tiles/WorldCRS84Quad/0/0/0"
    for level in ("500", "500.0"):
        r = client.get(url, params={"vmin": 0, "vmax": 400, "level": level, "datetime": "2030-01-01T06:00:00Z"})  # fmt: skip
        expected = colourize(values[1, 1][nearest_index(grid, lon, lat)], "viridis", 0, 400)
        assert np.array_equal(png_rgba(r.content), expected)
    r = client.get(url, params={"level": "700"})
    assert r.status_code == 400
    assert r.json()["description"] == "level='700' is not one of the layer's level values: 850, 500"
    view = client.get(P + "view/levels/t.png", params={"level": "700"})
    assert view.status_code == 400


def test_json_answers_are_private_no_store(client):
    """Per-user JSON (what the caller may view; links from the request's host) is never kept
    by a shared cache; documents the same for everyone may be."""
    for path in ("", "collections", "collections/it-h16/2t", "collections/it-h16/2t/map/tiles",
                 "collections/it-h16/2t/map/tiles/WebMercatorQuad", "layers/it-h16",
                 "tileMatrixSets", "edr/", "edr/conformance"):  # fmt: skip
        r = client.get(P + path)
        assert r.status_code == 200, path
        assert r.headers["cache-control"] == "private, no-store", path
    for path in ("conformance", "tileMatrixSets/WebMercatorQuad"):
        assert client.get(P + path).headers["cache-control"].startswith("public, max-age="), path


def test_legend_label_is_bounded(monkeypatch, tmp_path):
    layer = memory_layer("long")
    layer.field.long_name = "x" * 5000  # the data's own attribute: anyone's text
    client = serve_layers(monkeypatch, tmp_path, [layer])
    labels = []
    real = serve.legend_png
    monkeypatch.setattr(serve, "legend_png", lambda *a, label="", **kw: labels.append(label) or real(*a, label=label, **kw))  # fmt: skip
    r = client.get(P + "legend/long/2t.png", params={"vmin": 0, "vmax": 1})
    assert r.status_code == 200
    (label,) = labels
    assert len(label) <= serve.MAX_LABEL == 200 and label.startswith("xxx")
