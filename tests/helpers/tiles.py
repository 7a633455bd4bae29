"""What the tiles service's integration tests share (tests/integration/test_tiles_*.py):
hub users and tokens, small Zarr stores with known values written to a user's home bucket
with that user's own S3 keys (or to the lake with the platform's), STAC items for them
registered through the STAC API, and requests to ``/services/tiles/``.

A private item of a user::

    item = private_item(p, "tilesalice", "tilesalice-h8")       # s3://home-tilesalice/...
    tiles_get(p, f"layers/{item.item_id}", user="tilesalice")    # 200
    tiles_get(p, f"layers/{item.item_id}", user="tilesbob")      # 403

Every name is the caller's: test modules share one platform per session, so each uses its
own user names and item ids. Writing the same item id again replaces the item.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import requests
import xarray as xr

from tests.helpers.platform import Platform
from tests.helpers.stac import collection
from twinhub import objectstore
from twinhub.process.runtime import Runtime
from twinlab.contract import FIELD_GRID, FIELD_VARIABLE
from twinlab.grids import HEALPix, grid_attrs

TILES = "services/tiles/"
STAC = "services/stac/"
#: The collection the multi-user platform fixture makes public
#: (``--TwinhubTiles.public_collections``, tests/fixtures/platforms.py).
PUBLIC_COLLECTION = "tiles-public"
ADMIN = "admin"
START = datetime(2031, 1, 1)


# -- users ----------------------------------------------------------------------------------
def ensure_hub_user(p: Platform, name: str) -> None:
    """Hub user ``name`` exists (made once per session, whoever asks first)."""
    r = p.api("GET", f"/users/{name}", user=ADMIN)
    if r.status_code == 404:
        p.add_user(name)
    elif r.status_code != 200:
        raise RuntimeError(f"cannot look up user {name}: {r.status_code} {r.text}")


def user_storage(p: Platform, name: str) -> objectstore.UserStorage:
    """``name``'s S3 keys and home bucket (made as the hub makes them at a first spawn)."""
    ensure_hub_user(p, name)
    return objectstore.ensure_user(Runtime.load(p.state), name)


def headers(p: Platform, user: str | None = None, token: str | None = None) -> dict[str, str]:
    tok = token or (p.token(user) if user else None)
    return {"Authorization": f"token {tok}"} if tok else {}


def tiles_get(
    p: Platform,
    path: str,
    user: str | None = None,
    *,
    token: str | None = None,
    extra_headers: dict[str, str] | None = None,
    **params: Any,
) -> requests.Response:
    """GET ``/services/tiles/<path>`` through the proxy (anonymous without user/token)."""
    return requests.get(
        p.url + TILES + path,
        params=params,
        headers={**headers(p, user, token), **(extra_headers or {})},
        timeout=120,
    )


# -- data -----------------------------------------------------------------------------------
def healpix_values(nside: int, ntimes: int, seed: int = 0) -> np.ndarray:
    """(ntimes, 12 nside^2) float32: distinct per cell and per time step, some NaN."""
    npix = 12 * nside * nside
    rng = np.random.default_rng(seed)
    v = 250.0 + 40.0 * rng.random((ntimes, npix)) + np.arange(ntimes)[:, None] * 0.25
    v[:, :: max(1, npix // 50)] = np.nan  # gaps: transparent pixels, null values
    return v.astype(np.float32)


def healpix_dataset(
    nside: int = 8,
    ntimes: int = 4,
    *,
    nest: bool = True,
    variable: str = "2t",
    step_hours: int = 6,
    start: datetime = START,
    seed: int = 0,
    levels: tuple[int, ...] = (),
) -> xr.Dataset:
    """A HEALPix field over time, with twinlab's grid attributes (as the lake's Zarr);
    ``levels``: a ``level`` dimension (hPa) after time, other values at each level."""
    grid = HEALPix(nside, nest=nest)
    times = np.array(
        [start + timedelta(hours=step_hours * k) for k in range(ntimes)], dtype="datetime64[ns]"
    )
    attrs = {"units": "K", "long_name": "2 metre temperature", **grid_attrs(grid)}
    coords: dict[str, Any] = {"time": ("time", times)}
    if levels:
        values = np.stack(
            [healpix_values(nside, ntimes, seed + 1 + k) for k in range(len(levels))], axis=1
        )
        var = xr.Variable(("time", "level", *grid.dims), values, attrs)
        coords["level"] = ("level", np.asarray(levels, dtype=np.int64), {"units": "hPa"})
    else:
        var = xr.Variable(("time", *grid.dims), healpix_values(nside, ntimes, seed), attrs)
    return xr.Dataset({variable: var}, coords=coords, attrs=grid_attrs(grid))


def upload_zarr(s3: Any, bucket: str, key: str, ds: xr.Dataset) -> str:
    """Write ``ds`` as a Zarr v3 store (one time step per chunk) under ``s3://bucket/key``
    with client ``s3`` (the owner's keys); returns the href."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "store.zarr"
        enc = {n: {"chunks": (1, *ds[n].shape[1:])} for n in ds.data_vars}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            ds.to_zarr(local, mode="w", zarr_format=3, encoding=enc, consolidated=False)
        for f in sorted(local.rglob("*")):
            if f.is_file():
                rel = f.relative_to(local).as_posix()
                s3.put_object(Bucket=bucket, Key=f"{key}/{rel}", Body=f.read_bytes())
    return f"s3://{bucket}/{key}"


def upload_netcdf(s3: Any, bucket: str, key: str, ds: xr.Dataset) -> str:
    """Write ``ds`` as one NetCDF-4 file ``s3://bucket/key`` with client ``s3``."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "data.nc"
        ds.to_netcdf(local, engine="h5netcdf")
        s3.put_object(Bucket=bucket, Key=key, Body=local.read_bytes())
    return f"s3://{bucket}/{key}"


def stac_item(
    item_id: str,
    collection_id: str,
    href: str,
    ds: xr.Dataset,
    variable: str,
    media_type: str = "application/vnd+zarr",
) -> dict:
    """A STAC item for the data at ``href`` holding ``ds`` (its times, grid, variable)."""
    times = [np.datetime_as_string(t, unit="s") + "Z" for t in ds["time"].values]
    grid_dims = [d for d in ds[variable].dims if d != "time"]
    step = (ds["time"].values[1] - ds["time"].values[0]) if len(times) > 1 else None
    time_dim: dict[str, Any] = {"type": "temporal", "extent": [times[0], times[-1]]}
    if step is not None:
        time_dim["step"] = f"PT{int(step / np.timedelta64(1, 'h'))}H"
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": item_id,
        "collection": collection_id,
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[-180, -90], [180, -90], [180, 90], [-180, 90], [-180, -90]]],
        },
        "bbox": [-180.0, -90.0, 180.0, 90.0],
        "properties": {
            "datetime": times[0],
            "start_datetime": times[0],
            "end_datetime": times[-1],
            FIELD_GRID: {
                k: v for k, v in ds.attrs.items() if isinstance(v, str | int | float | bool)
            },
            "cube:dimensions": {
                "time": time_dim,
                **{d: {"type": "other", "extent": [0, ds.sizes[d] - 1]} for d in grid_dims},
            },
            "cube:variables": {
                variable: {
                    "type": "data",
                    "dimensions": list(ds[variable].dims),
                    "unit": str(ds[variable].attrs.get("units", "")),
                    "description": str(ds[variable].attrs.get("long_name", variable)),
                }
            },
        },
        "assets": {
            "data": {
                "href": href,
                "type": media_type,
                "roles": ["data"],
                FIELD_VARIABLE: variable,
            }
        },
        "links": [],
    }


