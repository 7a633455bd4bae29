"""The agreement between the hub and the user side, in one dependency-free module.

The hub (``twinhub``) writes what user servers, kernels and Dask workers read: environment
variables, the ``twinhub:*`` fields of STAC items and collections, and the rules a bbox or
datetime follows. Both sides import the names from here, so neither spells them as string
literals. Importing this module imports nothing but the standard library (a test checks it),
so the hub can use it without loading twinlab's numerical stack.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TypeAlias

# -- environment of user servers (and, where said, Dask workers) -------------------------
#: The STAC API's root through the proxy on loopback (the data lake).
ENV_STAC_URL: Final = "TWINHUB_STAC_URL"
#: The rolling cache's root through the proxy on loopback.
ENV_CACHE_URL: Final = "TWINHUB_CACHE_URL"
#: JSON: {"endpoint", "lake_bucket", "home_bucket", "credentials", "project_buckets"}.
ENV_STORAGE: Final = "TWINHUB_STORAGE"
#: JSON: service name -> public URL of every service the user may use.
ENV_SERVICES: Final = "TWINHUB_SERVICES"
#: The slug of the profile the server was started with.
ENV_PROFILE: Final = "TWINHUB_PROFILE"
#: "1" when the server's memory/CPU limits are enforced (cgroups), "0" when advisory.
ENV_LIMITS_ENFORCED: Final = "TWINHUB_LIMITS_ENFORCED"
#: The platform instance every process of it carries (orphan clean-up).
ENV_INSTANCE: Final = "TWINHUB_INSTANCE"
#: S3 endpoint and keys of the user (servers and the user's Dask workers).
ENV_S3_ENDPOINT: Final = "AWS_ENDPOINT_URL"
ENV_S3_ACCESS_KEY: Final = "AWS_ACCESS_KEY_ID"
ENV_S3_SECRET_KEY: Final = "AWS_SECRET_ACCESS_KEY"
ENV_S3_REGION: Final = "AWS_DEFAULT_REGION"
#: JupyterHub's own: the server's token and the hub's API.
ENV_HUB_TOKEN: Final = "JUPYTERHUB_API_TOKEN"
ENV_HUB_API_URL: Final = "JUPYTERHUB_API_URL"
#: JupyterHub's spawner's: the server's user and its memory (bytes) and CPU limits.
ENV_HUB_USER: Final = "JUPYTERHUB_USER"
ENV_MEM_LIMIT: Final = "MEM_LIMIT"
ENV_CPU_LIMIT: Final = "CPU_LIMIT"

# -- twinhub:* fields of STAC items and collections ---------------------------------------
#: (item property) where an item comes from: "local" for the lake, else the source's name.
FIELD_SOURCE: Final = "twinhub:source"
#: (search answer) per-source counts and errors of a federated search.
FIELD_SOURCES: Final = "twinhub:sources"
#: (search answer) what the search could not do everywhere (a filter a source lacks...).
FIELD_WARNINGS: Final = "twinhub:warnings"
#: (asset) why the platform will not fetch this asset.
FIELD_REFUSED: Final = "twinhub:refused"
#: (item property / asset) the grid of the data: its name, e.g. "healpix-nside64-nested".
FIELD_GRID: Final = "twinhub:grid"
FIELD_GRID_ID: Final = "twinhub:grid_id"
#: (asset) the variable an asset holds.
FIELD_VARIABLE: Final = "twinhub:variable"
#: (collection) the user who owns a collection they made.
FIELD_OWNER: Final = "twinhub:owner"
#: (collection) the sample data's version and size.
FIELD_SEED: Final = "twinhub:seed"
FIELD_SIZE: Final = "twinhub:size"
#: The value of FIELD_SOURCE for the lake's own items.
LOCAL_SOURCE: Final = "local"


# -- named input types of the public API (like pystac-client's) ---------------------------
#: A bbox: 4 (2-D) or 6 (3-D) numbers west, south, (low,) east, north, (high), or the same
#: as a comma-separated string (a GET query's form).
BBox: TypeAlias = Sequence[float] | str
#: A STAC datetime: an instant or "start/end" (".." for an open end) as a string, a
#: ``datetime``/``date``, or a (start, end) pair of those (None for an open end).
DatetimeLike: TypeAlias = (
    str
    | _dt.date
    | tuple[_dt.date | str | None, _dt.date | str | None]
    | Sequence[_dt.date | str | None]
)
#: Federated source names: a list, or a comma-separated string ("local" is the lake).
Sources: TypeAlias = Sequence[str] | str


# -- the shared bbox and datetime rules ---------------------------------------------------
def check_bbox(value: object) -> list[float]:
    """``value`` as 4 (2-D) or 6 (3-D) finite floats, west/south/(low)/east/north/(high).

    Longitudes within [-180, 180], latitudes within [-90, 90], south <= north and (3-D)
    low <= high; west > east is allowed (a box across the antimeridian, as STAC says).
    A comma-separated string (a GET query's form, ``"-10,35,30,60"``) is accepted too.
    Raises ``ValueError`` naming the problem.
    """
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, Mapping) or not (
        isinstance(value, Sequence) or (isinstance(value, Iterable) and hasattr(value, "__len__"))
    ):  # a NumPy array has a length too
        raise ValueError(f"bbox must be 4 or 6 numbers, got {type(value).__name__}")
    items: list[Any] = list(value)
    if len(items) not in (4, 6):
        raise ValueError(f"bbox must have 4 or 6 numbers, got {len(items)}: {items!r}")
    try:
        vals = [float(v) for v in items]
    except (TypeError, ValueError):
        raise ValueError(f"bbox must be 4 or 6 numbers, got {items!r}") from None
    check_finite(vals)
    half = len(vals) // 2
    west, south, east, north = vals[0], vals[1], vals[half], vals[half + 1]
    for name, v in (("west", west), ("east", east)):
        if not -180 <= v <= 180:
            raise ValueError(f"bbox {name} longitude {v} outside [-180, 180]")
    check_latitudes(south, north)
    if len(vals) == 6 and vals[2] > vals[5]:
        raise ValueError(f"bbox lowest elevation {vals[2]} above highest {vals[5]}")
    return vals


def check_finite(vals: Sequence[float]) -> None:
    """``ValueError`` unless every bbox value is finite (no NaN, no infinity)."""
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"bbox has non-finite values: {list(vals)} (they must be finite)")


def check_latitudes(south: float, north: float) -> None:
    """``ValueError`` unless -90 <= south <= north <= 90 (a bbox's latitudes)."""
    for name, v in (("south", south), ("north", north)):
        if not -90 <= v <= 90:
            raise ValueError(f"bbox {name} latitude {v} outside [-90, 90]")
    if south > north:
        raise ValueError(f"bbox south {south} is north of north {north} (it needs south <= north)")


_YEAR_MONTH = re.compile(r"\d{4}(-\d{2})?")


def _check_instant(text: str, whole: str) -> None:
    if text in ("", ".."):
        return
    t = text.strip()
    # RFC 3339 and the shorter forms pystac-client expands (YYYY, YYYY-MM, YYYY-MM-DD)
    if _YEAR_MONTH.fullmatch(t):
        _, _, month = t.partition("-")
        if month and not 1 <= int(month) <= 12:
            raise ValueError(f"datetime {whole!r}: month {month} in {t!r} is not 1..12")
        return
    try:
        _dt.datetime.fromisoformat(t.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"datetime {whole!r}: {t!r} is not a date or RFC 3339 timestamp "
            "(e.g. 2020-01-01, 2020-01-01T00:00:00Z, 2020-01-01/2020-01-31, 2020-01-01/..)"
        ) from None


def _as_datetime(text: str) -> _dt.datetime:
    t = text.strip()
    if _YEAR_MONTH.fullmatch(t):
        t = t + ("-01-01" if len(t) == 4 else "-01")
    d = _dt.datetime.fromisoformat(t)
    return d if d.tzinfo else d.replace(tzinfo=_dt.UTC)


def check_datetime(value: object) -> object:
    """Check a STAC datetime: a string (instant or ``start/end`` with ``..`` for open
    ends), a ``datetime``/``date``, or a (start, end) pair of those; returned unchanged.
    Raises ``ValueError`` naming the problem."""
    if value is None or isinstance(value, _dt.date):
        return value
    if isinstance(value, str):
        parts = value.split("/")
        if len(parts) > 2 or not value.strip():
            raise ValueError(f"datetime {value!r} must be one instant or 'start/end'")
        for p in parts:
            _check_instant(p, value)
        if len(parts) == 2 and parts[0] in ("", "..") and parts[1] in ("", ".."):
            raise ValueError(f"datetime {value!r} has no start and no end")
        bounded = len(parts) == 2 and ".." not in parts and "" not in parts
        if bounded and _as_datetime(parts[0]) > _as_datetime(parts[1]):
            raise ValueError(f"datetime {value!r}: start is after end")
        return value
    if isinstance(value, Sequence) and len(value) == 2:
        for v in value:
            if v is not None and not isinstance(v, _dt.date):
                check_datetime(str(v))
        return value
    raise ValueError(f"datetime must be a string, a datetime or a (start, end) pair, got {value!r}")
