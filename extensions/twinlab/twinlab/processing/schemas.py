"""Descriptions of the templated processes and the check of a job's inputs.

The hub imports this module to list, describe and validate, the runner to read its spec:
it imports the standard library, jsonschema (.jsonschema_safe), twinlab.contract: no numpy.
Besides OGC's fields, each description carries ``twinhub:kind`` ("templated" or "user"),
``twinhub:cluster`` (the job needs a Dask cluster), ``twinhub:item_inputs`` (inputs naming
lake STAC item ids), ``twinhub:datetime_input`` (the input holding a STAC datetime, or None).
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import re
from collections.abc import Mapping
from typing import Any

import jsonschema

from twinlab.contract import check_bbox, check_datetime

from . import jsonschema_safe as safe

PROCESS_IDS = ("echo", "regrid", "zonal-mean", "area-mean", "climatology", "point-series")
#: Version of the templated processes' implementation (provenance of their outputs).
TEMPLATE_VERSION = "1.0.0"
#: A process id: also a path segment of the API and part of an S3 key.
PROCESS_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_JOB_CONTROL = ["sync-execute", "async-execute", "dismiss"]
_TRANSMISSION = ["value", "reference"]
_HEALPIX_NSIDES = [2**k for k in range(14)]  # 1 .. 8192
#: twinlab.grids.regrid's methods (not imported: the hub must not load the regridder).
REGRID_METHODS = ("nearest", "bilinear", "conservative")
MEDIA_NETCDF = "application/x-netcdf"
MEDIA_ZARR = "application/vnd+zarr"
MEDIA_CSV = "text/csv"
MEDIA_JSON = "application/json"
MEDIA_GEOJSON = "application/geo+json"


class InputError(ValueError):
    """An input (or a process description) is invalid; the message names it."""


# -- building blocks --------------------------------------------------------------------
# Schemas keep to what OGC's schema.yaml (OpenAPI 3.0) and JSON Schema 2020-12 share.
def _input(title: str, description: str, schema: dict, *, required: bool = True) -> dict:
    return {"title": title, "description": description, "schema": schema} | {
        "minOccurs": 1 if required else 0,
        "maxOccurs": 1,
    }


def _opt(title: str, description: str, schema: dict) -> dict:
    return _input(title, description, schema, required=False)


def _output(title: str, description: str, schema: dict) -> dict:
    return {"title": title, "description": description, "schema": schema}


def _file(title: str, description: str, media_type: str) -> dict:
    # a file written under the job's output prefix, returned as {"href", "type"}
    return _output(title, description, _uri(media_type))


def _uri(media_type: str) -> dict:
    return {"type": "string", "format": "uri", "contentMediaType": media_type}


def _text(most: int) -> dict:
    return {"type": "string", "minLength": 1, "maxLength": most}


def _array(items: dict, **more: Any) -> dict:
    return {"type": "array", "items": items, **more}


def _object(required: list[str], properties: dict, **more: Any) -> dict:
    return {"type": "object", "required": required, "properties": properties, **more}


_ITEM = _input(
    "Lake item",
    "Id of the data lake STAC item to read (as found by twinlab.datalake.search).",
    _text(256),
)
_COLLECTION = _opt(
    "Collection",
    "STAC collection of the item, when the same item id exists in several collections.",
    _text(256),
)
_VARIABLE = _input(
    "Variable", "Name of the variable to read (the item's own variable, e.g. 2t).", _text(128)
)
_DATETIME = _opt(
    "Time range",
    "A STAC datetime: one instant or an interval 'start/end' ('..' for an open end), "
    "e.g. 2020-01-01/2020-01-31. Default: every time step of the item.",
    _text(100),
)
_ITEM_OUTPUT = _output(
    "STAC item", "The STAC item of the job's outputs in the user's collection.", _uri(MEDIA_GEOJSON)
)
_NO_LAKE: dict[str, Any] = {"cluster": False, "item_inputs": [], "datetime_input": None}
_TIMES = _array({"type": "string"})
_SERIES = _object(["time", "values"], {"time": _TIMES, "values": {"type": "array"}})
_NUMBERS = _array({"type": "number"})


def _process(
    pid: str, title: str, description: str, keywords: list, inputs: dict, outputs: dict, **more: Any
) -> dict:
    """A process description: OGC's fields, then twinhub's (see the module's docstring);
    ``more``: version, kind, cluster, item_inputs, datetime_input."""
    meta = {"version": TEMPLATE_VERSION, "kind": "templated", "cluster": True} | {
        "item_inputs": ["item"],
        "datetime_input": "datetime",
        **more,
    }
    return {
        "id": pid,
        "title": title,
        "description": description,
        "version": meta.pop("version"),
        "keywords": keywords,
        "jobControlOptions": list(_JOB_CONTROL),
        "outputTransmission": list(_TRANSMISSION),
        "inputs": inputs,
        "outputs": outputs,
    } | {f"twinhub:{k}": v for k, v in meta.items()}


def _lake(**more: dict) -> dict:
    """item, collection, variable, datetime and the process's own inputs, in that order."""
    return {"item": _ITEM, "collection": _COLLECTION, "variable": _VARIABLE} | {
        "datetime": _DATETIME,
        **more,
    }


# -- echo: what the OGC test suite (ets-ogcapi-processes10) executes --------------------
# The suite sends "teststring" for every string input, leaves the others out, expects the
# first input echoed back under an output of the same name, and adds an integer "pause"
# input (seconds) to catch a job before it ends. Hence: a free string input first, every
# other input optional, and output names equal to the input names.
_ECHO_TYPES = [  # name, title, schema
    ("stringInput", "Any string", {"type": "string"}),
    ("doubleInput", "Any number", {"type": "number"}),
    ("integerInput", "Any integer", {"type": "integer"}),
    ("booleanInput", "true or false", {"type": "boolean"}),
    ("arrayInput", "An array of integers (one value)", _array({"type": "integer"})),
    ("objectInput", "Any JSON object", {"type": "object"}),
]
_ECHO_INPUTS = {
    name: _input(title, f"{title}, returned as is.", schema, required=name == "stringInput")
    for name, title, schema in _ECHO_TYPES
}
_ECHO_INPUTS["pause"] = _opt(
    "Pause",
    "Seconds to wait before answering (0 to 60); not echoed.",
    {"type": "integer", "minimum": 0, "maximum": 60, "default": 0},
)
#: Echo's inputs that come back as outputs (all but the pause).
ECHO_OUTPUTS = tuple(name for name in _ECHO_INPUTS if name != "pause")


def _grid(kind: str, title: str, **props: dict) -> dict:
    """A target grid: ``type`` and its first property are required."""
    required = ["type", next(iter(props))]
    props = {"type": {"type": "string", "enum": [kind]}, **props}
    return _object(required, props, title=title, additionalProperties=False)


_RESOLUTION = {"type": "number", "minimum": 0.01, "maximum": 90}
_NSIDE = {"type": "integer", "enum": _HEALPIX_NSIDES}
_NEST = {"type": "boolean", "default": True}
_N = {"type": "integer", "minimum": 1, "maximum": 8000}
_TARGET = {
    "oneOf": [
        _grid("latlon", "Regular latitude-longitude grid", resolution=_RESOLUTION),
        _grid("healpix", "HEALPix grid", nside=_NSIDE, nest=_NEST),
        _grid("octahedral", "Octahedral reduced Gaussian grid", n=_N),
    ]
}
_POSITION = _array({"type": "number"}, minItems=2, maxItems=3)
_POLYGON = _object(
    ["type", "coordinates"],
    {
        "type": {"type": "string", "enum": ["Polygon"]},
        "coordinates": _array(_array(_POSITION, minItems=4), minItems=1),
    },
)
_POINTS = _object(
    ["points", "cells", "time", "values"],
    {"points": _array(_NUMBERS), "cells": _array({"type": "integer"}), "time": _TIMES},
)
_ZONAL = _object(
    ["latitude", "time", "values"],
    {"latitude": _NUMBERS, "time": _TIMES, "values": _array({"type": "array"})},
)

TEMPLATED: dict[str, dict] = {
    "echo": _process(
        "echo",
        "Echo",
        "Returns its inputs as outputs, after an optional pause. Needs no cluster and "
        "writes nothing (the OGC API - Processes test suite runs it).",
        ["test", "ogc"],
        _ECHO_INPUTS,
        {
            name: _output(spec["title"], "The input of the same name.", spec["schema"])
            for name, spec in _ECHO_INPUTS.items()
            if name != "pause"
        },
        **_NO_LAKE,
    ),
    "regrid": _process(
        "regrid",
        "Regrid",
        "Interpolates variables of a lake item onto another global grid (regular "
        "lat-lon, HEALPix or octahedral) with twinlab.grids.regrid; writes Zarr.",
        ["regrid", "interpolation", "healpix", "grid"],
        {
            "item": _ITEM,
            "collection": _COLLECTION,
            "variables": _input(
                "Variables",
                "Names of the variables to regrid.",
                _array(_text(128), minItems=1, maxItems=32, uniqueItems=True),
            ),
            "target": _input(
                "Target grid",
                '{"type": "latlon", "resolution": degrees} | {"type": "healpix", '
                '"nside": n, "nest": bool} | {"type": "octahedral", "n": N}.',
                _TARGET,
            ),
            "method": _opt(
                "Method",
                "nearest, bilinear (ring-based) or conservative (exact, area-weighted).",
                {"type": "string", "enum": list(REGRID_METHODS), "default": "nearest"},
            ),
            "datetime": _DATETIME,
        },
        {
            "regridded": _file("Regridded data", "Zarr store on the target grid.", MEDIA_ZARR),
            "item": _ITEM_OUTPUT,
        },
    ),
    "zonal-mean": _process(
        "zonal-mean",
        "Zonal mean",
        "Mean of a variable over each iso-latitude ring of its native grid, per time "
        "step: on HEALPix the 4*nside-1 rings of equal-area cells, on Gaussian and "
        "octahedral grids each grid row, on lat-lon grids each row.",
        ["zonal mean", "time series", "healpix", "statistics"],
        _lake(),
        {
            "zonal_mean": _output("Zonal mean", "Per ring (north -> south) per time.", _ZONAL),
            "netcdf": _file("NetCDF", "The zonal means as NetCDF.", MEDIA_NETCDF),
            "json": _file("JSON", "The zonal means as JSON.", MEDIA_JSON),
            "item": _ITEM_OUTPUT,
        },
    ),
    "area-mean": _process(
        "area-mean",
        "Area mean",
        "Area-weighted mean of a variable over the cells whose centre lies in a bbox or "
        "polygon, per time step (HEALPix: equal-area cells, plain mean; other grids: "
        "weighted by cell area).",
        ["area mean", "time series", "region", "statistics"],
        _lake(
            bbox=_opt(
                "Bounding box",
                "[west, south, east, north] in degrees (west > east crosses the antimeridian).",
                _array({"type": "number"}, minItems=4, maxItems=4),
            ),
            polygon=_opt(
                "Polygon",
                "A GeoJSON Polygon (lon/lat degrees); give a bbox or a polygon, not both.",
                _POLYGON,
            ),
        ),
        {
            "area_mean": _output("Area mean", "time, values, cells, weights.", _SERIES),
            "netcdf": _file("NetCDF", "The series as NetCDF.", MEDIA_NETCDF),
            "json": _file("JSON", "The series as JSON.", MEDIA_JSON),
            "item": _ITEM_OUTPUT,
        },
    ),
    "climatology": _process(
        "climatology",
        "Climatology",
        "Mean, minimum, maximum or a percentile over a time window, per grid cell; "
        "written as Zarr on the item's native grid.",
        ["climatology", "statistics", "percentile"],
        _lake(
            statistic=_opt(
                "Statistic",
                "mean, min, max or percentile (then give 'percentile').",
                {"type": "string", "enum": ["mean", "min", "max", "percentile"], "default": "mean"},
            ),
            percentile=_opt(
                "Percentile",
                "0 to 100, for statistic 'percentile'.",
                {"type": "number", "minimum": 0, "maximum": 100},
            ),
        ),
        {
            "climatology": _file("Climatology", "Zarr: the statistic per cell.", MEDIA_ZARR),
            "item": _ITEM_OUTPUT,
        },
    ),
    "point-series": _process(
        "point-series",
        "Point series",
        "Values at points over time, read from the exact native cell holding each point "
        "(HEALPix: the pixel containing it); no interpolation.",
        ["point", "time series", "extraction"],
        _lake(
            points=_input(
                "Points",
                "[[lon, lat], ...] in degrees (lon -180..360, lat -90..90).",
                _array(_array({"type": "number"}, minItems=2, maxItems=2), minItems=1),
            ),
        ),
        {
            "point_series": _output("Point series", "Values per point per time.", _POINTS),
            "csv": _file(
                "CSV", "time, point, lon, lat, cell, cell_lon, cell_lat, value.", MEDIA_CSV
            ),
            "item": _ITEM_OUTPUT,
        },
    ),
}


# -- datetimes ------------------------------------------------------------------------------
_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?$")  # YYYY, YYYY-MM, YYYY-MM-DD


def _bound(text: str, *, end: bool) -> _dt.datetime | None:
    """One side of an interval as aware UTC; a year/month/day as an end covers all of it."""
    t = text.strip()
    if t in ("", ".."):
        return None
    if not (m := _PARTIAL.match(t)):
        d = _dt.datetime.fromisoformat(t.replace("z", "Z"))
        return d.astimezone(_dt.UTC) if d.tzinfo else d.replace(tzinfo=_dt.UTC)
    y, mo = int(m[1]), int(m[2] or 1)
    start = _dt.datetime(y, mo, int(m[3] or 1), tzinfo=_dt.UTC)
    if m[3]:
        nxt = start + _dt.timedelta(days=1)
    else:
        nxt = start.replace(year=y + (mo == 12 or not m[2]), month=mo % 12 + 1 if m[2] else 1)
    return nxt - _dt.timedelta(microseconds=1) if end else start


def parse_datetime(value: str) -> tuple[_dt.datetime | None, _dt.datetime | None]:
    """(start, end) as aware UTC datetimes of an instant or an 'a/b' interval (None: open).

    A date-only (or year, year-month) end includes that whole day (year, month); an
    instant that is only a date covers that day. Raises :class:`InputError`.
    """
    if not isinstance(value, str):
        raise InputError(f"datetime must be a string, got {type(value).__name__}")
    try:
        check_datetime(value)
        parts = value.split("/")
        if len(parts) == 1:
            return _bound(parts[0], end=False), _bound(parts[0], end=True)
        start, end = _bound(parts[0], end=False), _bound(parts[1], end=True)
    except ValueError as err:
        raise InputError(str(err)) from None
    if start is not None and end is not None and start > end:
        raise InputError(f"datetime {value!r}: start is after end")
    return start, end


# -- validation (validators never fetch a $ref: see jsonschema_safe) ----------------------
def _errors(name: str, schema: dict, value: Any) -> list:
    try:
        return safe.errors(schema, value)
    except safe.UnsafeSchema as err:
        raise InputError(f"input {name!r}: {err}") from None


def _check_value(name: str, schema: dict, value: Any, errors: list | None = None) -> None:
    errors = _errors(name, schema, value) if errors is None else errors
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        where = "".join(f"[{p!r}]" for p in err.absolute_path)
        raise InputError(f"input {name!r}{where}: {err.message}")


def _unwrap(value: Any) -> Any:
    """The value of an OGC qualified input ``{"value": v, "mediaType": ...}``."""
    qualified = isinstance(value, Mapping) and "value" in value
    if qualified and set(value) <= {"value", "mediaType", "encoding", "schema"}:
        return value["value"]
    return value


def validate_inputs(description: Mapping[str, Any], inputs: Any) -> dict:
    """The inputs checked against the description's JSON Schemas, with defaults filled.

    Unknown inputs, missing required ones, values outside their schema and (for the
    templated processes) inconsistent combinations raise :class:`InputError` naming the
    input. Works for user processes' descriptions too.
    """
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, Mapping):
        raise InputError(f"inputs must be a JSON object, got {type(inputs).__name__}")
    declared = description.get("inputs") or {}
    if description.get("twinhub:kind") == "user":  # (also those stored before the rule)
        _check_user_schemas("input", declared)
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        raise InputError(
            f"unknown input {unknown[0]!r} for process {description.get('id')!r} "
            f"(it takes: {', '.join(declared) or 'none'})"
        )
    try:  # before any check runs: checks that would take too long are refused
        safe.check_work(safe.input_checks(declared, inputs, _unwrap))
    except safe.UnsafeSchema as err:
        raise InputError(str(err)) from None
    out: dict[str, Any] = {}
    for name, spec in declared.items():
        schema = spec.get("schema", {})
        lo, hi = spec.get("minOccurs", 1), spec.get("maxOccurs", 1)
        if name not in inputs or inputs[name] is None:
            if isinstance(schema, Mapping) and "default" in schema:
                out[name] = copy.deepcopy(schema["default"])
            elif lo and lo > 0:
                raise InputError(f"input {name!r} is required")
            continue
        value = copy.deepcopy(inputs[name])
        if isinstance(value, Mapping) and "href" in value and not _accepts(schema, value):
            raise InputError(f"input {name!r}: values by reference (href) are not supported")
        many = hi == "unbounded" or (isinstance(hi, int) and hi > 1)
        if many and isinstance(value, list) and not _accepts(schema, value):
            values = [_unwrap(v) for v in value]
            if len(values) < (lo or 0) or (isinstance(hi, int) and len(values) > hi):
                raise InputError(f"input {name!r} needs {lo} to {hi} values, got {len(values)}")
            for v in values:
                _check_value(name, schema, v)
            out[name] = [safe.fill_defaults(schema, v) for v in values]
            continue
        errors = _errors(name, schema, value)  # one check (a value that fits: the only one)
        if errors and _unwrap(value) is not value:
            value = _unwrap(value)
            errors = _errors(name, schema, value)
        _check_value(name, schema, value, errors)
        out[name] = safe.fill_defaults(schema, value)
    dt_name = description.get("twinhub:datetime_input")
    if dt_name and out.get(dt_name) is not None:
        try:
            parse_datetime(out[dt_name])
        except InputError as err:
            raise InputError(f"input {dt_name!r}: {err}") from None
    if description.get("twinhub:kind") == "templated":
        _check_templated(str(description.get("id")), out)
    return out


