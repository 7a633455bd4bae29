"""Global spherical grids: HEALPix, reduced/regular Gaussian, lat-lon; detection,
region selection, area-weighted statistics and (via :mod:`.regrid`) regridding.

Importing this package registers the xarray accessor ``ds.grid`` / ``da.grid`` when
xarray is installed.  See docs/grids.md.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

from .base import EARTH_RADIUS_M, Grid, Rings
from .detect import from_dataset, grid_attrs
from .gaussian import Gaussian, Octahedral, ReducedGaussian, gaussian_latitudes, octahedral_pl
from .healpix import HEALPix
from .latlon import LatLon

if importlib.util.find_spec("xarray") is not None:  # the accessor needs xarray, the maths not
    from . import accessor as _accessor  # noqa: F401

__all__ = [
    "EARTH_RADIUS_M",
    "Gaussian",
    "Grid",
    "HEALPix",
    "LatLon",
    "Octahedral",
    "ReducedGaussian",
    "Rings",
    "from_dataset",
    "gaussian_latitudes",
    "grid_attrs",
    "octahedral_pl",
    "regrid",
]


class _GridsModule(types.ModuleType):
    """Keeps ``twinlab.grids.regrid`` the *function* once the ``regrid`` subpackage loads.

    Python binds a freshly imported subpackage as an attribute of its parent, which would
    shadow the public ``twinlab.grids.regrid(...)``; the subpackage itself stays importable
    with ``from twinlab.grids.regrid import ...``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "regrid" and isinstance(value, types.ModuleType):
            value = value.regrid
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _GridsModule


def __getattr__(name: str) -> Any:
    # regridding pulls in heavier machinery (numba kernels, weight caches): load on use
    if name == "regrid":
        from .regrid import regrid as fn  # binds the function through _GridsModule

        return fn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
