"""The tile APIs of the tiles service (WMTS 1.0 KVP and REST, OGC API - Tiles, views, legends)
on the real multi-user platform with the sample data, through the proxy.

- OWSLib's WebMapTileService reads GetCapabilities and fetches tiles of the seeded H128
  ``2t`` layer at several zooms and two times (different bytes for different times);
- exactness: every pixel of a nearest tile is ``colourize`` of the value of the native cell
  under its centre, read here straight from the same Zarr store (``nearest_index``);
- WorldCRS84Quad tiles touching the poles have no transparent pixels;
- OGC API - Tiles tileset metadata agrees with the tiles served (the last zoom listed
  answers, one deeper is 400 naming the limit; rows/columns past the matrix 404);
- REST and KVP give the same bytes; no TIME is the first valid time;
- access: another user's private item is 403 (as an OWS exception report in WMTS),
  anonymous callers see only public collections' layers.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from lxml import etree
from owslib.util import ServiceException
from owslib.wmts import WebMapTileService
from PIL import Image

import twinlab.viz.tms as tmsmod
from tests.helpers.platform import wait_for_seed
from tests.helpers.tiles import (
    PUBLIC_COLLECTION,
    ensure_hub_user,
    lake_test_item,
    private_item,
    tiles_get,
)
from twinhub import objectstore
from twinhub.process.runtime import Runtime
from twinhub.services.datalake.seed.grids import START
from twinlab.grids import from_dataset
from twinlab.viz.colour import colourize
from twinlab.viz.locate import nearest_index

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

USER, OTHER = "tapiuser", "tapiother"
H128 = f"climate-dt-healpix-h128-2t-{START:%Y%m%d}"
LAYER = f"{H128}/2t"
OWS = {"ows": "http://www.opengis.net/ows/1.1"}


def rgba(content: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(content))
    assert img.format == "PNG"
    return np.asarray(img.convert("RGBA"))


class Env:
    def __init__(self, p):
        self.p = p
        self.rt = Runtime.load(p.state)
        self.root = p.url + "services/tiles/"
        self.auth = {"Authorization": f"token {p.token(USER)}"}
        ak, sk = objectstore.admin_keys(self.rt)
        self.storage = {
            "key": ak,
            "secret": sk,
            "client_kwargs": {"endpoint_url": objectstore.endpoint(self.rt)},
        }
        self._stores: dict = {}

    def get(self, path: str, user: str | None = USER, **params) -> requests.Response:
        return tiles_get(self.p, path, user, **params)

    def kvp(self, user: str | None = USER, **params) -> requests.Response:
        q = {"SERVICE": "WMTS", "REQUEST": "GetTile", "VERSION": "1.0.0", "LAYER": LAYER,
             "STYLE": "default", "FORMAT": "image/png", "TILEMATRIXSET": "WorldCRS84Quad",
             "TILEMATRIX": "1", "TILEROW": "0", "TILECOL": "0"}  # fmt: skip
        q.update({k: str(v) for k, v in params.items()})
        return self.get("wmts", user, **q)

    def field(self, item_id: str = H128, variable: str = "2t"):
        """(values (nt, ncells) over the item's valid times, ISO times, grid) read straight
        from the item's Zarr store with the platform's keys (not through the service)."""
        import xarray as xr

        if item_id not in self._stores:
            r = requests.get(
                self.p.url + "services/stac/search",
                params={"ids": item_id, "collections": "climate-dt"},
                headers=self.auth,
                timeout=60,
            )
            (item,) = r.json()["features"]
            href = item["assets"]["zarr"]["href"]
            ds = xr.open_zarr(href, storage_options=self.storage, chunks=None)
            props = item["properties"]
            da = ds[variable].sel(
                time=slice(props["start_datetime"].rstrip("Z"), props["end_datetime"].rstrip("Z"))
            )
            times = [np.datetime_as_string(t, unit="s") + "Z" for t in da["time"].values]
            self._stores[item_id] = (da.values.astype(np.float64), times, from_dataset(ds, variable))  # fmt: skip
        return self._stores[item_id]


@pytest.fixture(scope="module")
def env(multiuser_platform):
    p = multiuser_platform
    wait_for_seed(p)
    for name in (USER, OTHER):
        ensure_hub_user(p, name)
    e = Env(p)
    # made before any listing: the service reuses the lake's listing for access_ttl seconds
    e.mine = private_item(p, OTHER, f"{OTHER}-h8")
    e.public = lake_test_item(p, "tapi-public-h8", PUBLIC_COLLECTION)
    return e


def test_owslib_reads_capabilities_and_fetches_tiles(env):
    w = WebMapTileService(env.root + "wmts", headers=env.auth)
    assert LAYER in w.contents
    layer = w.contents[LAYER]
    _, times, grid = env.field()
    assert layer.dimensions["time"]["values"] == times
    assert layer.dimensions["time"]["default"] == times[0]
    assert set(layer.tilematrixsetlinks) == set(tmsmod.TMS_IDS) <= set(w.tilematrixsets)
    assert layer.styles["default"]["legend"].endswith(f"legend/{LAYER}.png")
    for tms_id in tmsmod.TMS_IDS:
        limits = layer.tilematrixsetlinks[tms_id].tilematrixlimits
        assert list(limits)[-1] == str(tmsmod.native_zoom(tms_id, grid) + 3)
        for z in (0, 2, int(list(limits)[-1])):
            cols, rows = tmsmod.matrix_size(tms_id, z)
            row, col = rows // 2, cols // 3
            got = []
            for t in (times[0], times[2]):
                r = w.gettile(layer=LAYER, tilematrixset=tms_id, tilematrix=str(z), row=row,
                              column=col, format="image/png", time=t)  # fmt: skip
                png = r.read()
                assert rgba(png).shape == (256, 256, 4)
                got.append(png)
            assert got[0] != got[1], (tms_id, z)  # each time its own field
    # an error comes back as an exception report OWSLib raises
    with pytest.raises(ServiceException, match="max_zoom_beyond_native"):
        w.gettile(layer=LAYER, tilematrixset="WorldCRS84Quad", tilematrix="12", row=0, column=0)


def test_nearest_tiles_are_the_native_cells(env):
    values, times, grid = env.field()
    vmin, vmax = 240.0, 310.0
    deepest = tmsmod.native_zoom("WebMercatorQuad", grid) + 3
    for tms_id, z, frow, fcol in (
        ("WorldCRS84Quad", 3, 0.3, 0.7),
        ("WebMercatorQuad", 2, 0.5, 0.6),
        ("WebMercatorQuad", deepest, 0.4, 0.45),
    ):
        cols, rows = tmsmod.matrix_size(tms_id, z)
        row, col = int(frow * rows), int(fcol * cols)
        r = env.kvp(TILEMATRIXSET=tms_id, TILEMATRIX=z, TILEROW=row, TILECOL=col,
                    TIME=times[1], cmap="magma", vmin=vmin, vmax=vmax)  # fmt: skip
        assert r.status_code == 200, r.text
        lon, lat = tmsmod.tile_lonlat(tms_id, z, row, col)
        idx = nearest_index(grid, lon, lat)
        expected = colourize(values[1].reshape(-1)[idx], "magma", vmin, vmax)
        got = rgba(r.content)
        assert np.array_equal(got, expected), (tms_id, z, int((got != expected).any(-1).sum()))
        assert len(np.unique(idx)) > 1
    # without vmin/vmax: the layer's default range, as layers/{item} states it
    doc = env.get(f"layers/{H128}").json()
    (var,) = [v for v in doc["variables"] if v["variable"] == "2t"]
    lo, hi = var["default_range"]
    assert lo < hi
    r = env.kvp(TILEMATRIXSET="WorldCRS84Quad", TILEMATRIX=2, TILEROW=1, TILECOL=3)
    lon, lat = tmsmod.tile_lonlat("WorldCRS84Quad", 2, 1, 3)
    expected = colourize(values[0].reshape(-1)[nearest_index(grid, lon, lat)], "viridis", lo, hi)
    assert np.array_equal(rgba(r.content), expected)
    assert doc["times"] == times and doc["default_time"] == times[0]
    assert var["max_zoom"] == {t: tmsmod.native_zoom(t, grid) + 3 for t in tmsmod.TMS_IDS}


@pytest.mark.parametrize("grid_id", ["healpix-h256", "octahedral-o96", "gaussian-f48"])
def test_nearest_tiles_on_every_seeded_grid(env, grid_id):
    """The other seeded grids (HEALPix H256, octahedral O96, regular Gaussian F48): tiles
    at the native zoom and beyond are their cells, pixel for pixel."""
    item = f"climate-dt-{grid_id}-2t-{START:%Y%m%d}"
    values, times, grid = env.field(item)
    for tms_id in tmsmod.TMS_IDS:
        z = tmsmod.native_zoom(tms_id, grid) + 2
        cols, rows = tmsmod.matrix_size(tms_id, z)
        row, col = rows // 3, (2 * cols) // 3
        r = env.kvp(LAYER=f"{item}/2t", TILEMATRIXSET=tms_id, TILEMATRIX=z, TILEROW=row,
                    TILECOL=col, TIME=times[-1], vmin=240, vmax=310)  # fmt: skip
        assert r.status_code == 200, r.text
        lon, lat = tmsmod.tile_lonlat(tms_id, z, row, col)
        idx = nearest_index(grid, lon, lat)
        expected = colourize(values[-1].reshape(-1)[idx], "viridis", 240, 310)
        assert np.array_equal(rgba(r.content), expected), (grid_id, tms_id)
        assert len(np.unique(idx)) > 1


def test_polar_tiles_have_no_gaps(env):
    for z in (0, 1, 2):
        cols, rows = tmsmod.matrix_size("WorldCRS84Quad", z)
        for row in {0, rows - 1}:
            for col in range(cols):
                r = env.kvp(TILEMATRIX=z, TILEROW=row, TILECOL=col)
                assert r.status_code == 200
                alpha = rgba(r.content)[..., 3]
                assert (alpha == 255).all(), (z, row, col, int((alpha < 255).sum()))


def test_tileset_metadata_agrees_with_the_tiles(env):
    _, times, grid = env.field()
    listing = env.get(f"collections/{LAYER}/map/tiles").json()
    assert {t["tileMatrixSetURI"].rsplit("/", 1)[-1] for t in listing["tilesets"]} == set(
        tmsmod.TMS_IDS
    )
    for tms_id in tmsmod.TMS_IDS:
        meta = env.get(f"collections/{LAYER}/map/tiles/{tms_id}")
        assert meta.status_code == 200
        doc = meta.json()
        assert doc["dataType"] == "map"
        assert doc["datetime"]["values"] == times
        limits = doc["tileMatrixSetLimits"]
        assert [lim["tileMatrix"] for lim in limits] == [str(z) for z in range(len(limits))]
        (template,) = [k["href"] for k in doc["links"] if k["rel"] == "item"]
        assert template.endswith(f"/map/tiles/{tms_id}/{{tileMatrix}}/{{tileRow}}/{{tileCol}}")
        last = limits[-1]
        z = int(last["tileMatrix"])
        cols, rows = tmsmod.matrix_size(tms_id, z)
        assert (last["maxTileRow"], last["maxTileCol"]) == (rows - 1, cols - 1)
        path = template.split("/services/tiles/", 1)[1]

        def tile(z, row, col, path=path, **params):
            return env.get(path.format(tileMatrix=z, tileRow=row, tileCol=col), **params)

        corner = tile(z, rows - 1, cols - 1, datetime=times[3])
        assert corner.status_code == 200
        assert corner.headers["content-type"] == "image/png"
        # the same tile through WMTS: the same bytes
        same = env.kvp(TILEMATRIXSET=tms_id, TILEMATRIX=z, TILEROW=rows - 1,
                       TILECOL=cols - 1, TIME=times[3])  # fmt: skip
        assert same.content == corner.content
        deeper = tile(z + 1, 0, 0)
        assert deeper.status_code == 400
        assert deeper.json()["description"] == (
            f"zoom {z + 1} is beyond the limit: native zoom {z - 3} + "
            f"TwinhubTiles.max_zoom_beyond_native 3 = {z}"
        )
        assert tile(z, rows, 0).status_code == 404
        assert tile(z, 0, cols).status_code == 404
    tms = env.get("tileMatrixSets/WebMercatorQuad").json()
    assert tms["id"] == "WebMercatorQuad" and len(tms["tileMatrices"]) == tmsmod.MAX_ZOOM + 1


def test_rest_and_kvp_same_bytes_and_default_time(env):
    _, times, _ = env.field()
    kvp_first = env.kvp(TILEMATRIX=2, TILEROW=1, TILECOL=2, TIME=times[0])
    kvp_none = env.kvp(TILEMATRIX=2, TILEROW=1, TILECOL=2)
    rest = env.get(f"wmts/1.0.0/{LAYER}/default/{times[0]}/WorldCRS84Quad/2/1/2.png")
    rest_default = env.get(f"wmts/1.0.0/{LAYER}/default/default/WorldCRS84Quad/2/1/2.png")
    ogc = env.get(f"collections/{LAYER}/map/tiles/WorldCRS84Quad/2/1/2")
    for r in (kvp_first, kvp_none, rest, rest_default, ogc):
        assert r.status_code == 200, r.text
    assert kvp_none.content == kvp_first.content == rest.content == rest_default.content
    assert ogc.content == kvp_first.content
    later = env.kvp(TILEMATRIX=2, TILEROW=1, TILECOL=2, TIME=times[1])
    assert later.content != kvp_first.content
    # REST capabilities = KVP capabilities
    caps = env.get("wmts/1.0.0/WMTSCapabilities.xml")
    assert caps.status_code == 200 and caps.headers["content-type"].startswith("application/xml")
    assert LAYER in caps.text


def test_errors_are_exception_reports(env):
    r = env.kvp(TILEMATRIX=12)
    assert r.status_code == 400
    exc = etree.fromstring(r.content).find("ows:Exception", OWS)
    assert exc.get("exceptionCode") == "InvalidParameterValue"
    assert exc.get("locator") == "TILEMATRIX"
    assert "TwinhubTiles.max_zoom_beyond_native" in exc.find("ows:ExceptionText", OWS).text
    r = env.kvp(TILEMATRIX=1, TILECOL=4)
    assert r.status_code == 400
    assert etree.fromstring(r.content).find("ows:Exception", OWS).get("exceptionCode") == (
        "TileOutOfRange"
    )
    r = env.kvp(TIME="1999-01-01T00:00:00Z")
    assert r.status_code == 400 and "valid times" in r.text
    r = env.get("wmts", SERVICE="WMTS", REQUEST="GetTile")
    assert r.status_code == 400 and "MissingParameterValue" in r.text


def test_private_layers_and_anonymous_callers(env):
    mine, public = env.mine, env.public
    tile = f"collections/{mine.layer_id}/map/tiles/WorldCRS84Quad/0/0/0"
    assert env.get(tile, user=OTHER).status_code == 200
    assert env.get(tile, user=USER).status_code == 403
    r = env.kvp(user=USER, LAYER=mine.layer_id, TILEMATRIX=0)
    assert r.status_code == 403
    assert etree.fromstring(r.content).find("ows:Exception", OWS) is not None
    assert env.kvp(user=OTHER, LAYER=mine.layer_id, TILEMATRIX=0).status_code == 200
    assert env.get(f"legend/{mine.layer_id}.png", user=USER).status_code == 403
    # capabilities list what the caller may view
    others = WebMapTileService(env.root + "wmts", headers=env.auth)
    assert mine.layer_id not in others.contents
    owner = WebMapTileService(env.root + "wmts", headers={"Authorization": f"token {env.p.token(OTHER)}"})  # fmt: skip
    assert mine.layer_id in owner.contents
    anonymous = requests.get(
        env.root + "wmts", params={"SERVICE": "WMTS", "REQUEST": "GetCapabilities"}, timeout=60
    )
    assert anonymous.status_code == 200
    ids = {
        e.text
        for e in etree.fromstring(anonymous.content).iter(
            "{http://www.opengis.net/ows/1.1}Identifier"
        )  # fmt: skip
    }
    assert public.layer_id in ids
    assert LAYER not in ids and mine.layer_id not in ids
    assert env.kvp(user=None, LAYER=public.layer_id, TILEMATRIX=0).status_code == 200
    assert env.kvp(user=None, TILEMATRIX=0).status_code == 401


def test_views_legends_and_landing(env):
    r = env.get(f"view/{LAYER}.png", projection="orthographic", center="10,45",
                width=320, height=240)  # fmt: skip
    assert r.status_code == 200, r.text
    img = rgba(r.content)
    assert img.shape == (240, 320, 4)
    assert img[0, 0, 3] == 0  # off the globe: transparent
    assert len(np.unique(img[120, 100:220].reshape(-1, 4), axis=0)) > 3  # not one colour
    for proj in ("platecarree", "webmercator", "robinson", "mollweide"):
        assert env.get(f"view/{LAYER}.png", projection=proj, width=200, height=100).status_code == 200  # fmt: skip
    r = env.get(f"view/{LAYER}.png", width=5000, height=5000)
    assert r.status_code == 400 and "TwinhubTiles.max_view_pixels" in r.json()["description"]
    r = env.get(f"view/{LAYER}.png", projection="gnomonic")
    assert r.status_code == 400 and "orthographic" in r.json()["description"]
    legend = env.get(f"legend/{LAYER}.png", cmap="coolwarm", vmin=250, vmax=300)
    assert legend.status_code == 200 and legend.headers["content-type"] == "image/png"
    assert env.get(f"legend/{LAYER}.png", cmap="nope").status_code == 400
    landing = env.get("").json()
    rels = {k["rel"] for k in landing["links"]}
    assert {"self", "http://www.opengis.net/def/rel/ogc/1.0/conformance"} <= rels
    html = requests.get(
        env.root, headers={**env.auth, "Accept": "text/html"}, timeout=60, allow_redirects=False
    )
    assert html.status_code == 302 and html.headers["location"].endswith("/services/tiles/vizlab")
    conf = env.get("conformance").json()["conformsTo"]
    assert "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tileset" in conf
    cols = env.get("collections").json()["collections"]
    assert LAYER in {c["id"] for c in cols}
