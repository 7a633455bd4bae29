"""HTTP to federated sources, and nowhere else.

Every request names its :class:`StacSource`; the URL must be on the source's own origin
(:meth:`StacSource.is_own`; its ``asset_origins`` are for the cache's asset reads only)
before anything is sent, redirects are followed by hand and only within that origin, and
bodies are read up to a cap.  The source's headers (credentials) therefore only ever reach
its own origin.  ``Accept-Encoding: identity`` is asked for and the cap counts the bytes on
the wire; a server that compresses anyway is decoded with a bounded output (gzip/deflate)
or refused: a few KB of brotli can expand to gigabytes.
"""

from __future__ import annotations

import json
import zlib
from typing import Any
from urllib.parse import urljoin

import httpx

from ..sources import SourceError, StacSource, origin

#: Largest JSON document read from a source (a static catalogue's document).
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024
#: Largest answer of a remote API (a page of items, a collection list, one item).
MAX_PAGE_BYTES = 8 * 1024 * 1024
MAX_REDIRECTS = 3
USER_AGENT = "twinhub-federation/1"


class SourceFailure(Exception):
    """A source did not answer usefully; the message names the source and the problem."""

    def __init__(self, message: str, status: str = "error") -> None:
        super().__init__(message)
        self.status = status  # "error" or "timeout", as in twinhub:sources


def check_url(source: StacSource, url: str) -> str:
    """``url``, when it is on the source's own origin; else SourceFailure naming it."""
    if not source.is_own(url):
        raise SourceFailure(
            f"source {source.name!r}: refused to contact {str(url)[:200]!r}, which is not on "
            f"the source's origin ({source.origin})"
        )
    return url


async def request(
    client: httpx.AsyncClient,
    source: StacSource,
    method: str,
    url: str,
    *,
    json_body: Any = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
    max_bytes: int = MAX_DOCUMENT_BYTES,
) -> tuple[httpx.Response, bytes]:
    """One request (plus same-origin redirects); the response and its body (decoded, at
    most ``max_bytes``).  Every failure is a SourceFailure naming the source."""
    hdrs = {
        "User-Agent": USER_AGENT,
        "Accept": "application/json",
        **source.headers,
        "Accept-Encoding": "identity",
    }
    hdrs.update(headers or {})
    to = httpx.Timeout(timeout or source.timeout)
    for _hop in range(MAX_REDIRECTS + 1):
        check_url(source, url)
        try:
            req = client.build_request(
                method, url, json=json_body, params=params, headers=hdrs, timeout=to
            )
            resp = await client.send(req, stream=True, follow_redirects=False)
            try:
                body = await _read_capped(resp, url, source, max_bytes)
            finally:
                await resp.aclose()
        except httpx.TimeoutException:
            raise SourceFailure(
                f"source {source.name!r}: no answer from {url} within {to.read:g} s", "timeout"
            ) from None
        except SourceFailure:
            raise
        except Exception as e:
            # httpx.HTTPError, but also httpx.InvalidURL (not one) for a URL with control
            # characters, UnicodeError, ...: one bad URL is this source's failure, not a 500
            raise SourceFailure(
                f"source {source.name!r}: cannot reach {url[:200]!r}: {type(e).__name__}: {e}"
            ) from None
        if resp.status_code in (301, 302, 303, 307, 308) and "location" in resp.headers:
            try:
                target = urljoin(str(resp.request.url), resp.headers["location"])
                same = origin(target) == origin(url)
            except (SourceError, ValueError):
                target, same = resp.headers["location"][:200], False
            if not same:
                raise SourceFailure(
                    f"source {source.name!r}: {url} redirects to {target!r}, another origin; "
                    "not followed"
                )
            if resp.status_code in (301, 302, 303):
                method, json_body = "GET", None
            url, params = target, None
            continue
        return resp, body
    raise SourceFailure(f"source {source.name!r}: more than {MAX_REDIRECTS} redirects at {url}")


async def _read_capped(resp: httpx.Response, url: str, source: StacSource, max_bytes: int) -> bytes:
    """The body as sent (raw), at most ``max_bytes``, then decoded to at most ``max_bytes``."""

    def too_large() -> SourceFailure:
        return SourceFailure(
            f"source {source.name!r}: {url} answered more than {max_bytes / 2**20:g} MB; not read"
        )

    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_raw():
        size += len(chunk)
        if size > max_bytes:
            raise too_large()
        chunks.append(chunk)
    raw = b"".join(chunks)
    coding = resp.headers.get("content-encoding", "identity").strip().lower()
    if coding in ("", "identity"):
        return raw
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise SourceFailure(
            f"source {source.name!r}: {url} answered with Content-Encoding {coding[:40]!r} "
            "although 'identity' was asked for; not read"
        )
    # 47: a gzip or zlib header, detected; "deflate" without a zlib header (some servers
    # send the raw stream) is -15
    zlib_header = len(raw) >= 2 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0
    wbits = -15 if coding == "deflate" and not zlib_header else 47
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(raw, max_bytes + 1)
    except zlib.error as e:
        raise SourceFailure(f"source {source.name!r}: {url}: bad {coding} body: {e}") from None
    if len(out) > max_bytes or d.unconsumed_tail:
        raise too_large()
    return out


def decode(resp: httpx.Response, body: bytes, source: StacSource, what: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer, else SourceFailure naming the status."""
    if not 200 <= resp.status_code < 300:
        # the remote body is shown (it often says what is wrong), minus anything it echoes of
        # the source's credentials
        text = source.scrub(body[:200].decode("utf-8", "replace").replace("\n", " "))
        raise SourceFailure(
            f"source {source.name!r}: {what} answered HTTP {resp.status_code}: {text}"
        )
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise SourceFailure(f"source {source.name!r}: {what} did not answer JSON") from None
    if not isinstance(doc, dict):
        raise SourceFailure(f"source {source.name!r}: {what} answered JSON that is not an object")
    return doc
