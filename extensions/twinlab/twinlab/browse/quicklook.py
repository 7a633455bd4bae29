"""Quick-look PNGs: one field of a STAC item, on a regular lat-lon grid, coloured.

The item is opened with :func:`twinlab.datalake.open` (the user's own S3 keys), one time
step of one variable is put on a 1-degree lat-lon grid with :mod:`twinlab.grids`' nearest
regridding (weights cached in memory and on disk by twinlab.grids), and drawn with
matplotlib's object API (``Figure``, no pyplot: no global state shared between threads).
Rendered PNGs are kept in a small in-memory LRU so that re-opening an item is instant.

Any user may put items into the STAC API, and the page draws an item when clicked, so the
data read is limited to what the user could read anyway through the platform
(:func:`check_href`): ``s3://`` objects on the user's own buckets (home, lake, projects in
``$TWINHUB_STORAGE``) or federated assets through the platform's cache; never local files
nor other hosts.  The bytes read are capped (:data:`MAX_BYTES`).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from twinlab import environment
from twinlab.contract import FIELD_SOURCE, LOCAL_SOURCE
from twinlab.datalake.items import choose_asset, open_item
from twinlab.datalake.remote import asset_href, cache_url, is_cache_href

from .storage import StorageError, buckets

#: The quick-look grid: 1 degree nodes, 181 x 360 (small enough to render in ~0.1 s).
GRID_STEP = 1.0
#: PNGs kept in memory (a few tens of kB each).
CACHE_ENTRIES = 64
#: Most bytes a quick-look reads: a GRIB file copied whole, or the one field drawn;
#: ``$TWINLAB_QUICKLOOK_MAX_BYTES`` overrides it.
MAX_BYTES = 512 << 20


class QuicklookError(ValueError):
    """The request cannot give a picture (unknown variable, bad time...): a 4xx answer."""


class QuicklookRefused(PermissionError):
    """The item's data is somewhere a quick-look does not read (a 403; the message says why)."""


class QuicklookTooLarge(Exception):
    """The data to read for the picture is over :func:`max_bytes` (a 413)."""


def max_bytes() -> int:
    """The quick-look byte cap: ``$TWINLAB_QUICKLOOK_MAX_BYTES`` or :data:`MAX_BYTES`."""
    return environment.integer(environment.ENV_QUICKLOOK_MAX_BYTES, MAX_BYTES)


def readable_buckets() -> set[str]:
    """The user's buckets (home, lake, projects) as ``$TWINHUB_STORAGE`` lists them."""
    try:
        return {b["name"] for b in buckets()}
    except StorageError:  # not a twinhub server: no bucket is known to be the user's
        return set()


def check_href(href: str) -> str:
    """``href`` if a quick-look may read it, else :class:`QuicklookRefused` naming why.

    Allowed: ``s3://<bucket>/...`` on one of :func:`readable_buckets`, and URLs under
    ``$TWINHUB_CACHE_URL`` (federated assets; without ``.``/``..`` segments, which would
    leave the cache with the server's token)."""
    parts = urlsplit(href)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        bucket, _, key = href[len("s3://") :].partition("/")  # how s3fs splits it
        allowed = readable_buckets()
        if bucket not in allowed:
            raise QuicklookRefused(
                f"{href[:200]} is on bucket {bucket!r}, not one of this user's buckets "
                f"({', '.join(sorted(allowed)) or 'none configured'})"
            )
        if {".", ".."} & set(key.split("/")):  # a store that resolves them leaves the bucket
            raise QuicklookRefused(f"{href[:200]} has a '.' or '..' segment")
        return href
    if scheme in ("http", "https"):
        segments = unquote(parts.path).split("/")
        if is_cache_href(href) and not {".", ".."} & set(segments):
            return href
        raise QuicklookRefused(
            f"{href[:200]} is on host {parts.netloc!r}: a quick-look reads URLs only under "
            f"the platform's cache ({cache_url() or 'TWINHUB_CACHE_URL is not set'})"
        )
    if scheme in ("", "file") or len(scheme) == 1:  # a path (or a Windows drive letter)
        raise QuicklookRefused(
            f"{href[:200]} is a local file: a quick-look reads only s3:// objects of "
            "the user's buckets and the platform's cache"
        )
    raise QuicklookRefused(f"{href[:200]}: a quick-look does not read {scheme}:// URLs")


def byte_cap(limit: int) -> Callable[[int, int], None]:
    """A download progress callback (``progress(done, total)``) that stops a copy whose size
    or bytes so far are over ``limit``."""

    def report(done: int, total: int) -> None:
        if max(done, total) > limit:
            raise QuicklookTooLarge(
                f"the item's file is {max(done, total)} bytes, over the quick-look limit of "
                f"{limit} bytes: open it in a notebook instead"
            )

    return report


class PngCache:
    """A thread-safe LRU of rendered PNGs keyed by the request's parameters."""

    def __init__(self, size: int = CACHE_ENTRIES) -> None:
        self.size = size
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            png = self._items.get(key)
            if png is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return png

    def put(self, key: tuple, png: bytes) -> None:
        with self._lock:
            self._items[key] = png
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


CACHE = PngCache()


def pick_variable(ds: Any, variable: str | None) -> str:
    names = [str(n) for n in ds.data_vars]
    if variable:
        if variable not in names:
            raise QuicklookError(
                f"no variable {variable!r} in this asset; it has: {', '.join(names) or 'none'}"
            )
        return variable
    if not names:
        raise QuicklookError("the asset has no data variables")
    return names[0]


