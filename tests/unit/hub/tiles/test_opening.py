"""Opening a layer's data safely: HDF5 files reaching outside themselves refused, explicit
NetCDF engines, limits checked before any grid or field is built (422 naming them), the open
pool, remembered failures, GRIB copies a few at once, GRIB's memory budget, the field key."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
import zarr

from twinhub.services.asgi import BadRequest
from twinhub.services.tiles import layers, opening
from twinhub.services.tiles.layers import LayerInfo
from twinlab.grids import HEALPix, grid_attrs

from .conftest import make_ctx

pytestmark = pytest.mark.anyio
SECRET = b"AWS_SECRET_ACCESS_KEY=do-not-leak-me-0123456789abcdef"


def _info(fmt: str = "netcdf", **kw) -> LayerInfo:
    base = dict(
        item_id="i",
        variable="t",
        collection="c",
        title="t",
        units="K",
        description="",
        times=(),
        bbox=(-180.0, -90.0, 180.0, 90.0),
        grid={},
        public=False,
        href="s3://lake/x",
        format=fmt,
    )
    return LayerInfo(**{**base, **kw})


def _healpix_ds(nside: int = 2, nt: int = 2) -> xr.Dataset:
    g = HEALPix(nside, True)
    t = np.arange(nt).astype("datetime64[h]").astype("datetime64[ns]")
    return xr.Dataset(
        {"t": (("time", "cell"), np.random.default_rng(0).random((nt, g.size)), grid_attrs(g))},
        coords={"time": t},
    )


def _refused(fn, *args) -> BadRequest:
    with pytest.raises(BadRequest) as e:
        fn(*args)
    return e.value


# -- finding 1: HDF5 that reads local files ----------------------------------------------
def _external_storage_file(tmp_path: Path) -> Path:
    """A NetCDF4 file whose variable's data is a local file of the service (the attack)."""
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    path = tmp_path / "evil.nc"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.arange(len(SECRET), dtype="i4"))
        f["x"].make_scale("x")
        d = f.create_dataset("t", shape=(len(SECRET),), dtype="u1", external=[(str(secret), 0, len(SECRET))])  # fmt: skip
        d.dims[0].attach_scale(f["x"])
    return path


def test_hdf5_external_storage_is_refused_before_opening(tmp_path):
    path = _external_storage_file(tmp_path)
    # what the review found: h5netcdf alone hands out the local file's bytes
    leaked = xr.open_dataset(path, engine="h5netcdf")["t"].values.tobytes()
    assert leaked == SECRET
    with open(path, "rb") as f:
        e = _refused(opening.open_netcdf, f, path.stat().st_size, 1 << 30, "layer i/t")
    assert e.status == 422 and "/t keeps its data in external files" in e.message


def test_virtual_datasets_and_external_links_are_refused(tmp_path):
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as f:
        f["a"] = np.arange(4.0)
    virtual = tmp_path / "virtual.nc"
    layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
    layout[:] = h5py.VirtualSource(str(src), "a", shape=(4,))
    with h5py.File(virtual, "w") as f:
        f.create_group("g").create_virtual_dataset("v", layout)
    linked = tmp_path / "linked.nc"
    with h5py.File(linked, "w") as f:
        f["ok"] = np.arange(3.0)
        f["g/away"] = h5py.ExternalLink(str(src), "/a")
        f["g/here"] = h5py.SoftLink("/ok")  # inside the file: fine
    with open(virtual, "rb") as f:
        assert opening.hdf5_refusal(f) == "/g/v is a virtual dataset (data from other files)"
    with open(linked, "rb") as f:
        assert "/g/away is an external link" in opening.hdf5_refusal(f)
        e = _refused(opening.open_netcdf, f, linked.stat().st_size, 1 << 30, "layer x")
    assert e.status == 422 and "external link" in e.message


def test_netcdf_engines_are_explicit_and_netcdf3_bounded(tmp_path):
    ds = _healpix_ds()
    nc4, nc3 = tmp_path / "ok4.nc", tmp_path / "ok3.nc"
    ds.to_netcdf(nc4, engine="h5netcdf")
    ds.to_netcdf(nc3, engine="scipy")
    with open(nc4, "rb") as f:
        assert opening.hdf5_refusal(f) is None
        got = opening.open_netcdf(f, nc4.stat().st_size, 1 << 30, "x")
        np.testing.assert_array_equal(got["t"].values, ds["t"].values)
    size = nc3.stat().st_size
    with open(nc3, "rb") as f:
        np.testing.assert_array_equal(opening.open_netcdf(f, size, size, "x")["t"].values, ds["t"].values)  # fmt: skip
        e = _refused(opening.open_netcdf, f, size, size - 1, "layer i/t")
    assert e.status == 413 and "TwinhubTiles.max_read_bytes" in e.message
    e = _refused(opening.open_netcdf, io.BytesIO(b"PK\x03\x04" + b"\0" * 64), 68, 1 << 30, "x")
    assert e.status == 422 and "not a NetCDF3 or NetCDF4/HDF5 file" in e.message