def _accepts(schema: Any, value: Any) -> bool:
    return isinstance(schema, Mapping) and safe.is_valid(dict(schema), value)


def _check_templated(pid: str, inputs: dict) -> None:
    """What one input's schema cannot say: combinations and geometry."""
    if pid == "area-mean":
        if ("bbox" in inputs) == ("polygon" in inputs):
            raise InputError("inputs 'bbox' and 'polygon': give exactly one of them")
        if "bbox" in inputs:
            try:
                check_bbox(inputs["bbox"])
            except ValueError as err:
                raise InputError(f"input 'bbox': {err}") from None
        else:
            _check_polygon(inputs["polygon"])
    elif pid == "climatology":
        pct = inputs.get("statistic") == "percentile"
        if pct and "percentile" not in inputs:
            raise InputError("input 'percentile' is required when statistic is 'percentile'")
        if not pct and "percentile" in inputs:
            raise InputError("input 'percentile' applies only to statistic 'percentile'")
    elif pid == "point-series":
        for lon, lat in inputs["points"]:
            if not (-180 <= lon <= 360 and -90 <= lat <= 90):
                raise InputError(f"input 'points': [{lon}, {lat}] is outside lon/lat")
    elif pid == "regrid":
        target = inputs["target"]
        if target["type"] == "latlon":
            res = float(target["resolution"])
            if abs(180.0 / res - round(180.0 / res)) > 1e-9 * 180.0 / res:
                raise InputError(f"input 'target': resolution {res} does not divide 180 degrees")


