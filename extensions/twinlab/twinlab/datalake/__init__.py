"""twinlab.datalake: find and open the platform's data from notebooks.

>>> import twinlab.datalake as dl
>>> items = dl.search(collections=["climate-dt"], param="2t", datetime="2020-01-01/2020-01-31")
>>> ds = dl.open(items[0])            # lazy xarray Dataset; ds.grid.* works
>>> remote = dl.search(sources=["local", "era5"])  # the lake and a federated source
>>> ds = dl.open("s3://lake/climate-dt/healpix-n128-nested/2t/20200101.grib2", "2t")

See docs/datalake-notebooks.md.
"""

from __future__ import annotations

from typing import Any

from twinlab.contract import check_datetime

from .config import DatalakeError, StacAuthError, StacUnreachable
from .items import open, open_item, resolve_item
from .opening import cache_dir, local_copy, open_href
from .search import (
    SourceWarning,
    build_filter,
    check_bbox,
    client,
    item_source,
    search,
)


def catalog(url: str | None = None, max_items: int | None = 1000) -> Any:
    """The lake as an intake Catalog (collections -> items -> xarray readers)."""
    from .intake_view import catalog as _catalog  # start-up cost: intake loads on first use

    return _catalog(url, max_items)


__all__ = [
    "DatalakeError",
    "SourceWarning",
    "StacAuthError",
    "StacUnreachable",
    "build_filter",
    "cache_dir",
    "catalog",
    "check_bbox",
    "check_datetime",
    "client",
    "item_source",
    "local_copy",
    "open",
    "open_href",
    "open_item",
    "resolve_item",
    "search",
]
