"""Tiles and VizLab: any data-lake field, rendered on its native grid, for GIS clients and
browsers (docs/vizlab.md).

- :class:`~.config.TwinhubTiles` (``c.TwinhubTiles.*``): limits, caches, public collections;
- the ``tiles`` component (:mod:`.app`, uvicorn), a hub service at ``/services/tiles/``:
  WMTS 1.0 KVP and REST (:mod:`.wmts`), OGC API - Tiles (:mod:`.ogcapi`), OGC API - EDR
  ``position`` and ``area`` as CoverageJSON (:mod:`.edr`), server-side views in any
  projection (:mod:`.views`), the VizLab page (:mod:`.pages`), metrics;
- which items a caller may see (:mod:`.access`) and how an item becomes a renderable field
  (:mod:`.layers`), rendered tiles kept hot (:mod:`.tilecache`).

The rendering itself (native-grid lookup, projections, colour maps, chunk-aware reads) is
:mod:`twinlab.viz`, shared with the notebook explorer ``twinlab.viz.explore``.
"""

from __future__ import annotations

from twinlab.contract import ENV_TILES_URL

from ...process.runtime import Runtime
from ..base import AsgiService
from .config import TwinhubTiles, is_enabled

SERVICE_NAME = "tiles"
SERVICE_PREFIX = f"/services/{SERVICE_NAME}/"


class TilesPart(AsgiService):
    """Tiles, EDR and the VizLab page at /services/tiles/."""

    name = SERVICE_NAME
    settings = (TwinhubTiles,)
    # After the STAC API (items) and the object store (data).
    start_rank = 46
    factory = "twinhub.services.tiles.app:create_app"
    listed = True
    url_env = ENV_TILES_URL
    # Its own token finds items in the lake (the STAC API) and users' groups (projects).
    scopes = ("read:users", "read:groups", "access:services!service=stac")

    def enabled(self, rt: Runtime) -> bool:
        return is_enabled(rt)


__all__ = ["SERVICE_NAME", "SERVICE_PREFIX", "TilesPart", "TwinhubTiles", "is_enabled"]
