"""Field: chunk-aware reads from real Zarr v3 / NetCDF stores, and the ChunkCache."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import twinlab.grids as tg
from twinlab.viz import ChunkCache, Field, nearest_index, tile_lonlat
from twinlab.viz.field import ChunkTooLarge

TIMES = np.array(["2026-01-01T00", "2026-01-01T06", "2026-01-01T12"], dtype="datetime64[ns]")


def _dataset(grid: tg.Grid) -> xr.Dataset:
    rng = np.random.default_rng(7)
    data = rng.normal(280, 5, (3, 2, *grid.shape)).astype(np.float32)
    ds = xr.Dataset(
        {"t": (("time", "level", *grid.dims), data, {"units": "K", "long_name": "Temperature"})},
        coords={"time": TIMES, "level": [850, 500]},
    )
    ds["t"].attrs.update(tg.grid_attrs(grid))
    return ds


@pytest.fixture()
def hpx_store(tmp_path: Path) -> tuple[Path, xr.Dataset]:
    g = tg.HEALPix(32)  # 12288 cells: 12 chunks of 1024
    ds = _dataset(g)
    path = tmp_path / "h.zarr"
    ds.to_zarr(path, zarr_format=3, encoding={"t": {"chunks": (1, 1, 1024)}}, consolidated=False)
    return path, ds


def test_zarr_tile_reads_only_its_chunks(hpx_store: tuple[Path, xr.Dataset]) -> None:
    path, ds = hpx_store
    opened = xr.open_zarr(path, chunks=None, consolidated=False)
    cache = ChunkCache(64 << 20)
    f = Field.from_dataset(opened, "t", selection={"level": 500}, cache=cache, key="h/t/500")
    assert f.ntimes == 3 and (f.times == TIMES).all()
    assert f.units == "K" and f.long_name == "Temperature" and f.name == "t"
    lon, lat = tile_lonlat("WorldCRS84Quad", 2, 0, 1)  # a 45 x 45 degree tile in the north
    idx = nearest_index(f.grid, lon, lat)
    expected_chunks = set(np.unique(idx // 1024).tolist())
    assert 0 < len(expected_chunks) < 12
    vals = f.read(1, idx)
    assert vals.dtype == np.float64 and vals.shape == (256, 256)
    assert (vals == ds["t"].sel(level=500).values[1][idx]).all()
    assert f.chunk_reads == len(expected_chunks) == cache.reads
    # again, and another time step (its own chunks: time is chunked by 1)
    f.read(1, idx)
    assert f.chunk_reads == len(expected_chunks) and cache.hits >= len(expected_chunks)
    f.read(2, idx)
    assert f.chunk_reads == 2 * len(expected_chunks)


def test_read_nan_for_minus_one_and_series(hpx_store: tuple[Path, xr.Dataset]) -> None:
    path, ds = hpx_store
    f = Field.from_dataset(xr.open_zarr(path, chunks=None, consolidated=False), "t")
    ref = ds["t"].isel(level=0).values  # unselected extra dims: their first value
    out = f.read(0, np.array([[5, -1], [12287, 0]]))
    assert out[0, 1] != out[0, 1] and out[0, 0] == ref[0, 5] and out[1, 0] == ref[0, 12287]
    s = f.read_series([3, 5000])
    assert s.shape == (3, 2) and (s == ref[:, [3, 5000]]).all()
    assert (f.read_series([3], times=[2]) == ref[2:, [3]]).all()
    with pytest.raises(IndexError):
        f.read(3, np.array([0]))
    with pytest.raises(IndexError):
        f.read(0, np.array([12288]))


def test_extra_dims(hpx_store: tuple[Path, xr.Dataset]) -> None:
    path, _ = hpx_store
    assert Field.extra_dims(xr.open_zarr(path, consolidated=False), "t") == {"level": [850, 500]}


def test_dask_chunks_and_2d_grid(tmp_path: Path) -> None:
    g = tg.LatLon(5.0)  # 37 x 72
    ds = _dataset(g)
    path = tmp_path / "ll.zarr"
    ds.to_zarr(path, zarr_format=3, encoding={"t": {"chunks": (2, 1, 10, 24)}}, consolidated=False)
    opened = xr.open_zarr(path, consolidated=False)  # Dask-backed
    f = Field.from_dataset(opened, "t", selection={"level": 850})
    ref = ds["t"].sel(level=850).values.reshape(3, -1)
    lon, lat = np.meshgrid(np.linspace(-20, 20, 50), np.linspace(10, 30, 30))
    idx = nearest_index(g, lon, lat)
    assert (f.read(1, idx) == ref[1][idx]).all()
    r, c = np.divmod(idx, 72)
    blocks = {(a // 10, b // 24) for a, b in zip(r.ravel(), c.ravel(), strict=True)}
    assert f.chunk_reads == len(blocks)
    f.read(0, idx)  # same time chunk (time chunked by 2): no new reads
    assert f.chunk_reads == len(blocks)


def test_netcdf_chunksizes(tmp_path: Path) -> None:
    g = tg.Octahedral(16)
    ds = _dataset(g).isel(level=0, drop=True)
    path = tmp_path / "o.nc"
    ds.to_netcdf(path, engine="netcdf4", encoding={"t": {"chunksizes": (1, 500)}})
    with xr.open_dataset(path, engine="netcdf4") as opened:
        f = Field.from_dataset(opened, "t")
        idx = np.array([0, 10, 499, 500, 1500])
        assert (f.read(2, idx) == ds["t"].values[2][idx]).all()
        assert f.chunk_reads == 3  # chunks 0, 1 and 3


def test_unchunked_is_one_block_and_timeless() -> None:
    g = tg.HEALPix(4)
    da = xr.DataArray(np.arange(g.size, dtype=float), dims=("cell",), name="z")
    f = Field(da, g)
    assert f.ntimes == 1 and f.times is None
    assert (f.read(0, np.array([3, 100])) == [3, 100]).all()
    f.read(0, np.array([150]))
    assert f.chunk_reads == 1
    lo, hi = f.value_range()
    assert 0 <= lo < hi <= g.size


def test_value_range_percentiles() -> None:
    g = tg.HEALPix(64)
    vals = np.random.default_rng(0).uniform(0, 100, g.size)
    f = Field(xr.DataArray(vals, dims=("cell",), name="u"), g)
    lo, hi = f.value_range(0)
    assert lo == pytest.approx(2, abs=1.0) and hi == pytest.approx(98, abs=1.0)
    const = Field(xr.DataArray(np.full(g.size, 5.0), dims=("cell",), name="c"), g)
    lo, hi = const.value_range(0)
    assert lo < 5 < hi


def test_wrong_shape_refused() -> None:
    with pytest.raises(ValueError, match="spatial shape"):
        Field(xr.DataArray(np.zeros(10), dims=("cell",)), tg.HEALPix(2))


def test_chunk_cache_lru_and_single_flight() -> None:
    cache = ChunkCache(3 * 800)
    loads: list[int] = []

    def loader(k: int):
        def load() -> np.ndarray:
            loads.append(k)
            time.sleep(0.05)
            return np.zeros(100)  # 800 bytes

        return load

    threads = [threading.Thread(target=cache.get, args=(1, loader(1))) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert loads == [1] and cache.reads == 1 and cache.hits == 3
    for k in (2, 3, 4):  # 4 chunks > 3 fit: the least recently used (1) goes
        cache.get(k, loader(k))
    assert cache.nbytes <= 2400
    cache.get(1, loader(1))
    assert loads == [1, 2, 3, 4, 1] and cache.reads == 5


def test_value_range_reads_few_chunks_and_cache_keeps_float32(tmp_path: Path) -> None:
    g = tg.HEALPix(64)  # 49152 cells in 96 chunks of 512
    vals = np.random.default_rng(2).uniform(-10, 30, (1, g.size)).astype(np.float32)
    ds = xr.Dataset({"u": (("time", "cell"), vals)}, coords={"time": TIMES[:1]})
    ds["u"].attrs.update(tg.grid_attrs(g))
    ds.to_zarr(
        tmp_path / "u.zarr", zarr_format=3, encoding={"u": {"chunks": (1, 512)}}, consolidated=False
    )
    cache = ChunkCache(1 << 30)
    f = Field.from_dataset(
        xr.open_zarr(tmp_path / "u.zarr", chunks=None, consolidated=False), "u", cache=cache
    )
    lo, hi = f.value_range(0)
    assert f.chunk_reads == 16
    assert lo == pytest.approx(-9.2, abs=0.5) and hi == pytest.approx(29.2, abs=0.5)
    assert cache.nbytes == 16 * 512 * 4  # float32 as stored
    assert f.read(0, np.array([7])).dtype == np.float64


def test_value_range_decodes_a_bounded_number_of_bytes(monkeypatch) -> None:
    """Big chunks: the default range reads as many as RANGE_BYTES allows, one at least."""
    import twinlab.viz.field as field_mod

    g = tg.HEALPix(32)  # 12288 cells in 12 chunks of 1024 float64 (8 KiB each)
    vals = np.random.default_rng(3).normal(size=(1, g.size))
    da = xr.DataArray(vals, dims=("time", "cell"), name="v", coords={"time": TIMES[:1]})
    da.encoding["preferred_chunks"] = {"cell": 1024}
    monkeypatch.setattr(field_mod, "RANGE_BYTES", 3 * 8192)
    f = Field(da, g)
    f.value_range(0)
    assert f.chunk_reads == 3
    monkeypatch.setattr(field_mod, "RANGE_BYTES", 1)
    f2 = Field(da, g)
    f2.value_range(0)
    assert f2.chunk_reads == 1


@pytest.mark.parametrize("grid", [tg.HEALPix(16), tg.LatLon(5.0)], ids=str)
def test_read_many_blocks_any_order(grid: tg.Grid) -> None:
    """A global raster touches every chunk: values land where they belong, each chunk once."""
    vals = np.random.default_rng(5).normal(size=(2, grid.size))
    da = xr.DataArray(vals.reshape(2, *grid.shape), dims=("time", *grid.dims), name="v")
    da.encoding["preferred_chunks"] = dict(zip(grid.dims, (7, 9)[: len(grid.dims)], strict=False))
    f = Field(da, grid)
    idx = np.random.default_rng(6).permutation(np.tile(np.arange(grid.size), 2))
    idx[::97] = -1
    got = f.read(1, idx.reshape(-1, 4))
    want = np.where(idx >= 0, vals[1][idx], np.nan).reshape(-1, 4)
    assert np.array_equal(got, want, equal_nan=True)
    nblocks = np.prod([-(-n // c) for n, c in zip(grid.shape, (7, 9), strict=False)])
    assert f.chunk_reads == nblocks


def test_missing_chunks_read_concurrently_counted_in_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cold chunks of one read are fetched in parallel, yet each load passes through the
    cache in the calling thread (the tiles service counts loads per render thread)."""
    g = tg.HEALPix(8)  # 768 cells, 8 chunks of 96
    da = xr.DataArray(np.arange(g.size, dtype=np.float32), dims=("cell",), name="a")
    da.encoding["preferred_chunks"] = {"cell": 96}

    class Recording(ChunkCache):
        threads: list[int] = []

        def get(self, key, load):  # type: ignore[no-untyped-def]
            arr, loaded = super().get(key, load)
            if loaded:
                self.threads.append(threading.get_ident())
            return arr, loaded

    f = Field(da, g, cache=Recording(1 << 20))
    real = Field._load

    def slow(self: Field, tb: int, blk: tuple[int, ...]) -> np.ndarray:
        time.sleep(0.2)
        return real(self, tb, blk)

    monkeypatch.setattr(Field, "_load", slow)
    t0 = time.perf_counter()
    out = f.read(0, np.arange(0, g.size, 5))
    elapsed = time.perf_counter() - t0
    assert (out == np.arange(0, g.size, 5)).all()
    assert f.chunk_reads == 8 and elapsed < 8 * 0.2 / 2  # not one after another
    assert Recording.threads == [threading.get_ident()] * 8


