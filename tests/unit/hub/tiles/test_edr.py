"""EDR request parts: datetime selection, parameter names, formats, the collection document."""

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest

from twinhub.services.asgi import BadRequest
from twinhub.services.tiles import edr

TIMES = np.array(
    [np.datetime64("2024-01-01T00:00") + np.timedelta64(6 * i, "h") for i in range(8)],
    dtype="datetime64[ns]",
)


def refused(fn, *args):
    with pytest.raises(BadRequest) as e:
        fn(*args)
    return e.value


def test_no_datetime_is_every_time():
    assert edr.select_times(TIMES, None, 100).tolist() == list(range(8))
    assert edr.select_times(TIMES, "", 100).tolist() == list(range(8))


def test_instant_must_be_a_valid_time():
    assert edr.select_times(TIMES, "2024-01-01T06:00:00Z", 100).tolist() == [1]
    # naive, offset and lower-case z forms of the same instant
    assert edr.select_times(TIMES, "2024-01-01T06:00:00", 100).tolist() == [1]
    assert edr.select_times(TIMES, "2024-01-01T07:00:00+01:00", 100).tolist() == [1]
    assert edr.select_times(TIMES, "2024-01-01t06:00:00z".upper(), 100).tolist() == [1]
    e = refused(edr.select_times, TIMES, "2024-01-01T05:00:00Z", 100)
    assert e.status == 400
    assert "not a valid time" in e.message
    assert "2024-01-01T00:00:00Z .. 2024-01-02T18:00:00Z (8 steps)" in e.message


def test_intervals():
    assert edr.select_times(TIMES, "2024-01-01T05:00Z/2024-01-01T18:00Z", 100).tolist() == [1, 2, 3]
    assert edr.select_times(TIMES, "../2024-01-01T06:00:00Z", 100).tolist() == [0, 1]
    assert edr.select_times(TIMES, "2024-01-02T12:00:00Z/..", 100).tolist() == [6, 7]
    assert edr.select_times(TIMES, "2024-01-02T12:00:00Z/", 100).tolist() == [6, 7]
    e = refused(edr.select_times, TIMES, "2025-01-01T00:00:00Z/..", 100)
    assert "holds no valid time" in e.message and "valid times:" in e.message
    assert "start is after end" in refused(edr.select_times, TIMES, "2024-01-02/2024-01-01", 100).message  # fmt: skip
    assert "no start and no end" in refused(edr.select_times, TIMES, "../..", 100).message
    assert "instant or start/end" in refused(edr.select_times, TIMES, "a/b/c", 100).message
    assert "not an RFC 3339 instant" in refused(edr.select_times, TIMES, "yesterday", 100).message


def test_time_step_limit_names_the_setting():
    e = refused(edr.select_times, TIMES, None, 5)
    assert e.status == 400
    assert "8 time steps" in e.message and "TwinhubTiles.max_time_steps = 5" in e.message
    assert "limit" in e.message  # counted as a limit by the app's metrics
    e = refused(edr.select_times, TIMES, "2024-01-01T00:00Z/2024-01-02T00:00Z", 3)
    assert "5 time steps" in e.message
    assert edr.select_times(TIMES, "2024-01-01T00:00Z/2024-01-01T12:00Z", 3).tolist() == [0, 1, 2]


def test_timeless():
    assert edr.select_times(None, None, 10) is None
    assert "no time axis" in refused(edr.select_times, None, "2024-01-01T00:00:00Z", 10).message


def test_parameter_names():
    assert edr.parameter_names(None, ["2t", "tp"]) == ["2t", "tp"]
    assert edr.parameter_names("tp", ["2t", "tp"]) == ["tp"]
    assert edr.parameter_names(" tp , 2t,tp", ["2t", "tp"]) == ["tp", "2t"]
    e = refused(edr.parameter_names, "2t,msl", ["2t", "tp"])
    assert e.status == 400 and "'msl'" in e.message and "parameters: 2t, tp" in e.message


