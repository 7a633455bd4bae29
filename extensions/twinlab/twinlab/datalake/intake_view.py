"""An intake (>= 2) view of the lake: collections -> items -> readers of xarray Datasets.

intake's own STAC readers send no credentials (our STAC API is behind hub auth) and cannot
open GRIB, so the three levels are small readers of ours over :func:`search` and
:func:`open_item`.  Entries keep the STAC URL (or ``None``: ``$TWINHUB_STAC_URL``) but
never the token, which is read from the environment when an entry is read, so a catalog
saved to YAML carries no secret.
"""

from __future__ import annotations

from typing import Any

import pystac
from intake.readers.entry import Catalog
from intake.readers.readers import BaseReader

from .config import stac_url
from .items import open_item
from .search import client, search, stac_errors


class LakeReader(BaseReader):  # type: ignore[misc]  # intake is not annotated
    """The lake: a Catalog with one entry per STAC collection."""

    imports = {"pystac_client"}
    output_instance = "intake.readers.entry:Catalog"

    def _read(self, url: str | None = None, max_items: int | None = 1000, **_: Any) -> Any:
        cat = Catalog(metadata={"description": "twinhub data lake", "stac_url": stac_url(url)})
        api = client(url)
        with stac_errors(stac_url(url)):
            collections = list(api.get_collections())
        for coll in collections:
            meta = {
                "title": coll.title or coll.id,
                "description": coll.description,
                "keywords": list(coll.keywords or []),
            }
            cat[coll.id] = CollectionReader(
                collection=coll.id, url=url, max_items=max_items, metadata=meta
            )
        return _listed(cat)


class CollectionReader(BaseReader):  # type: ignore[misc]  # intake is not annotated
    """One collection: a Catalog with one entry per item (``**properties`` filter them,
    as in :func:`twinlab.datalake.search`)."""

    imports = {"pystac_client"}
    output_instance = "intake.readers.entry:Catalog"

    def _read(
        self,
        collection: str,
        url: str | None = None,
        max_items: int | None = 1000,
        **properties: Any,
    ) -> Any:
        found = search(collections=[collection], max_items=max_items, url=url, **properties)
        return items_catalog(found.items, metadata={"collection": collection})


class ItemReader(BaseReader):  # type: ignore[misc]  # intake is not annotated
    """One STAC item (kept as its JSON): reading it is :func:`twinlab.datalake.open`."""

    imports = {"pystac", "xarray"}
    output_instance = "xarray:Dataset"

    def _read(
        self,
        item: dict[str, Any],
        variable: str | None = None,
        asset: str | None = None,
        chunks: Any = "auto",
        **_: Any,
    ) -> Any:
        return open_item(pystac.Item.from_dict(item), variable, asset=asset, chunks=chunks)


def items_catalog(items: Any, metadata: dict[str, Any] | None = None) -> Any:
    """A Catalog of :class:`ItemReader` entries, one per ``pystac.Item``, named by id."""
    cat = Catalog(metadata=dict(metadata or {}))
    for item in items:
        props = item.properties
        meta = {
            k: props[k]
            for k in ("param", "resolution", "start_datetime", "end_datetime", "datetime")
            if props.get(k) is not None
        }
        meta["assets"] = sorted(item.assets)
        cat[item.id] = ItemReader(item=item.to_dict(), metadata=meta)
    return _listed(cat)


def _listed(cat: Any) -> Any:
    # intake makes a named entry's token its name and then records no alias, and a Catalog
    # iterates over aliases only: without these, list(cat) and tab completion show nothing
    cat.aliases.update({name: name for name in cat.entries})
    return cat


def catalog(url: str | None = None, max_items: int | None = 1000) -> Any:
    """The lake as an intake Catalog: ``cat[collection].read()[item_id].read()`` is the
    item's Dataset (``max_items`` caps the items listed per collection)."""
    return LakeReader(url=url, max_items=max_items).read()
