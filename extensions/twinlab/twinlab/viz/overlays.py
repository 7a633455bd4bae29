"""Overlays of the explorer: vectors, rasters, other twinhub layers, WMTS tile URLs.

* :class:`VectorOverlay`: GeoJSON / shapefile / GeoPackage read by geopandas (pyogrio), in
  EPSG:4326, projected with the view's own :func:`~twinlab.viz.projections.forward` (so
  lines lie exactly where the renderer puts the cells under them);
* :class:`RasterOverlay`: a GeoTIFF read by rioxarray, sampled at the view's pixel centres
  (nearest raster pixel; other CRSs through pyproj), a second RGBA image with alpha;
* :class:`LayerOverlay`: another lake item's (or dataset's) variable rendered on its own
  native grid the same way as the main field;
* :class:`WMTSOverlay`: a tile URL (``{z}/{x}/{y}``, e.g. another twinhub WMTS layer's REST
  URL); Bokeh's WMTSTileSource draws it, in the Web Mercator view only (tiles are squares
  of EPSG:3857).

Paths may be local or ``s3://`` on the user's buckets: those are copied to a temporary
folder first (a shapefile with its sibling files) with the platform's S3 settings.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twinlab.datalake import config as dl_config
from twinlab.datalake import items as dl_items

from .colour import colourize
from .field import Field
from .projections import View, forward
from .render import render

VECTOR_SUFFIXES = (".geojson", ".json", ".shp", ".gpkg", ".fgb")
RASTER_SUFFIXES = (".tif", ".tiff", ".geotiff")
_SHP_SIBLINGS = (".shx", ".dbf", ".prj", ".cpg")


def _local(path: str | Path, keep: list[Any]) -> Path:
    """A local path for ``path``; ``s3://`` objects are copied into a temporary folder
    (kept alive by ``keep``), a shapefile with its siblings."""
    text = str(path)
    if not text.startswith("s3://"):
        p = Path(text).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"overlay file {text!r} does not exist")
        return p
    # s3fs is only needed for overlays on object storage
    import fsspec

    fs = fsspec.filesystem("s3", **dl_config.s3_options())
    tmp = tempfile.TemporaryDirectory(prefix="twinlab-overlay-")
    keep.append(tmp)
    name = text.rsplit("/", 1)[-1]
    dest = Path(tmp.name) / name
    if not fs.exists(text):
        raise FileNotFoundError(f"overlay object {text!r} does not exist")
    fs.get(text, str(dest))
    if dest.suffix.lower() == ".shp":
        stem = text[: -len(".shp")]
        for suffix in _SHP_SIBLINGS:
            if fs.exists(stem + suffix):
                fs.get(stem + suffix, str(dest.with_suffix(suffix)))
    return dest


def _with_alpha(rgba: np.ndarray, alpha: float) -> np.ndarray:
    out = rgba.copy()
    out[..., 3] = (out[..., 3].astype(np.float64) * alpha).round().astype(np.uint8)
    return out


def _range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [2, 98]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _check_alpha(alpha: float) -> float:
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"overlay alpha must be within [0, 1], got {alpha!r}")
    return float(alpha)


@dataclass
class VectorOverlay:
    """Lines (and polygon outlines, points) of a vector file, drawn over the map."""

    path: str | Path
    color: str = "black"
    line_width: float = 1.0
    name: str = ""
    _keep: list[Any] = field(default_factory=list, repr=False)

    kind = "vector"

    def __post_init__(self) -> None:
        # geopandas/shapely load only when a vector overlay is used
        import geopandas as gpd
        import shapely

        local = _local(self.path, self._keep)
        frame = gpd.read_file(local, engine="pyogrio")
        if frame.crs is not None and not frame.crs.equals("EPSG:4326"):
            frame = frame.to_crs("EPSG:4326")
        self.name = self.name or Path(str(self.path)).name
        parts = shapely.get_parts(frame.geometry.dropna().to_numpy())
        kinds = shapely.get_type_id(parts)
        polygons = parts[kinds == 3]
        rings = shapely.get_rings(polygons) if polygons.size else np.empty(0, dtype=object)
        lines = np.concatenate([parts[(kinds == 1) | (kinds == 2)], rings])
        coords, index = shapely.get_coordinates(lines, return_index=True)
        cuts = np.flatnonzero(np.diff(index)) + 1
        self.lines = [c for c in np.split(coords, cuts) if len(c) > 1]
        self.points = shapely.get_coordinates(parts[kinds == 0])
        self.features = len(frame)

    def paths(self, view: View) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Pixel ``(xs, ys)`` of every line (x = col, y = row from the top), NaN where a line
        is hidden (the globe's far side) or wraps around the map's edge."""
        if view.projection == "orthographic":
            jump = np.inf
        else:  # a segment longer than half the map crosses the edge: break it there
            ends = forward(view, [view.center_lon - 179.999, view.center_lon + 179.999], [0, 0])
            jump = abs(float(ends[0][1] - ends[0][0])) / 2
        xs, ys = [], []
        for c in self.lines:
            x, y = forward(view, c[:, 0], c[:, 1])
            brk = np.abs(np.diff(x)) > jump
            if brk.any():  # NaN between the two ends of a wrapping segment
                at = np.flatnonzero(brk) + 1
                x, y = np.insert(x, at, np.nan), np.insert(y, at, np.nan)
            if np.isfinite(x).sum() > 1:
                xs.append(x)
                ys.append(y)
        return xs, ys

    def point_xy(self, view: View) -> tuple[np.ndarray, np.ndarray]:
        """Pixel x, y of the point features (NaN where hidden)."""
        if len(self.points) == 0:
            return np.empty(0), np.empty(0)
        return forward(view, self.points[:, 0], self.points[:, 1])