def _check_polygon(polygon: dict) -> None:
    for i, ring in enumerate(polygon["coordinates"]):
        if ring[0] != ring[-1]:
            raise InputError(f"input 'polygon': ring {i} is not closed (first != last position)")
        for lon, lat, *_ in ring:
            if not (-180 <= lon <= 360 and -90 <= lat <= 90 and math.isfinite(lon + lat)):
                raise InputError(f"input 'polygon': position [{lon}, {lat}] is outside lon/lat")


def target_cells(target: Mapping[str, Any]) -> int:
    """Number of cells of a regrid target grid (checked against the service's limit)."""
    kind = target.get("type")
    if kind == "latlon":
        res = float(target["resolution"])
        return int(round(180.0 / res) + 1) * int(round(360.0 / res))
    if kind == "healpix":
        return 12 * int(target["nside"]) ** 2
    if kind == "octahedral":
        n = int(target["n"])
        return 4 * n * n + 36 * n  # 2 * sum(20 + 4 (i - 1)) for i in 1..N
    raise InputError(f"input 'target': unknown grid type {kind!r}")


# -- user processes -------------------------------------------------------------------------
_PY_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array"}


def _check_user_schemas(what: str, specs: Mapping[str, Any]) -> None:
    for name, spec in specs.items():
        try:
            safe.check_user_schema(spec.get("schema") if isinstance(spec, Mapping) else None)
        except safe.UnsafeSchema as err:
            raise InputError(f"{what} {name!r}: {err}") from None