def test_series_reads_steps_chunks_concurrently_and_empty(
    hpx_store: tuple[Path, xr.Dataset],
) -> None:
    path, ds = hpx_store
    f = Field.from_dataset(xr.open_zarr(path, chunks=None, consolidated=False), "t")
    s = f.read_series(np.array([-1, 7, 9000]), times=[2, 0])
    ref = ds["t"].isel(level=0).values
    assert np.isnan(s[:, 0]).all() and (s[:, 1:] == ref[[2, 0]][:, [7, 9000]]).all()
    assert f.chunk_reads == 4  # 2 steps x 2 chunks
    assert f.read(0, np.array([], dtype=float)).shape == (0,)
    assert f.read_series([], times=[0, 1]).shape == (2, 0)
    with pytest.raises(TypeError, match="integers"):
        f.read(0, np.array([1.5]))


def test_selection_from_text_and_bad_values(hpx_store: tuple[Path, xr.Dataset]) -> None:
    path, ds = hpx_store
    opened = xr.open_zarr(path, chunks=None, consolidated=False)
    f = Field.from_dataset(opened, "t", selection={"level": "500"})  # as a URL gives it
    assert (f.read(0, np.array([1])) == ds["t"].sel(level=500).values[0, [1]]).all()
    with pytest.raises(ValueError, match="level='700' is not one of its values: 850, 500"):
        Field.from_dataset(opened, "t", selection={"level": "700"})
    with pytest.raises(ValueError, match="no dims"):
        Field.from_dataset(opened, "t", selection={"depth": 3})
    with pytest.raises(KeyError, match="no variable"):
        Field.from_dataset(opened, "nope")


