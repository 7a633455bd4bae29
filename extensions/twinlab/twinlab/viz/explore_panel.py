"""The Panel app of ``twinlab.viz.explore``: a thin shell over :class:`.explore_state.Explorer`.

The map is a Bokeh figure whose frame is exactly the view's ``width`` x ``height`` pixels and
holds one RGBA image from the renderer; Bokeh's pan/wheel-zoom move the image at once in the
browser, and when the gesture ends (Bokeh's ``RangesUpdate``, sent once per gesture) the
explorer re-renders the new extent and the ranges snap back to the image.  A tap asks the
explorer for the native cell drawn under that pixel and plots its series beside the map.

The globe is the renderer's own orthographic view, not deck.gl's GlobeView: every pixel of
it is its native cell (poles included, exact like the flat maps, clicks included), and it
needs nothing beyond Panel/Bokeh's own resources; GlobeView drapes Web Mercator texture
tiles (no data beyond +-85 deg latitude, the polar caps missing) and its JavaScript would
have to be bundled and served with the app (no CDN here).  Dragging the globe rotates it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np
import panel as pn
from bokeh.events import RangesUpdate, Tap
from bokeh.models import ColorBar, ColumnDataSource, LinearColorMapper, Range1d, WMTSTileSource
from bokeh.plotting import figure

from .colour import COLORMAPS, colormap_lut
from .explore_state import Explorer, time_label

PROJECTION_LABELS = {
    "Plate carrée (WGS84)": "platecarree",
    "Web Mercator": "webmercator",
    "Robinson": "robinson",
    "Mollweide": "mollweide",
    "Globe (orthographic)": "orthographic",
}


def _rgba_image(rgba: np.ndarray) -> np.ndarray:
    """(h, w, 4) uint8, row 0 at the top -> Bokeh's (h, w) uint32, row 0 at the bottom."""
    flipped = np.ascontiguousarray(rgba[::-1], dtype=np.uint8)
    return flipped.view(np.uint32).reshape(flipped.shape[:2])


def _palette(cmap: str) -> list[str]:
    lut = colormap_lut(cmap)
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in lut[:, :3].tolist()]


