"""Free-text search (``q``) on the user side, by the platform's one set of rules.

The rules (:func:`twinlab.contract.parse_free_text`) are shared with the STAC API, which
declares item-search free text and applies them itself (every word must match unless ``OR``
or a comma separates them; ``"quoted phrases"``; ``-word`` must not match; variables' long
names, units, synonyms such as ``temperature`` for ``2t``, grid names; exact parameter
matches first). Against a STAC API that does not declare it (stac-fastapi-pgstac alone,
whose item search ignores ``q``), :func:`twinlab.datalake.search` and the Data lake page
match and rank the items here instead, with the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twinlab.contract import FreeTextQuery, parse_free_text

#: The conformance class an API declares when its item search understands ``q``.
ITEM_FREE_TEXT = "item-search#free-text"


class FreeText:
    """A parsed ``q`` (:class:`twinlab.contract.FreeTextQuery`) applied to items."""

    def __init__(self, query: FreeTextQuery) -> None:
        self.query = query

    @classmethod
    def parse(cls, q: str) -> FreeText:
        """``ValueError`` naming the problem when ``q`` cannot be parsed."""
        return cls(parse_free_text(q))

    def matches(self, item: Any) -> bool:
        """True when ``item`` (a ``pystac.Item``, or anything with ``id``, ``collection_id``
        and ``properties``) matches."""
        return self.query.matches(_as_json(item))

    def matches_json(self, feature: Mapping[str, Any]) -> bool:
        """:meth:`matches` for an item as JSON (a GeoJSON Feature)."""
        return self.query.matches(feature)

    def rank(self, item: Any) -> int:
        """0 for items whose parameter the query names (they come first), else 1."""
        return self.query.rank(item if isinstance(item, Mapping) else _as_json(item))


def _as_json(item: Any) -> dict[str, Any]:
    return {
        "id": item.id,
        "collection": getattr(item, "collection_id", None),
        "properties": item.properties,
    }


def server_supports(client: Any) -> bool:
    """True when the API declares free text for item search."""
    return any(c.endswith(ITEM_FREE_TEXT) for c in client.get_conforms_to())
