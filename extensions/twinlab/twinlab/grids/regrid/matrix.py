"""Sparse regridding weights: the :class:`Weights` matrix, built from triplets, saved and
loaded (the caches that keep them are in :mod:`.weights`).

A :class:`Weights` is a CSR matrix ``W`` of shape ``(n_target, n_source)`` over the
grids' *native* flat orders, rows normalised to sum to 1, so ``out = W @ values``.
Rows are sorted by target (CSR) because the apply kernels walk targets in parallel
and write each output once; indices are int32 (every supported grid has < 2**31
cells) to halve the bytes the kernels stream.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Bumped whenever a builder's output changes, so stale disk caches are not reused.
FORMAT_VERSION = 1
_derive_lock = threading.RLock()


@dataclass(eq=False)
class Weights:
    """Row-normalised sparse weights from ``source_key`` to ``target_key``."""

    source_key: str
    target_key: str
    method: str
    n_source: int
    n_target: int
    indptr: np.ndarray  # (n_target + 1,) int64
    indices: np.ndarray  # (nnz,) int32 native source index
    data: np.ndarray  # (nnz,) float64
    build_seconds: float = 0.0
    _derived: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.indptr = np.ascontiguousarray(self.indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(self.indices, dtype=np.int32)
        self.data = np.ascontiguousarray(self.data, dtype=np.float64)

    # Derived arrays (dtype copies, device copies) are caches: never pickle them into a
    # Dask graph, and give Dask a cheap deterministic token instead of hashing 100s of MB.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_derived"] = {}
        return state

    def __dask_tokenize__(self) -> tuple[str, str, int]:
        return ("twinlab-weights", self.cache_id, self.nnz)

    @property
    def cache_id(self) -> str:
        return cache_id(self.source_key, self.target_key, self.method)

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.indices.nbytes + self.data.nbytes

    def _memo(self, name: str, make: Callable[[], Any]) -> Any:
        # Dask threads applying the same weights must not each build a (large) layout
        with _derive_lock:
            if name not in self._derived:
                self._derived[name] = make()
            return self._derived[name]

    @property
    def gather_index(self) -> np.ndarray | None:
        """int32 source index per target when every row is a single weight of 1 (nearest)."""

        def make() -> np.ndarray | None:
            if self.nnz != self.n_target or not np.all(self.data == 1.0):
                return None
            return self.indices

        out: np.ndarray | None = self._memo("gather", make)
        return out

    def data_as(self, dtype: Any) -> np.ndarray:
        """Weights in ``dtype`` (float32 for float32 fields: half the bytes to stream)."""
        dtype = np.dtype(dtype)
        out: np.ndarray = self._memo(f"data-{dtype.str}", lambda: self.data.astype(dtype))
        return out

    def rowsum(self) -> np.ndarray:
        """Sum of each row's weights (0 for a row without entries)."""

        def make() -> np.ndarray:
            rows = np.repeat(np.arange(self.n_target), np.diff(self.indptr))
            return np.bincount(rows, self.data, minlength=self.n_target)

        out: np.ndarray = self._memo("rowsum", make)
        return out

    def matrix(self, sparse: Any = None, dtype: Any = np.float64) -> Any:
        """The CSR matrix in ``sparse`` (``scipy.sparse`` or ``cupyx.scipy.sparse``)."""
        if sparse is None:
            import scipy.sparse  # start-up cost: only on this path

            sparse = scipy.sparse
        name = f"csr-{sparse.__name__}-{np.dtype(dtype).str}"

        def make() -> Any:
            shape = (self.n_target, self.n_source)
            if sparse.__name__.startswith("cupyx"):
                import cupy  # optional dependency (the gpu extra)

                return sparse.csr_matrix(
                    (
                        cupy.asarray(self.data_as(dtype)),
                        cupy.asarray(self.indices),
                        # cuSPARSE takes int32 row pointers (nnz < 2**31 here)
                        cupy.asarray(self.indptr.astype(np.int32)),
                    ),
                    shape=shape,
                )
            return sparse.csr_matrix((self.data_as(dtype), self.indices, self.indptr), shape=shape)

        return self._memo(name, make)

    # ---- persistence --------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write atomically: a temp file in the same directory, then ``os.replace``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            # mkstemp makes 0600 files; weights are not secret and a cache directory may be
            # shared (TWINLAB_WEIGHTS_DIR on a group volume), so make them world-readable
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    version=np.int64(FORMAT_VERSION),
                    source_key=np.str_(self.source_key),
                    target_key=np.str_(self.target_key),
                    method=np.str_(self.method),
                    shape=np.array([self.n_target, self.n_source], dtype=np.int64),
                    indptr=self.indptr,
                    indices=self.indices,
                    data=self.data,
                    build_seconds=np.float64(self.build_seconds),
                )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path, source_key: str, target_key: str, method: str) -> Weights:
        """Read and validate a cache file; raise ``ValueError`` if it is not what we expect."""
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}  # reading each member checks its CRC
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise ValueError(f"unreadable weights file {path}: {exc}") from exc
        try:
            meta = (
                int(arrays["version"]),
                str(arrays["source_key"]),
                str(arrays["target_key"]),
                str(arrays["method"]),
            )
            n_target, n_source = (int(v) for v in arrays["shape"])
            indptr, indices, data = arrays["indptr"], arrays["indices"], arrays["data"]
        except KeyError as exc:
            raise ValueError(f"weights file {path} lacks {exc}") from exc
        if meta != (FORMAT_VERSION, source_key, target_key, method):
            raise ValueError(
                f"weights file {path} is for {meta}, not {(FORMAT_VERSION, source_key, target_key, method)}"
            )
        ok = (
            indptr.shape == (n_target + 1,)
            and indptr[0] == 0
            and indptr[-1] == indices.shape[0] == data.shape[0]
            and bool(np.all(np.diff(indptr) >= 0))
            and (indices.size == 0 or (indices.min() >= 0 and indices.max() < n_source))
            and bool(np.all(np.isfinite(data)))
        )
        if not ok:
            raise ValueError(f"weights file {path} is inconsistent")
        return cls(
            source_key,
            target_key,
            method,
            n_source,
            n_target,
            indptr,
            indices,
            data,
            float(arrays["build_seconds"]),
        )


def from_coo(
    source: Any, target: Any, method: str, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray
) -> Weights:
    """CSR weights from (target, source, value) triplets: duplicates summed, rows normalised.

    Rows with no entry (a target no source cell reaches) stay empty and regrid to NaN.
    """
    import scipy.sparse as sp  # start-up cost: only when weights are built

    m = sp.coo_matrix((vals, (rows, cols)), shape=(target.size, source.size)).tocsr()
    m.sum_duplicates()
    m.eliminate_zeros()
    m.sort_indices()
    counts = np.diff(m.indptr)
    total = np.bincount(np.repeat(np.arange(target.size), counts), m.data, minlength=target.size)
    total = np.where(counts > 0, total, 1.0)
    data = m.data / np.repeat(total, counts)
    return Weights(
        source.key, target.key, method, source.size, target.size, m.indptr, m.indices, data
    )


def cache_id(source_key: str, target_key: str, method: str) -> str:
    text = f"{method}\0{source_key}\0{target_key}\0v{FORMAT_VERSION}"
    return f"{method}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"
