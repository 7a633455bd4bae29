"""Quick-look PNGs: one field of a STAC item, on a regular lat-lon grid, coloured.

The item is opened with :func:`twinlab.datalake.open` (the user's own S3 keys), one time
step of one variable is put on a 1-degree lat-lon grid with :mod:`twinlab.grids`' nearest
regridding (weights cached in memory and on disk by twinlab.grids), and drawn with
matplotlib's object API (``Figure``, no pyplot: no global state shared between threads).
Rendered PNGs are kept in a small in-memory LRU so that re-opening an item is instant.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

#: The quick-look grid: 1 degree nodes, 181 x 360 (small enough to render in ~0.1 s).
GRID_STEP = 1.0
#: PNGs kept in memory (a few tens of kB each).
CACHE_ENTRIES = 64


class QuicklookError(ValueError):
    """The request cannot give a picture (unknown variable, bad time...): a 4xx answer."""


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
    import numpy as np

    from twinlab.grids import LatLon

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
) -> bytes:
    """The PNG of one field of ``item`` (a STAC item as JSON), cached by its parameters."""
    import twinlab.datalake as dl

    source = (item.get("properties") or {}).get("twinhub:source", "local")
    key = (source, item.get("collection"), item.get("id"), asset, variable, time)
    png = CACHE.get(key)
    if png is not None:
        return png
    try:
        ds = dl.open(dict(item), variable, asset=asset)
    except KeyError as e:  # unknown asset or variable: the request's fault
        raise QuicklookError(str(e).strip("'\"")) from None
    name = pick_variable(ds, variable)
    field, when = pick_time(ds[name], time)
    values, lats, lons = field_on_latlon(field)
    title = f"{item.get('id')} | {name}" + (f" | {when}" if when else "")
    png = render_png(values, lats, lons, title, str(field.attrs.get("units", "")))
    CACHE.put(key, png)
    return png
