"""Items of federated sources: their assets are read through the platform's rolling cache.

A search result from another catalogue carries ``properties["twinhub:source"]`` (not
``"local"``); each of its assets on a configured origin has
``asset["alternate"]["cache"]["href"]``, a URL under ``$TWINHUB_CACHE_URL``
(``/services/cache/assets/<source>/<host>/<path>``), which the hub serves with this
server's token.  :func:`asset_href` picks that URL and refuses what the platform refused
(``asset["twinhub:refused"]``: a host that is not configured).  The server's token is sent
to the cache only, never to any other host.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from twinlab import environment
from twinlab.contract import FIELD_REFUSED

from .config import DatalakeError, api_token
from .search import LOCAL, item_source

log = logging.getLogger(__name__)

REFUSED = FIELD_REFUSED


class RemoteAssetRefused(DatalakeError, PermissionError):
    """The platform does not read this asset of a remote item (the message says why)."""


def cache_url() -> str:
    """``$TWINHUB_CACHE_URL`` with a trailing slash ("" when this is no twinhub server)."""
    url = environment.cache_url()
    return url if not url or url.endswith("/") else url + "/"


def is_cache_href(href: str) -> bool:
    base = cache_url()
    return bool(base) and href.startswith(base + "assets/")


def cache_headers(href: str) -> dict[str, str]:
    """The token header for a URL of the platform's cache; nothing for any other URL."""
    return {"Authorization": f"token {api_token()}"} if is_cache_href(href) else {}


def asset_href(item: Any, key: str, asset: Any) -> str:
    """Where ``open`` reads ``asset`` (``key``) of ``item`` from.

    Local items: the asset's own (absolute) href.  Remote items: the cache URL, and only
    that: :class:`RemoteAssetRefused` when the platform refused the asset or gave it none.
    """
    if item_source(item) == LOCAL:
        return str(asset.get_absolute_href() or asset.href)
    source = item_source(item)
    what = f"asset {key!r} of item {item.id!r} (source {source!r})"
    refused = asset.extra_fields.get(REFUSED)
    if refused:
        host = urlsplit(asset.href).netloc or asset.href
        raise RemoteAssetRefused(
            f"{what} is on {host}, which the platform does not read: {refused}"
        )
    alternate = asset.extra_fields.get("alternate") or {}
    href = (alternate.get("cache") or {}).get("href") if isinstance(alternate, dict) else None
    if not href:
        raise RemoteAssetRefused(
            f"{what} has no cache link (alternate.cache.href): remote assets are read only "
            "through the platform's cache; search again through the platform's STAC API"
        )
    if not cache_url():
        raise DatalakeError(
            f"{what} is read through the platform's cache, but TWINHUB_CACHE_URL is not set "
            "(twinhub sets it in user servers)"
        )
    if not is_cache_href(href):
        # never send the server's token elsewhere, nor read remote data around the cache
        raise RemoteAssetRefused(
            f"{what}: its cache link {href} is not under this platform's cache {cache_url()}"
        )
    return str(href)


def http_filesystem(href: str) -> Any:
    """An fsspec HTTP filesystem for ``href``: with the token for the cache only."""
    import fsspec  # start-up cost: only when a remote file is read

    return fsspec.filesystem("http", headers=cache_headers(href))


__all__ = [
    "RemoteAssetRefused",
    "asset_href",
    "cache_headers",
    "cache_url",
    "http_filesystem",
    "is_cache_href",
    "item_source",
]
