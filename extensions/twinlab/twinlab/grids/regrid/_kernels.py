"""Apply kernels: numba-parallel when numba is installed, NumPy/SciPy otherwise.

The CPU apply is memory-bound: per target it streams an index and a weight per
source term and gathers the source values.  The numba kernels walk targets in
parallel over all cores, accumulate in float64 and write each output once.
"""

from __future__ import annotations

import numpy as np

from twinlab import environment

try:  # numba is in the ``lab`` extra; the NumPy fallback keeps everything working without it
    if environment.no_numba():
        raise ImportError("disabled by TWINLAB_NO_NUMBA")
    import numba
except ImportError:  # pragma: no cover - exercised with TWINLAB_NO_NUMBA in tests
    numba = None  # type: ignore[assignment]  # HAVE_NUMBA below says which path runs

HAVE_NUMBA = numba is not None
#: The kernels' array arguments (numba compiles them for the types it is given).
Arr = np.ndarray

if HAVE_NUMBA:

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _csr_apply(  # pragma: no cover - compiled
        perm: Arr, indptr: Arr, indices: Arr, data: Arr, values: Arr, out: Arr
    ) -> None:
        # Row r of the (source-sorted) layout is target perm[r].  The fast loop sums in
        # the field's dtype; only a row whose sum is NaN takes the slow path that skips
        # NaN sources and renormalises.  A row without entries is NaN.
        zero = np.zeros(1, out.dtype)[0]
        for f in range(values.shape[0]):
            v = values[f]
            o = out[f]
            for r in numba.prange(perm.shape[0]):
                a = indptr[r]
                b = indptr[r + 1]
                s = zero
                for p in range(a, b):
                    s += data[p] * v[indices[p]]
                if s != s or a == b:
                    num = 0.0
                    den = 0.0
                    for p in range(a, b):
                        x = v[indices[p]]
                        if x == x:
                            num += data[p] * x
                            den += data[p]
                    s = num / den if den > 0.0 else np.nan
                o[perm[r]] = s

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _ell_apply(  # pragma: no cover - compiled
        perm: Arr, idx: Arr, data: Arr, values: Arr, out: Arr
    ) -> None:
        # Fixed k terms per row (padded with weight 0): no row pointers to stream.
        zero = np.zeros(1, out.dtype)[0]
        k = idx.shape[1]
        for f in range(values.shape[0]):
            v = values[f]
            o = out[f]
            for r in numba.prange(perm.shape[0]):
                s = zero
                for q in range(k):
                    s += data[r, q] * v[idx[r, q]]
                if s != s:
                    num = 0.0
                    den = 0.0
                    for q in range(k):
                        x = v[idx[r, q]]
                        if x == x:
                            num += data[r, q] * x
                            den += data[r, q]
                    s = num / den if den > 0.0 else np.nan
                o[perm[r]] = s

    @numba.njit(parallel=True, cache=True, nogil=True)
    def clip_area(sx: Arr, sy: Arr, cx: Arr, cy: Arr) -> Arr:  # pragma: no cover - compiled
        """Area of quad (sx, sy) ∩ convex CCW quad (cx, cy), per row (Sutherland-Hodgman)."""
        n_pairs = sx.shape[0]
        out = np.empty(n_pairs)
        for i in numba.prange(n_pairs):
            px = np.empty(16)
            py = np.empty(16)
            qx = np.empty(16)
            qy = np.empty(16)
            n = 4
            for k in range(4):
                px[k] = sx[i, k]
                py[k] = sy[i, k]
            for e in range(4):
                ax = cx[i, e]
                ay = cy[i, e]
                ex = cx[i, (e + 1) % 4] - ax
                ey = cy[i, (e + 1) % 4] - ay
                m = 0
                for k in range(n):
                    j = k - 1 if k > 0 else n - 1
                    dc = ex * (py[k] - ay) - ey * (px[k] - ax)
                    dp = ex * (py[j] - ay) - ey * (px[j] - ax)
                    if (dc >= 0) != (dp >= 0):
                        t = dp / (dp - dc)
                        qx[m] = px[j] + t * (px[k] - px[j])
                        qy[m] = py[j] + t * (py[k] - py[j])
                        m += 1
                    if dc >= 0:
                        qx[m] = px[k]
                        qy[m] = py[k]
                        m += 1
                n = m
                for k in range(n):
                    px[k] = qx[k]
                    py[k] = qy[k]
                if n == 0:
                    break
            a = 0.0
            for k in range(n):
                j = k + 1 if k + 1 < n else 0
                a += px[k] * py[j] - px[j] * py[k]
            out[i] = 0.5 * a
        return out

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _gather(index: Arr, values: Arr, out: Arr) -> None:  # pragma: no cover - compiled
        for f in range(values.shape[0]):
            v = values[f]
            o = out[f]
            for j in numba.prange(index.shape[0]):
                o[j] = v[index[j]]

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _group_sums(  # pragma: no cover - compiled
        ids: Arr, values: Arr, ngroups: int, nchunks: int
    ) -> tuple[Arr, Arr]:
        # each chunk of cells accumulates into its own row: no atomics, no false sharing
        nf, n = values.shape
        sums = np.zeros((nchunks, nf, ngroups))
        counts = np.zeros((nchunks, nf, ngroups))
        for c in numba.prange(nchunks):
            lo = c * n // nchunks
            hi = (c + 1) * n // nchunks
            for f in range(nf):
                v = values[f]
                for i in range(lo, hi):
                    x = v[i]
                    if x == x:
                        g = ids[i]
                        sums[c, f, g] += x
                        counts[c, f, g] += 1.0
        return sums.sum(axis=0), counts.sum(axis=0)


