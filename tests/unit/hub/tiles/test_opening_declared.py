"""Second security pass, opening: handles closed on refusal, bad grid numbers 422, declared
shapes/dtypes checked from metadata before xarray opens, GRIB sized before it is decoded,
NetCDF3 counted in the memory budget, scalar coordinates recorded at open, any failed open
remembered."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import xarray as xr
import zarr

from twinhub.services.asgi import BadRequest
from twinhub.services.tiles import opening, serve
from twinhub.services.tiles.layers import Layer
from twinlab.datalake.grib import _cfgrib
from twinlab.grids import HEALPix, grid_attrs
from twinlab.viz.field import MAX_LEVEL_VALUES, Field, TooManyValues

from .conftest import make_ctx
from .test_opening import LocalFs, _external_storage_file, _healpix_ds, _info, _refused

pytestmark = pytest.mark.anyio


class Tracked:
    """A file object that says whether it was closed (the store's connection)."""

    def __init__(self, path):
        self.f = open(path, "rb")  # noqa: SIM115 (closed through close())
        self.closed_by_caller = False

    def __getattr__(self, name):
        return getattr(self.f, name)

    def close(self):
        self.closed_by_caller = True
        self.f.close()


def test_refused_hdf5_file_handle_is_closed(tmp_path):
    f = Tracked(_external_storage_file(tmp_path))
    e = _refused(opening.open_netcdf, f, 1 << 20, 1 << 30, "layer i/t")
    assert e.status == 422 and f.closed_by_caller


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "x", 2.5, -4])
@pytest.mark.parametrize("kind,key", [("octahedral", "gaussian_N"), ("healpix", "healpix_nside")])
def test_non_finite_grid_numbers_are_422(tmp_path, bad, kind, key):
    ds = xr.Dataset({"t": (("time", "cell"), np.zeros((1, 12)), {"grid_type": kind, key: bad})})
    e = _refused(opening.build_field, make_ctx(tmp_path), _info("zarr"), ds, {}, "k")
    assert e.status == 422 and key in e.message


def _spy_open_zarr(monkeypatch):
    opened = []

    def open_zarr(*a, **kw):
        opened.append(a)
        raise AssertionError("xarray opened the store before its shapes were checked")

    monkeypatch.setattr(opening.xr, "open_zarr", open_zarr)
    monkeypatch.setattr(opening, "storage_options", lambda ctx: {})
    return opened


def test_zarr_declared_time_axis_refused_before_xarray_opens(tmp_path, monkeypatch):
    root = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    root.create_array("t", shape=(50_000_000, 12), chunks=(1, 12), dtype="f4", dimension_names=("time", "cell"))  # fmt: skip
    root.create_array("time", shape=(50_000_000,), chunks=(1_000_000,), dtype="i8", dimension_names=("time",))  # fmt: skip
    opened = _spy_open_zarr(monkeypatch)
    info = _info("zarr", href=str(tmp_path / "s.zarr"))
    e = _refused(opening.open_dataset, make_ctx(tmp_path), info, (None, None))
    assert e.status == 422 and "'time' declares 50000000 values" in e.message
    assert "TwinhubTiles.max_item_times (100000)" in e.message and not opened


@pytest.mark.parametrize("dtype", ["U8", "S4", [("a", "f4"), ("b", "i4")]])
def test_zarr_non_numeric_variable_refused_from_metadata(tmp_path, monkeypatch, dtype):
    root = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=2)
    root.create_array("t", shape=(4,), chunks=(4,), dtype=dtype)
    opened = _spy_open_zarr(monkeypatch)
    info = _info("zarr", href=str(tmp_path / "s.zarr"))
    e = _refused(opening.open_dataset, make_ctx(tmp_path), info, (None, None))
    assert e.status == 422 and "only bool, int, uint and float" in e.message and not opened


def test_zarr_chunk_bytes_counted_from_stored_dtype(tmp_path, monkeypatch):
    root = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    root.create_array("t", shape=(1000, 1000), chunks=(1000, 1000), dtype="i2")
    _spy_open_zarr(monkeypatch)
    info = _info("zarr", href=str(tmp_path / "s.zarr"))
    e = _refused(opening.open_dataset, make_ctx(tmp_path, max_chunk_bytes=7_999_999), info, (None, None))  # fmt: skip
    assert e.status == 422 and "decodes to 8000000 bytes" in e.message  # decoded as float64


