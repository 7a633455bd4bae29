"""Free-text search (``q``) for STAC APIs that only offer it for collections.

stac-fastapi-pgstac implements the free-text extension for *collection* search only; an
item search ignores ``q`` and would silently return everything.  When the API does not
declare item-search free text, :func:`twinlab.datalake.search` filters the items here,
with the extension's syntax: terms separated by spaces or commas match if any matches,
``"quoted phrases"`` match as a whole, ``+term`` must and ``-term`` must not occur;
matching is case-insensitive, over the item id, title, description, keywords and every
string property, and a term matches at the start of a word (``heal`` finds ``healpix``;
``2t`` finds the parameter ``2t`` but not the ``…-02T00`` of a date).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

#: The conformance class an API declares when its item search understands ``q``.
ITEM_FREE_TEXT = "item-search#free-text"
_TOKEN = re.compile(r'([+-]?)"([^"]*)"|([+-]?)([^\s,"]+)')


@dataclass
class FreeText:
    """A parsed ``q``: any of ``anyof``, all of ``required``, none of ``excluded``."""

    anyof: list[str] = field(default_factory=list)
    required: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, q: str) -> FreeText:
        if q.count('"') % 2:
            raise ValueError(f"q {q!r} has an unclosed quote")
        out = cls()
        for sign_q, phrase, sign, word in _TOKEN.findall(q):
            text = (phrase if phrase else word).strip().lower()
            sign = sign_q or sign
            if not text or text.upper() in ("OR", "AND"):
                continue
            {"+": out.required, "-": out.excluded}.get(sign, out.anyof).append(text)
        if not (out.anyof or out.required or out.excluded):
            raise ValueError(f"q {q!r} has no search terms")
        return out

    def matches(self, item: Any) -> bool:
        """True when ``item`` (a ``pystac.Item``, or anything with ``id`` and
        ``properties``) matches."""
        return self._matches(item_text(item))

    def matches_json(self, feature: Mapping[str, Any]) -> bool:
        """:meth:`matches` for an item as JSON (a GeoJSON Feature)."""
        return self._matches(_text(str(feature.get("id", "")), feature.get("properties") or {}))

    def _matches(self, text: str) -> bool:
        def found(term: str) -> bool:
            return _word_start(term).search(text) is not None

        if any(found(t) for t in self.excluded):
            return False
        if not all(found(t) for t in self.required):
            return False
        return not self.anyof or any(found(t) for t in self.anyof)


@lru_cache(maxsize=256)
def _word_start(term: str) -> re.Pattern[str]:
    """``term`` where no letter or digit comes right before it."""
    return re.compile(r"(?<![a-z0-9])" + re.escape(term))


def item_text(item: Any) -> str:
    """What free text is matched against, lower-cased."""
    return _text(item.id, item.properties)


def _text(item_id: str, properties: Mapping[str, Any]) -> str:
    parts = [item_id]
    for value in properties.values():
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value if isinstance(v, str))
    return "\n".join(parts).lower()


def server_supports(client: Any) -> bool:
    """True when the API declares free text for item search."""
    return any(c.endswith(ITEM_FREE_TEXT) for c in client.get_conforms_to())
