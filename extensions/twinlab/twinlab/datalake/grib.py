"""GRIB files as lazy xarray Datasets (cfgrib on ecCodes) that twinlab.grids recognises.

cfgrib already copies the message's ``gridType``/``N``/``pl`` into ``GRIB_*`` attributes;
we also ask it for ``Nside`` and ``orderingConvention`` so that HEALPix (template 3.150,
nested or ring like ECMWF's own files) is identified from metadata instead of by comparing
12 Nside^2 coordinates, then write twinlab's own grid attributes with ``ds.grid.assign``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GRIB_SUFFIXES = (".grib", ".grib2", ".grb", ".grb2", ".grib1", ".grb1")
#: Extra ecCodes keys we need as attributes (cfgrib reads only a default set).
READ_KEYS = ("Nside", "orderingConvention")


def _cfgrib() -> Any:
    # pyproj first: the ecCodes wheel bundles its own libproj, and loading it before
    # pyproj's makes the interpreter abort on pyproj's first use
    import pyproj  # noqa: F401, I001  (this order, see above)
    import cfgrib  # start-up cost: loaded on first use

    return cfgrib


def short_names(ds: Any) -> dict[str, str]:
    """``{GRIB shortName: variable name}`` of a cfgrib dataset (``{"2t": "t2m"}``)."""
    return {
        str(v.attrs["GRIB_shortName"]): str(name)
        for name, v in ds.data_vars.items()
        if "GRIB_shortName" in v.attrs
    }


def _chunks_per_message(ds: Any, chunks: Any) -> Any:
    """``chunks="auto"`` for GRIB: one Dask chunk per message (cfgrib reads whole
    messages, so a smaller chunk reads the same bytes, a bigger one loses parallelism)."""
    if chunks != "auto":
        return chunks
    spatial = {"values", "latitude", "longitude", "x", "y"}
    return {d: (-1 if d in spatial else 1) for d in ds.dims}


def _open_one(path: Path, chunks: Any, filter_by_keys: dict[str, Any]) -> Any:
    import xarray as xr  # start-up cost: loaded on first use

    cfgrib = _cfgrib()
    backend_kwargs = {
        "indexpath": "",  # never write .idx files beside the data (the lake is read-only)
        "read_keys": list(READ_KEYS),
        "filter_by_keys": filter_by_keys,
        # "raise", not cfgrib's "warn": a variable that does not fit the first hypercube
        # (10u at 10 m beside 2t at 2 m) is otherwise dropped with only a log line
        "errors": "raise",
    }
    try:
        ds = xr.open_dataset(path, engine="cfgrib", backend_kwargs=backend_kwargs, chunks={})
    except cfgrib.dataset.DatasetBuildError:
        # several hypercubes (e.g. 2t at 2 m and 10u at 10 m): open each, then merge
        parts = cfgrib.open_datasets(str(path), backend_kwargs=backend_kwargs, chunks={})
        ds = _merge(parts)
    except Exception as e:
        raise ValueError(f"cannot read {path} as GRIB: {type(e).__name__}: {e}") from None
    target = _chunks_per_message(ds, chunks)
    return ds.chunk(target) if target is not None else ds.load()


def _merge(parts: list[Any]) -> Any:
    """Merge cfgrib's hypercubes; a scalar coordinate whose value differs between them
    (``heightAboveGround`` 2 vs 10) becomes an attribute of each variable instead of
    wrongly claiming one value for all."""
    import xarray as xr  # start-up cost: loaded on first use

    scalar: dict[str, set[Any]] = {}
    for ds in parts:
        for name, c in ds.coords.items():
            if c.ndim == 0:
                scalar.setdefault(name, set()).add(c.values.item())
    conflicting = {n for n, vals in scalar.items() if len(vals) > 1}
    cleaned = []
    for ds in parts:
        ds = ds.copy()
        for name in conflicting & set(ds.coords):
            value = ds.coords[name].values.item()
            for v in ds.data_vars.values():
                v.attrs[name] = value
        cleaned.append(ds.drop_vars(conflicting & set(ds.coords)))
    return xr.merge(cleaned, compat="no_conflicts", combine_attrs="drop_conflicts", join="outer")


def open_grib(path: str | Path, variable: str | None = None, chunks: Any = "auto") -> Any:
    """Open a local GRIB file as an xarray Dataset with twinlab grid attributes.

    ``variable`` is a GRIB shortName (``"2t"``, renamed from cfgrib's ``t2m``) or a
    cfgrib variable name (``"t2m"``, kept); ``KeyError`` lists what the file holds.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GRIB file at {path}")
    if variable is None:
        ds = _open_one(path, chunks, {})
        if not ds.data_vars:
            raise ValueError(f"{path} holds no GRIB field that cfgrib can decode")
    else:
        ds = _open_one(path, chunks, {"shortName": variable})
        if ds.data_vars:
            names = short_names(ds)
            if variable in names and names[variable] != variable:
                ds = ds.rename({names[variable]: variable})
        else:  # not a shortName: maybe cfgrib's own name for it
            ds = _open_one(path, chunks, {})
            if variable not in ds.data_vars:
                have = ", ".join(f"{s} ({n})" for s, n in sorted(short_names(ds).items()))
                raise KeyError(
                    f"{path.name} has no variable {variable!r}; it holds: {have or 'nothing'} "
                    "(GRIB shortName, cfgrib name in brackets)"
                )
            ds = ds[[variable]]
    return with_grid(ds, source=str(path))


def with_grid(ds: Any, source: str = "", grid_attrs: dict[str, Any] | None = None) -> Any:
    """``ds`` with twinlab's grid attributes (``ds.grid.assign``) when its grid can be
    detected: from ``grid_attrs`` (e.g. a STAC item's ``twinhub:grid``) if they fit the
    data, else from the data itself; data on no known grid is returned unchanged, with a
    log line saying why."""
    import twinlab.grids as grids  # start-up cost: xarray, loaded when data is opened

    if grid_attrs:
        dims = str(grid_attrs.get("grid_dims", "")).split()
        described = ds.assign(
            {
                name: v.assign_attrs(grid_attrs)
                for name, v in ds.data_vars.items()
                if not dims or set(dims) <= set(v.dims)
            }
        )
        try:
            return described.grid.assign(grids.from_dataset(described))
        except ValueError as e:  # attributes that do not fit are not written at all
            log.warning("grid attributes for %s do not fit the data: %s", source or "data", e)
    try:
        grid = grids.from_dataset(ds)
    except ValueError as e:
        log.info("no twinlab grid for %s: %s", source or "dataset", e)
        return ds
    return ds.grid.assign(grid)
