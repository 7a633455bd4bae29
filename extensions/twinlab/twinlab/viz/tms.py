"""Tile matrix sets for GIS clients: WebMercatorQuad and WorldCRS84Quad.

Tile addressing (zoom, row, col with row 0 at the north), the longitude/latitude of every
pixel centre of a tile (what the renderer samples the native grid at) and the OGC
Two-Dimensional Tile Matrix Set 2.0 JSON documents the tiles service publishes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

TMS_IDS = ("WebMercatorQuad", "WorldCRS84Quad")
TILE_SIZE = 256
MAX_ZOOM = 24

_R = 6378137.0  # WGS84 semi-major axis: EPSG:3857's sphere
_HALF = math.pi * _R  # 20037508.342789244 m: half the Web Mercator square
_PIXEL_M = 0.00028  # OGC "standardized rendering pixel size" (scale denominators)
_DEG_M = 2.0 * math.pi * _R / 360.0  # metres per degree at the equator

_META: dict[str, dict[str, Any]] = {
    "WebMercatorQuad": {
        "title": "Google Maps Compatible for the World",
        "uri": "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad",
        "crs": "http://www.opengis.net/def/crs/EPSG/0/3857",
        "orderedAxes": ["X", "Y"],
        "wellKnownScaleSet": "http://www.opengis.net/def/wkss/OGC/1.0/GoogleMapsCompatible",
    },
    "WorldCRS84Quad": {
        "title": "CRS84 for the World",
        "uri": "http://www.opengis.net/def/tilematrixset/OGC/1.0/WorldCRS84Quad",
        "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
        "orderedAxes": ["Lon", "Lat"],
        "wellKnownScaleSet": "http://www.opengis.net/def/wkss/OGC/1.0/GoogleCRS84Quad",
    },
}


def _check_tms(tms_id: str) -> None:
    if tms_id not in TMS_IDS:
        raise ValueError(f"unknown tile matrix set {tms_id!r}; known: {', '.join(TMS_IDS)}")


def _check_zoom(z: int) -> None:
    if isinstance(z, bool) or not isinstance(z, int | np.integer) or not 0 <= z <= MAX_ZOOM:
        raise ValueError(f"tile matrix (zoom) must be an integer in [0, {MAX_ZOOM}], got {z!r}")


def matrix_size(tms_id: str, z: int) -> tuple[int, int]:
    """(cols, rows) of zoom ``z``: 2^z x 2^z (WebMercatorQuad), 2^(z+1) x 2^z (WorldCRS84Quad)."""
    _check_tms(tms_id)
    _check_zoom(z)
    n = 1 << int(z)
    return (n, n) if tms_id == "WebMercatorQuad" else (2 * n, n)


def check_tile(tms_id: str, z: int, row: int, col: int) -> None:
    """ValueError naming the tile matrix set, zoom, row or column that is out of range."""
    cols, rows = matrix_size(tms_id, z)
    for name, v, n in (("row", row, rows), ("col", col, cols)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v < n:
            raise ValueError(
                f"tile {name} must be an integer in [0, {n - 1}] at {tms_id} zoom {z}, got {v!r}"
            )


def _cell_size(tms_id: str, z: int) -> float:
    """Pixel size in the TMS's CRS units (metres or degrees)."""
    if tms_id == "WebMercatorQuad":
        return 2.0 * _HALF / (TILE_SIZE << z)
    return 180.0 / (TILE_SIZE << z)


def tile_bounds_crs(tms_id: str, z: int, row: int, col: int) -> tuple[float, float, float, float]:
    """(west/minx, south/miny, east/maxx, north/maxy) in EPSG:3857 metres or CRS84 degrees."""
    check_tile(tms_id, z, row, col)
    span = _cell_size(tms_id, z) * TILE_SIZE
    x0, y0 = (-_HALF, _HALF) if tms_id == "WebMercatorQuad" else (-180.0, 90.0)
    return (x0 + col * span, y0 - (row + 1) * span, x0 + (col + 1) * span, y0 - row * span)


