"""The sample data, built once per test session and shared by every seed test.

The build goes to the seed cache (``$TWINHUB_SEED_CACHE`` or ``~/.cache/twinhub/seed``),
the same place ``twinhub up --TwinhubDataLake.seed=small`` looks: a platform started by
integration tests in the same session reuses this build instead of making its own, and
a build cached by an earlier run is reused here (test_seed_build.py rebuilds from scratch
and compares checksums, which catches a cached build that no longer matches the code).
"""

from __future__ import annotations

import time
from typing import Any

# pyproj before eccodes/cfgrib: the ecCodes wheel bundles its own libproj and the
# interpreter aborts if it is loaded first
import pyproj  # noqa: F401
import pytest


@pytest.fixture(scope="session")
def seed_build() -> Any:
    """The small seed (:class:`twinhub.services.datalake.seed.SeedBuild`), built or reused."""
    from twinhub.services.datalake.seed import build, default_cache_dir

    lines: list[str] = []
    t0 = time.monotonic()
    b = build("small", cache_dir=default_cache_dir(), progress=lines.append)
    b.test_log = lines  # type: ignore[attr-defined]
    b.test_seconds = time.monotonic() - t0  # type: ignore[attr-defined]
    return b


@pytest.fixture(scope="session")
def seed_items(seed_build: Any) -> list[dict[str, Any]]:
    return list(seed_build.items())


@pytest.fixture(scope="session")
def seed_zarr(seed_build: Any) -> Any:
    """``grid_id -> xarray.Dataset`` of every Zarr store of the build (lazy)."""
    import xarray as xr

    root = seed_build.root / "objects"
    return {
        gid: xr.open_zarr(root / g["zarr"], zarr_format=3)
        for gid, g in seed_build.manifest["grids"].items()
    }