def test_non_numeric_data_refused_after_open(tmp_path):
    g = HEALPix(1, True)
    ds = xr.Dataset({"t": (("cell",), np.array(["a"] * g.size), grid_attrs(g))})
    e = _refused(opening.build_field, make_ctx(tmp_path), _info("zarr"), ds, {}, "k")
    assert e.status == 422 and "only bool, int, uint and float" in e.message


def test_hdf5_declared_time_axis_refused_before_xarray_opens(tmp_path, monkeypatch):
    path = tmp_path / "long.nc"
    with h5py.File(path, "w") as f:
        f.create_dataset("time", shape=(200,), dtype="i8")  # never written: costs nothing
        f["time"].make_scale("time")
    monkeypatch.setattr(opening.s3fs, "S3FileSystem", LocalFs)
    monkeypatch.setattr(opening, "storage_options", lambda ctx: {})
    monkeypatch.setattr(opening.xr, "open_dataset", lambda *a, **k: pytest.fail("opened"))
    info = _info(href=str(path))
    e = _refused(opening.open_dataset, make_ctx(tmp_path, max_item_times=100), info, (None, None))
    assert e.status == 422 and "'time' declares 200 values" in e.message
    assert "max_item_times (100)" in e.message


def test_grib_size_checked_before_decoding(tmp_path, monkeypatch):
    ds = _healpix_ds(nside=4, nt=5).chunk()  # lazy, 7680 bytes decoded
    asked = []

    def open_grib(path, variable, chunks="auto"):
        asked.append(chunks)
        if chunks is None:
            raise AssertionError("decoded before its size was checked")
        return ds

    copy = tmp_path / "copy.grib2"
    monkeypatch.setattr(opening, "open_grib", open_grib)
    monkeypatch.setattr(opening, "_grib_copy", lambda ctx, fs, href: copy.touch() or copy)
    monkeypatch.setattr(opening, "storage_options", lambda ctx: {})
    monkeypatch.setattr(opening.s3fs, "S3FileSystem", LocalFs)
    e = _refused(opening.open_dataset, make_ctx(tmp_path, max_read_bytes=7679), _info("grib"), (None, None))  # fmt: skip
    assert e.status == 422 and "decode to 7680 bytes" in e.message and not copy.exists()
    got = opening.open_dataset(make_ctx(tmp_path), _info("grib"), (None, None))
    assert got["t"].chunks is None  # loaded once checked (the copy removed after)
    f = opening.build_field(make_ctx(tmp_path), _info("grib"), got, {}, "k")
    assert f.memory_bytes == 7680


def test_netcdf3_counted_in_the_memory_budget(tmp_path):
    nc3 = tmp_path / "ok3.nc"
    _healpix_ds(nside=4, nt=5).to_netcdf(nc3, engine="scipy")
    size = nc3.stat().st_size
    with open(nc3, "rb") as f:
        ds = opening.open_netcdf(f, size, 1 << 30, "x")
        field = opening.build_field(make_ctx(tmp_path), _info("netcdf"), ds, {}, "k")
    assert field.memory_bytes == size > 0


async def test_scalar_coordinates_recorded_at_open_no_reopen(tmp_path, monkeypatch):
    ds = _healpix_ds(nside=2, nt=2).assign_coords(heightAboveGround=2.0)
    field = Field.from_dataset(ds, "t", key="k")
    assert field.levels_known and field.scalars == {"heightAboveGround": [2.0]}

    async def get_item(*a, **k):
        raise AssertionError("the item was opened again")

    monkeypatch.setattr(serve, "get_item", get_item)
    layer = Layer(info=_info("grib"), field=field)
    assert await serve.extra_dims(make_ctx(tmp_path), layer) == {}