def _io_spec(name: str, spec: Any, *, is_input: bool) -> dict:
    """An OGC input/output description from a description, a bare JSON Schema or a type."""
    what = "input" if is_input else "output"
    if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", name):
        raise InputError(f"{what} name {name!r} must be a Python identifier (64 chars at most)")
    if isinstance(spec, type):
        if spec not in _PY_TYPES and spec is not dict:
            raise InputError(f"{what} {name!r}: type {spec.__name__} has no JSON Schema")
        spec = {"schema": {"type": _PY_TYPES.get(spec, "object")}}
    elif isinstance(spec, Mapping) and "schema" not in spec:
        spec = {"schema": dict(spec)}
    elif not isinstance(spec, Mapping):
        raise InputError(f"{what} {name!r}: expected a type, a JSON Schema or a description")
    spec = copy.deepcopy(dict(spec))
    if not isinstance(spec["schema"], Mapping):
        raise InputError(f"{what} {name!r}: its schema must be a JSON object")
    _check_user_schemas(what, {name: spec})
    try:
        safe.validator(spec["schema"])
    except safe.UnsafeSchema as err:
        raise InputError(f"{what} {name!r}: {err}") from None
    spec.setdefault("title", name)
    spec.setdefault("description", "")
    if is_input:
        spec.setdefault("minOccurs", 0 if "default" in spec["schema"] else 1)
        spec.setdefault("maxOccurs", 1)
    return spec


def describe_user_process(
    id: str,  # noqa: A002 - the OGC field's name
    title: str,
    description: str,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
    version: str,
    *,
    cluster: bool = True,
) -> dict:
    """An OGC process description of a registered Python function (same shape as TEMPLATED).

    ``inputs``/``outputs`` map names to an OGC input description, a bare JSON Schema or a
    Python type (str, int, float, bool, list, dict). Raises :class:`InputError`.
    """
    if not isinstance(id, str) or not PROCESS_ID_PATTERN.match(id):
        raise InputError(
            f"process id {id!r} must be 1-63 lowercase letters, digits, '.', '_' or '-'"
        )
    if not isinstance(inputs, Mapping) or not isinstance(outputs, Mapping):
        raise InputError("inputs and outputs must be mappings of name -> schema")
    if not outputs:
        raise InputError("a process needs at least one output")
    return _process(
        id,
        str(title or id),
        str(description or ""),
        ["user process"],
        {n: _io_spec(n, s, is_input=True) for n, s in inputs.items()},
        {n: _io_spec(n, s, is_input=False) for n, s in outputs.items()},
        **(
            _NO_LAKE
            | {"version": str(version or "1.0.0"), "kind": "user", "cluster": bool(cluster)}
        ),
    )
