"""Grid test fixtures: GRIB messages and files written by ecCodes itself.

ecCodes is the reference for ECMWF grid geometry: we build messages from its samples,
let it compute latitudes/longitudes (its geo-iterator), and compare with ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[3] / "data" / "grids"


@pytest.fixture(scope="session")
def ec() -> Any:
    # pyproj first: the ecCodes wheel bundles its own libproj, and loading it before
    # pyproj's aborts the interpreter
    pytest.importorskip("pyproj")
    return pytest.importorskip("eccodes")


@dataclass
class GribField:
    path: Path
    lat: np.ndarray  # ecCodes geo-iterator, file order
    lon: np.ndarray
    keys: dict[str, Any]


def _finish(ec: Any, h: Any, npoints: int) -> None:
    # packingType before bitsPerValue: setting the packing resets the bit count
    ec.codes_set(h, "packingType", "grid_simple")
    ec.codes_set(h, "bitsPerValue", 16)
    ec.codes_set_values(h, np.linspace(250.0, 300.0, npoints))


def healpix_message(ec: Any, nside: int, ordering: str) -> Any:
    h = ec.codes_grib_new_from_samples("GRIB2")
    ec.codes_set(h, "gridDefinitionTemplateNumber", 150)  # template 3.150: HEALPix
    ec.codes_set(h, "Nside", nside)
    ec.codes_set(h, "orderingConvention", ordering)
    # the HEALPix geo-iterator only accepts the standard 45 deg first longitude
    ec.codes_set(h, "longitudeOfFirstGridPointInDegrees", 45)
    _finish(ec, h, 12 * nside * nside)
    return h


def reduced_gg_message(ec: Any, N: int, pl: np.ndarray | None) -> Any:
    """A reduced Gaussian message; ``pl=None`` keeps the sample's classic N-grid pl."""
    h = ec.codes_grib_new_from_samples(f"reduced_gg_pl_{N}_grib2")
    if pl is not None:
        ec.codes_set_array(h, "pl", np.asarray(pl, dtype=np.int64))
    npts = int(np.sum(ec.codes_get_array(h, "pl")))
    _finish(ec, h, npts)
    return h


def regular_ll_message(ec: Any, dlon: float, dlat: float, nodes: bool) -> Any:
    h = ec.codes_grib_new_from_samples("GRIB2")
    nlon = round(360 / dlon)
    nlat = round(180 / dlat) + (1 if nodes else 0)
    first_lat = 90.0 if nodes else 90.0 - dlat / 2
    first_lon = 0.0 if nodes else dlon / 2
    for key, value in [
        ("Ni", nlon),
        ("Nj", nlat),
        ("latitudeOfFirstGridPointInDegrees", first_lat),
        ("latitudeOfLastGridPointInDegrees", -first_lat),
        ("longitudeOfFirstGridPointInDegrees", first_lon),
        ("longitudeOfLastGridPointInDegrees", first_lon + (nlon - 1) * dlon),
        ("iDirectionIncrementInDegrees", dlon),
        ("jDirectionIncrementInDegrees", dlat),
    ]:
        ec.codes_set(h, key, value)
    _finish(ec, h, nlon * nlat)
    return h


def geo(ec: Any, h: Any) -> tuple[np.ndarray, np.ndarray]:
    return ec.codes_get_array(h, "latitudes"), ec.codes_get_array(h, "longitudes")


@pytest.fixture(scope="session")
def grib_files(ec: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, GribField]:
    """Small GRIB2 files of every grid kind, written by ecCodes into a session tmp dir."""
    root = tmp_path_factory.mktemp("grib")
    makers = {
        "healpix_nested": lambda: healpix_message(ec, 16, "nested"),
        "healpix_ring": lambda: healpix_message(ec, 16, "ring"),
        "octahedral_O96": lambda: reduced_gg_message(ec, 96, 4 * np.r_[1:97, 96:0:-1] + 16),
        "classic_N96": lambda: reduced_gg_message(ec, 96, None),
        "regular_ll_2_nodes": lambda: regular_ll_message(ec, 2.0, 2.0, True),
        "regular_ll_3_centres": lambda: regular_ll_message(ec, 3.0, 3.0, False),
    }
    out = {}
    for name, make in makers.items():
        h = make()
        try:
            lat, lon = geo(ec, h)
            keys = {k: ec.codes_get(h, k) for k in ("gridType", "numberOfDataPoints")}
            path = root / f"{name}.grib2"
            with open(path, "wb") as f:
                ec.codes_write(h, f)
        finally:
            ec.codes_release(h)
        out[name] = GribField(path, lat, lon, keys)
    return out


def open_grib(path: Path) -> Any:
    xr = pytest.importorskip("xarray")
    pytest.importorskip("cfgrib")
    return xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""})


def lon_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in degrees of longitude, modulo 360."""
    return np.abs((np.asarray(a) - np.asarray(b) + 180.0) % 360.0 - 180.0)


@pytest.fixture(scope="session")
def gribtools(ec: Any) -> Any:
    """The message builders above, bound to ecCodes (test modules do not import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        healpix=lambda nside, ordering: healpix_message(ec, nside, ordering),
        reduced_gg=lambda N, pl=None: reduced_gg_message(ec, N, pl),
        regular_ll=lambda dlon, dlat, nodes: regular_ll_message(ec, dlon, dlat, nodes),
        geo=lambda h: geo(ec, h),
        open=open_grib,
        lon_diff=lon_diff,
        data=DATA,
    )