class LocalFs:
    """s3fs standing in for the lake: hrefs are local paths."""

    def __init__(self, **_kw):
        pass

    def info(self, href):
        return {"size": Path(href).stat().st_size}

    def open(self, href, mode="rb", block_size=None):
        return open(href, mode)


async def test_open_layer_path_refuses_external_storage_with_a_4xx(tmp_path, monkeypatch):
    path = _external_storage_file(tmp_path)
    monkeypatch.setattr(opening.s3fs, "S3FileSystem", LocalFs)
    monkeypatch.setattr(opening, "storage_options", lambda ctx: {})
    ctx = make_ctx(tmp_path)
    info = _info(href=str(path))
    calls = []

    def opener():
        calls.append(1)
        return layers._open_field(ctx, info, {}, {}, "k1")

    for _ in range(2):
        with pytest.raises(BadRequest) as e:
            await opening.open_field(ctx, "k1", opener)
        assert e.value.status == 422 and "external files" in e.value.message
    assert len(calls) == 1  # the refusal is remembered (access_ttl): not read again


# -- finding 3: limits before anything large is built or read -----------------------------
def test_huge_declared_chunk_refused_without_allocating(tmp_path):
    """A ~1 KB zarr.json declaring one never-written chunk of 100 GB: 422 at once."""
    nside, nt = 1024, 1000
    root = zarr.open_group(tmp_path / "big.zarr", mode="w", zarr_format=3)
    cells = 12 * nside * nside
    a = root.create_array("t", shape=(nt, cells), chunks=(nt, cells), dtype="f8", fill_value=np.nan, dimension_names=("time", "cell"))  # fmt: skip
    a.attrs.update(grid_type="healpix", healpix_nside=nside, healpix_order="nested")
    tc = root.create_array("time", shape=(nt,), chunks=(nt,), dtype="i8", dimension_names=("time",))  # fmt: skip
    tc[:] = np.arange(nt)
    tc.attrs.update(units="hours since 2030-01-01")
    assert (tmp_path / "big.zarr" / "t" / "zarr.json").stat().st_size < 2048
    ds = xr.open_zarr(tmp_path / "big.zarr", chunks=None, consolidated=False)
    ctx = make_ctx(tmp_path, max_chunk_bytes=256 << 20)
    t0 = time.monotonic()
    e = _refused(opening.build_field, ctx, _info("zarr"), ds, {}, "k")
    assert time.monotonic() - t0 < 5
    assert e.status == 422 and "TwinhubTiles.max_chunk_bytes (268435456)" in e.message
    assert str(nt * cells * 8) in e.message


@pytest.mark.parametrize(
    "attrs",
    [
        {"grid_type": "healpix", "healpix_nside": 2**20},
        {"grid_type": "octahedral", "gaussian_N": 100_000},  # O(N^2) to build: never built
        {"grid_type": "reduced_gaussian", "gaussian_N": 100_000, "gaussian_pl": [4, 4]},
        {"grid_type": "regular_gaussian", "gaussian_N": 100_000},
        {"grid_type": "latlon", "latlon_dlon": 1e-4},
    ],
)
def test_grid_too_large_from_attributes_is_refused_fast(tmp_path, attrs):
    ds = xr.Dataset({"t": (("time", "cell"), np.zeros((1, 12)), attrs)})
    ctx = make_ctx(tmp_path)
    t0 = time.monotonic()
    e = _refused(opening.build_field, ctx, _info("zarr"), ds, {}, "k")
    assert time.monotonic() - t0 < 2
    assert e.status == 422 and "TwinhubTiles.max_grid_cells (300000000)" in e.message


