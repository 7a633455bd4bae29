"""What the platform adds to items and collections from a source before users see them.

- ``properties["twinhub:source"]``: where the item comes from (``local`` for the lake);
- assets on a configured origin get ``alternate.cache.href``, the same object through the
  rolling cache (:mod:`twinhub.services.cache`); any other asset keeps its href, gets no
  alternate and a ``twinhub:refused`` reason, so nothing can make the platform fetch it;
- links point back at this API (the remote ones would send clients elsewhere); the item's
  own remote URL is kept as ``via`` when it is on the source's origin.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urljoin

from twinlab.contract import FIELD_REFUSED, FIELD_SOURCE

from ..sources import LOCAL, SourceError, StacSource, cache_path, origin


def absolute(href: str, base: str | None) -> str:
    """``href`` resolved against ``base`` (the URL of the document it was found in);
    SourceError when either cannot be parsed (``https://[``)."""
    if not base:
        return href
    try:
        return urljoin(base, href)
    except ValueError as e:
        raise SourceError(
            f"{href[:200]!r} cannot be resolved against {base[:200]!r}: {e}"
        ) from None


def self_href(doc: dict[str, Any]) -> str | None:
    for link in doc.get("links") or ():
        if isinstance(link, dict) and link.get("rel") == "self" and link.get("href"):
            return str(link["href"])
    return None


def tag_local(item: dict[str, Any]) -> dict[str, Any]:
    props = item.get("properties")
    if isinstance(props, dict):
        props[FIELD_SOURCE] = LOCAL
    return item


def annotate_item(
    item: dict[str, Any],
    source: StacSource,
    api_base: str,
    cache_url: str,
    doc_url: str | None = None,
) -> dict[str, Any]:
    """Annotate a remote item in place (and return it). ``doc_url``: where it was read,
    for relative hrefs (static catalogues); else its own self link."""
    base = doc_url or self_href(item)
    props = item.setdefault("properties", {})
    if not isinstance(props, dict):
        item["properties"] = props = {}
    props[FIELD_SOURCE] = source.name
    assets = item.get("assets")
    if isinstance(assets, dict):
        for asset in assets.values():
            if isinstance(asset, dict):
                annotate_asset(asset, source, cache_url, base)
    cid = item.get("collection")
    iid = str(item.get("id", ""))
    links = [{"rel": "root", "href": api_base, "type": "application/json"}]
    if cid:
        coll = f"{api_base}collections/{quote(str(cid), safe='')}"
        links += [
            {
                "rel": "self",
                "href": f"{coll}/items/{quote(iid, safe='')}",
                "type": "application/geo+json",
            },
            {"rel": "collection", "href": coll, "type": "application/json"},
            {"rel": "parent", "href": coll, "type": "application/json"},
        ]
    if base and source.allows(base):
        links.append({"rel": "via", "href": base, "type": "application/geo+json"})
    item["links"] = links
    return item


def annotate_asset(
    asset: dict[str, Any], source: StacSource, cache_url: str, base: str | None
) -> None:
    asset.pop(FIELD_REFUSED, None)
    alternates = asset.get("alternate")
    if isinstance(alternates, dict):
        alternates.pop("cache", None)  # only the platform names its cache
    href = asset.get("href")
    if not isinstance(href, str) or not href:
        asset[FIELD_REFUSED] = "the asset has no href"
        return
    try:
        href = absolute(href, base)
    except SourceError as e:
        asset[FIELD_REFUSED] = f"not fetched by the platform: {e}"
        return
    asset["href"] = href
    try:
        path = cache_path(source, href)
    except SourceError:
        asset[FIELD_REFUSED] = _why_refused(source, href)
        return
    if not cache_url:
        return
    if not isinstance(alternates, dict):
        alternates = asset["alternate"] = {}
    alternates["cache"] = {
        "href": f"{cache_url}assets/{path}",
        "title": f"through the platform's cache (from source {source.name})",
    }


def _why_refused(source: StacSource, href: str) -> str:
    try:
        where = origin(href)
    except SourceError as e:
        return f"not fetched by the platform: {e}"
    return (
        f"{where} is not a configured origin of source {source.name!r} "
        f"({', '.join(source.origins)}): the platform does not fetch it"
    )


def annotate_collection(
    coll: dict[str, Any], source: StacSource, api_base: str, doc_url: str | None = None
) -> dict[str, Any]:
    coll[FIELD_SOURCE] = source.name
    base = doc_url or self_href(coll)
    cid = quote(str(coll.get("id", "")), safe="")
    links = [
        {"rel": "self", "href": f"{api_base}collections/{cid}", "type": "application/json"},
        {
            "rel": "items",
            "href": f"{api_base}collections/{cid}/items",
            "type": "application/geo+json",
        },
        {"rel": "root", "href": api_base, "type": "application/json"},
        {"rel": "parent", "href": api_base, "type": "application/json"},
    ]
    if base and source.allows(base):
        links.append({"rel": "via", "href": base, "type": "application/json"})
    coll["links"] = links
    return coll
