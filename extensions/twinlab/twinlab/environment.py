"""twinlab's one reader of the process environment, with typed accessors.

The hub sets most of these in every user server (and Dask workers): their names are the
agreement in :mod:`twinlab.contract`. The ``TWINLAB_*`` ones are twinlab's own knobs. Every
other twinlab module asks here instead of reading ``os.environ`` itself, so what twinlab
reads, and how it treats an unset or malformed value, is in one place. Standard library
only: the server extension imports it at every server start.
"""

from __future__ import annotations

import json
import os
from typing import Any, Final

from twinlab.contract import (
    ENV_CACHE_URL,
    ENV_CPU_LIMIT,
    ENV_HUB_TOKEN,
    ENV_HUB_USER,
    ENV_LIMITS_ENFORCED,
    ENV_MEM_LIMIT,
    ENV_PROFILE,
    ENV_S3_ENDPOINT,
    ENV_SERVICES,
    ENV_STAC_URL,
    ENV_STORAGE,
)

#: fsspec's own S3 endpoint setting (wins over ``AWS_ENDPOINT_URL``).
ENV_FSSPEC_S3_ENDPOINT: Final = "FSSPEC_S3_ENDPOINT_URL"
#: Where remote GRIB files are copied (default ``~/.cache/twinlab/datalake``).
ENV_CACHE_DIR: Final = "TWINLAB_CACHE_DIR"
#: Where regridding weights are cached on disk (default ``~/.cache/twinlab/weights``).
ENV_WEIGHTS_DIR: Final = "TWINLAB_WEIGHTS_DIR"
#: Any non-empty value: regrid without numba (NumPy kernels).
ENV_NO_NUMBA: Final = "TWINLAB_NO_NUMBA"
#: Byte caps of the data lake page's uploads and quick-looks.
ENV_UPLOAD_MAX_BYTES: Final = "TWINLAB_UPLOAD_MAX_BYTES"
ENV_QUICKLOOK_MAX_BYTES: Final = "TWINLAB_QUICKLOOK_MAX_BYTES"


class SettingError(ValueError):
    """An environment variable is missing or malformed (the message names it)."""


def text(name: str) -> str:
    """The variable ``name``, "" when unset."""
    return os.environ.get(name, "")


def optional(name: str) -> str | None:
    """The variable ``name``, None when unset."""
    return os.environ.get(name)


def integer(name: str, default: int) -> int:
    """The variable ``name`` as an int; ``default`` when unset, empty or not an integer."""
    raw = text(name)
    try:
        return int(raw) if raw else default
    except ValueError:
        return default


def number(name: str) -> float | None:
    """The variable ``name`` as a float; None when unset or not a number."""
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return None


def stac_url() -> str:
    """The STAC API's root as the hub set it ("" outside a twinhub server)."""
    return text(ENV_STAC_URL)


def cache_url() -> str:
    """The rolling cache's root as the hub set it ("" outside a twinhub server)."""
    return text(ENV_CACHE_URL)


def hub_token() -> str:
    """The server's token for hub services ("" when unset)."""
    return text(ENV_HUB_TOKEN)


def hub_user() -> str | None:
    """The user the server belongs to (JupyterHub sets it)."""
    return optional(ENV_HUB_USER)


def profile() -> str | None:
    """The slug of the profile the server was started with."""
    return optional(ENV_PROFILE)


def limits_enforced() -> bool:
    """True when the server's memory/CPU limits are enforced (cgroups)."""
    return text(ENV_LIMITS_ENFORCED) == "1"


def mem_limit() -> float | None:
    """The server's memory limit in bytes, None when unset."""
    return number(ENV_MEM_LIMIT)


def cpu_limit() -> float | None:
    """The server's CPU limit in cores, None when unset."""
    return number(ENV_CPU_LIMIT)


def services() -> dict[str, str]:
    """Service name -> public URL, as the spawner passed them (JSON; {} when unset or bad)."""
    try:
        doc = json.loads(text(ENV_SERVICES) or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


def has_storage() -> bool:
    """True when the hub described the user's S3 storage."""
    return bool(text(ENV_STORAGE))


def storage() -> dict[str, Any]:
    """``$TWINHUB_STORAGE`` decoded: ``endpoint``, ``lake_bucket``, ``home_bucket``...;
    :class:`SettingError` when unset, not JSON or not a JSON object."""
    raw = text(ENV_STORAGE)
    if not raw:
        raise SettingError(f"{ENV_STORAGE} is not set: this is not a twinhub user server")
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise SettingError(f"{ENV_STORAGE} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise SettingError(f"{ENV_STORAGE} must be a JSON object, got {raw[:80]!r}")
    return doc


def s3_endpoint() -> str:
    """The S3 endpoint from fsspec's or botocore's variable ("" when neither is set)."""
    return text(ENV_FSSPEC_S3_ENDPOINT) or text(ENV_S3_ENDPOINT)


def cache_dir() -> str:
    """``$TWINLAB_CACHE_DIR`` ("" when unset: the caller's default)."""
    return text(ENV_CACHE_DIR)


def weights_dir() -> str:
    """``$TWINLAB_WEIGHTS_DIR`` ("" when unset: the caller's default)."""
    return text(ENV_WEIGHTS_DIR)


def no_numba() -> bool:
    """True when ``$TWINLAB_NO_NUMBA`` asks for the NumPy kernels."""
    return bool(text(ENV_NO_NUMBA))
