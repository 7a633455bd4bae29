"""The explorer's state and logic, without any GUI: what the Panel app shows and does.

:class:`Explorer` holds one field (variable, level, time step), a :class:`View` (projection,
centre, zoom, size), a colour style and overlays, and answers: the map image, the overlays
in pixel coordinates, what a pan/zoom of the plot's ranges means for the view, and the
exact native cell (and its series over time) under a click.  Unit tests drive it directly.

Plot coordinates: the current view's pixels (x = column, y = rows counted up from the
bottom, as Bokeh's y axis runs), except in the Web Mercator view where they are EPSG:3857
metres so that Bokeh's tile sources (WMTS overlays) line up.  Either way
``plot = origin + pixel * scale``: exact, and the map is re-rendered at the new extent
after every pan or zoom, so the image's pixels are always the plot's pixels.
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import dataclass
from typing import Any

import numpy as np

from twinlab.grids import from_dataset, grid_attrs

from .colour import COLORMAPS
from .field import ChunkCache, Field
from .locate import cell_centers, nearest_index
from .overlays import Overlay, WMTSOverlay, as_dataset, overlay_from
from .projections import PROJECTIONS, View, check_view, forward, view_lonlat
from .render import METHODS, render_view

MAX_PIXELS = 4096 * 4096  # a view beyond this is refused (memory of the lon/lat arrays)
MAX_ZOOM = 2.0**20
_R = 6378137.0  # EPSG:3857's sphere: Web Mercator plot units are its metres
_MERC_MAX_LAT = 85.05112877980659


@dataclass(frozen=True)
class Series:
    """The values of one native cell over time (what a click on the map gives)."""

    index: int  # flat native index (C order over grid.shape)
    lon: float  # the cell's centre
    lat: float
    times: np.ndarray | None  # datetime64[ns], None when timeless
    values: np.ndarray  # float64 (ntimes,)
    variable: str
    units: str
    click_lon: float  # where the user clicked (a pixel centre)
    click_lat: float


def time_label(t: Any) -> str:
    return str(np.datetime_as_string(np.datetime64(t, "ns"), unit="m")).replace("T", " ")


class Explorer:
    """State + logic of ``twinlab.viz.explore`` (see the module doc)."""

    def __init__(
        self,
        obj: Any,
        variable: str | None = None,
        *,
        time: Any = None,
        projection: str = "platecarree",
        cmap: str | None = None,
        vmin: float | None = None,
        vmax: float | None = None,
        method: str = "nearest",
        overlays: Any = (),
        width: int = 900,
        height: int = 450,
        cache: ChunkCache | None = None,
    ) -> None:
        self.dataset = as_dataset(obj, variable)
        self.source = self.dataset.attrs.get("stac_item") or (obj if isinstance(obj, str) else "")
        self.variables = self._grid_variables()
        if not self.variables:
            raise ValueError("nothing to explore: no data variable on a grid twinlab detects")
        if variable is not None and variable not in self.variables:
            raise KeyError(
                f"no variable {variable!r} on a grid; variables: {', '.join(self.variables)}"
            )
        self.cache = cache if cache is not None else ChunkCache(256 * 2**20)
        self.cmap = self._check_cmap(cmap or "viridis")
        self.method = self._check_method(method)
        check_view(View(projection, width, height), MAX_PIXELS)
        self.view = View(projection, int(width), int(height))
        self.t = 0
        self._fixed_range = vmin is not None and vmax is not None
        self.vmin, self.vmax = vmin, vmax
        self._lonlat: tuple[View, np.ndarray, np.ndarray] | None = None
        self.selected: Series | None = None
        self.last_render_s = 0.0
        self.select(variable or self.variables[0], vmin=vmin, vmax=vmax)
        if (vmin is None) != (vmax is None):  # one end given: the other from the data
            self.set_style(vmin=vmin, vmax=vmax)
        if time is not None:
            self.set_time(time)
        self.overlays: list[Overlay] = [overlay_from(o) for o in overlays]

    # ---- the data ------------------------------------------------------------------
    def _grid_variables(self) -> list[str]:
        """The variables on a detected grid; a grid described only on the dataset is
        written onto each of its variables (Field and its helpers look at the variable)."""
        names, described = [], {}
        for name, da in self.dataset.data_vars.items():
            if da.ndim == 0:
                continue
            try:
                grid = from_dataset(self.dataset, str(name))
            except (ValueError, TypeError, KeyError):
                continue
            if "grid_type" not in da.attrs:
                described[name] = da.assign_attrs(grid_attrs(grid))
            names.append(str(name))
        if described:
            self.dataset = self.dataset.assign(described)
        return names

    def select(
        self,
        variable: str,
        levels: dict[str, Any] | None = None,
        *,
        vmin: float | None = None,
        vmax: float | None = None,
    ) -> None:
        """Show ``variable`` at ``levels`` (extra dims -> value; default: the first of each)."""
        if variable not in self.variables:
            raise KeyError(f"no variable {variable!r}; variables: {', '.join(self.variables)}")
        extra = Field.extra_dims(self.dataset, variable)
        chosen = dict(levels or {})
        for dim in chosen:
            if dim not in extra:
                raise KeyError(f"{variable} has no dimension {dim!r}; it has: {', '.join(extra)}")
        selection = {}
        for dim, values in extra.items():
            value = chosen.get(dim, values[0])
            if value not in list(values):
                raise ValueError(f"{dim}={value!r} is not one of {list(values)}")
            selection[dim] = value
        grid = from_dataset(self.dataset, variable)
        key = f"explore:{self.source or id(self.dataset)}/{variable}/{sorted(selection.items())}"
        self.field = Field.from_dataset(
            self.dataset, variable, grid=grid, selection=selection, cache=self.cache, key=key
        )
        if variable != getattr(self, "variable", variable):
            self._fixed_range = False  # another quantity: its own default range
        self.variable, self.levels, self.selection = variable, extra, selection
        self.t = min(self.t, self.field.ntimes - 1)
        if vmin is not None and vmax is not None:
            self.set_style(vmin=vmin, vmax=vmax)
        elif not self._fixed_range or self.vmin is None:
            self.vmin, self.vmax = self.field.value_range(self.t)
        if self.selected is not None:  # the same cell, now of this variable
            self.selected = self.click(self.selected.click_lon, self.selected.click_lat)

    @property
    def grid(self) -> Any:
        return self.field.grid

    @property
    def times(self) -> np.ndarray | None:
        return self.field.times

    @property
    def time_labels(self) -> list[str]:
        return [] if self.times is None else [time_label(t) for t in self.times]

    def set_level(self, dim: str, value: Any) -> None:
        self.select(self.variable, {**self.selection, dim: value})

    def set_time(self, t: Any) -> None:
        """Time step ``t``: an index, or a time (the nearest valid time)."""
        if isinstance(t, int | np.integer) and not isinstance(t, bool):
            if not 0 <= int(t) < self.field.ntimes:
                raise IndexError(f"time step {t} is outside 0..{self.field.ntimes - 1}")
            self.t = int(t)
            return
        if self.times is None:
            raise ValueError(f"{self.variable} has no time dimension")
        target = np.datetime64(str(t).replace("Z", ""), "ns") if isinstance(t, str) else t
        self.t = int(np.argmin(np.abs(self.times - np.datetime64(target, "ns"))))

    # ---- style ---------------------------------------------------------------------
    @staticmethod
    def _check_cmap(cmap: str) -> str:
        if cmap not in COLORMAPS:
            raise ValueError(f"unknown colour map {cmap!r}; known: {', '.join(COLORMAPS)}")
        return cmap

    @staticmethod
    def _check_method(method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        return method

    def set_style(
        self,
        cmap: str | None = None,
        vmin: float | None = None,
        vmax: float | None = None,
        method: str | None = None,
    ) -> None:
        lo = self.vmin if vmin is None else float(vmin)
        hi = self.vmax if vmax is None else float(vmax)
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            raise ValueError(f"colour range needs finite vmin < vmax, got {lo!r}..{hi!r}")
        self.cmap = self._check_cmap(cmap) if cmap is not None else self.cmap
        self.method = self._check_method(method) if method is not None else self.method
        if vmin is not None or vmax is not None:
            self._fixed_range = True
        self.vmin, self.vmax = lo, hi

    def auto_range(self) -> tuple[float, float]:
        """Back to the field's default range (of the current time step)."""
        self.vmin, self.vmax = self.field.value_range(self.t)
        self._fixed_range = False
        return self.vmin, self.vmax

    # ---- the view ------------------------------------------------------------------
    def set_view(
        self,
        *,
        projection: str | None = None,
        center_lon: float | None = None,
        center_lat: float | None = None,
        zoom: float | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> View:
        v = self.view
        lat = v.center_lat if center_lat is None else float(center_lat)
        proj = projection or v.projection
        if proj == "webmercator":
            lat = float(np.clip(lat, -_MERC_MAX_LAT, _MERC_MAX_LAT))
        lon = v.center_lon if center_lon is None else float(center_lon)
        new = View(
            proj,
            int(width or v.width),
            int(height or v.height),
            float(np.mod(lon + 180.0, 360.0) - 180.0),
            float(np.clip(lat, -90.0, 90.0)),
            float(np.clip(v.zoom if zoom is None else zoom, 1.0, MAX_ZOOM)),
        )
        check_view(new, MAX_PIXELS)
        self.view = new
        return new

    def set_projection(self, projection: str) -> View:
        if projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {projection!r}; known: {', '.join(PROJECTIONS)}")
        # a new projection starts whole; the globe keeps facing the current centre
        return self.set_view(projection=projection, zoom=1.0)

    def reset_view(self) -> View:
        return self.set_view(center_lon=0.0, center_lat=0.0, zoom=1.0)

    def lonlat(self) -> tuple[np.ndarray, np.ndarray]:
        """(height, width) pixel-centre lon/lat of the current view (cached)."""
        if self._lonlat is None or self._lonlat[0] != self.view:
            lon, lat = view_lonlat(self.view)
            self._lonlat = (self.view, lon, lat)
        return self._lonlat[1], self._lonlat[2]

    def image(self) -> np.ndarray:
        """(height, width, 4) RGBA of the field at the current time, view and style
        (``render_view``: it keeps each view's pixel -> cell geometry, so stepping through
        time or changing the colours only reads values)."""
        start = _time.perf_counter()
        rgba = render_view(
            self.field, self.t, self.view, method=self.method, cmap=self.cmap,
            vmin=self.vmin, vmax=self.vmax,
        )  # fmt: skip
        self.last_render_s = _time.perf_counter() - start
        return rgba

    @property
    def time_value(self) -> np.datetime64 | None:
        return None if self.times is None else self.times[self.t]

    def overlay_images(self) -> list[tuple[str, np.ndarray]]:
        """(name, RGBA) of every raster and layer overlay for the current view and time."""
        lon, lat = self.lonlat()
        return [
            (o.name, o.image(lon, lat, self.time_value))
            for o in self.overlays
            if o.kind in ("raster", "layer")
        ]

    def overlay_paths(self) -> list[tuple[str, list[np.ndarray], list[np.ndarray]]]:
        """(name, xs, ys) of every vector overlay's lines in plot coordinates."""
        out = []
        for o in self.overlays:
            if o.kind == "vector":
                xs, ys = o.paths(self.view)
                pairs = [self.to_plot(x, y) for x, y in zip(xs, ys, strict=True)]
                out.append((o.name, [p[0] for p in pairs], [p[1] for p in pairs]))
        return out

    def overlay_points(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        out = []
        for o in self.overlays:
            if o.kind == "vector" and len(o.points):
                out.append((o.name, *self.to_plot(*o.point_xy(self.view))))
        return out

    def wmts_overlays(self) -> list[WMTSOverlay]:
        """Tile overlays: shown in the Web Mercator view only (see :mod:`.overlays`)."""
        return [o for o in self.overlays if o.kind == "wmts"]

    def add_overlay(self, spec: Any) -> Overlay:
        o = overlay_from(spec)
        self.overlays.append(o)
        return o

    # ---- plot coordinates ----------------------------------------------------------
    def frame(self) -> tuple[float, float, float]:
        """(x of the left edge, y of the top edge, plot units per pixel) of the view."""
        v = self.view
        if v.projection != "webmercator":
            return 0.0, float(v.height), 1.0
        # pixels per degree of longitude at the equator (linear in Web Mercator)
        x1 = float(forward(v, v.center_lon + 1.0, 0.0)[0]) - v.width / 2
        m = _R * math.pi / 180.0 / x1  # metres per pixel
        phi = math.radians(float(np.clip(v.center_lat, -_MERC_MAX_LAT, _MERC_MAX_LAT)))
        yc = _R * math.log(math.tan(math.pi / 4 + phi / 2))
        xc = _R * math.radians(v.center_lon)
        return xc - v.width / 2 * m, yc + v.height / 2 * m, m

    def to_plot(self, px: Any, py: Any) -> tuple[np.ndarray, np.ndarray]:
        x0, top, m = self.frame()
        return x0 + np.asarray(px, dtype=np.float64) * m, top - np.asarray(py, dtype=np.float64) * m

    def from_plot(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        x0, top, m = self.frame()
        return (np.asarray(x, dtype=np.float64) - x0) / m, (
            top - np.asarray(y, dtype=np.float64)
        ) / m

    def extent(self) -> tuple[float, float, float, float]:
        """(x0, x1, y0, y1) of the whole image in plot coordinates (the ranges to show)."""
        x0, top, m = self.frame()
        return x0, x0 + self.view.width * m, top - self.view.height * m, top

    def pixel_lonlat(self, px: float, py: float) -> tuple[float, float]:
        """lon/lat of the centre of the pixel containing (px, py); NaN off the map."""
        v = self.view
        col, row = math.floor(px), math.floor(py)
        if not (0 <= col < v.width and 0 <= row < v.height):
            return math.nan, math.nan
        lon, lat = self.lonlat()
        return float(lon[row, col]), float(lat[row, col])

    def _lat_at_row(self, py: float) -> float:
        """Flat maps: the latitude at pixel row ``py`` (bisection on ``forward``), clamped
        to the map's top/bottom."""
        v = self.view
        top = _MERC_MAX_LAT if v.projection == "webmercator" else 90.0
        lo, hi = -top, top  # forward's y falls as latitude grows
        if py <= float(forward(v, v.center_lon, hi)[1]):
            return hi
        if py >= float(forward(v, v.center_lon, lo)[1]):
            return lo
        for _ in range(60):
            mid = (lo + hi) / 2
            if float(forward(v, v.center_lon, mid)[1]) > py:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    def set_ranges(self, x0: float, x1: float, y0: float, y1: float) -> bool:
        """The plot now shows [x0, x1] x [y0, y1] (a pan or zoom): the view whose image
        covers that; True when the view changed.  On the globe a pan rotates it."""
        (p0, p1), (q1, q0) = self.from_plot([x0, x1], [y0, y1])
        v = self.view
        if not all(math.isfinite(a) for a in (p0, p1, q0, q1)) or p1 <= p0:
            return False
        zoom = v.zoom * v.width / (p1 - p0)
        cx, cy = (p0 + p1) / 2, (q0 + q1) / 2
        if v.projection == "orthographic":
            r = min(v.width, v.height) / 2 * v.zoom * 0.999  # the disc's radius in pixels
            dx, dy = cx - v.width / 2, cy - v.height / 2
            d = math.hypot(dx, dy)
            if d > r:  # dragged beyond the disc: turn to its edge
                cx, cy = v.width / 2 + dx * r / d, v.height / 2 + dy * r / d
            lon, lat = self.pixel_lonlat(
                min(max(cx, 0), v.width - 1), min(max(cy, 0), v.height - 1)
            )
            if not math.isfinite(lon):
                lon, lat = v.center_lon, v.center_lat
        else:
            per_deg = float(forward(v, v.center_lon + 1.0, 0.0)[0]) - v.width / 2
            lon = v.center_lon + (cx - v.width / 2) / per_deg
            lat = self._lat_at_row(cy)
        before = self.view
        self.set_view(center_lon=lon, center_lat=lat, zoom=zoom)
        return self.view != before

    # ---- clicks --------------------------------------------------------------------
    def click(self, lon: float, lat: float) -> Series:
        """The native cell containing / nearest to (lon, lat) and its values over all times."""
        if not (math.isfinite(lon) and math.isfinite(lat) and -90 <= lat <= 90):
            raise ValueError(f"no map point at lon={lon!r}, lat={lat!r}")
        index = int(nearest_index(self.grid, np.array([lon]), np.array([lat]))[0])
        clon, clat = cell_centers(self.grid, np.array([index]))
        values = np.asarray(self.field.read_series(np.array([index])), dtype=np.float64)[:, 0]
        self.selected = Series(
            index=index,
            lon=float(np.asarray(clon).ravel()[0]),
            lat=float(np.asarray(clat).ravel()[0]),
            times=self.times,
            values=values,
            variable=self.variable,
            units=self.field.units,
            click_lon=float(lon),
            click_lat=float(lat),
        )
        return self.selected

    def click_plot(self, x: float, y: float) -> Series | None:
        """A click at plot coordinates: the cell drawn at that pixel (None off the map)."""
        px, py = self.from_plot(x, y)
        lon, lat = self.pixel_lonlat(float(px), float(py))
        if not math.isfinite(lon):
            return None
        return self.click(lon, lat)

    def marker(self) -> tuple[float, float] | None:
        """Plot coordinates of the selected cell's centre (None: none, or hidden)."""
        if self.selected is None:
            return None
        px, py = forward(self.view, self.selected.lon, self.selected.lat)
        if not (np.isfinite(px) and np.isfinite(py)):
            return None
        x, y = self.to_plot(px, py)
        return float(x), float(y)

    def apply_state(self, state: dict[str, Any]) -> None:
        """Show what :meth:`state` described (e.g. from a shared URL); absent keys keep
        their value.  A bad value raises ValueError/KeyError naming it."""
        if "variable" in state or "levels" in state:
            levels = state.get("levels") or {}
            variable = state.get("variable") or self.variable
            extra = Field.extra_dims(self.dataset, variable) if variable in self.variables else {}
            # levels travel as text in URLs: back to the dimension's own values
            typed = {
                d: next((v for v in extra.get(d, []) if str(v) == str(val)), val)
                for d, val in levels.items()
            }
            self.select(variable, typed)
        if state.get("time") is not None:
            self.set_time(state["time"])
        center = state.get("center") or (None, None)
        self.set_view(
            projection=state.get("projection"),
            center_lon=center[0],
            center_lat=center[1],
            zoom=state.get("zoom"),
        )
        self.set_style(
            cmap=state.get("cmap"),
            vmin=state.get("vmin"),
            vmax=state.get("vmax"),
            method=state.get("method"),
        )

    def state(self) -> dict[str, Any]:
        """What a shareable URL needs to show the same map again."""
        v = self.view
        return {
            "item": self.source,
            "variable": self.variable,
            "levels": {k: str(val) for k, val in self.selection.items()},
            "time": None if self.time_value is None else time_label(self.time_value),
            "projection": v.projection,
            "center": [round(v.center_lon, 4), round(v.center_lat, 4)],
            "zoom": round(v.zoom, 4),
            "cmap": self.cmap,
            "vmin": self.vmin,
            "vmax": self.vmax,
            "method": self.method,
        }