def test_extra_dimension_too_long_is_422(tmp_path):
    g = HEALPix(1, True)
    n = MAX_LEVEL_VALUES + 1
    ds = xr.Dataset(
        {"t": (("member", "cell"), np.zeros((n, g.size), "f4"), grid_attrs(g))},
        coords={"member": np.arange(n)},
    )
    with pytest.raises(TooManyValues):
        Field.extra_dims(ds, "t")
    e = _refused(opening.build_field, make_ctx(tmp_path), _info("zarr"), ds, {}, "k")
    assert e.status == 422 and f"'member' has {n} values" in e.message


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("decoder"), OverflowError()])
async def test_any_failed_open_is_remembered_as_422(tmp_path, error):
    ctx = make_ctx(tmp_path)
    calls = []

    def opener():
        calls.append(1)
        raise error

    for _ in range(2):
        with pytest.raises(BadRequest) as e:
            await opening.open_field(ctx, "k", opener)
        assert e.value.status == 422
        assert f"cannot be opened: {type(error).__name__}" in e.value.message
    assert len(calls) == 1


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_written_by_xarray_opens_and_its_dims_are_read(tmp_path, monkeypatch, fmt):
    """Both Zarr formats' dimension names (v2 _ARRAY_DIMENSIONS, v3 dimension_names) are
    read: the same store opens within the limit and is refused beyond it."""
    ds = _healpix_ds(nside=2, nt=5)
    ds.to_zarr(tmp_path / "s.zarr", zarr_format=fmt, consolidated=fmt == 2)
    monkeypatch.setattr(opening, "storage_options", lambda ctx: None)  # a local store
    info = _info("zarr", href=str(tmp_path / "s.zarr"))
    got = opening.open_dataset(make_ctx(tmp_path), info, (None, None))
    np.testing.assert_array_equal(got["t"].values, ds["t"].values)
    e = _refused(opening.open_dataset, make_ctx(tmp_path, max_item_times=4), info, (None, None))
    assert e.status == 422 and "'time' declares 5 values" in e.message


def test_netcdf4_written_by_xarray_opens_and_its_dims_are_read(tmp_path, monkeypatch):
    ds = _healpix_ds(nside=2, nt=5)
    ds.to_netcdf(tmp_path / "ok.nc", engine="h5netcdf")
    monkeypatch.setattr(opening.s3fs, "S3FileSystem", LocalFs)
    monkeypatch.setattr(opening, "storage_options", lambda ctx: {})
    info = _info(href=str(tmp_path / "ok.nc"))
    got = opening.open_dataset(make_ctx(tmp_path), info, (None, None))
    np.testing.assert_array_equal(got["t"].values, ds["t"].values)
    e = _refused(opening.open_dataset, make_ctx(tmp_path, max_grid_cells=47), info, (None, None))
    assert e.status == 422 and "'cell' declares 48 values" in e.message


def _zero_bit_grib(path, points: int) -> None:
    """A ~180-byte GRIB message (constant field: 0 bits per value) declaring ``points``."""
    _cfgrib()  # pyproj before ecCodes
    import eccodes  # here: only after _cfgrib() (the other order aborts)

    h = eccodes.codes_grib_new_from_samples("GRIB2")
    try:
        eccodes.codes_set(h, "Ni", points // 1000)
        eccodes.codes_set(h, "Nj", 1000)
        eccodes.codes_set(h, "numberOfDataPoints", points)
        assert eccodes.codes_get(h, "bitsPerValue") == 0
        path.write_bytes(eccodes.codes_get_message(h))
    finally:
        eccodes.codes_release(h)


def test_zero_bit_grib_refused_from_its_headers(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.grib2"
    _zero_bit_grib(bomb, 2_000_000)
    assert bomb.stat().st_size < 400 and opening.grib_declared(bomb, "t") == (2_000_000, 2_000_000)  # fmt: skip
    monkeypatch.setattr(opening, "open_grib", lambda *a, **k: pytest.fail("decoded"))
    monkeypatch.setattr(opening, "storage_options", lambda ctx: {})
    monkeypatch.setattr(opening.s3fs, "S3FileSystem", LocalFs)
    info = _info("grib", href=str(bomb))
    e = _refused(opening.open_dataset, make_ctx(tmp_path, max_read_bytes=1 << 20), info, (None, None))  # fmt: skip
    assert e.status == 422 and "decode to 16000000 bytes" in e.message
    e = _refused(opening.open_dataset, make_ctx(tmp_path, max_grid_cells=1000), info, (None, None))  # fmt: skip
    assert e.status == 422 and "declares 2000000 points" in e.message
