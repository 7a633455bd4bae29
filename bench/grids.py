"""Benchmark twinlab.grids regridding and zonal means against healpy and raw NumPy.

    /opt/twinhub/venv/bin/python bench/grids.py [--nside 1024] [--res 0.1] [--repeats 3]

H<nside> (nested, float32) -> <res> deg cell-centred lat-lon, nearest and bilinear:
twinlab's cached-weights apply vs healpy (``ang2pix`` + index, ``get_interp_val``) on the
same target points, vs a raw ``np.take`` with a precomputed index (the memory-bandwidth
bound of a gather) and vs naive precomputed 4-point weights in NumPy.  Zonal mean of the
HEALPix field vs ring id + ``np.bincount``.  Times are medians over ``--repeats`` distinct
inputs.  With CuPy and a CUDA device it also times the device apply and reports GB/s
against the device's peak memory bandwidth.  Prints only; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from twinlab.grids import HEALPix, LatLon
from twinlab.grids.ops import compact_ring_ids, zonal_mean_values
from twinlab.grids.regrid import Weights, _kernels, clear_memory_cache, get_weights, regrid


def median_time(
    fn: Callable[[np.ndarray], object], inputs: list, sync: Callable[[], None] = lambda: None
) -> float:
    times = []
    for x in inputs:
        sync()
        t0 = time.perf_counter()
        fn(x)
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def row(name: str, seconds: float, ref: float | None = None, ref_name: str = "") -> None:
    extra = f"   {ref / seconds:6.1f}x faster than {ref_name}" if ref else ""
    print(f"  {name:44s} {seconds * 1e3:9.1f} ms{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nside", type=int, default=1024)
    ap.add_argument("--res", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    src = HEALPix(args.nside, nest=True)
    tgt = LatLon(args.res, nodes=False)
    print(
        f"source {src.key} ({src.size / 1e6:.2f} M cells, float32) -> target {tgt.key} {tgt.shape} ({tgt.size / 1e6:.2f} M points)"
    )
    nthreads = _kernels.numba.get_num_threads() if _kernels.HAVE_NUMBA else 1
    print(
        f"cpu cores {os.cpu_count()}, numba {'yes' if _kernels.HAVE_NUMBA else 'NO (NumPy fallback)'}, threads {nthreads}"
    )
    print(
        f"load average before start: {os.getloadavg()[0]:.2f} (other work skews 2-thread timings)"
    )
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(src.size).astype(np.float32) for _ in range(args.repeats)]
    lon, lat = tgt.centers()

    print("\none-time weight builds (no cache):")
    clear_memory_cache()
    build = {}
    for method in ("nearest", "bilinear"):
        t0 = time.perf_counter()
        w = get_weights(src, tgt, method, cache_dir=False)
        build[method] = w
        row(f"{method} weights ({w.nnz / 1e6:.1f} M entries)", time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.npz"
        build["bilinear"].save(path)
        t0 = time.perf_counter()
        Weights.load(path, src.key, tgt.key, "bilinear")
        row(
            f"bilinear weights from disk cache ({path.stat().st_size / 1e6:.0f} MB)",
            time.perf_counter() - t0,
        )
    t0 = time.perf_counter()
    regrid(inputs[0], src, tgt, "bilinear", cache_dir=False)  # source-sorted kernel layout + JIT
    row("bilinear first apply (kernel layout, JIT)", time.perf_counter() - t0)
    regrid(inputs[0], src, tgt, "nearest", cache_dir=False)

    hp = None
    try:
        import healpy as hp
    except ImportError:
        print("healpy not installed: healpy columns skipped")

    print(f"\nnearest (median of {args.repeats}):")
    idx = build["nearest"].indices.astype(np.int64)
    t_take = median_time(lambda x: np.take(x, idx), inputs)
    row("raw np.take, precomputed int64 index", t_take)
    t_near = median_time(lambda x: regrid(x, src, tgt, "nearest", cache_dir=False), inputs)
    row("twinlab regrid nearest", t_near, t_take, "np.take")
    if hp is not None:
        t_hp = median_time(
            lambda x: x[hp.ang2pix(args.nside, lon, lat, nest=True, lonlat=True)], inputs
        )
        row("healpy ang2pix + index", t_hp)
        same = np.array_equal(
            regrid(inputs[0], src, tgt, "nearest", cache_dir=False).ravel(),
            inputs[0][hp.ang2pix(args.nside, lon, lat, nest=True, lonlat=True)],
        )
        print(f"  identical to healpy: {same}")
    print(f"  target: within 1.2x of np.take -> ratio twinlab/np.take = {t_near / t_take:.2f}")

    print(f"\nbilinear (median of {args.repeats}):")
    w = build["bilinear"]
    # naive: the same weights as a dense (n, 4) gather in NumPy
    counts = np.diff(w.indptr)
    idx4 = np.zeros((tgt.size, 4), np.int64)
    w4 = np.zeros((tgt.size, 4), np.float32)
    rows = np.repeat(np.arange(tgt.size), counts)
    pos = np.arange(w.nnz) - np.repeat(w.indptr[:-1], counts)
    idx4[rows, pos], w4[rows, pos] = w.indices, w.data
    t_naive = median_time(lambda x: (x[idx4] * w4).sum(1), inputs)
    row("naive precomputed weights, NumPy", t_naive)
    t_bil = median_time(lambda x: regrid(x, src, tgt, "bilinear", cache_dir=False), inputs)
    row("twinlab regrid bilinear", t_bil, t_naive, "naive")
    if hp is not None:
        t_hpi = median_time(
            lambda x: hp.get_interp_val(x, lon, lat, nest=True, lonlat=True), inputs
        )
        row("healpy get_interp_val", t_hpi)
        diff = np.abs(
            regrid(inputs[0], src, tgt, "bilinear", cache_dir=False).ravel()
            - hp.get_interp_val(inputs[0], lon, lat, nest=True, lonlat=True)
        ).max()
        print(f"  max |twinlab - healpy| = {diff:.2e} (float32 field of unit variance)")
        print(f"  target: >= 40x healpy get_interp_val -> {t_hpi / t_bil:.1f}x")

    print(f"\nzonal mean of {src.key} (median of {args.repeats}):")
    ids = src.ring_ids()
    nr = int(ids.max()) + 1
    t_bc = median_time(
        lambda x: np.bincount(ids, x, minlength=nr) / np.bincount(ids, minlength=nr), inputs
    )
    row("ring id + np.bincount (sum / count)", t_bc)
    ids_small = compact_ring_ids(src)
    # What ds.grid.zonal_mean() runs per block.
    t_zm = median_time(lambda x: zonal_mean_values(x, ids_small, nr), inputs)
    row("twinlab.grids zonal mean", t_zm, t_bc, "bincount")
    print(f"  target: <= bincount -> zonal mean/bincount = {t_zm / t_bc:.2f}")

    _gpu(src, tgt, build, inputs)


def _gpu(src: HEALPix, tgt: LatLon, build: dict, inputs: list) -> None:
    """Device apply time and achieved bandwidth (only with CuPy and a CUDA device)."""
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
    except Exception as exc:  # no CuPy, no driver or no device
        print(f"\nGPU: skipped ({type(exc).__name__}: {exc})")
        return
    # peak = 2 (DDR) x memory clock x bus width; the clock field is gone in CUDA 13
    clock, bus = props.get("memoryClockRate", 0), props.get("memoryBusWidth", 0)
    peak = 2 * clock * 1e3 * bus / 8 / 1e9 or float("nan")
    print(
        f"\nGPU {props['name'].decode() if isinstance(props['name'], bytes) else props['name']}: peak {peak:.0f} GB/s"
    )
    dev = [cupy.asarray(x) for x in inputs]
    sync = cupy.cuda.Device().synchronize
    for method, w in build.items():
        regrid(dev[0], src, tgt, method, cache_dir=False)  # device copies of the weights
        t = median_time(lambda x, m=method: regrid(x, src, tgt, m, cache_dir=False), dev, sync)
        # bytes moved: indices + weights + gathered source values + output (+ indptr)
        nbytes = (
            w.nnz * (4 + 4 + 4) + tgt.size * 4 + (0 if method == "nearest" else (tgt.size + 1) * 8)
        )
        print(
            f"  {method:10s} {t * 1e3:8.2f} ms  {nbytes / t / 1e9:7.1f} GB/s ({nbytes / t / 1e9 / peak:.0%} of peak)"
        )


if __name__ == "__main__":
    main()