def group_mean(values: np.ndarray, ids: np.ndarray, ngroups: int) -> np.ndarray:
    """NaN-skipping mean of ``values[..., n]`` per group ``ids[n]`` -> ``[..., ngroups]``.

    With numba: one parallel pass over the values (the ids can be int16/int32 to stream
    fewer bytes); without it: ``np.bincount``.  Zonal means use ``ids = grid.ring_ids()``.
    """
    lead = values.shape[:-1]
    v = np.ascontiguousarray(values).reshape(-1, values.shape[-1])
    if HAVE_NUMBA:
        sums, counts = _group_sums(ids, v, ngroups, 4 * numba.get_num_threads())
    else:
        offs = (ids[None, :] + ngroups * np.arange(v.shape[0])[:, None]).ravel()
        ok = ~np.isnan(v.ravel())
        sums = np.bincount(offs, np.where(ok, v.ravel(), 0.0), minlength=v.shape[0] * ngroups)
        counts = np.bincount(offs, ok, minlength=v.shape[0] * ngroups)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums / counts
    return (
        np.asarray(out)
        .reshape(lead + (ngroups,))
        .astype(np.result_type(values.dtype, np.float32), copy=False)
    )


class Layout:
    """Weights rearranged for the CPU kernels, built once per :class:`Weights`.

    Rows are walked in *source* order (sorted by their smallest source index): walking
    targets in target order gathers a nested HEALPix map from all over memory, walking
    them in source order makes the reads nearly sequential and leaves one scattered write
    per target, which halves the apply time.  Rows of (nearly) equal length are stored as
    a dense ``(n, k)`` block padded with zero weights ("ELL"), which drops the row
    pointers from the streamed bytes; others stay CSR.
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray):
        counts = np.diff(indptr)
        key = np.full(counts.size, np.iinfo(np.int64).max)
        nonempty = counts > 0
        if indices.size:
            key[nonempty] = np.minimum.reduceat(indices, indptr[:-1][nonempty])
        perm = np.argsort(key, kind="stable")
        self.perm = perm.astype(np.int32)
        c = counts[perm]
        ptr = np.zeros(c.size + 1, dtype=np.int64)
        np.cumsum(c, out=ptr[1:])
        pos = np.repeat(indptr[:-1][perm] - ptr[:-1], c) + np.arange(ptr[-1])
        k = int(c.max()) if c.size else 0
        self.ell = bool(c.size) and int(c.min()) > 0 and k <= 8 and k * c.size <= 1.25 * ptr[-1]
        if self.ell:
            row = np.repeat(np.arange(c.size), c)
            col = np.arange(ptr[-1]) - np.repeat(ptr[:-1], c)
            # padding points at the row's first source (already in cache) with weight 0
            self.indices = np.repeat(indices[pos[ptr[:-1]]][:, None], k, axis=1).astype(np.int32)
            self.indices[row, col] = indices[pos]
            self.data64 = np.zeros((c.size, k))
            self.data64[row, col] = data[pos]
        else:
            self.indptr = ptr
            self.indices = indices[pos]
            self.data64 = data[pos]

    def apply(self, data: np.ndarray, values: np.ndarray, n_target: int) -> np.ndarray:
        """``values`` (nfields, n_source) -> (nfields, n_target); ``data`` from ``data64``."""
        out = np.empty((values.shape[0], n_target), dtype=values.dtype)
        if self.ell:
            _ell_apply(self.perm, self.indices, data, values, out)
        else:
            _csr_apply(self.perm, self.indptr, self.indices, data, values, out)
        return out


def gather(index: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.empty((values.shape[0], index.shape[0]), dtype=values.dtype)
    _gather(index, values, out)
    return out
