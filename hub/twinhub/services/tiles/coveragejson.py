"""CoverageJSON documents (https://covjson.org/spec/) for the EDR queries: a time series at one
native cell (``PointSeries``) and at every cell of an area (``MultiPointSeries``).

Values are the native cells' own values (float64 of what the store holds: a float32 store's
values come back exactly as float32 widened), ``null`` where the data is NaN. A timeless field
gives the ``Point``/``MultiPoint`` domain types instead (no ``t`` axis).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

MEDIA_TYPE = "application/prs.coverage+json"
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
#: Vendor member of a domain naming the native cell(s) behind the values.
CELL_MEMBER = "twinhub:cell"
CELLS_MEMBER = "twinhub:cells"
#: Vendor member of a domain: the values of the dimensions besides time and the grid (a
#: level...) the values are at.
SELECTION_MEMBER = "twinhub:selection"


@dataclass(frozen=True)
class Parameter:
    """One variable of the answer."""

    name: str
    units: str = ""
    long_name: str = ""

    def document(self) -> dict[str, Any]:
        label = self.long_name or self.name
        doc: dict[str, Any] = {
            "type": "Parameter",
            "description": {"en": label},
            "observedProperty": {"id": self.name, "label": {"en": label}},
        }
        if self.units:
            doc["unit"] = {"label": {"en": self.units}, "symbol": self.units}
        return doc


def iso_times(times: Sequence[Any] | np.ndarray) -> list[str]:
    """Times (``datetime`` or ``datetime64``) as RFC 3339 UTC strings ``...Z``."""
    out = []
    for t in times:
        if isinstance(t, datetime):
            d = t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)
            text = d.strftime("%Y-%m-%dT%H:%M:%S")
            if d.microsecond:
                text += f".{d.microsecond:06d}".rstrip("0")
        else:
            ms = np.datetime64(t, "ms")
            whole = ms.astype("datetime64[s]")
            unit = "s" if whole == ms else "ms"
            text = str(np.datetime_as_string(ms, unit=unit))
        out.append(text + "Z")
    return out


def json_values(values: np.ndarray) -> list[Any]:
    """A float array as a flat list of Python floats (exact: float64's repr round-trips),
    ``None`` for NaN/inf."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    bad = ~np.isfinite(flat)
    if not bad.any():
        return flat.tolist()
    out = flat.astype(object)
    out[bad] = None
    return out.tolist()


def _referencing(with_time: bool) -> list[dict[str, Any]]:
    refs: list[dict[str, Any]] = [
        {"coordinates": ["x", "y"], "system": {"type": "GeographicCRS", "id": CRS84}}
    ]
    if with_time:
        refs.append(
            {"coordinates": ["t"], "system": {"type": "TemporalRS", "calendar": "Gregorian"}}
        )
    return refs


def _range(values: np.ndarray, axis_names: list[str], shape: list[int]) -> dict[str, Any]:
    return {
        "type": "NdArray",
        "dataType": "float",
        "axisNames": axis_names,
        "shape": shape,
        "values": json_values(values),
    }


def point_series(
    x: float,
    y: float,
    times: Sequence[Any] | np.ndarray | None,
    parameters: Sequence[Parameter],
    values: dict[str, np.ndarray],
    cell: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Coverage at (x, y): ``values[name]`` of shape (nt,) per parameter (``times`` None:
    timeless, one value each, domain ``Point``). ``cell``: the vendor member (index, centre)."""
    timed = times is not None
    axes: dict[str, Any] = {"x": {"values": [float(x)]}, "y": {"values": [float(y)]}}
    if timed:
        axes["t"] = {"values": iso_times(times)}
    domain: dict[str, Any] = {
        "type": "Domain",
        "domainType": "PointSeries" if timed else "Point",
        "axes": axes,
        "referencing": _referencing(timed),
    }
    if cell is not None:
        domain[CELL_MEMBER] = cell
    nt = len(times) if timed else 0
    ranges = {}
    for p in parameters:
        v = np.asarray(values[p.name], dtype=np.float64).ravel()
        want = nt if timed else 1
        if v.size != want:
            raise ValueError(f"parameter {p.name}: {v.size} values for {want} time steps")
        ranges[p.name] = _range(v, ["t"], [nt]) if timed else _range(v, [], [])
    return {
        "type": "Coverage",
        "domain": domain,
        "parameters": {p.name: p.document() for p in parameters},
        "ranges": ranges,
    }


def multipoint_series(
    lons: np.ndarray,
    lats: np.ndarray,
    times: Sequence[Any] | np.ndarray | None,
    parameters: Sequence[Parameter],
    values: dict[str, np.ndarray],
    cells: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Coverage at n points (the native cells' centres): ``values[name]`` of shape (nt, n)
    (``times`` None: timeless, shape (n,), domain ``MultiPoint``). ``cells``: vendor member
    (e.g. the cells' native indices, in the order of the points)."""
    lons = np.asarray(lons, dtype=np.float64).ravel()
    lats = np.asarray(lats, dtype=np.float64).ravel()
    if lons.shape != lats.shape:
        raise ValueError("lons and lats differ in length")
    n = lons.size
    timed = times is not None
    axes: dict[str, Any] = {
        "composite": {
            "dataType": "tuple",
            "coordinates": ["x", "y"],
            "values": np.stack([lons, lats], axis=1).tolist(),
        }
    }
    if timed:
        axes["t"] = {"values": iso_times(times)}
    domain: dict[str, Any] = {
        "type": "Domain",
        "domainType": "MultiPointSeries" if timed else "MultiPoint",
        "axes": axes,
        "referencing": _referencing(timed),
    }
    if cells is not None:
        domain[CELLS_MEMBER] = cells
    nt = len(times) if timed else 0
    ranges = {}
    for p in parameters:
        v = np.asarray(values[p.name], dtype=np.float64)
        want = (nt, n) if timed else (n,)
        if v.size != int(np.prod(want)):
            raise ValueError(f"parameter {p.name}: shape {v.shape}, expected {want}")
        if timed:
            ranges[p.name] = _range(v.reshape(want), ["t", "composite"], [nt, n])
        else:
            ranges[p.name] = _range(v.reshape(want), ["composite"], [n])
    return {
        "type": "Coverage",
        "domain": domain,
        "parameters": {p.name: p.document() for p in parameters},
        "ranges": ranges,
    }


def dumps(doc: dict[str, Any]) -> bytes:
    """Compact JSON bytes; NaN never gets through (``null`` is the CoverageJSON way)."""
    return json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()
