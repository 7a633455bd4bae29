"""``open(obj)``: STAC items and item ids, or plain hrefs, to xarray Datasets."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twinlab.contract import FIELD_GRID, FIELD_VARIABLE

from .grib import with_grid
from .opening import PREFERRED, Progress, data_format, open_href
from .remote import asset_href
from .search import search

#: The STAC item property naming the item's variable (the sample data's GRIB shortName).
VARIABLE_PROPERTY = "param"
GRID_PROPERTY = FIELD_GRID


def _looks_like_href(text: str) -> bool:
    """A path or URL rather than an item id: it exists, has a scheme or a path separator,
    or ends like a data file."""
    return (
        "://" in text
        or "/" in text
        or os.sep in text
        or text.startswith("~")
        or bool(data_format(text))
        or Path(text).exists()
    )


def resolve_item(item_id: str, url: str | None = None, token: str | None = None) -> Any:
    """The one STAC item with id ``item_id`` (searched in every collection)."""
    found = search(ids=[item_id], max_items=2, url=url, token=token)
    if not found.items:
        raise KeyError(f"no STAC item with id {item_id!r} in the data lake")
    if len(found.items) > 1:
        cols = ", ".join(str(i.collection_id) for i in found.items)
        raise ValueError(
            f"item id {item_id!r} exists in several collections ({cols}): pass the "
            "pystac.Item from dl.search(collections=..., ids=[...]) instead"
        )
    return found.items[0]


def choose_asset(item: Any, asset: str | None = None) -> tuple[str, Any, str]:
    """``(key, asset, format)``: ``asset`` if given, else the first of Zarr, GRIB, NetCDF."""
    assets = item.assets
    if asset is not None:
        if asset not in assets:
            raise KeyError(
                f"item {item.id!r} has no asset {asset!r}; it has: {', '.join(assets) or 'none'}"
            )
        a = assets[asset]
        kind = data_format(a.href, a.media_type)
        if not kind:
            raise ValueError(
                f"asset {asset!r} of item {item.id!r} ({a.media_type or 'no media type'}, "
                f"{a.href}) is not Zarr, GRIB or NetCDF"
            )
        return asset, a, kind
    by_kind: dict[str, tuple[str, Any]] = {}
    for key, a in assets.items():
        by_kind.setdefault(data_format(a.href, a.media_type), (key, a))
    for kind in PREFERRED:
        if kind in by_kind:
            key, a = by_kind[kind]
            return key, a, kind
    raise ValueError(
        f"item {item.id!r} has no Zarr, GRIB or NetCDF asset (assets: "
        f"{', '.join(f'{k} ({a.media_type})' for k, a in assets.items()) or 'none'})"
    )


def _time_range(item: Any) -> tuple[Any, Any] | None:
    """The item's [start, end] as naive UTC numpy datetimes (what Zarr/cfgrib times are)."""
    import numpy as np  # start-up cost: only when an item is opened

    props = item.properties
    start, end = props.get("start_datetime"), props.get("end_datetime")
    if not start and not end:
        if not props.get("datetime"):
            return None
        start = end = props["datetime"]

    def naive(text: str | None) -> Any:
        if not text:
            return None
        import pandas as pd  # start-up cost: only when an item is opened

        t = pd.Timestamp(text)
        if t.tzinfo is not None:
            t = t.tz_convert("UTC").tz_localize(None)
        return np.datetime64(t.to_datetime64(), "ns")

    return naive(start), naive(end)


def select_valid_times(ds: Any, start: Any, end: Any, what: str = "data") -> Any:
    """The part of ``ds`` valid in [start, end] (naive UTC datetime64; None = open).

    GRIB data (cfgrib) is selected on ``valid_time``: its ``time`` is the forecast's
    reference time, 6 h before the valid time for a 6-hourly accumulation like ``tp``,
    whereas STAC datetimes (and the Zarr copies' ``time``) are valid times.
    """
    import numpy as np  # start-up cost: only when an item is opened

    name = "valid_time" if "valid_time" in ds.coords else "time"
    if name not in ds.coords or ds[name].ndim > 1:
        return ds
    t = ds[name].values
    keep = np.ones(t.shape, dtype=bool)
    if start is not None:
        keep &= t >= start
    if end is not None:
        keep &= t <= end
    if not keep.any():
        raise ValueError(f"{what} has no times in {start}..{end} (it has {t.min()}..{t.max()})")
    if ds[name].ndim == 0:  # one message: it is inside the range
        return ds
    idx = np.flatnonzero(keep)
    if idx[-1] - idx[0] + 1 == idx.size:
        # Contiguous (the usual case): a slice keeps lazy reads chunk by chunk, where an
        # integer array makes xarray's lazy indexing read far more than the selection.
        return ds.isel({ds[name].dims[0]: slice(int(idx[0]), int(idx[-1]) + 1)})
    return ds.isel({ds[name].dims[0]: idx})


