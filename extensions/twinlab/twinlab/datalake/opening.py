"""``open``: one call from a STAC item, an item id, an ``s3://`` URL or a local path to a
lazy xarray Dataset whose grid twinlab.grids recognises.

Formats by suffix: GRIB (cfgrib; from S3 through a private local copy, as ecCodes reads
only local files), Zarr v2/v3 (directly through s3fs), NetCDF (h5netcdf, or scipy for
NetCDF 3).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twinlab import environment

from .config import DatalakeError, s3_options
from .grib import GRIB_SUFFIXES, open_grib, with_grid
from .remote import cache_headers, http_filesystem, is_cache_href

log = logging.getLogger(__name__)

ZARR_SUFFIXES = (".zarr",)
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")
#: Asset media types we know, and the format each means.
MEDIA_TYPES = {
    "application/vnd+zarr": "zarr",
    "application/vnd.zarr": "zarr",
    "application/x-zarr": "zarr",
    "application/x-grib": "grib",
    "application/wmo-grib": "grib",
    "application/grib": "grib",
    "application/x-netcdf": "netcdf",
    "application/netcdf": "netcdf",
}
#: Asset preference when ``open(item)`` is not told which: Zarr reads lazily from S3.
PREFERRED = ("zarr", "grib", "netcdf")
#: Bytes per read when copying a GRIB file from S3, and the size above which we log progress.
COPY_BLOCK = 8 << 20
PROGRESS_ABOVE = 64 << 20

Progress = Callable[[int, int], None]


def data_format(href: str, media_type: str | None = None) -> str:
    if media_type:
        kind = MEDIA_TYPES.get(media_type.split(";")[0].strip().lower())
        if kind:
            return kind
    name = href.rstrip("/").lower()
    if name.endswith(ZARR_SUFFIXES):
        return "zarr"
    if name.endswith(GRIB_SUFFIXES):
        return "grib"
    if name.endswith(NETCDF_SUFFIXES):
        return "netcdf"
    return ""


def _unknown_format(href: str) -> ValueError:
    return ValueError(
        f"cannot tell the format of {href!r}: known suffixes are "
        f"{', '.join(GRIB_SUFFIXES + ZARR_SUFFIXES + NETCDF_SUFFIXES)} (or pass engine=)"
    )


# ---- local copies of remote GRIB files ----------------------------------------------------
def cache_dir() -> Path:
    """``$TWINLAB_CACHE_DIR`` or ``~/.cache/twinlab/datalake``, private to the user (0700)."""
    root = Path(environment.cache_dir() or Path.home() / ".cache" / "twinlab" / "datalake")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root


def _log_progress(url: str) -> Progress:
    """A progress callback that logs every 10% of a file over :data:`PROGRESS_ABOVE`."""
    state = {"next": 0}

    def report(done: int, total: int) -> None:
        if total < PROGRESS_ABOVE:
            return
        pct = 100 * done // max(total, 1)
        if pct >= state["next"] or done == total:
            log.info("downloading %s: %d%% of %.0f MB", url, pct, total / 1e6)
            state["next"] = pct + 10

    return report


def download_progress(url: str) -> Progress:
    """A tqdm bar when tqdm is installed (notebooks), else log lines for big files."""
    try:  # optional dependency
        from tqdm.auto import tqdm
    except ImportError:
        return _log_progress(url)
    state: dict[str, Any] = {}

    def report(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            name = url.rsplit("/", 1)[-1]
            bar = state["bar"] = tqdm(total=total, unit="B", unit_scale=True, desc=name)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return report


def local_copy(url: str, fs: Any = None, progress: Progress | None = None) -> Path:
    """A local copy of the remote file ``url`` in :func:`cache_dir`, reused while the
    object's ETag and size stay the same; written to a temporary file first and renamed,
    so an interrupted download never leaves a partial file that looks complete."""
    import fsspec  # start-up cost: loaded on first use

    if fs is None:
        fs, _ = fsspec.core.url_to_fs(url, **(s3_options() if url.startswith("s3://") else {}))
    try:
        info = fs.info(url)
    except FileNotFoundError:
        raise FileNotFoundError(f"no object at {url}") from None
    except PermissionError as e:
        raise PermissionError(f"not allowed to read {url}: {e}") from None
    size = int(info.get("size") or 0)
    tag = str(info.get("ETag") or info.get("etag") or info.get("mtime") or "")
    key = hashlib.sha256(f"{url}\n{tag}\n{size}".encode()).hexdigest()[:32]
    suffix = Path(url).suffix
    dest = cache_dir() / f"{key}{suffix}"
    if dest.is_file() and dest.stat().st_size == size:
        return dest
    report = progress or _log_progress(url)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-", suffix=suffix)
    try:
        done = 0
        with os.fdopen(fd, "wb") as out, fs.open(url, "rb", block_size=COPY_BLOCK) as src:
            while block := src.read(COPY_BLOCK):
                out.write(block)
                done += len(block)
                report(done, size)
        if done != size:
            raise OSError(f"{url}: got {done} bytes, expected {size}")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


#: Held while the first open imports xarray, its backends and Dask (see import_backends).
_IMPORTING = threading.Lock()
_IMPORTED = threading.Event()


def import_backends() -> None:
    """Import xarray, its backend plugins and dask.array once, one thread at a time.

    Servers open items in threads; the first opens import these lazily, and two threads
    importing packages that import each other (xarray's plugin discovery loads every
    installed backend, e.g. rioxarray, which imports Dask) can see a partially initialised
    module ("cannot import name ... from partially initialized module 'dask.base'")."""
    if _IMPORTED.is_set():
        return
    with _IMPORTING:
        if _IMPORTED.is_set():
            return
        import dask.array  # noqa: F401  (start-up cost: loaded on first use)
        import xarray as xr

        xr.backends.list_engines()
        _IMPORTED.set()


# ---- opening hrefs -----------------------------------------------------------------------
def open_href(
    href: str | Path,
    variable: str | None = None,
    *,
    chunks: Any = "auto",
    engine: str | None = None,
    media_type: str | None = None,
    progress: Progress | None = None,
) -> Any:
    """Open a local path or ``s3://`` URL (format from ``engine``, the media type or the
    suffix); ``variable`` keeps only that variable (GRIB shortNames work on all formats)."""
    import_backends()
    href = str(href)
    remote = "://" in href and not href.startswith("file://")
    if not remote:
        path = Path(href.removeprefix("file://")).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no such file or directory: {path}")
        href = str(path)
    kind = {"cfgrib": "grib", "zarr": "zarr"}.get(engine or "", "") or data_format(href, media_type)
    if engine and not kind:
        kind = "netcdf"  # any other xarray engine: let xarray open it like a file
    if not kind:
        raise _unknown_format(href)
    if kind == "grib":
        if remote and is_cache_href(href):  # a federated source's file, via the cache
            fs, progress = http_filesystem(href), progress or download_progress(href)
            path = local_copy(href, fs=fs, progress=progress)
        else:
            path = local_copy(href, progress=progress) if remote else Path(href)
        return open_grib(path, variable, chunks)
    if kind == "zarr":
        ds = _open_zarr(href, remote, chunks)
    else:
        ds = _open_netcdf(href, remote, chunks, engine)
    return with_grid(select_variable(ds, variable, href), source=href)


def _open_zarr(href: str, remote: bool, chunks: Any) -> Any:
    import xarray as xr  # start-up cost: loaded on first use

    opts: dict[str, Any] = {"storage_options": s3_options()} if href.startswith("s3://") else {}
    if is_cache_href(href):  # fsspec's HTTP store, with the token for the platform's cache
        opts = {"storage_options": {"headers": cache_headers(href)}}
    try:
        with warnings.catch_warnings():
            # v3 stores (what the lake holds) have no consolidated metadata by default:
            # xarray's fallback to reading each array's metadata is the normal path here
            warnings.filterwarnings("ignore", "Failed to open Zarr store with consolidated")
            return xr.open_zarr(href, chunks=chunks, **opts)
    except FileNotFoundError:
        raise FileNotFoundError(f"no Zarr store at {href}") from None
    except PermissionError as e:
        raise PermissionError(f"not allowed to read the Zarr store {href}: {e}") from None
    except Exception as e:  # zarr reports a non-store as many different errors
        if remote and "NoSuchBucket" in str(e):
            raise FileNotFoundError(f"no bucket for {href}") from None
        raise ValueError(f"cannot open {href} as Zarr: {type(e).__name__}: {e}") from None


def _open_netcdf(href: str, remote: bool, chunks: Any, engine: str | None) -> Any:
    import xarray as xr  # start-up cost: loaded on first use

    try:
        if remote:
            import fsspec  # start-up cost: loaded on first use

            opts = s3_options() if href.startswith("s3://") else {}
            if is_cache_href(href):
                opts = {"headers": cache_headers(href)}
            # h5netcdf/scipy read from a file object: s3fs fetches the ranges they ask for
            target: Any = fsspec.open(href, "rb", **opts).open()
        else:
            target = href
        return xr.open_dataset(target, chunks=chunks, engine=engine)
    except FileNotFoundError:
        raise FileNotFoundError(f"no NetCDF file at {href}") from None
    except PermissionError as e:
        raise PermissionError(f"not allowed to read {href}: {e}") from None
    except Exception as e:
        raise ValueError(f"cannot open {href} as NetCDF: {type(e).__name__}: {e}") from None


def select_variable(ds: Any, variable: str | None, what: str) -> Any:
    """``ds[[variable]]``; a GRIB shortName finds the variable carrying that
    ``GRIB_shortName`` attribute (renamed to it); ``KeyError`` lists the variables."""
    if variable is None:
        return ds
    if variable in ds.data_vars:
        return ds[[variable]]
    by_short = [n for n, v in ds.data_vars.items() if v.attrs.get("GRIB_shortName") == variable]
    if by_short:
        return ds[[by_short[0]]].rename({by_short[0]: variable})
    raise KeyError(
        f"{what} has no variable {variable!r}; it has: {', '.join(sorted(map(str, ds.data_vars))) or 'none'}"
    )


__all__ = [
    "DatalakeError",
    "cache_dir",
    "download_progress",
    "import_backends",
    "local_copy",
    "open_href",
    "select_variable",
]