def pick_time(da: Any, time: str | None) -> tuple[Any, str]:
    """``da`` at one time step: ``time`` as an index ("0", "-1") or a timestamp (nearest);
    default the first.  Returns the field and the time's label."""
    # start-up cost: the data stack loads with the first quick-look
    import numpy as np
    import pandas as pd

    tdim = next((d for d in da.dims if d in ("time", "valid_time", "step")), None)
    if tdim is None:
        for d in list(da.dims):  # other non-spatial singleton dimensions
            if da.sizes[d] == 1 and d not in ("cell", "values", "latitude", "longitude"):
                da = da.isel({d: 0})
        return da, ""
    n = da.sizes[tdim]
    if time is None or time == "":
        i = 0
    elif time.lstrip("-").isdigit():
        i = int(time)
        if not -n <= i < n:
            raise QuicklookError(f"time index {i} outside 0..{n - 1}")
    else:
        try:
            want = pd.Timestamp(time)
        except (ValueError, TypeError):
            raise QuicklookError(
                f"time {time!r} is neither an index nor a timestamp (e.g. 2030-01-01T06:00)"
            ) from None
        if want.tzinfo is not None:
            want = want.tz_convert("UTC").tz_localize(None)
        values = da[tdim].values
        if not np.issubdtype(values.dtype, np.datetime64):
            raise QuicklookError(f"dimension {tdim!r} is not a time axis")
        i = int(np.abs(values - np.datetime64(want.to_datetime64())).argmin())
    field = da.isel({tdim: i})
    label = str(field[tdim].values)[:16] if tdim in field.coords else str(i)
    return field, label.replace("T", " ")


def field_on_latlon(field: Any) -> tuple[Any, Any, Any]:
    """(values[lat, lon], lats, lons) with longitudes in -180..180, north first."""
    # start-up cost: the data stack (xarray with twinlab.grids) loads with the first quick-look
    import numpy as np

    from twinlab.grids import LatLon  # start-up cost (see above)

    target = LatLon(GRID_STEP)
    try:
        out = field.grid.regrid(target, method="nearest")
    except (KeyError, ValueError) as e:
        raise QuicklookError(f"cannot put this field on a lat-lon grid: {e}") from None
    values = np.asarray(out.values, dtype="float64")
    lons = np.asarray(target.longitudes())
    lats = np.asarray(target.latitudes())
    order = np.argsort(((lons + 180.0) % 360.0) - 180.0)  # 0..360 -> -180..180 columns
    return values[:, order], lats, ((lons[order] + 180.0) % 360.0) - 180.0


def render_png(values: Any, lats: Any, lons: Any, title: str, units: str) -> bytes:
    """A 720 px wide PNG: the field (equirectangular), a colour bar, a title."""
    # start-up cost: matplotlib loads with the first quick-look
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 3.9), dpi=100)
    ax = fig.add_axes((0.06, 0.1, 0.78, 0.78))
    finite = values[np.isfinite(values)]
    vmin, vmax = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    im = ax.imshow(
        values,
        extent=(lons.min() - GRID_STEP / 2, lons.max() + GRID_STEP / 2, -90, 90),
        origin="upper" if lats[0] > lats[-1] else "lower",
        cmap="viridis",
        vmin=vmin,
        vmax=vmax if vmax > vmin else vmin + 1,
        interpolation="nearest",
        aspect="auto",
    )
    ax.set_xticks(range(-180, 181, 60))
    ax.set_yticks(range(-90, 91, 30))
    ax.grid(color="white", alpha=0.3, linewidth=0.5)
    ax.set_title(title, fontsize=9)
    cax = fig.add_axes((0.86, 0.1, 0.025, 0.78))
    fig.colorbar(im, cax=cax).set_label(units, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def quicklook(
    item: Mapping[str, Any],
    asset: str | None = None,
    variable: str | None = None,
    time: str | None = None,
    *,
    check: Callable[[str], Any] = check_href,
) -> bytes:
    """The PNG of one field of ``item`` (a STAC item as JSON), cached by its parameters.

    ``check(href)`` raises for data the picture must not read (default :func:`check_href`;
    tests drawing local files pass their own)."""
    import pystac  # start-up cost: loads with the first quick-look

    source = (item.get("properties") or {}).get(FIELD_SOURCE, LOCAL_SOURCE)
    try:
        stac_item = pystac.Item.from_dict(dict(item))
        asset_key, chosen, _ = choose_asset(stac_item, asset)
        # where open_item will read, checked before anything is read (and before the cache:
        # the user's buckets may have changed since the picture was drawn)
        check(asset_href(stac_item, asset_key, chosen))
    except KeyError as e:  # unknown asset: the request's fault
        raise QuicklookError(str(e).strip("'\"")) from None
    key = (source, item.get("collection"), item.get("id"), asset, variable, time)
    png = CACHE.get(key)
    if png is not None:
        return png
    limit = max_bytes()
    try:
        ds = open_item(stac_item, variable, asset=asset_key, progress=byte_cap(limit))
    except KeyError as e:  # unknown variable: the request's fault
        raise QuicklookError(str(e).strip("'\"")) from None
    name = pick_variable(ds, variable)
    field, when = pick_time(ds[name], time)
    if field.nbytes > limit:  # Zarr/NetCDF read lazily: what would be loaded
        raise QuicklookTooLarge(
            f"one time step of {name!r} is {field.nbytes} bytes, over the quick-look limit "
            f"of {limit} bytes"
        )
    values, lats, lons = field_on_latlon(field)
    title = f"{item.get('id')} | {name}" + (f" | {when}" if when else "")
    png = render_png(values, lats, lons, title, str(field.attrs.get("units", "")))
    CACHE.put(key, png)
    return png