def open_item(
    item: Any,
    variable: str | None = None,
    *,
    asset: str | None = None,
    chunks: Any = "auto",
    engine: str | None = None,
    progress: Progress | None = None,
) -> Any:
    """Open a STAC item: its variable (``param``, or ``variable=``), over its time range."""
    key, a, kind = choose_asset(item, asset)
    var = variable
    if var is None:  # the asset's own variable, else the item's (a Zarr store holds several)
        named = a.extra_fields.get(FIELD_VARIABLE)
        var = named if isinstance(named, str) else item.properties.get(VARIABLE_PROPERTY)
    # a relative href is relative to the item's own file: pystac resolves it; a federated
    # source's asset is read through the platform's cache (see .remote)
    href = asset_href(item, key, a)
    ds = open_href(
        href, var, chunks=chunks, engine=engine, media_type=a.media_type, progress=progress
    )
    rng = _time_range(item)
    if rng is not None:
        ds = select_valid_times(ds, *rng, what=f"item {item.id!r}: asset {key!r}")
    grid = item.properties.get(GRID_PROPERTY)
    if isinstance(grid, Mapping) and "grid_type" not in ds.attrs:
        ds = with_grid(ds, source=a.href, grid_attrs=dict(grid))
    return ds.assign_attrs(
        stac_item=item.id, stac_collection=str(item.collection_id or ""), stac_asset=key
    )


def open(  # noqa: A001 - the notebook API is dl.open, like xr.open_dataset's sibling
    obj: Any,
    variable: str | None = None,
    *,
    asset: str | None = None,
    chunks: Any = "auto",
    engine: str | None = None,
    progress: Progress | None = None,
) -> Any:
    """Open ``obj`` lazily as an ``xarray.Dataset`` carrying twinlab grid attributes.

    ``obj``: a ``pystac.Item`` (or its JSON dict), an item id, an ``s3://`` URL or a local path (GRIB, Zarr
    v2/v3, NetCDF).  ``variable`` keeps one variable (a GRIB shortName like ``"2t"`` works
    for every format); ``asset`` picks an item's asset (default: Zarr, else GRIB);
    ``chunks`` as in xarray (``"auto"``: Dask, one chunk per GRIB message); ``progress``
    is called as ``progress(bytes_done, total)`` while a remote GRIB file is copied.
    """
    import pystac  # start-up cost: only when something is opened

    if chunks is not None and not isinstance(chunks, str | int | Mapping):
        raise TypeError(f"chunks must be 'auto', an int, a dict or None, got {chunks!r}")
    if isinstance(obj, Mapping) and obj.get("type") == "Feature":
        obj = pystac.Item.from_dict(dict(obj))  # an item as JSON (e.g. from requests)
    if isinstance(obj, pystac.Item):
        return open_item(
            obj, variable, asset=asset, chunks=chunks, engine=engine, progress=progress
        )
    if isinstance(obj, Path):
        obj = str(obj)
    if not isinstance(obj, str):
        raise TypeError(
            f"open needs a pystac.Item, an item id, an s3:// URL or a path, got "
            f"{type(obj).__name__}"
        )
    if not obj.strip():
        raise ValueError("open needs a non-empty item id, URL or path")
    if asset is not None and _looks_like_href(obj):
        raise ValueError(f"asset={asset!r} only applies to STAC items, not to {obj!r}")
    if _looks_like_href(obj):
        return open_href(obj, variable, chunks=chunks, engine=engine, progress=progress)
    item = resolve_item(obj)
    return open_item(item, variable, asset=asset, chunks=chunks, engine=engine, progress=progress)