@dataclass
class RasterOverlay:
    """One band of a GeoTIFF, coloured and drawn with ``alpha`` over the map."""

    path: str | Path
    band: int = 1
    cmap: str = "gray"
    vmin: float | None = None
    vmax: float | None = None
    alpha: float = 0.6
    name: str = ""
    _keep: list[Any] = field(default_factory=list, repr=False)

    kind = "raster"

    def __post_init__(self) -> None:
        # rioxarray/pyproj load only when a raster overlay is used
        import rioxarray

        self.alpha = _check_alpha(self.alpha)
        local = _local(self.path, self._keep)
        da = rioxarray.open_rasterio(local, masked=True)
        bands = [int(b) for b in np.atleast_1d(da["band"].values)] if "band" in da.dims else [1]
        if self.band not in bands:
            raise ValueError(f"raster {self.path} has bands {bands}, not {self.band}")
        if "band" in da.dims:
            da = da.sel(band=self.band)
        self.values = np.asarray(da.values, dtype=np.float64)
        self.transform = da.rio.transform()
        self.crs = da.rio.crs
        self.name = self.name or Path(str(self.path)).name
        if self.vmin is None or self.vmax is None:
            lo, hi = _range(self.values)
            self.vmin = lo if self.vmin is None else self.vmin
            self.vmax = hi if self.vmax is None else self.vmax
        self._to_crs = None
        if self.crs is not None and not self.crs.is_geographic:
            from pyproj import Transformer  # only rasters in a projected CRS need it

            self._to_crs = Transformer.from_crs("EPSG:4326", self.crs.to_wkt(), always_xy=True)

    def sample(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """The raster pixel containing each lon/lat (NaN outside, or where lon/lat is NaN)."""
        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        ok = np.isfinite(lon) & np.isfinite(lat)
        if self._to_crs is not None:
            x, y = self._to_crs.transform(np.where(ok, lon, 0.0), np.where(ok, lat, 0.0))
            x, y = np.asarray(x), np.asarray(y)
        else:
            x, y = lon, lat
        ny, nx = self.values.shape
        inv = ~self.transform  # world -> (col, row), written out: Affine's * is deprecated

        def to_pixel(xw: np.ndarray, yw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return inv.a * xw + inv.b * yw + inv.c, inv.d * xw + inv.e * yw + inv.f

        col, row = to_pixel(x, y)
        if self._to_crs is None:  # a geographic raster may run 0..360: try lon + 360 too
            col2, row2 = to_pixel(np.where(lon < 0, lon + 360.0, lon - 360.0), y)
            out = (col < 0) | (col >= nx)
            col, row = np.where(out, col2, col), np.where(out, row2, row)
        col, row = np.floor(np.asarray(col)), np.floor(np.asarray(row))
        inside = ok & (col >= 0) & (col < nx) & (row >= 0) & (row < ny)
        c = np.where(inside, col, 0).astype(np.int64)
        r = np.where(inside, row, 0).astype(np.int64)
        return np.where(inside, self.values[r, c], np.nan)

    def image(self, lon: np.ndarray, lat: np.ndarray, time: Any = None) -> np.ndarray:
        rgba = colourize(self.sample(lon, lat), self.cmap, float(self.vmin), float(self.vmax))
        return _with_alpha(rgba, self.alpha)


def as_dataset(obj: Any, variable: str | None = None) -> Any:
    """An xarray Dataset for ``obj``: a Dataset, a DataArray, a pystac Item, an item id or
    a path / ``s3://`` URL (the last three opened with ``twinlab.datalake.open``)."""
    # xarray only loads when a dataset is opened (twinlab.viz imports without it)
    import xarray as xr

    if isinstance(obj, xr.Dataset):
        return obj
    if isinstance(obj, xr.DataArray):
        return obj.to_dataset(name=str(obj.name or variable or "data"))
    return dl_items.open(obj, variable)


@dataclass
class LayerOverlay:
    """Another twinhub layer (a lake item's variable, or any dataset on a twinlab grid)
    rendered on its own native grid, drawn with ``alpha`` over the map."""

    obj: Any
    variable: str | None = None
    cmap: str = "magma"
    vmin: float | None = None
    vmax: float | None = None
    alpha: float = 0.6
    method: str = "nearest"
    name: str = ""

    kind = "layer"

    def __post_init__(self) -> None:
        self.alpha = _check_alpha(self.alpha)
        ds = as_dataset(self.obj, self.variable)
        if self.variable is None:
            names = [str(v) for v in ds.data_vars if ds[v].ndim > 0]
            if not names:
                raise ValueError("overlay dataset has no data variables")
            self.variable = names[0]
        if self.variable not in ds.data_vars:
            raise KeyError(
                f"overlay has no variable {self.variable!r}; it has: {', '.join(map(str, ds.data_vars))}"
            )
        selection = {dim: values[0] for dim, values in Field.extra_dims(ds, self.variable).items()}
        key = f"overlay:{ds.attrs.get('stac_item', id(ds))}/{self.variable}"
        self.field = Field.from_dataset(ds, self.variable, selection=selection, key=key)
        label = ds.attrs.get("stac_item") or (self.obj if isinstance(self.obj, str) else "")
        self.name = self.name or f"{label}/{self.variable}".lstrip("/")
        if self.vmin is None or self.vmax is None:
            lo, hi = self.field.value_range(0)
            self.vmin = lo if self.vmin is None else self.vmin
            self.vmax = hi if self.vmax is None else self.vmax

    def time_index(self, time: Any) -> int:
        """The overlay's time step nearest to ``time`` (its first when either is timeless)."""
        times = self.field.times
        if time is None or times is None or len(times) == 0:
            return 0
        delta = np.abs(times.astype("datetime64[ns]") - np.datetime64(time, "ns"))
        return int(np.argmin(delta))

    def image(self, lon: np.ndarray, lat: np.ndarray, time: Any = None) -> np.ndarray:
        rgba = render(
            self.field,
            self.time_index(time),
            lon,
            lat,
            method=self.method,
            cmap=self.cmap,
            vmin=self.vmin,
            vmax=self.vmax,
        )
        return _with_alpha(rgba, self.alpha)


_XYZ = re.compile(r"\{([xyzXYZ])\}")


@dataclass
class WMTSOverlay:
    """Tiles from a URL template with ``{z}``, ``{x}`` (column) and ``{y}`` (row), e.g. a
    twinhub layer's ``.../wmts/1.0.0/<item>/<var>/default/<time>/WebMercatorQuad/{z}/{y}/{x}.png``.
    Drawn in the Web Mercator view only."""

    url: str
    alpha: float = 0.7
    name: str = ""

    kind = "wmts"

    def __post_init__(self) -> None:
        self.alpha = _check_alpha(self.alpha)
        if not self.url.startswith(("http://", "https://", "/")):
            raise ValueError(f"WMTS overlay URL must be http(s) or start with /, got {self.url!r}")
        found = {m.lower() for m in _XYZ.findall(self.url)}
        if found != {"x", "y", "z"}:
            raise ValueError(f"WMTS overlay URL needs {{z}}, {{x}} and {{y}}, got {self.url!r}")
        self.name = self.name or self.url

    @property
    def bokeh_url(self) -> str:
        """The template as Bokeh's WMTSTileSource spells it ({X}, {Y}, {Z})."""
        return _XYZ.sub(lambda m: "{" + m.group(1).upper() + "}", self.url)


Overlay = VectorOverlay | RasterOverlay | LayerOverlay | WMTSOverlay


def overlay_from(spec: Any) -> Overlay:
    """An overlay from what ``explore(overlays=...)`` accepts: an overlay object, a vector
    or GeoTIFF path (local or ``s3://``), a tile URL template, an ``(item, variable)`` pair,
    an xarray object, or a lake item id."""
    if isinstance(spec, VectorOverlay | RasterOverlay | LayerOverlay | WMTSOverlay):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        return LayerOverlay(spec[0], spec[1])
    if isinstance(spec, str | Path):
        text = str(spec)
        if text.startswith(("http://", "https://")):
            return WMTSOverlay(text)
        suffix = Path(text.split("?", 1)[0]).suffix.lower()
        if suffix in VECTOR_SUFFIXES:
            return VectorOverlay(text)
        if suffix in RASTER_SUFFIXES:
            return RasterOverlay(text)
        if isinstance(spec, Path) or "/" in text:
            raise ValueError(
                f"overlay {text!r}: not a vector ({', '.join(VECTOR_SUFFIXES)}) or raster "
                f"({', '.join(RASTER_SUFFIXES)}) file"
            )
        return LayerOverlay(text)
    if type(spec).__module__.startswith("xarray"):
        return LayerOverlay(spec)
    raise TypeError(f"cannot make an overlay of {type(spec).__name__}")