def test_formats_crs_and_ids():
    assert edr.data_media(None) == "application/prs.coverage+json"
    assert edr.data_media("CoverageJSON") == "application/prs.coverage+json"
    assert edr.data_media("json") == "application/json"
    assert "CoverageJSON or json" in refused(edr.data_media, "html").message
    edr.check_crs(None)
    edr.check_crs("CRS84")
    edr.check_crs("http://www.opengis.net/def/crs/OGC/1.3/CRS84")
    assert "CRS84 only" in refused(edr.check_crs, "EPSG:3857").message
    assert edr.check_item_id("hpx-h128_2t.2024-01-01:x") == "hpx-h128_2t.2024-01-01:x"
    for bad in ("a/b", "a b", "", "x" * 257):
        assert "one path segment of letters, digits" in refused(edr.check_item_id, bad).message


def _info(variable, **kw):
    base = dict(
        item_id="it-1",
        variable=variable,
        collection="hpx",
        title="HEALPix sample: 2 metre temperature",
        units="K",
        description="2 metre temperature",
        times=tuple(datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=6 * i) for i in range(4)),
        bbox=(-180.0, -90.0, 180.0, 90.0),
        grid={"type": "healpix", "nside": 128, "nest": True},
        public=False,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def test_collection_document():
    doc = edr.collection_document([_info("2t"), _info("tp", units="", description="")], "https://h/services/tiles/edr/")  # fmt: skip
    assert doc["id"] == "it-1" and doc["title"] == "HEALPix sample"
    assert doc["extent"]["spatial"]["bbox"] == [[-180.0, -90.0, 180.0, 90.0]]
    t = doc["extent"]["temporal"]
    assert t["interval"] == [["2024-01-01T00:00:00Z", "2024-01-01T18:00:00Z"]]
    assert len(t["values"]) == 4
    assert set(doc["data_queries"]) == {"position", "area"}
    pos = doc["data_queries"]["position"]["link"]
    assert pos["href"] == "https://h/services/tiles/edr/collections/it-1/position?coords={coords}"
    assert pos["variables"]["query_type"] == "position"
    assert doc["output_formats"] == ["CoverageJSON"] and doc["crs"] == ["CRS84"]
    assert doc["parameter_names"]["2t"]["unit"]["symbol"] == "K"
    assert doc["parameter_names"]["2t"]["observedProperty"]["label"] == "2 metre temperature"
    assert "unit" not in doc["parameter_names"]["tp"]
    assert doc["parameter_names"]["tp"]["observedProperty"]["label"] == "tp"
    timeless = edr.collection_document([_info("z", times=())], "/e/")
    assert "temporal" not in timeless["extent"]
    start = datetime(2031, 1, 1, tzinfo=UTC)
    hourly = tuple(start + timedelta(hours=h) for h in range(edr.MAX_LISTED_TIMES + 1))
    long = edr.collection_document([_info("t", times=hourly)], "/e/")["extent"]["temporal"]
    assert "values" not in long  # the interval only
    assert long["interval"] == [["2031-01-01T00:00:00Z", "2031-02-11T16:00:00Z"]]


# -- the routes, on real fields (twinlab.viz.field.Field over in-memory arrays) --------------
# The lake is replaced: layer_info/open_layer/list_layers answer for one item, run_render runs
# inline. What is checked is the routes' own work: parsing, the native cell, the values.
ITEM = "hpx8-2t"
N_T = 6
HOURS = [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=6 * i) for i in range(N_T)]


