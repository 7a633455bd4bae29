"""Regrid weights caches (memory, disk) and lazy Dask/xarray application."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse

from twinlab.grids import HEALPix, LatLon, Octahedral
from twinlab.grids.regrid import apply, backend, clear_memory_cache, get_weights, regrid, weights
from twinlab.grids.regrid.matrix import Weights, cache_id


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TWINLAB_WEIGHTS_DIR", str(tmp_path / "w"))
    clear_memory_cache()
    yield tmp_path / "w"
    clear_memory_cache()


def builds(source, target, method):
    return weights.build_counts.get(cache_id(source.key, target.key, method), 0)


def test_disk_cache_roundtrip_and_rebuild_of_corrupt_files(cache):
    src, tgt = HEALPix(8), LatLon(10.0)
    f = np.random.default_rng(0).standard_normal(src.size)
    n0 = builds(src, tgt, "bilinear")
    ref = regrid(f, src, tgt, "bilinear")
    assert builds(src, tgt, "bilinear") == n0 + 1
    files = list(cache.iterdir())
    assert [p.suffix for p in files] == [".npz"]  # no temp file left behind
    path = files[0]
    assert path.stat().st_mode & 0o777 == 0o644  # readable from a shared cache directory

    regrid(f, src, tgt, "bilinear")  # memory hit
    clear_memory_cache()
    np.testing.assert_array_equal(regrid(f, src, tgt, "bilinear"), ref)  # disk hit
    assert builds(src, tgt, "bilinear") == n0 + 1

    good = path.read_bytes()
    for damage in (good[: len(good) // 2], b"not a zip file", good[:-200] + bytes(200)):
        path.write_bytes(damage)
        clear_memory_cache()
        before = builds(src, tgt, "bilinear")
        np.testing.assert_array_equal(regrid(f, src, tgt, "bilinear"), ref)
        assert builds(src, tgt, "bilinear") == before + 1  # rebuilt...
        Weights.load(path, src.key, tgt.key, "bilinear")  # ...and the file rewritten whole


def test_cache_file_for_another_grid_pair_is_not_trusted(cache):
    a, b = HEALPix(8), LatLon(10.0)
    wa = get_weights(a, b, "nearest")
    other = HEALPix(8, nest=False)
    # plant a's file under the name of (other -> b)
    target_path = cache / f"{cache_id(other.key, b.key, 'nearest')}.npz"
    wa.save(target_path)
    clear_memory_cache()
    before = builds(other, b, "nearest")
    w = get_weights(other, b, "nearest")
    assert builds(other, b, "nearest") == before + 1
    assert w.source_key == other.key


def test_cache_dir_argument_and_default(cache, tmp_path, monkeypatch):
    explicit = tmp_path / "explicit"
    get_weights(HEALPix(4), LatLon(15.0), "nearest", cache_dir=explicit)
    assert len(list(explicit.glob("nearest-*.npz"))) == 1
    monkeypatch.delenv("TWINLAB_WEIGHTS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.default_cache_dir() == tmp_path / "home" / ".cache" / "twinlab" / "weights"


def test_atomic_save_leaves_old_file_when_interrupted(cache, monkeypatch):
    w = get_weights(HEALPix(4), LatLon(15.0), "nearest")
    path = cache / f"{w.cache_id}.npz"
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        w.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in cache.iterdir()] == [path.name]


def test_numpy_fallback_and_cupy_code_path_agree_with_numba(cache):
    """``apply_sparse`` is the CuPy path; run here with NumPy/SciPy as the array modules."""
    src, tgt = HEALPix(16), Octahedral(24)
    f = np.random.default_rng(2).standard_normal((3, src.size))
    f[1, ::7] = np.nan
    for method in ("nearest", "bilinear", "conservative"):
        w = get_weights(src, tgt, method)
        fast = apply.apply_numpy(w, f)
        generic = apply.apply_sparse(w, f, np, scipy.sparse)
        np.testing.assert_allclose(generic, fast, rtol=1e-12, equal_nan=True)
        assert np.isnan(fast[1]).any() == (method == "nearest")


def test_pure_numpy_fallback_without_numba(tmp_path):
    """With numba disabled: SciPy apply and the NumPy polygon clipper give the same results."""
    code = textwrap.dedent(
        """
        import numpy as np
        from twinlab.grids import HEALPix, LatLon
        from twinlab.grids.regrid import _kernels, regrid
        assert not _kernels.HAVE_NUMBA
        f = np.linspace(0, 1, 768)
        f[::11] = np.nan
        for method in ("nearest", "bilinear", "conservative"):
            out = regrid(f, HEALPix(8), LatLon(10.0), method, cache_dir=False)
            np.save(f"{method}.npy", out)
        """
    )
    env = dict(os.environ, TWINLAB_NO_NUMBA="1")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True)
    f = np.linspace(0, 1, 768)
    f[::11] = np.nan
    for method in ("nearest", "bilinear", "conservative"):
        expect = regrid(f, HEALPix(8), LatLon(10.0), method, cache_dir=False)
        got = np.load(tmp_path / f"{method}.npy")
        np.testing.assert_allclose(got, expect, rtol=1e-12, equal_nan=True)


def test_backend_selection():
    da = pytest.importorskip("dask.array")
    assert backend(np.zeros(3)) == "numpy"
    assert backend(da.zeros(3)) == "dask"

    class FakeCupyArray:  # a fake: only its module name matters to the dispatch
        __module__ = "cupy._core.core"

    assert backend(FakeCupyArray()) == "cupy"


# ---- Dask --------------------------------------------------------------------------------
def test_dask_is_lazy_and_puts_weights_in_the_graph_once(cache):
    da = pytest.importorskip("dask.array")
    import dask

    cloudpickle = pytest.importorskip("cloudpickle")
    src, tgt = HEALPix(16), LatLon(2.0)  # weights (~800 kB) dwarf the data (~70 kB)
    rng = np.random.default_rng(3)
    data = rng.standard_normal((6, src.size)).astype(np.float32)
    calls = []

    def load(block):
        calls.append(block.shape)
        return block

    expect = regrid(data, src, tgt, "bilinear", cache_dir=False)
    clear_memory_cache()
    before = builds(src, tgt, "bilinear")
    # time steps in chunks of 2 and the spatial dim split in 3 chunks
    for chunks in ((2, src.size // 3), (1, -1), (6, 256)):
        x = da.from_array(data, chunks=chunks).map_blocks(load, dtype=data.dtype)
        calls.clear()
        out = regrid(x, src, tgt, "bilinear")
        assert calls == []  # nothing computed
        assert out.shape == (6,) + tgt.shape and out.dtype == np.float32
        graph = dict(out.__dask_graph__())
        wkeys = [
            k
            for k in graph
            if str(k[0] if isinstance(k, tuple) else k).startswith("regrid-weights-")
        ]
        assert len(wkeys) == 1
        w = graph[wkeys[0]]
        w = getattr(w, "value", w)  # a dask DataNode wraps the literal
        assert isinstance(w, Weights)
        # one copy in the graph: pickling it costs the weights once, not once per chunk
        assert len(cloudpickle.dumps(graph)) < 1.3 * (w.nbytes + data.nbytes) + 20_000
        assert out.numblocks[0] == 6 // chunks[0] or chunks[0] == 1
        got = out.compute(scheduler="threads")
        assert calls  # computed now
        np.testing.assert_allclose(got, expect, rtol=1e-6)
    assert builds(src, tgt, "bilinear") == before + 1  # one build for every chunking
    assert dask.is_dask_collection(out)


def test_xarray_dataarray_and_dataset(cache):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("dask.array")
    src, tgt = Octahedral(16), LatLon(4.0)
    rng = np.random.default_rng(4)
    values = rng.standard_normal((2, src.size))
    arr = xr.DataArray(
        values, dims=("time", "cell"), coords={"time": [1, 2]}, attrs={"units": "K"}, name="t2m"
    )
    out = regrid(arr, src, tgt, "conservative")
    assert out.dims == ("time", "latitude", "longitude")
    np.testing.assert_array_equal(out["time"], [1, 2])
    np.testing.assert_allclose(out["latitude"], tgt.latitudes())
    assert out.attrs["units"] == "K" and out.name == "t2m"
    np.testing.assert_allclose(out.values, regrid(values, src, tgt, "conservative"))
    # spatial dim first in the file: moved last; dask-backed stays lazy
    lazy = arr.transpose("cell", "time").chunk({"cell": 100})
    out2 = regrid(lazy, src, tgt, "conservative")
    assert out2.chunks is not None
    np.testing.assert_allclose(out2.compute().values, out.values)
    ds = xr.Dataset({"t2m": arr, "const": ("time", [0.0, 1.0])})
    ods = regrid(ds, src, tgt, "nearest")
    assert ods["t2m"].dims == ("time", "latitude", "longitude")
    np.testing.assert_array_equal(ods["const"], [0.0, 1.0])
    with pytest.raises(ValueError, match="clash with target grid dims"):
        regrid(arr.rename(time="latitude"), src, tgt)


@pytest.mark.parametrize("first", [[], [5, 6, 7]])
@pytest.mark.parametrize("ncols", [3, 12])
def test_kernels_on_hand_made_weights(ncols, first):
    """Rows of 3 equal terms use the padded ELL kernel; an empty or long row forces CSR."""
    cols = [first, [4, 9, 10], list(range(ncols))]
    indptr = np.cumsum([0] + [len(c) for c in cols])
    indices = np.concatenate([np.array(c, dtype=np.int64) for c in cols])
    data = np.concatenate(
        [np.full(len(first), 1 / 3), [1.0, 0.0, 0.0], np.full(ncols, 1.0 / ncols)]
    )
    w = Weights("a", "b", "hand", 16, 3, indptr, indices, data)
    values = np.arange(32, dtype=np.float64).reshape(2, 16)
    values[1, 0] = np.nan  # skipped, the other weights renormalised
    values[1, 9] = np.nan  # a NaN under a zero weight changes nothing
    row0 = [np.nan, np.nan] if not first else [6.0, 22.0]  # empty row -> NaN
    expect = np.array(
        [
            [row0[0], 4.0, np.mean(np.arange(ncols))],
            [row0[1], 20.0, np.nanmean(values[1, :ncols])],
        ]
    )
    lay = apply._kernels.Layout(w.indptr, w.indices, w.data)
    assert lay.ell == (bool(first) and ncols == 3)
    for dtype in (np.float64, np.float32):
        v = values.astype(dtype)
        np.testing.assert_allclose(apply.apply_numpy(w, v), expect, rtol=1e-6)
        np.testing.assert_allclose(apply.apply_sparse(w, v, np, scipy.sparse), expect, rtol=1e-6)
        # first field alone: no NaN anywhere, the sparse path's no-mask branch
        np.testing.assert_allclose(
            apply.apply_sparse(w, v[:1], np, scipy.sparse), expect[:1], rtol=1e-6
        )
