"""Regridding between twinlab grids: nearest, ring-based bilinear, exact conservative.

``regrid(values, source, target, method=...)`` builds sparse weights once per
(source, target, method), caches them in memory and on disk, and applies them to
NumPy, CuPy, Dask or xarray fields.  See ``docs/regrid.md``.
"""

from .apply import apply_weights, backend, regrid
from .matrix import Weights
from .weights import METHODS, clear_memory_cache, default_cache_dir, get_weights

__all__ = [
    "METHODS",
    "Weights",
    "apply_weights",
    "backend",
    "clear_memory_cache",
    "default_cache_dir",
    "get_weights",
    "regrid",
]
