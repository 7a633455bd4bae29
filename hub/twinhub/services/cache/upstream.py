"""Fetching one asset from a configured source's origin (httpx, no redirects off-origin).

Only the URL that :func:`twinhub.services.datalake.sources.href_from_cache_path` produced is
fetched (never with the user's token).  The source's own headers (credentials) go only to
the source's own origin: not to its ``asset_origins``, and not after a redirect that changes
origin (from then on, whatever later hops do).  httpx runs with ``follow_redirects=False``: a
redirect is followed here only when its target is on one of the same source's configured
origins; any other is refused with 502 naming the target.

What the source says about an object is cleaned here, once: a header value that is not
printable ASCII (what the cache can send on) is dropped, and a body sent with a
``Content-Encoding`` although ``identity`` was asked for is refused (502): its bytes are not
the object's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urljoin

import httpx

from ..datalake.sources import SourceError, StacSource, origin
from .flight import CacheError, Fetch, Meta, Upstream

MAX_REDIRECTS = 5
USER_AGENT = "twinhub-cache"
#: Longest header value kept from a source (ETags, dates and media types are far shorter).
MAX_HEADER = 1024


def make_client(fetch_timeout: float) -> httpx.AsyncClient:
    """One client for the service: ``fetch_timeout`` is the longest wait for a connection or
    for the next bytes of a body (a slow but moving transfer is not cut)."""
    return httpx.AsyncClient(
        follow_redirects=False,
        timeout=httpx.Timeout(fetch_timeout, connect=min(fetch_timeout, 10.0)),
        headers={"user-agent": USER_AGENT},
        trust_env=False,  # no proxy settings from the environment: only configured hosts
    )


def fetcher(
    client: httpx.AsyncClient,
    source: StacSource,
    url: str,
    range_header: str = "",
) -> Fetch:
    """A :data:`~.store.Fetch` for ``url`` of ``source``.

    ``range_header`` is only for objects too large to cache (passed through, 206 accepted).
    """

    @asynccontextmanager
    async def fetch() -> AsyncIterator[Upstream]:
        resp = await _send(client, source, url, range_header)
        try:
            ok = (200, 206) if range_header else (200,)
            if resp.status_code == 404:
                raise CacheError(404, f"source {source.name!r} has no {url} (404)")
            if resp.status_code not in ok:
                raise CacheError(
                    502, f"source {source.name!r} answered {resp.status_code} for {url}"
                )
            yield Upstream(
                _meta(resp, source, url),
                _body(resp, source, url),
                status=resp.status_code,
                content_range=clean_header(resp.headers.get("content-range", "")),
            )
        finally:
            await resp.aclose()

    return fetch


async def head(client: httpx.AsyncClient, source: StacSource, url: str) -> Meta:
    """What the source says of ``url`` without its body (HEAD on an object not cached: no
    download for it); CacheError as for a GET."""
    resp = await _send(client, source, url, "", method="HEAD")
    try:
        if resp.status_code == 404:
            raise CacheError(404, f"source {source.name!r} has no {url} (404)")
        if resp.status_code != 200:
            raise CacheError(
                502, f"source {source.name!r} answered {resp.status_code} to HEAD {url}"
            )
        return _meta(resp, source, url)
    finally:
        await resp.aclose()


def clean_header(value: str) -> str:
    """``value`` if it is printable ASCII of a sane length, else "" (not passed on)."""
    if len(value) > MAX_HEADER or not all(" " <= c <= "~" for c in value):
        return ""
    return value


def _meta(resp: httpx.Response, source: StacSource, url: str) -> Meta:
    encoding = resp.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # asked for identity: compressed bytes are not the object, and would be served as
        # if they were (no Content-Encoding on the way out)
        raise CacheError(
            502,
            f"source {source.name!r} sent {url} with Content-Encoding "
            f"{clean_header(encoding)[:40]!r} although identity was asked for: refused",
        )
    length = resp.headers.get("content-length", "")
    return Meta(
        size=int(length) if length.isdigit() else None,
        content_type=clean_header(resp.headers.get("content-type", ""))
        or "application/octet-stream",
        etag=clean_header(resp.headers.get("etag", "")),
        last_modified=clean_header(resp.headers.get("last-modified", "")),
    )


async def _send(
    client: httpx.AsyncClient,
    source: StacSource,
    url: str,
    range_header: str,
    method: str = "GET",
) -> httpx.Response:
    plain = {"accept-encoding": "identity"}
    if range_header:
        plain["range"] = range_header
    target = url
    # the credentials travel only while every hop so far stayed on the source's own origin
    trusted = source.is_own(url)
    for _ in range(MAX_REDIRECTS + 1):
        headers = {**source.headers, **plain} if trusted else plain
        try:
            resp = await client.send(
                client.build_request(method, target, headers=headers), stream=True
            )
        except httpx.TimeoutException:
            raise CacheError(
                504, f"source {source.name!r}: {origin(target)} did not answer in time"
            ) from None
        except Exception as e:
            # httpx.HTTPError, and httpx.InvalidURL (not one) for a malformed target
            raise CacheError(
                502,
                source.scrub(f"source {source.name!r}: cannot reach {origin(target)}: {e}"),
            ) from None
        if not resp.is_redirect:
            return resp
        await resp.aclose()
        raw_location = resp.headers.get("location", "")
        try:
            location = urljoin(target, raw_location)
            same = origin(location) == origin(target)
        except (SourceError, ValueError):
            location, same = raw_location[:200], False
        if not source.allows(location):
            raise CacheError(
                502,
                f"source {source.name!r} redirected {target} to {location}, which is not one "
                f"of its configured origins ({', '.join(source.origins)}): not followed",
            )
        trusted = trusted and same
        target = location
    raise CacheError(502, f"source {source.name!r}: more than {MAX_REDIRECTS} redirects for {url}")


async def _body(resp: httpx.Response, source: StacSource, url: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.aiter_raw():
            yield chunk
    except httpx.TimeoutException:
        raise CacheError(504, f"source {source.name!r}: {url} stalled mid-transfer") from None
    except httpx.HTTPError as e:
        raise CacheError(
            502, f"source {source.name!r}: the transfer of {url} broke off: {e}"
        ) from None
