"""How many cells an item's ``twinhub:grid`` describes, by formula: nothing is built.

A grid from metadata alone (``Gaussian(N)`` computes 2N Legendre roots in O(N^2),
``Octahedral(N)`` allocates its 4N^2 + 36N cells' ring tables) would let one STAC item with
``gaussian_N: 2e8`` run the service out of memory on any listing. Callers check the count
against ``TwinhubTiles.max_grid_cells`` (:func:`check_cells`) before building a grid, and
derive the native zoom from the count (:func:`twinlab.viz.tms.native_zoom_cells`).

This module imports nothing of the service but :class:`~twinhub.services.asgi.BadRequest`,
so that the listing (``params``) and the opening path can both use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real
from typing import Any

from ..asgi import BadRequest


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real | str):
        raise ValueError(f"not a number: {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {value!r}")
    return x


def _positive_int(value: Any) -> int:
    x = _number(value)
    if x < 1 or x != int(x):
        raise ValueError(f"not a positive integer: {value!r}")
    return int(x)


def _count(span: float, step: Any) -> int:
    """Steps of ``step`` degrees in ``span`` (LatLon's rule, without its exactness check)."""
    s = _number(step)
    if s <= 0:
        raise ValueError(f"not a positive spacing: {step!r}")
    n = round(span / s)  # (finite: s is a finite positive float, span/s may be huge but finite)
    if n < 1:
        raise ValueError(f"spacing {step!r} is wider than {span:g} degrees")
    return int(n)


def grid_cells(attrs: Mapping[str, Any] | None, max_cells: int | None = None) -> int | None:
    """Cells of the grid ``attrs`` (an item's ``twinhub:grid``: twinlab's attribute names or
    the short ones) describes, computed from its parameters alone; None when there is no grid
    or it is not understood (missing or nonsensical parameters).

    healpix 12 nside^2; octahedral 4N^2 + 36N; reduced Gaussian sum(pl) (pl: 2N entries, or N
    mirrored); regular Gaussian 8N^2; lat-lon (360/dlon) x (180/dlat + 1) (nodes) or
    x (180/dlat) (cell centres). With ``max_cells`` a reduced grid's ``pl`` is not summed when
    its length alone (>= one cell per entry) is already beyond it: that count is returned.
    """
    if not attrs:
        return None
    kind = str(attrs.get("grid_type", "")).lower()
    n_raw = attrs.get("gaussian_N", attrs.get("N"))
    try:
        if kind == "healpix":
            nside = _positive_int(attrs.get("healpix_nside", attrs.get("nside")))
            return 12 * nside * nside
        if kind == "octahedral":
            n = _positive_int(n_raw)
            return 4 * n * n + 36 * n
        if kind == "regular_gaussian":
            n = _positive_int(n_raw)
            return 8 * n * n
        if kind == "reduced_gaussian":
            n = _positive_int(n_raw)
            pl = attrs.get("gaussian_pl")
            if not isinstance(pl, list | tuple) or len(pl) not in (n, 2 * n):
                return None
            if max_cells is not None and 2 * n > max_cells:
                return 2 * n  # at least one cell per ring: already too many
            total = sum(_positive_int(x) for x in pl)
            return total if len(pl) == 2 * n else 2 * total
        if kind == "latlon":
            dlon = attrs.get("latlon_dlon")
            dlat = attrs.get("latlon_dlat") or dlon
            nlon, nbands = _count(360.0, dlon), _count(180.0, dlat)
            nodes = attrs.get("latlon_nodes", 1)
            return nlon * (nbands + 1 if nodes in (None, "") or bool(_number(nodes)) else nbands)
    except (ValueError, TypeError, OverflowError):
        return None
    return None


def check_cells(attrs: Mapping[str, Any] | None, max_cells: int, what: str) -> int | None:
    """:func:`grid_cells`, refused with 422 naming ``TwinhubTiles.max_grid_cells`` when it is
    beyond ``max_cells``. ``what`` names the item or layer in the message."""
    cells = grid_cells(attrs, max_cells)
    if cells is not None and cells > max_cells:
        kind = str((attrs or {}).get("grid_type", "")) or "grid"
        raise BadRequest(
            f"{what}: its {kind} grid has {cells} cells, beyond the limit "
            f"TwinhubTiles.max_grid_cells = {max_cells}",
            422,
        )
    return cells
