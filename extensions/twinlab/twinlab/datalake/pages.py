"""The STAC API's own JSON pages, read with :func:`twinlab.datalake.search`'s client.

The data lake page's server side (:mod:`twinlab.serverext.lake`) hands the browser the
STAC API's JSON (features, a paging token, the federation's ``twinhub:sources`` and
``twinhub:warnings``) rather than pystac Items, so it reads pages here; everything else is
the notebook search's: the client (URL, token header, timeout), the decision whether the
API does free text itself (:func:`~twinlab.datalake.freetext.server_supports`) and the
free-text matching of the items when it does not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .config import DatalakeError
from .freetext import FreeText, server_supports

#: Free text on an API without item-search ``q``: at most this many items are scanned.
FREE_TEXT_SCAN = 5000


class StacAnswerError(DatalakeError):
    """The STAC API answered an HTTP error (``status``), no JSON, or not at all
    (``status`` None); ``detail`` is the start of its answer or the connection error."""

    def __init__(self, message: str, status: int | None, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def read_json(api: Any, url: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """GET ``url`` (POST ``body`` when given) through ``api``'s connection (the
    ``pystac_client.Client`` of :func:`~twinlab.datalake.search.client`: its headers and
    timeout); an error answer is a :class:`StacAnswerError`."""
    from pystac_client.exceptions import APIError  # start-up cost: on the first request

    method = "GET" if body is None else "POST"
    params = None if body is None else dict(body)
    try:
        text: str = api._stac_io.request(url, method=method, parameters=params)
    except APIError as e:
        status = getattr(e, "status_code", None)
        detail = str(e)
        if status is None:
            raise StacAnswerError(f"cannot reach {url}: {detail}", None, detail) from None
        detail = detail[:300]
        raise StacAnswerError(f"{url} answered {status}: {detail}", status, detail) from None
    try:
        doc = json.loads(text)
    except ValueError:
        raise StacAnswerError(f"{url} did not answer JSON", 200, text[:300]) from None
    if not isinstance(doc, dict):
        raise StacAnswerError(f"{url} did not answer a JSON object", 200, text[:300])
    return doc


def next_token(doc: Mapping[str, Any]) -> str | None:
    """The paging token of a search answer's ``next`` link (POST body or GET query)."""
    for link in doc.get("links", []):
        if link.get("rel") != "next":
            continue
        body = link.get("body")
        if isinstance(body, dict) and body.get("token"):
            return str(body["token"])
        token = parse_qs(urlsplit(link.get("href", "")).query).get("token")
        if token:
            return str(token[0])
    return None


def search_page(
    api: Any,
    url: str,
    body: Mapping[str, Any],
    text: FreeText | None = None,
    scan: int = FREE_TEXT_SCAN,
) -> tuple[dict[str, Any], list[dict[str, Any]], str | None]:
    """One page of an item search at ``url``: ``(last answer, features, next token)``.

    ``body`` is the search request (``limit``, ``token``...). Free text (``text``) the API
    does itself goes with the request as ``q``; otherwise the items are matched here, page
    after page, until ``limit`` matched (the answer may hold up to one page more), ``scan``
    items were scanned, or the end.
    """
    if text is None or server_supports(api):
        doc = read_json(api, url, body)
        return doc, list(doc.get("features", [])), next_token(doc)
    req = {k: v for k, v in body.items() if k != "q"}
    limit, scanned = int(req["limit"]), 0
    kept: list[dict[str, Any]] = []
    while True:
        doc = read_json(api, url, req)
        page = list(doc.get("features", []))
        scanned += len(page)
        kept += [f for f in page if text.matches_json(f)]
        token = next_token(doc)
        if not token or len(kept) >= limit or scanned >= scan:
            return doc, sorted(kept, key=text.rank), token
        req["token"] = token
