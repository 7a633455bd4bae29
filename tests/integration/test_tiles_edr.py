"""OGC API - EDR of the tiles service on the real multi-user platform (seeded lake): the values
a position query answers are the native cells' own values, read here straight from the same
Zarr stores in the object store and compared cell by cell.

- HEALPix nested (H128) and ring (a small ring-ordered item alice writes to her home bucket):
  the cell is ``healpy.ang2pix``'s;
- octahedral O96 and regular Gaussian F48: the cell is ``twinlab.grids.ops.nearest_cells``'s;
- area queries: exactly the cells ``polygon_cells`` picks, with their values;
- levels: ``z=`` or the dimension by name (``level=850``) selects the values of one level,
  the domain's ``twinhub:selection`` says which, and tiles of a level are that level's;
- datetime selection (none: all times; intervals; instants), the limits (400 naming the
  setting), access (bob cannot read alice's private item: 403; a public collection's item
  answers anonymous callers, the lake's does not: 401), OWSLib's EDR client.

Items written here come from tests/helpers/tiles.py (the owner's own keys, the STAC API).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import numpy as np
import pytest
import requests

from tests.helpers.platform import wait_for_seed
from tests.helpers.tiles import (
    PUBLIC_COLLECTION,
    ensure_hub_user,
    healpix_dataset,
    lake_test_item,
    private_item,
    remove_item,
    tiles_get,
)
from twinhub import objectstore
from twinhub.process.runtime import Runtime
from twinhub.services.datalake.seed.grids import START
from twinlab.grids import HEALPix, from_dataset, grid_attrs
from twinlab.grids.ops import nearest_cells, polygon_cells

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

ALICE, BOB = "edralice", "edrbob"
#: The ring item: nside 32, hourly, one step more than TwinhubTiles.max_time_steps (1000).
RING_NSIDE, RING_STEPS = 32, 1001
RING_START = datetime(2031, 1, 1)
RING_ITEM = f"{ALICE}-ring32"
PUBLIC_ITEM = "edr-public-h8"
COVJSON = "application/prs.coverage+json"


def _iso(t) -> str:
    return np.datetime_as_string(np.datetime64(t, "s"), unit="s") + "Z"


def _seed_item_id(grid_id: str, var: str = "2t") -> str:
    return f"climate-dt-{grid_id}-{var}-{START:%Y%m%d}"


def _json_values(a: np.ndarray) -> list:
    return [None if np.isnan(v) else float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


class Edr:
    def __init__(self, p, rt):
        self.p, self.rt = p, rt
        self.root = p.url + "services/tiles/edr/"
        ak, sk = objectstore.admin_keys(rt)
        self.storage = {
            "key": ak,
            "secret": sk,
            "client_kwargs": {"endpoint_url": objectstore.endpoint(rt)},
        }

    def get(self, path: str, user: str | None = ALICE, **params) -> requests.Response:
        """GET under edr/ as ``user`` (None: anonymous)."""
        headers = {"Authorization": f"token {self.p.token(user)}"} if user else {}
        return requests.get(self.root + path, params=params, headers=headers, timeout=120)

    def position(self, item: str, lon: float, lat: float, user: str | None = ALICE, **params):
        params = {"coords": f"POINT({lon!r} {lat!r})", **params}
        return self.get(f"collections/{item}/position", user=user, **params)

    def stac_item(self, item_id: str, collection_id: str = "climate-dt") -> dict:
        r = requests.get(
            self.p.url + f"services/stac/collections/{collection_id}/items/{item_id}",
            headers={"Authorization": f"token {self.p.token(ALICE)}"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        return r.json()

    def zarr_values(self, item: dict, var: str):
        """(values (nt, *grid shape) over the item's valid times, times, grid) read from
        the item's Zarr store with the platform's keys."""
        import xarray as xr

        ds = xr.open_zarr(item["assets"]["zarr"]["href"], storage_options=self.storage, chunks=None)
        props = item["properties"]
        da = ds[var].sel(
            time=slice(props["start_datetime"].rstrip("Z"), props["end_datetime"].rstrip("Z"))
        )
        return da.values, da["time"].values, from_dataset(ds, var)


def _write_ring_item(edr: Edr) -> np.ndarray:
    """Alice's private ring-ordered item in her home bucket, written with her own keys and
    registered in her own collection; returns its values (time, cell): ``cell + npix * t``
    (exact in float32), so that a value says which cell and step it came from."""
    import xarray as xr

    grid = HEALPix(RING_NSIDE, nest=False)
    npix = grid.size
    values = (np.arange(npix)[None, :] + npix * np.arange(RING_STEPS)[:, None]).astype(np.float32)
    times = np.array(
        [RING_START + timedelta(hours=h) for h in range(RING_STEPS)], dtype="datetime64[ns]"
    )
    attrs = {"units": "K", "long_name": "ring test field", **grid_attrs(grid)}
    ds = xr.Dataset(
        {"t": xr.Variable(("time", *grid.dims), values, attrs)},
        coords={"time": ("time", times)},
        attrs=grid_attrs(grid),
    )
    private_item(edr.p, ALICE, RING_ITEM, ds=ds, variable="t")
    return values


@pytest.fixture(scope="module")
def edr(multiuser_platform):
    p = multiuser_platform
    wait_for_seed(p)
    for name in (ALICE, BOB):
        ensure_hub_user(p, name)
    return Edr(p, Runtime.load(p.state))


@pytest.fixture(scope="module")
def ring(edr):
    return _write_ring_item(edr)


def _points(rng, n: int) -> list[tuple[float, float]]:
    """Random points, uniform on the sphere, and the awkward ones: poles, antimeridian."""
    lon = rng.uniform(-180.0, 180.0, n)
    lat = np.rad2deg(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    edges = [(180.0, 0.0), (-180.0, 12.5), (0.0, 90.0), (33.3, -90.0), (179.99, -45.0)]
    return [(float(a), float(b)) for a, b in zip(lon, lat, strict=True)] + edges


def test_metadata(edr):
    landing = edr.get("").json()
    assert {link["rel"] for link in landing["links"]} >= {"conformance", "data"}
    assert any("covjson" in c for c in edr.get("conformance").json()["conformsTo"])
    ids = {c["id"] for c in edr.get("collections").json()["collections"]}
    item = _seed_item_id("healpix-h128")
    assert item in ids
    doc = edr.get(f"collections/{item}").json()
    assert set(doc["parameter_names"]) == {"2t"}
    assert doc["parameter_names"]["2t"]["unit"]["symbol"] == "K"
    assert len(doc["extent"]["temporal"]["values"]) == 4
    assert doc["data_queries"]["position"]["link"]["href"].endswith(f"collections/{item}/position?coords={{coords}}")  # fmt: skip


def test_owslib_edr_client(edr):
    """OWSLib's OGC API - EDR client lists the items and queries a position."""
    import healpy
    import owslib.ogcapi
    from owslib.ogcapi.edr import EnvironmentalDataRetrieval

    item_id = _seed_item_id("healpix-h128")
    values, times, _ = edr.zarr_values(edr.stac_item(item_id), "2t")
    # OWSLib updates its module-wide default headers in place: keep the token out of them
    saved = dict(owslib.ogcapi.REQUEST_HEADERS)
    try:
        client = EnvironmentalDataRetrieval(
            edr.root, headers={"Authorization": f"token {edr.p.token(ALICE)}"}
        )
        assert item_id in client.data()
        assert client.collection(item_id)["id"] == item_id
        doc = client.query_data(
            item_id,
            "position",
            coords="POINT(-71.25 42.5)",
            parameter_names=["2t"],
            datetime_=f"{_iso(times[0])}/{_iso(times[1])}",
        )
    finally:
        owslib.ogcapi.REQUEST_HEADERS.clear()
        owslib.ogcapi.REQUEST_HEADERS.update(saved)
    pix = int(healpy.ang2pix(128, -71.25, 42.5, nest=True, lonlat=True))
    assert doc["domain"]["domainType"] == "PointSeries"
    assert doc["ranges"]["2t"]["values"] == _json_values(values[:2, pix])


def test_healpix_nested_position_is_the_ang2pix_cell(edr):
    import healpy

    item_id = _seed_item_id("healpix-h128")
    values, times, grid = edr.zarr_values(edr.stac_item(item_id), "2t")
    assert isinstance(grid, HEALPix) and grid.nest and grid.nside == 128
    rng = np.random.default_rng(128)
    for lon, lat in _points(rng, 50):
        r = edr.position(item_id, lon, lat)  # no datetime: every valid time of the item
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == COVJSON
        doc = r.json()
        pix = int(healpy.ang2pix(128, lon, lat, nest=True, lonlat=True))
        assert doc["domain"]["twinhub:cell"]["index"] == pix, (lon, lat)
        assert doc["domain"]["axes"]["t"]["values"] == [_iso(t) for t in times]
        assert doc["ranges"]["2t"]["values"] == _json_values(values[:, pix]), (lon, lat)


@pytest.mark.parametrize("grid_id", ["octahedral-o96", "gaussian-f48"])
def test_gaussian_grids_position_is_the_nearest_cell(edr, grid_id):
    item_id = _seed_item_id(grid_id)
    values, times, grid = edr.zarr_values(edr.stac_item(item_id), "2t")
    flat = values.reshape(values.shape[0], -1)
    rng = np.random.default_rng(len(grid_id))
    for lon, lat in _points(rng, 25):
        r = edr.position(item_id, lon, lat, **{"parameter-name": "2t"})
        assert r.status_code == 200, r.text
        doc = r.json()
        cell = int(nearest_cells(grid, lon, lat)[0])
        assert doc["domain"]["twinhub:cell"]["index"] == cell, (grid_id, lon, lat)
        assert doc["ranges"]["2t"]["values"] == _json_values(flat[:, cell]), (grid_id, lon, lat)


def test_datetime_selection(edr):
    item_id = _seed_item_id("healpix-h128")
    values, times, _ = edr.zarr_values(edr.stac_item(item_id), "2t")
    iso = [_iso(t) for t in times]
    lon, lat = 10.0, 45.0
    import healpy

    pix = int(healpy.ang2pix(128, lon, lat, nest=True, lonlat=True))
    cases = {
        iso[2]: [2],
        f"{iso[1]}/{iso[2]}": [1, 2],
        f"../{iso[1]}": [0, 1],
        f"{iso[2]}/..": [2, 3],
    }
    for when, steps in cases.items():
        doc = edr.position(item_id, lon, lat, datetime=when).json()
        assert doc["domain"]["axes"]["t"]["values"] == [iso[i] for i in steps], when
        assert doc["ranges"]["2t"]["values"] == _json_values(values[steps, pix]), when
    r = edr.position(item_id, lon, lat, datetime="2030-01-01T01:00:00Z")
    assert r.status_code == 400
    assert f"valid times: {iso[0]} .. {iso[-1]} (4 steps)" in r.json()["description"]


def test_area_is_every_cell_centre_inside(edr):
    item_id = _seed_item_id("healpix-h128")
    values, times, grid = edr.zarr_values(edr.stac_item(item_id), "2t")
    ring = [(-10.0, 35.0), (20.0, 35.0), (25.0, 55.0), (-5.0, 60.0)]
    wkt = "POLYGON((" + ", ".join(f"{x} {y}" for x, y in [*ring, ring[0]]) + "))"
    r = edr.get(f"collections/{item_id}/area", coords=wkt, datetime=_iso(times[1]))
    assert r.status_code == 200, r.text
    doc = r.json()
    cells = polygon_cells(grid, ring)
    assert cells.size > 100
    assert doc["domain"]["domainType"] == "MultiPointSeries"
    assert doc["domain"]["twinhub:cells"]["index"] == cells.tolist()
    assert doc["ranges"]["2t"]["shape"] == [1, cells.size]
    assert doc["ranges"]["2t"]["values"] == _json_values(values[1, cells])


def test_bad_requests_name_the_problem(edr):
    item_id = _seed_item_id("healpix-h128")

    def refused(path: str, **params) -> str:
        r = edr.get(f"collections/{item_id}/{path}", **params)
        assert r.status_code == 400, (params, r.text)
        return r.json()["description"]

    big = "POLYGON((0 0, 60 0, 60 50, 0 50, 0 0))"
    assert "TwinhubTiles.max_edr_area_deg2" in refused("area", coords=big)
    assert "not closed" in refused("area", coords="POLYGON((0 0, 10 0, 10 10, 0 10))")
    assert "latitude 95.0" in refused("position", coords="POINT(0 95)")
    assert "must be a WKT POINT" in refused("position", coords="LINESTRING(0 0, 1 1)")
    why = refused("position", coords="POINT(0 0)", **{"parameter-name": "msl"})
    assert "'msl'" in why and "parameters: 2t" in why


def test_healpix_ring_private_item(edr, ring):
    import healpy

    npix = 12 * RING_NSIDE**2
    first = _iso(np.datetime64(RING_START))
    third = _iso(np.datetime64(RING_START + timedelta(hours=2)))
    rng = np.random.default_rng(32)
    for lon, lat in _points(rng, 30):
        r = edr.position(RING_ITEM, lon, lat, datetime=f"{first}/{third}")
        assert r.status_code == 200, r.text
        doc = r.json()
        pix = int(healpy.ang2pix(RING_NSIDE, lon, lat, nest=False, lonlat=True))
        assert doc["domain"]["twinhub:cell"]["index"] == pix, (lon, lat)
        # the values say which cell and step they came from: cell + npix * step
        assert doc["ranges"]["t"]["values"] == _json_values(ring[:3, pix]), (lon, lat)
        assert doc["ranges"]["t"]["values"] == [pix + npix * s for s in range(3)]

    # 1001 valid times, no datetime: past TwinhubTiles.max_time_steps (1000)
    r = edr.position(RING_ITEM, 0.0, 0.0)
    assert r.status_code == 400 and "TwinhubTiles.max_time_steps" in r.json()["description"]
    # 50 x 50 degrees (~744 cells) x 300 steps: past TwinhubTiles.max_edr_cells (200000)
    last = _iso(np.datetime64(RING_START + timedelta(hours=299)))
    square = "POLYGON((0 -25, 50 -25, 50 25, 0 25, 0 -25))"
    r = edr.get(f"collections/{RING_ITEM}/area", coords=square, datetime=f"{first}/{last}")
    assert r.status_code == 400 and "TwinhubTiles.max_edr_cells" in r.json()["description"]
    # fewer steps: answered
    r = edr.get(f"collections/{RING_ITEM}/area", coords=square, datetime=f"{first}/{third}")
    assert r.status_code == 200, r.text
    assert r.json()["ranges"]["t"]["shape"][0] == 3

    # bob may not read alice's home bucket: neither her item's values nor its metadata
    r = edr.position(RING_ITEM, 0.0, 0.0, user=BOB, datetime=first)
    assert r.status_code == 403, r.text
    assert edr.get(f"collections/{RING_ITEM}", user=BOB).status_code == 403

    def listed(user: str) -> bool:
        r = edr.get("collections", user=user)
        assert r.status_code == 200, r.text
        return RING_ITEM in {c["id"] for c in r.json()["collections"]}

    # listings are reused for TwinhubTiles.access_ttl (30 s): the new item shows within it
    deadline = time.monotonic() + 45
    while not listed(ALICE):
        assert time.monotonic() < deadline, "alice's item never listed"
        time.sleep(2)
    assert not listed(BOB)


def test_public_collection_anonymous(edr):
    """Items of TwinhubTiles.public_collections answer without a login; others need one."""
    import healpy

    item = lake_test_item(edr.p, PUBLIC_ITEM, PUBLIC_COLLECTION, nside=8, ntimes=4)
    values = item.ds[item.variable].values
    lon, lat = 100.0, -33.0
    r = edr.position(PUBLIC_ITEM, lon, lat, user=None)
    assert r.status_code == 200, r.text
    pix = int(healpy.ang2pix(8, lon, lat, nest=True, lonlat=True))
    assert r.json()["ranges"][item.variable]["values"] == _json_values(values[:, pix])
    r = edr.position(_seed_item_id("healpix-h128"), lon, lat, user=None)
    assert r.status_code == 401, r.text


LEVELS = (500, 850)


@pytest.fixture(scope="module")
def levels_item(edr):
    """Alice's private H8 item with a ``level`` dimension (500, 850 hPa): other values at
    each level."""
    ds = healpix_dataset(8, 3, levels=LEVELS, seed=7)
    item = private_item(edr.p, ALICE, f"{ALICE}-levels-h8", ds=ds)
    yield item
    remove_item(edr.p, item)


def test_levels_z_or_by_name(edr, levels_item):
    import healpy

    item, values = levels_item, levels_item.values  # (time, level, cell)
    assert values.shape[1] == len(LEVELS)
    assert not np.array_equal(values[:, 0], values[:, 1], equal_nan=True)
    rng = np.random.default_rng(850)
    for lon, lat in _points(rng, 6):
        pix = int(healpy.ang2pix(8, lon, lat, nest=True, lonlat=True))
        asked = [({}, 0), ({"z": "850"}, 1), ({"level": "850"}, 1), ({"z": "500"}, 0)]
        for params, k in asked:
            r = edr.position(item.item_id, lon, lat, **params)
            assert r.status_code == 200, (params, r.text)
            doc = r.json()
            assert doc["domain"]["twinhub:cell"]["index"] == pix
            assert doc["domain"]["twinhub:selection"] == {"level": LEVELS[k]}, params
            assert doc["ranges"]["2t"]["values"] == _json_values(values[:, k, pix]), params
    ring = [(-20.0, -20.0), (30.0, -20.0), (30.0, 20.0), (-20.0, 20.0)]
    wkt = "POLYGON((" + ", ".join(f"{x} {y}" for x, y in [*ring, ring[0]]) + "))"
    r = edr.get(f"collections/{item.item_id}/area", coords=wkt, z="850")
    assert r.status_code == 200, r.text
    doc = r.json()
    cells = polygon_cells(HEALPix(8, nest=True), ring)
    assert cells.size > 5
    assert doc["domain"]["twinhub:selection"] == {"level": 850}
    assert doc["ranges"]["2t"]["values"] == _json_values(values[:, 1, cells])


def test_levels_refused_when_not_one_of_them(edr, levels_item):
    def refused(item_id: str, **params) -> str:
        r = edr.position(item_id, 10.0, 10.0, **params)
        assert r.status_code == 400, (params, r.text)
        return r.json()["description"]

    why = refused(levels_item.item_id, z="700")
    assert "level='700'" in why and "500, 850" in why
    why = refused(levels_item.item_id, level="1000")
    assert "level='1000'" in why
    # a field without levels has nothing for z to pick
    assert "z needs exactly one" in refused(_seed_item_id("healpix-h128"), z="850")


def test_tiles_of_a_level_are_that_levels(edr, levels_item):
    item = levels_item
    path = f"collections/{item.item_id}/2t/map/tiles/WorldCRS84Quad/1/0/1"

    def tile(**params) -> bytes:
        r = tiles_get(edr.p, path, user=ALICE, vmin="250", vmax="290", **params)
        assert r.status_code == 200, (params, r.text)
        assert r.headers["content-type"] == "image/png"
        return r.content

    first, upper = tile(), tile(level="850")
    assert tile(level="500") == first  # the first level when none is named
    assert upper != first
    r = tiles_get(edr.p, path, user=ALICE, level="700")
    assert r.status_code == 400 and "level='700'" in r.json()["description"]