def test_chunks_follow_dim_names_when_transposed() -> None:
    g = tg.LatLon(10.0)  # 19 x 36
    vals = np.random.default_rng(4).normal(size=(36, 19, 2))  # (lon, lat, time) on disk
    da = xr.DataArray(vals, dims=("longitude", "latitude", "time"), name="w")
    da.encoding["chunks"] = (12, 19, 1)  # a NetCDF-like tuple, in the stored order
    f = Field(da, g)
    idx = np.array([0, 11, 12, 35, 36 * 18 + 35])  # columns 0, 11, 12, 35: three lon chunks
    assert (f.read(1, idx) == vals[:, :, 1].T.ravel()[idx]).all()
    assert f.chunk_reads == 3


def test_series_reads_do_not_evict_the_shared_cache(hpx_store: tuple[Path, xr.Dataset]) -> None:
    """read_series takes its cells from each chunk and drops it: the tiles' chunks stay kept,
    a chunk already kept is used, and series_bytes says beforehand what is decoded."""
    path, ds = hpx_store
    ref = ds["t"].isel(level=0).values
    cache = ChunkCache(3 * 4096)  # room for three chunks (1 x 1024 float32 each)
    f = Field.from_dataset(xr.open_zarr(path, chunks=None, consolidated=False), "t", cache=cache)
    f.read(0, np.arange(0, 3072))  # a "tile": chunks 0..2 of step 0, the cache is full
    kept = set(cache._items)
    assert len(kept) == 3 and f.chunk_reads == 3
    assert f.series_bytes([3, 5000]) == 2 * 3 * 4096  # 2 chunks x 3 steps
    assert f.series_bytes([3, 5000], times=[1]) == 2 * 4096
    s = f.read_series([3, 5000])
    assert (s == ref[:, [3, 5000]]).all()
    assert set(cache._items) == kept and cache.nbytes == 3 * 4096  # nothing evicted or added
    assert f.chunk_reads == 3 + 5  # (step 0's chunk of cell 3 was kept: used, not read)
    assert (f.read_series([-1, 7], times=[2])[0, 1] == ref[2, 7]) and np.isnan(f.read_series([-1], [0])).all()  # fmt: skip
    assert f.series_bytes([-1]) == 0 and f.read_series([], [0, 1]).shape == (2, 0)


def test_chunks_over_the_byte_cap_refused_before_any_read(hpx_store: tuple[Path, xr.Dataset]) -> None:  # fmt: skip
    path, _ = hpx_store
    opened = xr.open_zarr(path, consolidated=False, chunks=None)  # chunks (1, 1, 1024) float32
    f = Field.from_dataset(opened, "t", max_chunk_bytes=4096)  # exactly one chunk: fine
    assert f.chunk_reads == 0 and f.levels == {"level": [850, 500]}
    with pytest.raises(ChunkTooLarge, match="decodes to 4096 bytes"):
        Field.from_dataset(opened, "t", max_chunk_bytes=4095)
    # declared sizes count, whatever was written; integers (not float64) are read as float64
    g = tg.HEALPix(4)
    da = xr.DataArray(np.zeros((3, g.size), dtype=np.int16), dims=("time", "cell"), name="z")
    da.encoding["chunks"] = (3, g.size)
    with pytest.raises(ChunkTooLarge, match=f"decodes to {3 * g.size * 8} bytes"):
        Field(da, g, max_chunk_bytes=3 * g.size * 8 - 1)
    assert Field(da, g, max_chunk_bytes=3 * g.size * 8).levels == {}