def test_grid_limit_by_data_dims_time_axis_and_grib_size(tmp_path):
    ds = _healpix_ds(nside=4, nt=5)  # 192 cells, 5 steps, 7680 bytes
    ok = opening.build_field(make_ctx(tmp_path), _info("grib"), ds, {}, "k")
    assert ok.ntimes == 5 and ok.memory_bytes == 5 * 192 * 8
    e = _refused(opening.build_field, make_ctx(tmp_path, max_grid_cells=191), _info(), ds, {}, "k")
    assert (
        e.status == 422 and "up to 192 cells" in e.message and "max_grid_cells (191)" in e.message
    )
    e = _refused(opening.build_field, make_ctx(tmp_path, max_item_times=4), _info(), ds, {}, "k")
    assert e.status == 422 and "5 time steps, over TwinhubTiles.max_item_times (4)" in e.message
    e = _refused(opening.build_field, make_ctx(tmp_path, max_read_bytes=7679), _info("grib"), ds, {}, "k")  # fmt: skip
    assert e.status == 422 and "decode to 7680 bytes" in e.message and "max_read_bytes" in e.message
    # the same sizes in Zarr are not decoded whole: no GRIB limit for them
    assert opening.build_field(make_ctx(tmp_path, max_read_bytes=7679), _info("zarr"), ds, {}, "k")


async def test_grib_fields_held_within_a_memory_budget(tmp_path):
    ctx = make_ctx(tmp_path, chunk_cache_bytes=20_000)
    ds = _healpix_ds(nside=4, nt=5)  # 7680 bytes in memory each as GRIB

    def opener(fmt: str, key: str):
        return lambda: opening.build_field(ctx, _info(fmt), ds, {}, key)

    for k in ("a", "b", "c"):
        await opening.open_field(ctx, k, opener("grib", k))
    assert list(ctx.extras[opening.FIELDS]) == ["b", "c"]  # 3 x 7680 > 20000: oldest out
    for k in ("d", "e", "f"):  # lazy stores hold nothing in memory: kept by count only
        await opening.open_field(ctx, k, opener("zarr", k))
    assert list(ctx.extras[opening.FIELDS]) == ["b", "c", "d", "e", "f"]


# -- finding 8: the open pool, remembered failures, GRIB copies ----------------------------
async def test_opens_run_in_their_own_bounded_pool(tmp_path):
    ctx = make_ctx(tmp_path)
    where = []

    class F:
        times = np.array(["2030-01-01T00"], "datetime64[ns]")

    def opener():
        where.append(threading.current_thread().name)
        return F()

    f, times = await opening.open_field(ctx, "k", opener)
    assert where[0].startswith("tiles-open") and times[0].year == 2030 and times[0].tzinfo
    assert ctx.extras[opening.OPEN_POOL]._max_workers == opening.OPEN_THREADS
    assert (await opening.open_field(ctx, "k", opener))[0] is f and len(where) == 1
    layers.shutdown(ctx)
    assert opening.OPEN_POOL not in ctx.extras


async def test_failed_opens_remembered_for_access_ttl(tmp_path):
    ctx = make_ctx(tmp_path, access_ttl=0.2)
    calls = []

    def opener():
        calls.append(1)
        raise BadRequest("layer i/t: no variable 'q'", 404)

    for _ in range(3):
        with pytest.raises(BadRequest) as e:
            await opening.open_field(ctx, "k", opener)
        assert e.value.status == 404 and "no variable" in e.value.message
    assert len(calls) == 1
    await asyncio.sleep(0.25)
    with pytest.raises(BadRequest):
        await opening.open_field(ctx, "k", opener)
    assert len(calls) == 2  # after access_ttl: tried again


def test_grib_copies_a_few_at_once(tmp_path):
    ctx = make_ctx(tmp_path)
    active, most, lock = [0], [0], threading.Lock()

    class SlowFs:
        def info(self, href):
            return {"size": 4}

        def open(self, href, mode="rb", block_size=None):
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
            time.sleep(0.1)
            with lock:
                active[0] -= 1
            return io.BytesIO(b"GRIB")

    paths = []
    threads = [
        threading.Thread(target=lambda: paths.append(opening._grib_copy(ctx, SlowFs(), "s3://l/x")))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 6 and most[0] == opening.GRIB_COPIES
    for p in paths:
        opening._remove_copy(p)


# -- finding 10: the field key --------------------------------------------------------------
def test_field_key_hashes_a_json_list_no_collisions():
    a = _info(href="s3://lake/x#v", variable="w")
    b = _info(href="s3://lake/x", variable="v#w")
    assert opening.field_key(a) != opening.field_key(b)  # '#'-joined, these were one key
    assert opening.field_key(a, {"lev": "1,b=2"}) != opening.field_key(a, {"lev": "1", "b": "2"})
    assert opening.field_key(a, {"x": 1, "y": 2}) == opening.field_key(a, {"y": 2, "x": 1})
    assert opening.field_key(a).startswith("field-") and len(opening.field_key(a)) == 70
    assert layers.field_key is opening.field_key
    json.dumps(opening.field_key(a))  # plain text
