"""GRIB2 messages written with ecCodes, shaped like DestinE Climate DT output.

Grids: HEALPix is GRIB2 grid template 3.150; octahedral grids are ``reduced_gg`` with
their own ``pl`` (ecCodes' ``reduced_gg_pl_N`` samples carry classic N-grid ``pl``
arrays); regular Gaussian is ``regular_gg``.  The DestinE local section (class ``d1``,
dataset, activity, experiment, model, generation, realization, resolution) is set the way
ecCodes defines it for ``productionStatusOfProcessedData = 12`` (DestinE).

Each message is encoded once; the values the Zarr copy stores are the ones decoded from
that same message, so GRIB and Zarr agree exactly (up to float32), not just to packing
precision.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np

# isort: off
# pyproj before eccodes: the ecCodes wheel bundles its own libproj, and loading it first
# aborts the interpreter when pyproj is imported later
import pyproj  # noqa: F401
import eccodes as ec

# isort: on

from twinlab.grids import Gaussian, Grid, HEALPix, ReducedGaussian, gaussian_latitudes

from .fields import Variable
from .grids import CLIMATE_DT

BITS_PER_VALUE = 16
MISSING = 9999.0

#: Climate DT's MARS metadata (ecCodes DestinE keys); also what the STAC items say.


def _grid_handle(grid: Grid) -> Any:
    if isinstance(grid, HEALPix):
        h = ec.codes_grib_new_from_samples("GRIB2")
        ec.codes_set(h, "gridDefinitionTemplateNumber", 150)
        ec.codes_set(h, "Nside", grid.nside)
        ec.codes_set(h, "orderingConvention", "nested" if grid.nest else "ring")
        # the HEALPix geo-iterator only accepts the standard first longitude of 45 degrees
        ec.codes_set(h, "longitudeOfFirstGridPointInDegrees", 45)
        return h
    if isinstance(grid, ReducedGaussian):
        # any reduced_gg sample of the same N: its pl is replaced by the grid's own
        h = ec.codes_grib_new_from_samples(f"reduced_gg_pl_{grid.N}_grib2")
        ec.codes_set_array(h, "pl", grid.pl)
        # isOctahedral is computed by ecCodes from pl (read-only): check it agrees
        if bool(ec.codes_get(h, "isOctahedral")) != grid.is_octahedral:
            ec.codes_release(h)
            raise RuntimeError(f"ecCodes disagrees that {grid.key} is octahedral")
        return h
    if isinstance(grid, Gaussian):
        h = ec.codes_grib_new_from_samples("regular_gg_sfc_grib2")
        lat0 = float(gaussian_latitudes(grid.N)[0])
        nlon = 4 * grid.N
        for key, value in (
            ("N", grid.N),
            ("Ni", nlon),
            ("Nj", 2 * grid.N),
            ("latitudeOfFirstGridPointInDegrees", lat0),
            ("latitudeOfLastGridPointInDegrees", -lat0),
            ("longitudeOfFirstGridPointInDegrees", 0.0),
            ("longitudeOfLastGridPointInDegrees", 360.0 - 360.0 / nlon),
            ("iDirectionIncrementInDegrees", 360.0 / nlon),
        ):
            ec.codes_set(h, key, value)
        return h
    raise TypeError(f"no GRIB2 grid definition for {grid!r}")


def template(grid: Grid, var: Variable, resolution: str) -> Any:
    """An ecCodes handle with grid, metadata, parameter and packing set; no values yet."""
    h = _grid_handle(grid)
    try:
        ec.codes_set(h, "tablesVersion", max(32, ec.codes_get(h, "tablesVersion")))
        if var.accumulated:
            ec.codes_set(h, "stepType", "accum")
        ec.codes_set(h, "typeOfLevel", var.type_of_level)
        ec.codes_set(h, "level", var.level)
        # the parameter before the DestinE section: ecCodes' DestinE parameter concept has
        # no paramId 228 (tp) to set, though it decodes the encoded 0/1/193 back as tp
        ec.codes_set(h, "paramId", var.param_id)
        ec.codes_set(h, "productionStatusOfProcessedData", 12)  # DestinE
        ec.codes_set(h, "setLocalDefinition", 1)
        ec.codes_set(h, "localDefinitionNumber", 1)
        for key, value in CLIMATE_DT.items():
            ec.codes_set(h, key, value)
        ec.codes_set(h, "resolution", resolution)
        # packingType before bitsPerValue: setting the packing resets the bit count (and in
        # the other order ecCodes 2.50 crashes on reduced_gg samples)
        ec.codes_set(h, "packingType", "grid_ccsds")
        ec.codes_set(h, "bitsPerValue", BITS_PER_VALUE)
        if var.sea_only:
            ec.codes_set(h, "missingValue", MISSING)
            ec.codes_set(h, "bitmapPresent", 1)
        got = ec.codes_get(h, "shortName")
        if got != var.short_name:  # the parameter tables disagree with our variable list
            raise RuntimeError(f"ecCodes encodes paramId {var.param_id} as {got!r}")
        return h
    except Exception:
        ec.codes_release(h)
        raise


def encode(
    tmpl: Any, var: Variable, valid: datetime, interval_hours: int, values: np.ndarray
) -> tuple[bytes, np.ndarray]:
    """One message valid at ``valid``; returns (message bytes, decoded float32 values, NaN = missing).

    Instantaneous fields have reference time = valid time and step 0 (as Climate DT
    archives them); accumulations run over the output interval ending at the valid time.
    """
    h = ec.codes_clone(tmpl)
    try:
        ref = valid - timedelta(hours=interval_hours) if var.accumulated else valid
        ec.codes_set(h, "dataDate", int(ref.strftime("%Y%m%d")))
        ec.codes_set(h, "dataTime", int(ref.strftime("%H%M")))
        ec.codes_set(h, "stepUnits", "h")
        if var.accumulated:
            ec.codes_set(h, "startStep", 0)
            ec.codes_set(h, "endStep", interval_hours)
        else:
            ec.codes_set(h, "step", 0)
        flat = np.asarray(values, dtype=np.float64).ravel()
        if var.sea_only:
            flat = np.where(np.isnan(flat), MISSING, flat)
        ec.codes_set_values(h, flat)
        message = ec.codes_get_message(h)
        decoded = ec.codes_get_values(h)
        if var.sea_only:
            decoded = np.where(decoded == MISSING, np.nan, decoded)
        return message, decoded.astype(np.float32)
    finally:
        ec.codes_release(h)
