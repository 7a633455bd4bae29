"""The shape remote items must have before the federation touches them.

Remote documents are untrusted: one item whose ``properties`` is a string or whose
``assets`` is a list must not reach the merge or the annotations (where it would raise and
turn the whole federated answer into a 500).  Such items are dropped, and the page says how
many, naming the source.
"""

from __future__ import annotations

from typing import Any

from ..sources import StacSource

#: How many of the dropped items' problems a warning quotes.
SAMPLES = 2


def feature_problem(feature: Any) -> str | None:
    """Why ``feature`` is not a usable STAC item, or None when it is."""
    if not isinstance(feature, dict):
        return f"not a JSON object ({type(feature).__name__})"
    if feature.get("type") != "Feature":
        return f"'type' is {str(feature.get('type'))[:40]!r}, not 'Feature'"
    iid = feature.get("id")
    if not isinstance(iid, str) or not iid:
        return "no string 'id'"
    if feature.get("collection") is not None and not isinstance(feature["collection"], str):
        return f"item {iid[:80]!r}: 'collection' is not a string"
    if not isinstance(feature.get("properties"), dict):
        return f"item {iid[:80]!r}: 'properties' is not an object"
    assets = feature.get("assets", {})
    if not isinstance(assets, dict) or not all(isinstance(a, dict) for a in assets.values()):
        return f"item {iid[:80]!r}: 'assets' is not an object of objects"
    links = feature.get("links", [])
    if links is not None and not isinstance(links, list):
        return f"item {iid[:80]!r}: 'links' is not a list"
    return None


def dropped_warning(source: StacSource, problems: list[str], what: str = "item(s)") -> str:
    """The warning for ``problems`` (one per dropped item), naming the source and the count."""
    sample = "; ".join(p[:200] for p in problems[:SAMPLES])
    return source.scrub(
        f"source {source.name!r}: {len(problems)} malformed {what} left out (e.g. {sample})"
    )


def keep_valid(features: list[Any], source: StacSource) -> tuple[list[dict[str, Any]], str | None]:
    """The usable items of ``features`` and, when some were dropped, a warning saying so."""
    kept: list[dict[str, Any]] = []
    problems: list[str] = []
    for f in features:
        why = feature_problem(f)
        if why is None:
            kept.append(f)
        else:
            problems.append(why)
    return kept, (dropped_warning(source, problems) if problems else None)
