"""``c.TwinhubTiles.*``: the tiles service's configuration (docs/vizlab.md)."""

from __future__ import annotations

from traitlets import Bool, Float, Integer, List, TraitError, Unicode, validate
from traitlets.config import Configurable

from ...process.runtime import Runtime


class TwinhubTiles(Configurable):
    """Map tiles (WMTS, OGC API - Tiles), EDR queries and the VizLab page at /services/tiles/."""

    enabled = Bool(
        True,
        help="Run the tiles service at /services/tiles/ (on by default in every mode).",
    ).tag(config=True)

    public_collections = List(
        Unicode(),
        default_value=[],
        help="Collections whose items anyone may view without logging in (tiles, EDR, "
        "capabilities, the VizLab page's data). Empty: every request needs a hub login or "
        "token. Items elsewhere stay visible only to who may read their data.",
    ).tag(config=True)

    max_zoom_beyond_native = Integer(
        3,
        min=0,
        help="Tile zoom levels allowed beyond the one whose pixels match the item's native "
        "cells; deeper -> 400 naming the limit.",
    ).tag(config=True)

    max_edr_area_deg2 = Float(
        2500.0,
        help="Largest EDR area query, in square degrees of longitude x latitude of the "
        "polygon's bounding box; larger -> 400 naming the limit.",
    ).tag(config=True)

    max_edr_cells = Integer(
        200_000,
        min=1,
        help="Most native cells times time steps one EDR area answer may hold; more -> 400 "
        "naming the limit.",
    ).tag(config=True)

    max_time_steps = Integer(
        1000,
        min=1,
        help="Most time steps one request may ask for (an EDR datetime range, a series); "
        "more -> 400 naming the limit.",
    ).tag(config=True)

    max_view_pixels = Integer(
        4_000_000,
        min=65_536,
        help="Most pixels (width x height) of one server-side view (the page's globe and "
        "projections); more -> 400 naming the limit.",
    ).tag(config=True)

    max_layers = Integer(
        2000,
        min=1,
        help="Most layers (item x variable) one GetCapabilities or tilesets list names; the "
        "rest are left out (the document says so).",
    ).tag(config=True)

    max_grid_cells = Integer(
        300_000_000,
        min=1,
        help="Most native cells an item's grid may have (HEALPix nside 4096 has 201 million, "
        "octahedral O8000 256 million); checked from the item's metadata before any grid is "
        "built; more -> 422 naming the limit.",
    ).tag(config=True)

    max_chunk_bytes = Integer(
        256 * 1024 * 1024,
        min=1,
        help="Largest decoded data chunk (its declared shape x item size) the service reads; "
        "a store with larger chunks -> 422 naming the limit (re-chunk it to be viewed).",
    ).tag(config=True)

    max_item_times = Integer(
        100_000,
        min=1,
        help="Most time steps one item's data may have to be viewed; more -> 422 naming the limit.",
    ).tag(config=True)

    max_series_bytes = Integer(
        2 * 1024**3,
        min=1,
        help="Bytes of data chunks one EDR query (or series) may decode, over all its time "
        "steps (a point's series reads one chunk per time step when chunks hold whole fields); "
        "more -> 400 naming the limit: ask for fewer times.",
    ).tag(config=True)

    max_variables = Integer(
        64,
        min=1,
        help="Most variables one request may name or open (an EDR query without "
        "parameter-name, layers/{item}); more -> 400 naming the limit.",
    ).tag(config=True)

    tile_cache_bytes = Integer(
        256 * 1024 * 1024,
        min=0,
        help="Bytes of rendered PNG tiles kept in memory (hot tiles answer without "
        "rendering); 0: none kept.",
    ).tag(config=True)

    chunk_cache_bytes = Integer(
        1024 * 1024 * 1024,
        min=0,
        help="Bytes of decoded data chunks kept in memory, over all items (a tile reads only "
        "the chunks under it, and the next tiles find them here).",
    ).tag(config=True)

    max_read_bytes = Integer(
        2 * 1024**3,
        min=1,
        help="Bytes one data file may have when it must be copied whole (GRIB); larger -> "
        "413 naming the limit. Zarr and NetCDF are read by chunk/range.",
    ).tag(config=True)

    max_age = Integer(
        300,
        min=0,
        help="Seconds browsers and clients may reuse a tile without asking again "
        "(Cache-Control max-age; private for items that are not public). They revalidate "
        "with the ETag after it.",
    ).tag(config=True)

    access_ttl = Float(
        30.0,
        help="Seconds an item lookup and a caller's access decision are reused: a change in "
        "the lake or in who may read a bucket counts within this time.",
    ).tag(config=True)

    render_threads = Integer(
        2,
        min=1,
        help="Threads rendering tiles and views at once (the rest wait).",
    ).tag(config=True)

    @validate("max_edr_area_deg2", "access_ttl")
    def _positive(self, proposal):  # type: ignore[no-untyped-def]
        value = float(proposal["value"])
        if value <= 0:
            raise TraitError(f"TwinhubTiles.{proposal['trait'].name} must be positive, not {value}")
        return value


def is_enabled(rt: Runtime) -> bool:
    """On unless configured off (every mode: personal, multi-user, Kubernetes)."""
    return bool(TwinhubTiles(config=rt.config).enabled)
