"""WMTS 1.0 (wmts.py): the capabilities document as OWSLib reads it, built from LayerInfos;
KVP and REST GetTile through the service's routes over a real field (an in-memory HEALPix
Zarr-like dataset: no platform), exception reports, limits.

The STAC lookups and the access decision are replaced by the layers given (``serve_layers``):
tests/integration/test_tiles_api.py runs the same routes against the platform."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import xarray as xr
from fastapi.testclient import TestClient
from lxml import etree
from owslib.wmts import WebMapTileService
from PIL import Image

import twinlab.viz.tms as tmsmod
from twinhub.services.tiles import app as tiles_app
from twinhub.services.tiles import ogcapi, serve, wmts
from twinhub.services.tiles.layers import Layer, LayerInfo
from twinhub.services.tiles.params import max_zoom, native_zoom
from twinlab.grids import HEALPix, grid_attrs
from twinlab.viz.colour import colourize
from twinlab.viz.field import Field
from twinlab.viz.locate import nearest_index

from .conftest import make_ctx

P = "/services/tiles/"
BASE = "http://testserver" + P
T0 = datetime(2030, 1, 1, tzinfo=UTC)
OWS = {"ows": wmts.OWS_NS}


def memory_layer(
    item_id: str = "it-h16", nside: int = 16, ntimes: int = 3, nest: bool = True
) -> Layer:
    """A layer whose field is an in-memory HEALPix dataset (a smooth field plus noise, so
    neighbouring cells differ), ``ntimes`` 6-hourly steps (0: timeless)."""
    grid = HEALPix(nside, nest)
    lon, lat = grid.centers()
    rng = np.random.default_rng(nside)
    attrs = {"units": "K", "long_name": "2 metre temperature", **grid_attrs(grid)}
    times = tuple(T0 + timedelta(hours=6 * k) for k in range(ntimes))
    base = 280 + 20 * np.cos(np.deg2rad(lat)) + rng.normal(0, 2, grid.size)
    if ntimes:
        data = np.stack([base + 5 * k * np.sin(np.deg2rad(lon)) for k in range(ntimes)])
        coords = {"time": np.array([t.replace(tzinfo=None) for t in times], "datetime64[ns]")}
        ds = xr.Dataset({"2t": (("time", "cell"), data, attrs)}, coords=coords)
    else:
        ds = xr.Dataset({"2t": (("cell",), base, attrs)})
    field = Field.from_dataset(ds, "2t", key=f"memory://{item_id}#2t")
    info = LayerInfo(
        item_id=item_id,
        variable="2t",
        collection="climate-dt",
        title=f"2t of {item_id}",
        units="K",
        description="2 metre temperature",
        times=times,
        bbox=(-180.0, -90.0, 180.0, 90.0),
        grid={"id": f"H{nside}", **grid_attrs(grid)},
        public=False,
    )
    return Layer(info=info, field=field)


def serve_layers(monkeypatch, tmp_path, layers: list[Layer], **settings) -> TestClient:
    """The service's routes (no hub auth) over ``layers`` instead of the lake's items."""
    by_id = {(lay.info.item_id, lay.info.variable): lay for lay in layers}

    async def list_layers(ctx, caller, limit):
        infos = [lay.info for lay in layers]
        return infos[:limit], len(infos) > limit

    async def layer_info(ctx, caller, item_id, variable=None):
        got = [lay.info for (i, v), lay in by_id.items() if i == item_id]
        if not got:
            raise tiles_app.BadRequest(f"no item {item_id!r}", 404)
        return [g for g in got if variable in (None, g.variable)]

    async def open_layer(ctx, caller, item_id, variable, **kw):
        if (item_id, variable) not in by_id:
            raise tiles_app.BadRequest(f"no layer {item_id}/{variable}", 404)
        return by_id[(item_id, variable)]

    for module in (wmts, ogcapi, serve):
        for name, fn in (
            ("list_layers", list_layers),
            ("layer_info", layer_info),
            ("open_layer", open_layer),
        ):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, fn)
    ctx = make_ctx(tmp_path, **settings)
    return TestClient(tiles_app.build_api(ctx))


def png_rgba(content: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(content))
    assert img.format == "PNG"
    return np.asarray(img.convert("RGBA"))


@pytest.fixture
def layer() -> Layer:
    return memory_layer()


@pytest.fixture
def client(monkeypatch, tmp_path, layer) -> TestClient:
    return serve_layers(monkeypatch, tmp_path, [layer, memory_layer("timeless", 8, 0)])


# -- the capabilities document ----------------------------------------------------------------
def test_capabilities_read_by_owslib(tmp_path):
    timed, timeless = memory_layer().info, memory_layer("timeless", 8, 0).info
    ctx = make_ctx(tmp_path, max_zoom_beyond_native=2)
    doc = wmts.capabilities(BASE, [timed, timeless], lambda i, t: max_zoom(ctx, i, t))
    w = WebMapTileService(BASE + "wmts", xml=doc)
    assert set(w.contents) == {"it-h16/2t", "timeless/2t"}
    layer = w.contents["it-h16/2t"]
    assert layer.title == "2t of it-h16"
    assert layer.formats == ["image/png"]
    assert layer.boundingBoxWGS84 == (-180.0, -90.0, 180.0, 90.0)
    times = [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in timed.times]
    assert layer.dimensions["time"]["values"] == times
    assert layer.dimensions["time"]["default"] == times[0]
    assert layer.dimensions["time"]["UOM"] == "ISO8601"
    assert "time" not in w.contents["timeless/2t"].dimensions
    assert layer.styles["default"]["isDefault"] is True
    assert layer.styles["default"]["legend"] == BASE + "legend/it-h16/2t.png"
    (tile_url,) = [r["template"] for r in layer.resourceURLs if r["resourceType"] == "tile"]
    assert tile_url == (
        BASE + "wmts/1.0.0/it-h16/2t/{Style}/{time}/{TileMatrixSet}/{TileMatrix}/"
        "{TileRow}/{TileCol}.png"
    )
    assert "/default/{TileMatrixSet}" in w.contents["timeless/2t"].resourceURLs[0]["template"]
    grid = HEALPix(16, True)
    for tms_id in tmsmod.TMS_IDS:
        limits = layer.tilematrixsetlinks[tms_id].tilematrixlimits
        last = tmsmod.native_zoom(tms_id, grid) + 2
        assert list(limits) == [str(z) for z in range(last + 1)]
        cols, rows = tmsmod.matrix_size(tms_id, last)
        deepest = limits[str(last)]
        assert (deepest.mintilerow, deepest.maxtilerow) == (0, rows - 1)
        assert (deepest.mintilecol, deepest.maxtilecol) == (0, cols - 1)
    # the matrix sets go as deep as the deepest layer, with the TMS document's numbers
    crs = {t: w.tilematrixsets[t].crs for t in tmsmod.TMS_IDS}
    assert crs == {
        "WebMercatorQuad": "urn:ogc:def:crs:EPSG::3857",
        "WorldCRS84Quad": "urn:ogc:def:crs:OGC:1.3:CRS84",
    }
    for tms_id in tmsmod.TMS_IDS:
        matrices = w.tilematrixsets[tms_id].tilematrix
        expected = tmsmod.tms_document(tms_id)["tileMatrices"]
        assert len(matrices) == tmsmod.native_zoom(tms_id, grid) + 3
        for m in matrices.values():
            e = expected[int(m.identifier)]
            assert m.scaledenominator == pytest.approx(e["scaleDenominator"], rel=1e-12)
            assert (m.matrixwidth, m.matrixheight) == (e["matrixWidth"], e["matrixHeight"])
            assert (m.tilewidth, m.tileheight) == (256, 256)
    assert w.tilematrixsets["WorldCRS84Quad"].tilematrix["0"].topleftcorner == (-180.0, 90.0)
    x, y = w.tilematrixsets["WebMercatorQuad"].tilematrix["0"].topleftcorner
    assert (x, y) == pytest.approx((-20037508.342789244, 20037508.342789244))
    # both encodings advertised; KVP is what OWSLib uses
    assert not w.restonly
    assert w.getOperationByName("GetTile").methods[0]["url"] == BASE + "wmts?"


def test_capabilities_say_when_layers_are_left_out(tmp_path):
    ctx = make_ctx(tmp_path)
    doc = wmts.capabilities(BASE, [memory_layer().info], lambda i, t: max_zoom(ctx, i, t), True)
    root = etree.fromstring(doc)
    abstract = root.find("ows:ServiceIdentification/ows:Abstract", OWS).text
    assert "Only the first 1 layers are listed (TwinhubTiles.max_layers)" in abstract
    empty = etree.fromstring(wmts.capabilities(BASE, [], lambda i, t: 0))
    assert empty.findall(f"{{{wmts.WMTS_NS}}}Contents/{{{wmts.WMTS_NS}}}Layer") == []


def test_control_characters_and_bad_grids_never_break_the_capabilities(monkeypatch, tmp_path):
    import dataclasses

    good = memory_layer("good")
    odd = memory_layer("odd")
    # a LayerInfo made elsewhere than layer_infos (which strips them too): raw control chars
    odd.info = dataclasses.replace(odd.info, title="t\x01\x1b[2J", description="d\x00", units="K\x0b")  # fmt: skip
    huge = memory_layer("huge")
    huge.info = dataclasses.replace(huge.info, grid={"grid_type": "healpix", "nside": 10**9})

    def zoom(ctx, info, tms_id):
        if info.item_id == "huge":  # as a grid over max_grid_cells is refused (422)
            raise ValueError("grid too large")
        return max_zoom(ctx, info, tms_id)

    monkeypatch.setattr(wmts, "max_zoom", zoom)
    client = serve_layers(monkeypatch, tmp_path, [good, odd, huge])
    r = client.get(P + "wmts", params={"SERVICE": "WMTS", "REQUEST": "GetCapabilities"})
    assert r.status_code == 200
    root = etree.fromstring(r.content)
    layers_ = root.findall(f"{{{wmts.WMTS_NS}}}Contents/{{{wmts.WMTS_NS}}}Layer")
    ids = [lay.find("ows:Identifier", OWS).text for lay in layers_]
    assert ids == ["good/2t", "odd/2t"]  # the layer whose zoom cannot be known is left out
    assert layers_[1].find("ows:Title", OWS).text == "t  [2J"


def test_exception_report_is_ows_1_1():
    root = etree.fromstring(wmts.exception_report("TileOutOfRange", "row 9 is out", "TILEROW"))
    assert root.tag == f"{{{wmts.OWS_NS}}}ExceptionReport"
    (exc,) = root.findall("ows:Exception", OWS)
    assert exc.get("exceptionCode") == "TileOutOfRange"
    assert exc.get("locator") == "TILEROW"
    assert exc.find("ows:ExceptionText", OWS).text == "row 9 is out"


# -- the routes -------------------------------------------------------------------------------
def report(r) -> tuple[str, str, str]:
    assert r.headers["content-type"].startswith("application/xml"), r.text
    exc = etree.fromstring(r.content).find("ows:Exception", OWS)
    return exc.get("exceptionCode"), exc.get("locator") or "", exc.find("ows:ExceptionText", OWS).text  # fmt: skip


def kvp(**params) -> str:
    q = {"SERVICE": "WMTS", "REQUEST": "GetTile", "VERSION": "1.0.0", "LAYER": "it-h16/2t",
         "STYLE": "default", "FORMAT": "image/png", "TILEMATRIXSET": "WorldCRS84Quad",
         "TILEMATRIX": "1", "TILEROW": "0", "TILECOL": "1"}  # fmt: skip
    q.update(params)
    return P + "wmts?" + "&".join(f"{k}={v}" for k, v in q.items() if v is not None)


def test_owslib_reads_the_service_and_fetches_tiles(client, layer):
    caps = client.get(P + "wmts", params={"service": "WMTS", "request": "GetCapabilities"})
    assert caps.status_code == 200
    assert caps.headers["content-type"].startswith("application/xml")
    rest = client.get(P + "wmts/1.0.0/WMTSCapabilities.xml")
    assert rest.content == caps.content
    w = WebMapTileService(BASE + "wmts", xml=caps.content)
    url = w.buildTileRequest(
        layer="it-h16/2t", tilematrixset="WebMercatorQuad", tilematrix="1", row=0, column=1,
        time="2030-01-01T06:00:00Z",
    )  # fmt: skip
    r = client.get(P + "wmts?" + url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert png_rgba(r.content).shape == (256, 256, 4)
    # the REST template gives the same bytes
    template = w.contents["it-h16/2t"].resourceURLs[0]["template"]
    href = template.format(Style="default", time="2030-01-01T06:00:00Z",
                           TileMatrixSet="WebMercatorQuad", TileMatrix=1, TileRow=0, TileCol=1)  # fmt: skip
    r2 = client.get(href.removeprefix("http://testserver"))
    assert r2.status_code == 200
    assert r2.content == r.content
    assert r2.headers["etag"] == r.headers["etag"]


def test_time_default_and_values(client):
    first = client.get(kvp(TIME="2030-01-01T00:00:00Z"))
    later = client.get(kvp(TIME="2030-01-01T12:00:00Z"))
    default = client.get(kvp())
    assert first.status_code == later.status_code == default.status_code == 200
    assert default.content == first.content
    assert later.content != first.content
    rest_default = client.get(P + "wmts/1.0.0/it-h16/2t/default/default/WorldCRS84Quad/1/0/1.png")
    assert rest_default.content == first.content
    # keys are case-insensitive, values not
    lower = client.get(kvp().replace("TILEMATRIXSET", "tileMatrixSet").replace("LAYER", "layer"))
    assert lower.content == first.content
    bad = client.get(kvp(TIME="2030-01-01T03:00:00Z"))
    assert bad.status_code == 400
    code, locator, text = report(bad)
    assert (code, locator) == ("InvalidParameterValue", "TIME")
    assert "2030-01-01T00:00:00Z .. 2030-01-01T12:00:00Z" in text


def test_nearest_tile_pixels_are_their_cells(client, layer):
    """Every pixel of a nearest tile is the colour of the native cell under its centre."""
    vmin, vmax = 270.0, 300.0
    for tms_id, z, row, col in (("WorldCRS84Quad", 2, 1, 5), ("WebMercatorQuad", 3, 2, 6)):
        r = client.get(kvp(TILEMATRIXSET=tms_id, TILEMATRIX=z, TILEROW=row, TILECOL=col,
                           TIME="2030-01-01T06:00:00Z", vmin=vmin, vmax=vmax, cmap="turbo"))  # fmt: skip
        assert r.status_code == 200, r.text
        lon, lat = tmsmod.tile_lonlat(tms_id, z, row, col)
        values = layer.field.read(1, nearest_index(layer.field.grid, lon, lat))
        expected = colourize(values, "turbo", vmin, vmax)
        got = png_rgba(r.content)
        assert np.array_equal(got, expected)
        assert len(np.unique(got.reshape(-1, 4), axis=0)) > 5  # many cells, not a flat tile


def test_polar_tiles_have_no_gaps(client):
    for row, col in ((0, 0), (0, 3), (1, 0), (1, 3)):
        r = client.get(kvp(TILEMATRIXSET="WorldCRS84Quad", TILEMATRIX=1, TILEROW=row, TILECOL=col))
        assert r.status_code == 200
        assert (png_rgba(r.content)[..., 3] == 255).all()


def test_limits_and_errors(client):
    native = native_zoom(memory_layer().info, "WebMercatorQuad")
    too_deep = client.get(kvp(TILEMATRIXSET="WebMercatorQuad", TILEMATRIX=native + 4))
    assert too_deep.status_code == 400
    code, locator, text = report(too_deep)
    assert (code, locator) == ("InvalidParameterValue", "TILEMATRIX")
    assert text == (
        f"zoom {native + 4} is beyond the limit: native zoom {native} + "
        f"TwinhubTiles.max_zoom_beyond_native 3 = {native + 3}"
    )
    ok = client.get(kvp(TILEMATRIXSET="WebMercatorQuad", TILEMATRIX=native + 3))
    assert ok.status_code == 200
    out = client.get(kvp(TILEMATRIX=1, TILEROW=2))
    assert out.status_code == 400
    assert report(out)[:2] == ("TileOutOfRange", "TileRow")
    assert "rows 0..1" in report(out)[2]
    cases = {
        "LAYER=": ("MissingParameterValue", "LAYER"),
        "LAYER=nolayer": ("InvalidParameterValue", "LAYER"),
        "LAYER=bad%20id/2t": ("InvalidParameterValue", "LAYER"),
        "TILEMATRIXSET=EPSG:4326": ("InvalidParameterValue", "TILEMATRIXSET"),
        "TILEMATRIX=x": ("InvalidParameterValue", "TILEMATRIX"),
        "FORMAT=image/jpeg": ("InvalidParameterValue", "FORMAT"),
        "STYLE=fancy": ("InvalidParameterValue", "STYLE"),
        "cmap=rainbow": ("InvalidParameterValue", "cmap"),
        "method=cubic": ("InvalidParameterValue", "method"),
        "vmin=5&vmax=1": ("InvalidParameterValue", "vmin"),
        "REQUEST=GetFeatureInfo": ("OperationNotSupported", "REQUEST"),
        "SERVICE=WMS": ("InvalidParameterValue", "SERVICE"),
    }
    for extra, expected in cases.items():
        k, _, v = extra.partition("=")
        url = kvp(**{k: v}) if "&" not in v else kvp() + "&" + extra
        r = client.get(url)
        assert r.status_code == 400, (extra, r.text)
        code, locator, text = report(r)
        assert (code, locator) == expected, (extra, text)
    assert "viridis" in report(client.get(kvp(cmap="rainbow")))[2]  # the valid names
    missing = client.get(kvp(LAYER="nosuch/2t"))
    assert missing.status_code == 404
    assert report(missing)[0] == "InvalidParameterValue"


def test_etag_and_cache_headers(client):
    r = client.get(kvp())
    assert r.headers["cache-control"] == "private, max-age=300"
    again = client.get(kvp(), headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


def test_access_refusals_are_reports_with_their_status(monkeypatch, tmp_path):
    client = serve_layers(monkeypatch, tmp_path, [memory_layer()])

    async def refuse(ctx, caller, item_id, variable, **kw):
        status = {"secret": 401, "private": 403}[item_id]
        raise tiles_app.BadRequest(f"{item_id} is not yours", status)

    monkeypatch.setattr(serve, "open_layer", refuse)
    anonymous = client.get(kvp(LAYER="secret/2t"))
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'token realm="jupyterhub"'
    assert report(anonymous) == ("NoApplicableCode", "", "secret is not yours")
    forbidden = client.get(P + "wmts/1.0.0/private/2t/default/default/WorldCRS84Quad/0/0/0.png")
    assert forbidden.status_code == 403
    assert report(forbidden)[2] == "private is not yours"