class ExplorerApp:
    """The widgets, the map and the series chart around an :class:`Explorer`.

    ``make`` builds the explorer; it runs when the page has loaded (``pn.state.onload``:
    at once in a notebook), so a served page shows its status line while an item opens.
    """

    def __init__(
        self, make: Callable[[], Explorer], *, width: int, height: int, title: str = ""
    ) -> None:
        self._make = make
        self.ex: Explorer | None = None
        self.width, self.height = int(width), int(height)
        self._syncing = False
        self.status = pn.pane.Str("Opening the data…", css_classes=["twinlab-explore-status"])
        self.busy = pn.indicators.LoadingSpinner(value=True, size=24)
        self.variable = pn.widgets.Select(label="Variable", options=[], width=200)
        self.levels = pn.Column(width=200)
        self.time = pn.widgets.IntSlider(label="Time step", start=0, end=1, value=0, width=200)
        self.time_text = pn.pane.Str("", css_classes=["twinlab-explore-time"])
        self.player = pn.widgets.Player(
            label="Player", start=0, end=1, value=0, interval=700, loop_policy="once",
            width=260, scale_buttons=0.8, show_value=False,
        )  # fmt: skip
        self.cmap = pn.widgets.Select(label="Colour map", options=list(COLORMAPS), width=200)
        self.vmin = pn.widgets.FloatInput(label="Min", width=95)
        self.vmax = pn.widgets.FloatInput(label="Max", width=95)
        self.auto = pn.widgets.Button(label="Auto range", width=200)
        self.method = pn.widgets.RadioButtonGroup(options=["nearest", "bilinear"], width=200)
        self.projection = pn.widgets.Select(
            label="Projection", options=PROJECTION_LABELS, width=200
        )
        self.reset = pn.widgets.Button(label="Whole map", width=200)
        self.cell = pn.pane.Str("Click the map: the series of that native cell.")
        self._build_map()
        self._build_series()
        controls = pn.Column(
            self.variable, self.levels, self.time, self.time_text, self.player,
            self.projection, self.reset, self.cmap, pn.Row(self.vmin, self.vmax),
            self.auto, self.method, width=280,
        )  # fmt: skip
        header = pn.Row(
            pn.pane.Markdown(f"### {title or 'VizLab explorer'}", margin=(0, 10)),
            self.busy,
            self.status,
        )
        self.map_pane = pn.pane.Bokeh(self.map)
        self.series_pane = pn.pane.Bokeh(self.series)
        self.layout = pn.Column(
            header,
            pn.Row(controls, self.map_pane, pn.Column(self.series_pane, self.cell)),
            name="twinlab-explore",
        )
        self._wire()
        pn.state.onload(self._start)

    # ---- building ------------------------------------------------------------------
    def _build_map(self) -> None:
        w, h = self.width, self.height
        fig = figure(
            frame_width=w, frame_height=h, x_range=Range1d(0, w), y_range=Range1d(0, h),
            tools="pan,wheel_zoom,tap,save", active_drag="pan", active_scroll="wheel_zoom",
            toolbar_location="above", min_border=0, match_aspect=True,
            background_fill_color="#dde3ea", name="twinlab-explore-map",
        )  # fmt: skip
        fig.axis.visible = False
        fig.grid.visible = False
        self.image_src = ColumnDataSource(
            {"image": [np.zeros((1, 1), np.uint32)], "x": [0.0], "y": [0.0], "dw": [w], "dh": [h]}
        )
        fig.image_rgba(
            "image", x="x", y="y", dw="dw", dh="dh", source=self.image_src, level="image"
        )
        self.mapper = LinearColorMapper(palette=_palette("viridis"), low=0.0, high=1.0)
        self.colorbar = ColorBar(color_mapper=self.mapper, width=12, title="")
        fig.add_layout(self.colorbar, "right")
        self.marker_src = ColumnDataSource({"x": [], "y": []})
        fig.scatter(
            "x", "y", source=self.marker_src, size=14, marker="circle_cross",
            fill_color=None, line_color="red", line_width=2.5, level="overlay",
        )  # fmt: skip
        self.map = fig
        self._raster_srcs: list[ColumnDataSource] = []
        self._line_srcs: list[ColumnDataSource] = []
        self._point_srcs: list[ColumnDataSource] = []
        self._tiles: list[Any] = []

    def _build_series(self) -> None:
        fig = figure(
            width=400, height=max(self.height - 40, 250), x_axis_type="datetime",
            title="Native cell series", tools="pan,wheel_zoom,reset,save",
            name="twinlab-explore-series",
        )  # fmt: skip
        self.series_src = ColumnDataSource({"t": [], "v": []})
        fig.line("t", "v", source=self.series_src, line_width=2)
        fig.scatter("t", "v", source=self.series_src, size=5)
        self.now_src = ColumnDataSource({"t": [], "v": []})
        fig.scatter("t", "v", source=self.now_src, size=10, color="red")
        self.series = fig

    def _build_overlays(self, ex: Explorer) -> None:
        for o in ex.overlays:
            if o.kind in ("raster", "layer"):
                src = ColumnDataSource(dict(self.image_src.data))
                self.map.image_rgba(
                    "image", x="x", y="y", dw="dw", dh="dh", source=src, level="underlay"
                )
                self._raster_srcs.append(src)
            elif o.kind == "vector":
                src = ColumnDataSource({"xs": [], "ys": []})
                color = getattr(o, "color", "black")
                width = getattr(o, "line_width", 1.0)
                self.map.multi_line("xs", "ys", source=src, line_color=color, line_width=width)
                self._line_srcs.append(src)
                psrc = ColumnDataSource({"x": [], "y": []})
                self.map.scatter("x", "y", source=psrc, size=6, color=color)
                self._point_srcs.append(psrc)
            else:
                tile = self.map.add_tile(
                    WMTSTileSource(url=o.bokeh_url, attribution=o.name), alpha=o.alpha
                )
                tile.level = "underlay"
                self._tiles.append(tile)

    def _wire(self) -> None:
        self.variable.param.watch(self._on_variable, "value")
        self.time.param.watch(self._on_time, "value")
        self.player.param.watch(self._on_time, "value")
        for w in (self.cmap, self.method):
            w.param.watch(self._on_style, "value")
        for w in (self.vmin, self.vmax):
            w.param.watch(self._on_range, "value")
        self.auto.on_click(self._on_auto)
        self.projection.param.watch(self._on_projection, "value")
        self.reset.on_click(self._on_reset)
        self.map.on_event(Tap, self._on_tap)
        self.map.on_event(RangesUpdate, self._on_ranges)

    # ---- helpers -------------------------------------------------------------------
    @contextmanager
    def _work(self, what: str) -> Any:
        """Busy indicator + status line around a piece of work; errors go to the status."""
        self.busy.value = True
        self.status.object = what
        try:
            yield
        except Exception as e:  # shown to the user: the app keeps running
            self.status.object = f"Error: {e}"
        finally:
            self.busy.value = False

    @contextmanager
    def _quiet(self) -> Any:
        """Set widgets without their watchers acting."""
        self._syncing = True
        try:
            yield
        finally:
            self._syncing = False

    def _push(self) -> None:
        # in a notebook, changed Bokeh models travel through the comm only when pushed
        pn.io.push_notebook(self.map_pane, self.series_pane)

    def _sync_widgets(self) -> None:
        ex = self.ex
        assert ex is not None
        with self._quiet():
            self.variable.options = ex.variables
            self.variable.value = ex.variable
            self.levels.objects = [self._level_widget(d, v) for d, v in ex.levels.items()]
            end = max(ex.field.ntimes - 1, 1)
            for w in (self.time, self.player):
                w.param.update(start=0, end=end, value=ex.t, disabled=ex.field.ntimes < 2)
            self.cmap.value = ex.cmap
            self.vmin.value, self.vmax.value = float(ex.vmin), float(ex.vmax)
            self.method.value = ex.method
            self.projection.value = ex.view.projection
        self._time_text()

    def _level_widget(self, dim: str, values: list[Any]) -> Any:
        assert self.ex is not None
        options = {str(v): v for v in values}
        w = pn.widgets.Select(label=dim, options=options, value=self.ex.selection[dim], width=200)
        w.param.watch(lambda e, d=dim: self._on_level(d, e.new), "value")
        return w

    def _time_text(self) -> None:
        ex = self.ex
        assert ex is not None
        n = ex.field.ntimes
        when = time_label(ex.time_value) if ex.time_value is not None else "no time dimension"
        self.time_text.object = f"{when}  ({ex.t + 1}/{n})"

    # ---- drawing -------------------------------------------------------------------
    def _draw(self, *, view_changed: bool = True) -> None:
        ex = self.ex
        assert ex is not None
        x0, x1, y0, y1 = ex.extent()
        frame = {"x": [x0], "y": [y0], "dw": [x1 - x0], "dh": [y1 - y0]}
        self.image_src.data = {"image": [_rgba_image(ex.image())], **frame}
        for src, (_, img) in zip(self._raster_srcs, ex.overlay_images(), strict=True):
            src.data = {"image": [_rgba_image(img)], **frame}
        if view_changed:
            for src, (_, xs, ys) in zip(self._line_srcs, ex.overlay_paths(), strict=True):
                src.data = {"xs": [list(x) for x in xs], "ys": [list(y) for y in ys]}
            points = {name: (x, y) for name, x, y in ex.overlay_points()}
            vectors = [o for o in ex.overlays if o.kind == "vector"]
            for src, o in zip(self._point_srcs, vectors, strict=True):
                x, y = points.get(o.name, (np.empty(0), np.empty(0)))
                src.data = {"x": list(x), "y": list(y)}
            merc = ex.view.projection == "webmercator"
            for tile in self._tiles:
                tile.visible = merc
            # the ranges snap back to the image (Range1d start/end, not a reset)
            self.map.x_range.update(start=x0, end=x1)
            self.map.y_range.update(start=y0, end=y1)
        self.mapper.update(palette=_palette(ex.cmap), low=float(ex.vmin), high=float(ex.vmax))
        self.colorbar.title = ex.field.units
        self._draw_marker()
        self._draw_now()
        v = ex.view
        self.status.object = (
            f"{ex.variable} {ex.field.long_name}  |  {v.projection} zoom {v.zoom:.3g} "
            f"centre {v.center_lon:.2f}, {v.center_lat:.2f}  |  rendered {v.width}x{v.height} "
            f"in {ex.last_render_s * 1000:.0f} ms"
        )
        self._push()

    def _draw_marker(self) -> None:
        assert self.ex is not None
        at = self.ex.marker()
        self.marker_src.data = {"x": [at[0]], "y": [at[1]]} if at else {"x": [], "y": []}

    def _draw_series(self) -> None:
        ex = self.ex
        assert ex is not None
        s = ex.selected
        if s is None:
            self.series_src.data = {"t": [], "v": []}
            return
        t = s.times if s.times is not None else np.zeros(len(s.values), "datetime64[ns]")
        self.series_src.data = {"t": t, "v": s.values}
        self.series.title.text = f"{s.variable} at cell {s.index} ({s.lon:.3f}, {s.lat:.3f})"
        self.series.yaxis.axis_label = s.units
        self.cell.object = (
            f"cell {s.index} of {ex.grid.key}\ncentre lon {s.lon:.4f} lat {s.lat:.4f}\n"
            f"clicked lon {s.click_lon:.4f} lat {s.click_lat:.4f}\n"
            f"value now: {s.values[ex.t]:.6g} {s.units}"
        )

    def _draw_now(self) -> None:
        ex = self.ex
        assert ex is not None
        s = ex.selected
        if s is None or s.times is None:
            self.now_src.data = {"t": [], "v": []}
            return
        self.now_src.data = {"t": [s.times[ex.t]], "v": [s.values[ex.t]]}

    # ---- events --------------------------------------------------------------------
    def _start(self) -> None:
        with self._work("Opening the data…"):
            self.ex = self._make()
            self._build_overlays(self.ex)
            self._sync_widgets()
            self.status.object = "Rendering the first map…"
            self._draw()

    def _on_variable(self, event: Any) -> None:
        if self._syncing or self.ex is None:
            return
        with self._work(f"Opening {event.new}…"):
            self.ex.select(event.new)
            self._sync_widgets()
            self._draw_series()
            self._draw()

    def _on_level(self, dim: str, value: Any) -> None:
        if self._syncing or self.ex is None:
            return
        with self._work(f"{dim} = {value}…"):
            self.ex.set_level(dim, value)
            self._sync_widgets()
            self._draw_series()
            self._draw(view_changed=False)

    def _on_time(self, event: Any) -> None:
        if self._syncing or self.ex is None or event.new == self.ex.t:
            return
        with self._work("Rendering…"):
            self.ex.set_time(int(event.new))
            with self._quiet():
                self.time.value = self.player.value = self.ex.t
            self._time_text()
            self._draw(view_changed=False)
            self._draw_series()

    def _on_style(self, event: Any) -> None:
        if self._syncing or self.ex is None:
            return
        with self._work("Rendering…"):
            self.ex.set_style(cmap=self.cmap.value, method=self.method.value)
            self._draw(view_changed=False)

    def _on_range(self, event: Any) -> None:
        if self._syncing or self.ex is None or self.vmin.value is None or self.vmax.value is None:
            return
        with self._work("Rendering…"):
            self.ex.set_style(vmin=self.vmin.value, vmax=self.vmax.value)
            self._draw(view_changed=False)

    def _on_auto(self, event: Any) -> None:
        if self.ex is None:
            return
        with self._work("Rendering…"):
            lo, hi = self.ex.auto_range()
            with self._quiet():
                self.vmin.value, self.vmax.value = lo, hi
            self._draw(view_changed=False)

    def _on_projection(self, event: Any) -> None:
        if self._syncing or self.ex is None:
            return
        with self._work(f"Rendering {event.new}…"):
            self.ex.set_projection(event.new)
            self._draw()

    def _on_reset(self, event: Any) -> None:
        if self.ex is None:
            return
        with self._work("Rendering…"):
            self.ex.reset_view()
            self._draw()

    def _on_ranges(self, event: Any) -> None:
        if self.ex is None or None in (event.x0, event.x1, event.y0, event.y1):
            return
        if all(math.isclose(a, b) for a, b in zip(
            (event.x0, event.x1, event.y0, event.y1), self.ex.extent(), strict=True
        )):  # fmt: skip
            return  # our own snap-back
        with self._work("Rendering…"):
            self.ex.set_ranges(event.x0, event.x1, event.y0, event.y1)
            self._draw()

    def _on_tap(self, event: Any) -> None:
        if self.ex is None or event.x is None:
            return
        with self._work("Reading the cell's series…"):
            s = self.ex.click_plot(event.x, event.y)
            if s is None:
                self.status.object = "Off the map: click on the map itself."
                return
            self._draw_series()
            self._draw_marker()
            self._draw_now()
            self.status.object = f"cell {s.index}: {len(s.values)} values"
            self._push()
