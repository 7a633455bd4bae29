"""``regrid()``: apply cached weights to NumPy, CuPy, Dask and xarray fields.

Spatial dimensions are last; any leading dimensions (fields, time steps, levels) are
regridded with the same weights.  NaN source values (masked land, missing data) are
left out and the remaining weights of each target renormalised, so masks do not
bleed; a target with no valid source value is NaN.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

from ..base import Grid
from . import _kernels
from .matrix import Weights
from .weights import METHODS, get_weights


def _check_grid(grid: Any, role: str) -> None:
    if not isinstance(grid, Grid):
        raise ValueError(
            f"regrid {role} must be a twinlab.grids Grid (HEALPix, Octahedral, ...), got {type(grid).__name__}"
        )


def _check_shape(shape: tuple[int, ...], grid: Grid) -> int:
    """Number of leading dimensions; ValueError when the trailing shape is not the grid's."""
    n = len(grid.shape)
    if len(shape) < n or tuple(shape[len(shape) - n :]) != tuple(grid.shape):
        raise ValueError(
            f"values of shape {tuple(shape)} do not end with source grid {grid.key} shape {grid.shape} "
            f"(spatial dimensions {grid.dims} must be last)"
        )
    return len(shape) - n


def _float_dtype(dtype: Any) -> np.dtype:
    """float32/float64 kept; float16 -> float32; ints, bools, long doubles -> float64."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (
            dtype
            if dtype.itemsize in (4, 8)
            else np.dtype(np.float32 if dtype.itemsize < 4 else np.float64)
        )
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    raise ValueError(f"cannot regrid values of dtype {dtype}: need real numbers")


# ---- in-memory arrays ---------------------------------------------------------------------
def apply_sparse(w: Weights, flat: Any, xp: ModuleType, sparse: ModuleType) -> Any:
    """(nfields, n_source) -> (nfields, n_target) with a sparse matrix product.

    The CuPy path (``xp=cupy``, ``sparse=cupyx.scipy.sparse``) and the NumPy fallback
    (``numpy``, ``scipy.sparse``) are this same function, so it is tested without a GPU.
    """
    dtype = flat.dtype
    index = w.gather_index
    if index is not None:  # nearest: a pure gather, NaN passes through
        dev_index = w._memo(f"index-{xp.__name__}", lambda: xp.asarray(index))
        return xp.take(flat, dev_index, axis=1)
    m = w.matrix(sparse, dtype)
    nan = xp.isnan(flat)
    if bool(nan.any()):
        num = m @ xp.ascontiguousarray(xp.where(nan, 0, flat).T)
        den = m @ xp.ascontiguousarray((~nan).astype(dtype).T)
    else:
        num = m @ xp.ascontiguousarray(flat.T)
        den = w._memo(
            f"rowsum-{xp.__name__}-{dtype.str}", lambda: xp.asarray(w.rowsum(), dtype=dtype)
        )[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = xp.where(den > 0, num / xp.where(den > 0, den, 1), xp.nan)
    return xp.ascontiguousarray(out.T.astype(dtype, copy=False))


def apply_numpy(w: Weights, flat: np.ndarray) -> np.ndarray:
    """(nfields, n_source) NumPy -> (nfields, n_target): numba kernels, else SciPy."""
    flat = np.ascontiguousarray(flat)
    if not _kernels.HAVE_NUMBA:
        import scipy.sparse  # start-up cost: the fallback without numba only

        out: np.ndarray = apply_sparse(w, flat, np, scipy.sparse)
        return out
    index = w.gather_index
    if index is not None:
        return _kernels.gather(index, flat)

    lay: _kernels.Layout = w._memo(
        "kernel-layout", lambda: _kernels.Layout(w.indptr, w.indices, w.data)
    )
    data = w._memo(f"kernel-data-{flat.dtype.str}", lambda: lay.data64.astype(flat.dtype))
    return lay.apply(data, flat, w.n_target)


def backend(values: Any) -> str:
    """'numpy', 'cupy' or 'dask' (the array type that decides how weights are applied)."""
    if hasattr(values, "__dask_graph__") and hasattr(values, "chunks"):
        return "dask"
    # by module name: deciding must not import CuPy (absent, or no device, on CPU hosts)
    return "cupy" if type(values).__module__.split(".")[0] == "cupy" else "numpy"


def apply_weights(
    w: Weights, values: Any, source_shape: tuple[int, ...], target_shape: tuple[int, ...]
) -> Any:
    """Apply ``w`` to an array whose trailing dimensions have ``source_shape``."""
    kind = backend(values)
    if kind == "dask":
        return _apply_dask(w, values, source_shape, target_shape)
    lead = values.shape[: values.ndim - len(source_shape)]
    dtype = _float_dtype(values.dtype)
    if kind == "cupy":
        # optional dependency (the gpu extra): only CuPy input gets here
        import cupy
        import cupyx.scipy.sparse

        flat = values.reshape(-1, w.n_source).astype(dtype, copy=False)
        out = apply_sparse(w, cupy.ascontiguousarray(flat), cupy, cupyx.scipy.sparse)
    else:
        flat = np.asarray(values).reshape(-1, w.n_source).astype(dtype, copy=False)
        out = apply_numpy(w, flat)
    return out.reshape(lead + tuple(target_shape))


def _apply_block(block: Any, w: Weights) -> Any:
    return apply_weights(w, block, (w.n_source,), (w.n_target,))


def _apply_dask(
    w: Weights, arr: Any, source_shape: tuple[int, ...], target_shape: tuple[int, ...]
) -> Any:
    """Lazy apply: one graph key holds the weights, every block task depends on it."""
    # start-up cost: dask loads for Dask arrays only
    import dask.array as da
    from dask.delayed import delayed

    nlead = arr.ndim - len(source_shape)
    # a spatial dimension split across chunks is merged: each block needs whole fields
    arr = arr.rechunk({i: -1 for i in range(nlead, arr.ndim)})
    flat = arr.reshape(arr.shape[:nlead] + (w.n_source,))
    # traverse=False: the Weights dataclass is one opaque object, not a graph of fields
    wkey = delayed(w, name=f"regrid-weights-{w.cache_id}", traverse=False)
    dtype = _float_dtype(arr.dtype)
    meta = arr._meta.astype(dtype) if hasattr(arr, "_meta") else np.empty((0,) * arr.ndim, dtype)
    out = da.map_blocks(  # type: ignore[no-untyped-call]  # dask.array is not annotated
        _apply_block,
        flat,
        wkey,
        dtype=dtype,
        chunks=flat.chunks[:nlead] + ((w.n_target,),),
        meta=meta.reshape((0,) * (nlead + 1)),
        name=f"regrid-{w.method}",
    )
    return out.reshape(arr.shape[:nlead] + tuple(target_shape))


# ---- xarray -----------------------------------------------------------------------------
def _regrid_xarray(obj: Any, source: Grid, target: Grid, method: str, cache_dir: Any) -> Any:
    import xarray as xr  # optional for the grid maths: only xarray input gets here

    if isinstance(obj, xr.Dataset):
        out = {}
        for name, var in obj.data_vars.items():
            keep = not set(source.dims) & set(var.dims) and not (
                len(source.dims) == 1 and var.shape[-1:] == source.shape
            )
            out[name] = var if keep else _regrid_xarray(var, source, target, method, cache_dir)
        return xr.Dataset(out, attrs=obj.attrs)
    n = len(source.dims)
    if set(source.dims) <= set(obj.dims):
        obj = obj.transpose(..., *source.dims)
    _check_shape(obj.shape, source)
    lead = obj.dims[: obj.ndim - n]
    clash = set(lead) & set(target.dims)
    if clash:
        raise ValueError(
            f"leading dimension(s) {sorted(clash)} clash with target grid dims {target.dims}"
        )
    data = regrid(obj.data, source, target, method=method, cache_dir=cache_dir)
    coords = {k: v for k, v in obj.coords.items() if set(v.dims) <= set(lead)}
    coords.update(_target_coords(target))
    attrs = dict(obj.attrs, regrid_method=method, grid=target.key)
    return xr.DataArray(
        data, dims=lead + tuple(target.dims), coords=coords, attrs=attrs, name=obj.name
    )


def _target_coords(target: Grid) -> dict[str, Any]:
    """1-D latitude/longitude coordinates for regular 2-D targets (cheap, self-describing)."""
    if len(target.dims) == 2 and len(target.shape) == 2:
        lon, lat = target.centers()
        lon, lat = np.asarray(lon).reshape(target.shape), np.asarray(lat).reshape(target.shape)
        return {target.dims[0]: lat[:, 0], target.dims[1]: lon[0, :]}
    return {}


# ---- public entry point -----------------------------------------------------------------
def regrid(
    values: Any,
    source: Grid,
    target: Grid,
    method: str = "nearest",
    cache_dir: str | os.PathLike[str] | None | bool = None,
) -> Any:
    """Regrid ``values`` (spatial dims last, matching ``source.shape``) onto ``target``.

    ``method``: ``"nearest"``, ``"bilinear"`` or ``"conservative"``.  Works on NumPy
    (numba-parallel), CuPy (stays on the device), Dask (lazy; one weights key in the
    graph) and xarray (DataArray/Dataset; dims named like ``source.dims`` are moved last).
    Weights are built once per (source, target, method) and cached in memory and on disk
    (``cache_dir``, default ``$TWINLAB_WEIGHTS_DIR`` or ``~/.cache/twinlab/weights``;
    ``False`` for no disk cache).
    """
    _check_grid(source, "source")
    _check_grid(target, "target")
    if method not in METHODS:
        raise ValueError(f"unknown regrid method {method!r}; expected one of {', '.join(METHODS)}")
    if type(values).__module__.startswith("xarray"):
        return _regrid_xarray(values, source, target, method, cache_dir)
    if not hasattr(values, "shape") or not hasattr(values, "dtype"):
        values = np.asarray(values)
    _check_shape(tuple(values.shape), source)
    _float_dtype(values.dtype)
    w = get_weights(source, target, method, cache_dir)
    return apply_weights(w, values, tuple(source.shape), tuple(target.shape))