def register_item(p: Platform, item: dict, user: str) -> None:
    """Put ``item`` into its collection through the STAC API as ``user`` (the collection is
    made first if it is not there; an item of the same id is replaced)."""
    h = headers(p, user)
    cid, iid = item["collection"], item["id"]
    url = p.url + STAC + "collections"
    if requests.get(f"{url}/{cid}", headers=h, timeout=60).status_code == 404:
        r = requests.post(url, json=collection(cid), headers=h, timeout=60)
        assert r.status_code in (200, 201), r.text
    requests.delete(f"{url}/{cid}/items/{iid}", headers=h, timeout=60)
    r = requests.post(f"{url}/{cid}/items", json=item, headers=h, timeout=60)
    assert r.status_code in (200, 201), r.text


@dataclass
class TestItem:
    """An item the helpers wrote: where it is and the values it holds."""

    __test__ = False  # not a pytest class

    item_id: str
    collection: str
    href: str
    variable: str
    ds: xr.Dataset
    owner: str

    @property
    def layer_id(self) -> str:
        return f"{self.item_id}/{self.variable}"

    @property
    def values(self) -> np.ndarray:
        """(ntimes, ncells) float64 values as stored ((ntimes, nlevels, ncells) with levels)."""
        return np.asarray(self.ds[self.variable].values, dtype=np.float64)

    @property
    def times(self) -> list[str]:
        return [np.datetime_as_string(t, unit="s") + "Z" for t in self.ds["time"].values]


def remove_item(p: Platform, item: TestItem) -> None:
    """Take a helper's item out of the lake's catalogue again (its data stays): the
    session's platform is shared, and other modules' searches count the lake's items."""
    url = p.url + STAC + f"collections/{item.collection}/items/{item.item_id}"
    r = requests.delete(url, headers=headers(p, item.owner), timeout=60)
    assert r.status_code in (200, 204, 404), r.text


def private_item(
    p: Platform,
    owner: str,
    item_id: str,
    *,
    nside: int = 8,
    nest: bool = True,
    ntimes: int = 4,
    variable: str = "2t",
    collection_id: str | None = None,
    ds: xr.Dataset | None = None,
) -> TestItem:
    """A HEALPix item in ``owner``'s home bucket, written with ``owner``'s own keys and
    registered by ``owner`` in ``collection_id`` (default ``user-<owner>``)."""
    creds = user_storage(p, owner)
    rt = Runtime.load(p.state)
    s3 = objectstore.client(rt, creds.access_key, creds.secret_key)
    ds = ds if ds is not None else healpix_dataset(nside, ntimes, nest=nest, variable=variable)
    href = upload_zarr(s3, creds.home_bucket, f"tiles-tests/{item_id}.zarr", ds)
    cid = collection_id or f"user-{owner}"
    register_item(p, stac_item(item_id, cid, href, ds, variable), owner)
    return TestItem(item_id, cid, href, variable, ds, owner)


def lake_test_item(
    p: Platform,
    item_id: str,
    collection_id: str = PUBLIC_COLLECTION,
    *,
    nside: int = 8,
    ntimes: int = 4,
    variable: str = "2t",
    ds: xr.Dataset | None = None,
) -> TestItem:
    """A HEALPix item in the lake bucket (the platform's keys), registered by the admin in
    ``collection_id`` (default: the public one)."""
    rt = Runtime.load(p.state)
    s3 = objectstore.admin_client(rt)
    lake = objectstore.settings(rt).lake_bucket
    ds = ds if ds is not None else healpix_dataset(nside, ntimes, variable=variable, seed=1)
    href = upload_zarr(s3, lake, f"tiles-tests/{item_id}.zarr", ds)
    register_item(p, stac_item(item_id, collection_id, href, ds, variable), ADMIN)
    return TestItem(item_id, collection_id, href, variable, ds, ADMIN)
