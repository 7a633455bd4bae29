"""HTTP to federated sources, and nowhere else.

Every request names its :class:`StacSource`; the URL must be on one of the source's
configured origins (:meth:`StacSource.allows`) before anything is sent, redirects are
followed by hand and only within the same origin, and bodies are read up to a cap.  The
source's headers (credentials) therefore only ever reach the source's own origins.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urljoin

import httpx

from ..sources import SourceError, StacSource, origin

#: Largest JSON document read from a source (a page of items, a catalogue).
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024
MAX_REDIRECTS = 3
USER_AGENT = "twinhub-federation/1"


class SourceFailure(Exception):
    """A source did not answer usefully; the message names the source and the problem."""

    def __init__(self, message: str, status: str = "error") -> None:
        super().__init__(message)
        self.status = status  # "error" or "timeout", as in twinhub:sources


def check_url(source: StacSource, url: str) -> str:
    if not source.allows(url):
        raise SourceFailure(
            f"source {source.name!r}: refused to contact {url!r}, which is not on a configured "
            f"origin ({', '.join(source.origins)})"
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
) -> tuple[httpx.Response, bytes]:
    """One request (plus same-origin redirects); the response and its capped body."""
    hdrs = {"User-Agent": USER_AGENT, "Accept": "application/json", **source.headers}
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
                body = await _read_capped(resp, url, source)
            finally:
                await resp.aclose()
        except httpx.TimeoutException:
            raise SourceFailure(
                f"source {source.name!r}: no answer from {url} within {to.read:g} s", "timeout"
            ) from None
        except httpx.HTTPError as e:
            raise SourceFailure(f"source {source.name!r}: cannot reach {url}: {e}") from None
        if resp.status_code in (301, 302, 303, 307, 308) and "location" in resp.headers:
            target = urljoin(str(resp.request.url), resp.headers["location"])
            try:
                same = origin(target) == origin(url)
            except SourceError:
                same = False
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


async def _read_capped(resp: httpx.Response, url: str, source: StacSource) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > MAX_DOCUMENT_BYTES:
            raise SourceFailure(
                f"source {source.name!r}: {url} answered more than "
                f"{MAX_DOCUMENT_BYTES // 2**20} MB; not read"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def decode(resp: httpx.Response, body: bytes, source: StacSource, what: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer, else SourceFailure naming the status."""
    if not 200 <= resp.status_code < 300:
        text = body[:200].decode("utf-8", "replace").replace("\n", " ")
        raise SourceFailure(
            f"source {source.name!r}: {what} answered HTTP {resp.status_code}: {text}"
        )
    try:
        doc = json.loads(body)
    except ValueError:
        raise SourceFailure(f"source {source.name!r}: {what} did not answer JSON") from None
    if not isinstance(doc, dict):
        raise SourceFailure(f"source {source.name!r}: {what} answered JSON that is not an object")
    return doc
