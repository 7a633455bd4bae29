"""CuPy regridding: results stay on the device and match the NumPy path (needs a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from twinlab.grids import HEALPix, LatLon, Octahedral
from twinlab.grids.regrid import regrid

cupy = pytest.importorskip("cupy")
try:
    _ndev = cupy.cuda.runtime.getDeviceCount()
except Exception:  # no driver / no device: CuPy imports but cannot run
    _ndev = 0
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_ndev == 0, reason="no CUDA device")]


@pytest.mark.parametrize("method", ["nearest", "bilinear", "conservative"])
def test_cupy_matches_numpy_and_stays_on_device(method, tmp_path):
    src, tgt = HEALPix(32), Octahedral(48)
    f = np.random.default_rng(0).standard_normal((2, src.size)).astype(np.float32)
    f[1, ::5] = np.nan
    got = regrid(cupy.asarray(f), src, tgt, method, cache_dir=tmp_path)
    assert isinstance(got, cupy.ndarray) and got.dtype == np.float32
    expect = regrid(f, src, tgt, method, cache_dir=tmp_path)
    np.testing.assert_allclose(cupy.asnumpy(got), expect, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_cupy_backed_dask_stays_on_device(tmp_path):
    da = pytest.importorskip("dask.array")
    src, tgt = HEALPix(16), LatLon(5.0)
    f = cupy.random.standard_normal((4, src.size), dtype=cupy.float32)
    out = regrid(da.from_array(f, chunks=(1, -1)), src, tgt, "bilinear", cache_dir=tmp_path)
    assert isinstance(out._meta, cupy.ndarray)
    got = out.compute()
    assert isinstance(got, cupy.ndarray)
    expect = regrid(cupy.asnumpy(f), src, tgt, "bilinear", cache_dir=tmp_path)
    np.testing.assert_allclose(cupy.asnumpy(got), expect, rtol=1e-5, atol=1e-5)