def _data_array(grid, name, seed):
    import xarray as xr

    rng = np.random.default_rng(seed)
    vals = rng.normal(280.0, 10.0, size=(N_T, *grid.shape)).astype(np.float32)
    vals.ravel()[::37] = np.nan  # some missing cells: null in the answer
    da = xr.DataArray(
        vals,
        dims=("time", *grid.dims),
        coords={"time": np.array([np.datetime64(h.replace(tzinfo=None), "ns") for h in HOURS])},
        name=name,
        attrs={"units": "K", "long_name": f"{name} long"},
    )
    # several chunks in space and time: the reads go block by block
    da.encoding["preferred_chunks"] = {"time": 4, **{d: max(1, n // 3) for d, n in zip(grid.dims, grid.shape, strict=True)}}  # fmt: skip
    return da


@pytest.fixture
def lake(monkeypatch):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from fastapi.testclient import TestClient

    from twinhub.services.tiles import layers, serve
    from twinhub.services.tiles.config import TwinhubTiles
    from twinhub.services.tiles.context import TilesContext
    from twinlab.grids import Gaussian, HEALPix
    from twinlab.viz.field import Field

    grids = {ITEM: HEALPix(8, nest=True), "hpx8r": HEALPix(8, nest=False), "f8": Gaussian(8)}
    fields = {}
    for item, grid in grids.items():
        for k, var in enumerate(("2t", "tp")):
            fields[item, var] = Field(_data_array(grid, var, k + len(fields)), grid, key=f"{item}/{var}")  # fmt: skip

    # metadata only: an item whose twinhub:grid claims O(2e8) (nothing may be built from it)
    meta = {"huge": {"grid_type": "octahedral", "gaussian_N": 2e8}}

    def infos(item):
        if item not in grids and item not in meta:
            raise BadRequest(f"no item {item!r}", 404)
        extra = {"grid": meta[item]} if item in meta else {}
        return [_info(v, item_id=item, times=tuple(HOURS), **extra) for v in ("2t", "tp")]

    async def layer_info(ctx, caller, item, variable=None):
        if item == "private":
            raise BadRequest("not yours", 403)
        return infos(item)

    async def open_layer(ctx, caller, item, variable):
        return layers.Layer(next(i for i in infos(item) if i.variable == variable), fields[item, variable])  # fmt: skip

    async def list_layers(ctx, caller, limit):
        return [i for item in grids for i in infos(item)], False

    async def run_render(ctx, fn, *args, **kw):
        return fn(*args, **kw)

    for name, fn in [("layer_info", layer_info), ("open_layer", open_layer), ("list_layers", list_layers), ("run_render", run_render)]:  # fmt: skip
        monkeypatch.setattr(layers, name, fn)
    monkeypatch.setattr(serve, "open_layer", open_layer)  # (the levels' selection opens there)
    settings = TwinhubTiles(max_time_steps=5, max_edr_area_deg2=400.0, max_edr_cells=20)
    ctx = TilesContext(rt=None, settings=settings, hub_api="", token="", prefix="/services/tiles/", stac_url="")  # fmt: skip
    app = FastAPI()

    @app.exception_handler(BadRequest)
    async def _refused(_r: Request, e: BadRequest) -> JSONResponse:
        return JSONResponse({"code": e.status, "description": e.message}, status_code=e.status)

    app.include_router(edr.router(ctx))
    client = TestClient(app)
    client.fields = fields
    client.settings = settings  # (read per request: tests may change a limit)
    return client


P = "/services/tiles/edr"


def test_metadata_routes(lake):
    landing = lake.get(P + "/").json()
    assert {link["rel"] for link in landing["links"]} >= {"self", "conformance", "data"}
    conf = lake.get(P + "/conformance").json()["conformsTo"]
    assert "http://www.opengis.net/spec/ogcapi-edr-1/1.1/conf/covjson" in conf
    cols = lake.get(P + "/collections").json()["collections"]
    assert [c["id"] for c in cols] == [ITEM, "hpx8r", "f8"]
    assert set(cols[0]["parameter_names"]) == {"2t", "tp"}
    one = lake.get(P + f"/collections/{ITEM}").json()
    assert one["data_queries"]["area"]["link"]["href"].endswith(f"/collections/{ITEM}/area?coords={{coords}}")  # fmt: skip
    assert lake.get(P + "/collections/private").status_code == 403
    assert lake.get(P + "/collections/nope").status_code == 404
    assert lake.get(P + "/collections/a%20b").status_code == 400


@pytest.mark.parametrize("item,nest", [(ITEM, True), ("hpx8r", False)])
def test_position_is_the_healpix_cell_value(lake, item, nest):
    healpy = pytest.importorskip("healpy")
    rng = np.random.default_rng(5)
    raw = lake.fields[item, "2t"].da.values
    for lon, lat in zip(rng.uniform(-180, 180, 12), rng.uniform(-90, 90, 12), strict=True):
        r = lake.get(P + f"/collections/{item}/position", params={"coords": f"POINT({float(lon)!r} {float(lat)!r})", "parameter-name": "2t", "datetime": "../2024-01-02T00:00:00Z"})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/prs.coverage+json"
        doc = r.json()
        pix = int(healpy.ang2pix(8, lon, lat, nest=nest, lonlat=True))
        assert doc["domain"]["twinhub:cell"]["index"] == pix
        assert doc["domain"]["axes"]["x"]["values"] == [float(lon)]
        assert len(doc["domain"]["axes"]["t"]["values"]) == 5
        want = [None if np.isnan(v) else float(v) for v in raw[:5, pix]]
        assert doc["ranges"]["2t"]["values"] == want


def test_z_on_a_field_without_levels_is_refused(lake):
    r = lake.get(P + f"/collections/{ITEM}/position", params={"coords": "POINT(10 10)", "z": "850"})  # fmt: skip
    assert r.status_code == 400
    assert "z needs exactly one" in r.json()["description"]
    r = lake.get(P + f"/collections/{ITEM}/position", params={"coords": "POINT(10 10)", "datetime": "../2024-01-02T00:00:00Z"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert "twinhub:selection" not in r.json()["domain"]


def test_position_gaussian_is_the_nearest_cell(lake):
    from twinlab.grids import Gaussian
    from twinlab.grids.ops import nearest_cells

    r = lake.get(P + "/collections/f8/position", params={"coords": "POINT(359.5 -47.3)", "datetime": "2024-01-01T12:00:00Z"})  # fmt: skip
    assert r.status_code == 200, r.text
    doc = r.json()
    cell = int(nearest_cells(Gaussian(8), -0.5, -47.3)[0])
    assert doc["domain"]["twinhub:cell"]["index"] == cell
    assert doc["domain"]["axes"]["t"]["values"] == ["2024-01-01T12:00:00Z"]
    for var in ("2t", "tp"):  # no parameter-name: every parameter
        v = lake.fields["f8", var].da.values[2].ravel()[cell]
        assert doc["ranges"][var]["values"] == [None if np.isnan(v) else float(v)]


def test_owslib_parameter_names_is_read_as_parameter_name(lake):
    params = {"coords": "POINT(10 10)", "datetime": "2024-01-01T00:00:00Z"}
    doc = lake.get(P + f"/collections/{ITEM}/position", params={**params, "parameter_names": "tp"}).json()  # fmt: skip
    assert list(doc["ranges"]) == ["tp"]
    both = {**params, "parameter-name": "2t", "parameter_names": "tp"}  # the standard's wins
    assert list(lake.get(P + f"/collections/{ITEM}/position", params=both).json()["ranges"]) == ["2t"]  # fmt: skip


def test_position_refusals(lake):
    def get(item=ITEM, **params):
        r = lake.get(P + f"/collections/{item}/position", params=params)
        return r.status_code, r.json().get("description", "")

    code, why = get(coords="POINT(0 0)")  # 6 times > max_time_steps 5
    assert code == 400 and "TwinhubTiles.max_time_steps = 5" in why
    code, why = get(coords="POINT(0 91)", datetime="2024-01-01T00:00:00Z")
    assert code == 400 and "latitude 91.0" in why
    code, why = get(coords="POLYGON((0 0, 1 0, 1 1, 0 0))")
    assert code == 400 and "POINT here" in why
    code, why = get(coords="POINT(0 0)", datetime="2024-01-01T01:00:00Z")
    assert code == 400 and "valid times: 2024-01-01T00:00:00Z .. 2024-01-02T06:00:00Z" in why
    code, why = get(coords="POINT(0 0)", datetime="2024-01-01T00:00:00Z", **{"parameter-name": "msl"})  # fmt: skip
    assert code == 400 and "2t, tp" in why
    assert get("private", coords="POINT(0 0)")[0] == 403
    assert get(coords="POINT(0 0)", datetime="2024-01-01T00:00:00Z", f="html")[0] == 400
    r = lake.get(P + f"/collections/{ITEM}/position", params={"coords": "POINT(0 0)", "datetime": "2024-01-01T00:00:00Z", "f": "json"})  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"


def test_area_is_every_cell_centre_inside(lake):
    from twinlab.grids import HEALPix
    from twinlab.grids.ops import polygon_cells
    from twinlab.viz.locate import cell_centers

    ring = [(10.0, 10.0), (30.0, 10.0), (30.0, 25.0), (10.0, 25.0)]
    wkt = "POLYGON((" + ", ".join(f"{x} {y}" for x, y in [*ring, ring[0]]) + "))"
    r = lake.get(P + f"/collections/{ITEM}/area", params={"coords": wkt, "parameter-name": "tp", "datetime": "2024-01-01T06:00:00Z/2024-01-01T12:00:00Z"})  # fmt: skip
    assert r.status_code == 200, r.text
    doc = r.json()
    cells = polygon_cells(HEALPix(8, nest=True), ring)
    assert cells.size > 3
    assert doc["domain"]["domainType"] == "MultiPointSeries"
    assert doc["domain"]["twinhub:cells"]["index"] == cells.tolist()
    lon, lat = cell_centers(HEALPix(8, nest=True), cells)
    assert np.allclose(np.array(doc["domain"]["axes"]["composite"]["values"]), np.stack([lon, lat], 1))  # fmt: skip
    rng = doc["ranges"]["tp"]
    assert rng["shape"] == [2, cells.size] and rng["axisNames"] == ["t", "composite"]
    raw = lake.fields[ITEM, "tp"].da.values[1:3][:, cells]
    assert rng["values"] == [None if np.isnan(v) else float(v) for v in raw.ravel()]


def test_area_limits(lake):
    def get(wkt, **params):
        r = lake.get(P + f"/collections/{ITEM}/area", params={"coords": wkt, **params})
        return r.status_code, r.json().get("description", "")

    code, why = get("POLYGON((0 0, 30 0, 30 20, 0 20, 0 0))", datetime="2024-01-01T00:00:00Z")
    assert code == 400 and "600 square degrees" in why and "TwinhubTiles.max_edr_area_deg2 = 400" in why  # fmt: skip
    code, why = get("POLYGON((0 0, 20 0, 20 20, 0 20, 0 0))", datetime="../2024-01-01T18:00:00Z")
    assert code == 400 and "TwinhubTiles.max_edr_cells = 20" in why
    code, why = get("POLYGON((0 0, 20 0, 20 20, 0 20))")
    assert code == 400 and "not closed" in why
    assert get("POLYGON((0 0, 20 0, 20 20, 0 20, 0 0))", datetime="2024-01-01T00:00:00Z")[0] == 200


def test_a_series_reads_each_chunk_once(lake):
    """Time steps 0..4 of one cell lie in two time chunks (4 steps each): two reads, not five."""
    field = lake.fields["hpx8r", "2t"]
    before = field.chunk_reads
    r = lake.get(P + "/collections/hpx8r/position", params={"coords": "POINT(-20 5)", "parameter-name": "2t", "datetime": "../2024-01-02T00:00:00Z"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert len(r.json()["ranges"]["2t"]["values"]) == 5
    assert field.chunk_reads - before == 2


def test_area_on_a_2d_grid(lake):
    """Gaussian F8 (latitude x longitude): flat C-order indices, values from the same cells."""
    from twinlab.grids import Gaussian
    from twinlab.grids.ops import polygon_cells

    ring = [(-10.0, -10.0), (10.0, -10.0), (10.0, 10.0), (-10.0, 10.0)]
    wkt = "POLYGON((" + ", ".join(f"{x} {y}" for x, y in [*ring, ring[0]]) + "))"
    r = lake.get(P + "/collections/f8/area", params={"coords": wkt, "parameter-name": "2t", "datetime": "2024-01-01T18:00:00Z"})  # fmt: skip
    assert r.status_code == 200, r.text
    doc = r.json()
    cells = polygon_cells(Gaussian(8), ring)
    assert 0 < cells.size <= 20
    assert doc["domain"]["twinhub:cells"]["index"] == cells.tolist()
    raw = lake.fields["f8", "2t"].da.values[3].ravel()[cells]
    assert doc["ranges"]["2t"]["values"] == [None if np.isnan(v) else float(v) for v in raw]


def test_ranges_are_named_as_asked_not_as_the_data_names_them(lake):
    """A GRIB variable asked as '2t' may be 't2m' in the data: the answer says '2t'."""
    from twinlab.viz.field import Field

    old = lake.fields[ITEM, "2t"]
    lake.fields[ITEM, "2t"] = Field(old.da.rename("t2m"), old.grid, key="renamed")
    r = lake.get(P + f"/collections/{ITEM}/position", params={"coords": "POINT(5 5)", "parameter-name": "2t", "datetime": "2024-01-01T00:00:00Z"})  # fmt: skip
    assert r.status_code == 200, r.text
    doc = r.json()
    assert list(doc["ranges"]) == ["2t"] and list(doc["parameters"]) == ["2t"]
    assert doc["parameters"]["2t"]["observedProperty"]["label"]["en"] == "2t long"


# -- finding 7: what one query may cost ----------------------------------------------------------
def test_series_bytes_budget_is_checked_before_reading(lake):
    """A point's series over steps 0..4 decodes two time chunks (4 + 2 steps) of one spatial
    chunk (256 cells of float32): 6144 bytes per parameter."""
    field = lake.fields[ITEM, "2t"]
    params = {"coords": "POINT(-20 5)", "parameter-name": "2t", "datetime": "../2024-01-02T00:00:00Z"}  # fmt: skip
    url = P + f"/collections/{ITEM}/position"
    lake.settings.max_series_bytes = 6143
    before = field.chunk_reads
    r = lake.get(url, params=params)
    assert r.status_code == 400, r.text
    why = r.json()["description"]
    assert "6144 bytes" in why and "TwinhubTiles.max_series_bytes = 6143" in why
    assert field.chunk_reads == before  # refused before any read
    lake.settings.max_series_bytes = 6144
    assert lake.get(url, params=params).status_code == 200
    # two parameters: twice the bytes; an area is checked the same way
    both = lake.get(url, params={**params, "parameter-name": "2t,tp"})
    assert both.status_code == 400 and "12288 bytes" in both.json()["description"]
    ring = "POLYGON((10 10, 30 10, 30 25, 10 25, 10 10))"
    area = lake.get(P + f"/collections/{ITEM}/area", params={"coords": ring, "parameter-name": "tp", "datetime": "2024-01-01T06:00:00Z/2024-01-01T12:00:00Z"})  # fmt: skip
    assert area.status_code == 400 and "max_series_bytes" in area.json()["description"]


def test_series_does_not_fill_the_shared_chunk_cache(lake):
    field = lake.fields["hpx8r", "tp"]
    kept = field.cache.nbytes
    r = lake.get(P + "/collections/hpx8r/position", params={"coords": "POINT(40 -30)", "parameter-name": "tp", "datetime": "../2024-01-02T00:00:00Z"})  # fmt: skip
    assert r.status_code == 200
    assert field.cache.nbytes == kept  # read, taken from and dropped


def test_variables_per_query_are_bounded(lake):
    lake.settings.max_variables = 1
    url = P + f"/collections/{ITEM}/position"
    one = {"coords": "POINT(0 0)", "datetime": "2024-01-01T00:00:00Z"}
    r = lake.get(url, params=one)  # no parameter-name: every variable (2) would be opened
    assert r.status_code == 400
    assert "2 parameters" in r.json()["description"]
    assert "TwinhubTiles.max_variables = 1" in r.json()["description"]
    r = lake.get(url, params={**one, "parameter-name": "2t,tp"})
    assert r.status_code == 400 and "TwinhubTiles.max_variables = 1" in r.json()["description"]
    assert lake.get(url, params={**one, "parameter-name": "tp"}).status_code == 200
    e = refused(edr.parameter_names, None, ["a", "b", "c"], 2)
    assert "3 parameters" in e.message and "parameter-name" in e.message


def test_huge_grid_item_is_refused_before_opening(lake):
    r = lake.get(P + "/collections/huge/position", params={"coords": "POINT(0 0)"})
    assert r.status_code == 422
    assert "TwinhubTiles.max_grid_cells" in r.json()["description"]


def test_levels_compare_nan_as_itself_and_own_parameters_are_not_dimensions():
    from twinhub.services.tiles.serve import OWN_PARAMS

    assert edr._same(float("nan"), float("nan")) and edr._same(850, 850.0)
    assert not edr._same(500, 850) and not edr._same(float("nan"), 500)
    # a dimension named like one of EDR's or the tiles' own parameters is never selected by
    # name: ?coords= and ?datetime= stay the query's
    assert {"coords", "datetime", "z", "parameter-name", "time", "f", "crs"} <= OWN_PARAMS