def _merc_lat(y: Any) -> Any:
    return np.rad2deg(np.arctan(np.sinh(np.asarray(y, dtype=np.float64) / _R)))


def tile_bounds_lonlat(
    tms_id: str, z: int, row: int, col: int
) -> tuple[float, float, float, float]:
    """(west, south, east, north) degrees of a tile."""
    x0, y0, x1, y1 = tile_bounds_crs(tms_id, z, row, col)
    if tms_id == "WorldCRS84Quad":
        return x0, y0, x1, y1
    k = 180.0 / _HALF
    return x0 * k, float(_merc_lat(y0)), x1 * k, float(_merc_lat(y1))


def tile_lonlat(
    tms_id: str, z: int, row: int, col: int, size: int = TILE_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """(size, size) longitude in [-180, 180) and latitude of the tile's pixel centres, row 0 north."""
    x0, y0, x1, y1 = tile_bounds_crs(tms_id, z, row, col)
    f = (np.arange(size, dtype=np.float64) + 0.5) / size
    x = x0 + (x1 - x0) * f
    y = y1 - (y1 - y0) * f
    if tms_id == "WebMercatorQuad":
        x = x * (180.0 / _HALF)
        y = _merc_lat(y)
    x = np.mod(x + 180.0, 360.0) - 180.0
    lon = np.broadcast_to(x[None, :], (size, size)).copy()
    lat = np.broadcast_to(y[:, None], (size, size)).copy()
    return lon, lat


def tms_document(tms_id: str, max_zoom: int = MAX_ZOOM) -> dict[str, Any]:
    """The OGC Two-Dimensional Tile Matrix Set 2.0 JSON of ``tms_id``, zooms 0..max_zoom."""
    _check_tms(tms_id)
    _check_zoom(max_zoom)
    origin = [-_HALF, _HALF] if tms_id == "WebMercatorQuad" else [-180.0, 90.0]
    to_m = 1.0 if tms_id == "WebMercatorQuad" else _DEG_M
    matrices = []
    for z in range(max_zoom + 1):
        cols, rows = matrix_size(tms_id, z)
        cell = _cell_size(tms_id, z)
        matrices.append(
            {
                "id": str(z),
                "scaleDenominator": cell * to_m / _PIXEL_M,
                "cellSize": cell,
                "cornerOfOrigin": "topLeft",
                "pointOfOrigin": origin,
                "tileWidth": TILE_SIZE,
                "tileHeight": TILE_SIZE,
                "matrixWidth": cols,
                "matrixHeight": rows,
            }
        )
    return {"id": tms_id, **_META[tms_id], "tileMatrices": matrices}


def native_zoom(tms_id: str, grid: Any) -> int:
    """The largest zoom whose pixel (at the equator) is still at least one native cell wide.

    The cell width is the grid's mean cell size, sqrt(4 pi / ncells) radians.
    """
    return native_zoom_cells(tms_id, int(grid.size))


def native_zoom_cells(tms_id: str, ncells: int) -> int:
    """:func:`native_zoom` from the grid's cell count alone (a count from an item's metadata:
    no grid is built, any count is answered in constant time)."""
    _check_tms(tms_id)
    if isinstance(ncells, bool) or not isinstance(ncells, int | np.integer) or ncells < 1:
        raise ValueError(f"a grid's cell count must be a positive integer, got {ncells!r}")
    # log2 of the cell width in degrees, without float overflow for huge integer counts
    log2_cell = math.log2(math.degrees(math.sqrt(4.0 * math.pi))) - math.log2(int(ncells)) / 2
    span = 360.0 if tms_id == "WebMercatorQuad" else 180.0  # degrees across one zoom-0 tile
    z = math.floor(math.log2(span / TILE_SIZE) - log2_cell + 1e-9)
    return max(0, min(MAX_ZOOM, z))
