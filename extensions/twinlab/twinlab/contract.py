"""The agreement between the hub and the user side, in one dependency-free module.

The hub (``twinhub``) writes what user servers, kernels and Dask workers read: environment
variables, the ``twinhub:*`` fields of STAC items and collections, and the rules a bbox or
datetime follows. Both sides import the names from here, so neither spells them as string
literals. Importing this module imports nothing but the standard library (a test checks it),
so the hub can use it without loading twinlab's numerical stack.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

# -- environment of user servers (and, where said, Dask workers) -------------------------
#: The STAC API's root through the proxy on loopback (the data lake).
ENV_STAC_URL: Final = "TWINHUB_STAC_URL"
#: The rolling cache's root through the proxy on loopback.
ENV_CACHE_URL: Final = "TWINHUB_CACHE_URL"
#: The accounting service's root through the proxy on loopback (usage and budgets).
ENV_ACCOUNTING_URL: Final = "TWINHUB_ACCOUNTING_URL"
#: The tiles service's root through the proxy on loopback (VizLab: tiles, EDR, the page).
ENV_TILES_URL: Final = "TWINHUB_TILES_URL"
#: JSON: {"endpoint", "lake_bucket", "home_bucket", "credentials", "project_buckets"}.
ENV_STORAGE: Final = "TWINHUB_STORAGE"
#: JSON: service name -> public URL of every service the user may use.
ENV_SERVICES: Final = "TWINHUB_SERVICES"
#: The slug of the profile the server was started with.
ENV_PROFILE: Final = "TWINHUB_PROFILE"
#: The project the server is charged to (informational: the hub's records are the truth);
#: the default project of the Dask clusters it makes.
ENV_PROJECT: Final = "TWINHUB_PROJECT"
#: "1" when the server's memory/CPU limits are enforced (cgroups), "0" when advisory.
ENV_LIMITS_ENFORCED: Final = "TWINHUB_LIMITS_ENFORCED"
#: The platform instance every process of it carries (orphan clean-up).
ENV_INSTANCE: Final = "TWINHUB_INSTANCE"
#: S3 endpoint and keys of the user (servers and the user's Dask workers).
ENV_S3_ENDPOINT: Final = "AWS_ENDPOINT_URL"
ENV_S3_ACCESS_KEY: Final = "AWS_ACCESS_KEY_ID"
ENV_S3_SECRET_KEY: Final = "AWS_SECRET_ACCESS_KEY"
ENV_S3_REGION: Final = "AWS_DEFAULT_REGION"
#: JupyterHub's own: the server's token and the hub's API.
ENV_HUB_TOKEN: Final = "JUPYTERHUB_API_TOKEN"
ENV_HUB_API_URL: Final = "JUPYTERHUB_API_URL"
#: JupyterHub's spawner's: the server's user and its memory (bytes) and CPU limits.
ENV_HUB_USER: Final = "JUPYTERHUB_USER"
ENV_MEM_LIMIT: Final = "MEM_LIMIT"
ENV_CPU_LIMIT: Final = "CPU_LIMIT"

# -- twinhub:* fields of STAC items and collections ---------------------------------------
#: (item property) where an item comes from: "local" for the lake, else the source's name.
FIELD_SOURCE: Final = "twinhub:source"
#: (search answer) per-source counts and errors of a federated search.
FIELD_SOURCES: Final = "twinhub:sources"
#: (search answer) what the search could not do everywhere (a filter a source lacks...).
FIELD_WARNINGS: Final = "twinhub:warnings"
#: (asset) why the platform will not fetch this asset.
FIELD_REFUSED: Final = "twinhub:refused"
#: (item property / asset) the grid of the data: its name, e.g. "healpix-nside64-nested".
FIELD_GRID: Final = "twinhub:grid"
FIELD_GRID_ID: Final = "twinhub:grid_id"
#: (asset) the variable an asset holds.
FIELD_VARIABLE: Final = "twinhub:variable"
#: (collection) the user who owns a collection they made.
FIELD_OWNER: Final = "twinhub:owner"
#: Collection ids ``<this><user>``: where processing jobs publish a user's outputs; the STAC
#: API lets only that user (or an admin) create one.
USER_COLLECTION_PREFIX: Final = "user-"
#: (collection) the sample data's version and size.
FIELD_SEED: Final = "twinhub:seed"
FIELD_SIZE: Final = "twinhub:size"
#: The value of FIELD_SOURCE for the lake's own items.
LOCAL_SOURCE: Final = "local"


# -- named input types of the public API (like pystac-client's) ---------------------------
#: A bbox: 4 (2-D) or 6 (3-D) numbers west, south, (low,) east, north, (high), or the same
#: as a comma-separated string (a GET query's form).
BBox: TypeAlias = Sequence[float] | str
#: A STAC datetime: an instant or "start/end" (".." for an open end) as a string, a
#: ``datetime``/``date``, or a (start, end) pair of those (None for an open end).
DatetimeLike: TypeAlias = (
    str
    | _dt.date
    | tuple[_dt.date | str | None, _dt.date | str | None]
    | Sequence[_dt.date | str | None]
)
#: Federated source names: a list, or a comma-separated string ("local" is the lake).
Sources: TypeAlias = Sequence[str] | str


# -- the shared bbox and datetime rules ---------------------------------------------------
def check_bbox(value: object) -> list[float]:
    """``value`` as 4 (2-D) or 6 (3-D) finite floats, west/south/(low)/east/north/(high).

    Longitudes within [-180, 180], latitudes within [-90, 90], south <= north and (3-D)
    low <= high; west > east is allowed (a box across the antimeridian, as STAC says).
    A comma-separated string (a GET query's form, ``"-10,35,30,60"``) is accepted too.
    Raises ``ValueError`` naming the problem.
    """
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, Mapping) or not (
        isinstance(value, Sequence) or (isinstance(value, Iterable) and hasattr(value, "__len__"))
    ):  # a NumPy array has a length too
        raise ValueError(f"bbox must be 4 or 6 numbers, got {type(value).__name__}")
    items: list[Any] = list(value)
    if len(items) not in (4, 6):
        raise ValueError(f"bbox must have 4 or 6 numbers, got {len(items)}: {items!r}")
    try:
        vals = [float(v) for v in items]
    except (TypeError, ValueError):
        raise ValueError(f"bbox must be 4 or 6 numbers, got {items!r}") from None
    check_finite(vals)
    half = len(vals) // 2
    west, south, east, north = vals[0], vals[1], vals[half], vals[half + 1]
    for name, v in (("west", west), ("east", east)):
        if not -180 <= v <= 180:
            raise ValueError(f"bbox {name} longitude {v} outside [-180, 180]")
    check_latitudes(south, north)
    if len(vals) == 6 and vals[2] > vals[5]:
        raise ValueError(f"bbox lowest elevation {vals[2]} above highest {vals[5]}")
    return vals


def check_finite(vals: Sequence[float]) -> None:
    """``ValueError`` unless every bbox value is finite (no NaN, no infinity)."""
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"bbox has non-finite values: {list(vals)} (they must be finite)")


def check_latitudes(south: float, north: float) -> None:
    """``ValueError`` unless -90 <= south <= north <= 90 (a bbox's latitudes)."""
    for name, v in (("south", south), ("north", north)):
        if not -90 <= v <= 90:
            raise ValueError(f"bbox {name} latitude {v} outside [-90, 90]")
    if south > north:
        raise ValueError(f"bbox south {south} is north of north {north} (it needs south <= north)")


_YEAR_MONTH = re.compile(r"\d{4}(-\d{2})?")


def _check_instant(text: str, whole: str) -> None:
    if text in ("", ".."):
        return
    t = text.strip()
    # RFC 3339 and the shorter forms pystac-client expands (YYYY, YYYY-MM, YYYY-MM-DD)
    if _YEAR_MONTH.fullmatch(t):
        _, _, month = t.partition("-")
        if month and not 1 <= int(month) <= 12:
            raise ValueError(f"datetime {whole!r}: month {month} in {t!r} is not 1..12")
        return
    try:
        _dt.datetime.fromisoformat(t.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"datetime {whole!r}: {t!r} is not a date or RFC 3339 timestamp "
            "(e.g. 2020-01-01, 2020-01-01T00:00:00Z, 2020-01-01/2020-01-31, 2020-01-01/..)"
        ) from None


def _as_datetime(text: str) -> _dt.datetime:
    t = text.strip()
    if _YEAR_MONTH.fullmatch(t):
        t = t + ("-01-01" if len(t) == 4 else "-01")
    d = _dt.datetime.fromisoformat(t)
    return d if d.tzinfo else d.replace(tzinfo=_dt.UTC)


def check_datetime(value: object) -> object:
    """Check a STAC datetime: a string (instant or ``start/end`` with ``..`` for open
    ends), a ``datetime``/``date``, or a (start, end) pair of those; returned unchanged.
    Raises ``ValueError`` naming the problem."""
    if value is None or isinstance(value, _dt.date):
        return value
    if isinstance(value, str):
        parts = value.split("/")
        if len(parts) > 2 or not value.strip():
            raise ValueError(f"datetime {value!r} must be one instant or 'start/end'")
        for p in parts:
            _check_instant(p, value)
        if len(parts) == 2 and parts[0] in ("", "..") and parts[1] in ("", ".."):
            raise ValueError(f"datetime {value!r} has no start and no end")
        bounded = len(parts) == 2 and ".." not in parts and "" not in parts
        if bounded and _as_datetime(parts[0]) > _as_datetime(parts[1]):
            raise ValueError(f"datetime {value!r}: start is after end")
        return value
    if isinstance(value, Sequence) and len(value) == 2:
        for v in value:
            if v is not None and not isinstance(v, _dt.date):
                check_datetime(str(v))
        return value
    raise ValueError(f"datetime must be a string, a datetime or a (start, end) pair, got {value!r}")


# -- free-text search (``q``): one grammar, one synonym table, hub and user side -------------
# The STAC API turns a ``q`` into a CQL2 filter (:meth:`FreeTextQuery.to_cql2`), a client
# facing an API without item free text matches items itself (:meth:`FreeTextQuery.matches`):
# both by these rules, so the notebook, the Data lake page and the STAC API agree.

#: Parameters (short names; the first is the lake's) and the words scientists use for them.
PARAM_SYNONYMS: Final[tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]] = (
    (
        ("2t", "t2m"),
        (
            "temperature",
            "2m temperature",
            "2 metre temperature",
            "2 meter temperature",
            "air temperature",
            "near-surface air temperature",
            "tas",
        ),
    ),  # fmt: skip
    (("tp",), ("precipitation", "total precipitation", "rain", "rainfall", "pr")),
    (("10u", "10v", "u10", "v10"), ("wind", "10m wind", "10 metre wind", "wind speed", "winds")),
    (("10u", "u10"), ("eastward wind", "zonal wind", "u wind", "uas")),
    (("10v", "v10"), ("northward wind", "meridional wind", "v wind", "vas")),
    (("msl", "mslp"), ("pressure", "sea level pressure", "mean sea level pressure", "psl")),
    (("sst", "tos"), ("sea surface temperature", "ocean surface temperature")),
)
#: Grid words a user writes -> words the records hold (``twinhub:grid``, grid ids).
GRID_SYNONYMS: Final[dict[str, tuple[str, ...]]] = {
    "hpx": ("healpix",),
    "o-grid": ("octahedral",),
    "ogrid": ("octahedral",),
    "octahedral grid": ("octahedral",),
    "reduced gaussian": ("octahedral", "reduced_gaussian"),
    "regular gaussian": ("regular_gaussian",),
    "f-grid": ("regular_gaussian",),
}
#: Item fields free text looks in: top-level ``id`` and ``collection``, else properties
#: (objects and lists as their JSON text: variables' long names and units, the grid).
#: (A parameter's short name is matched exactly, as :attr:`FreeTextTerm.params`.)
FREE_TEXT_FIELDS: Final = ("id", "collection", "title", "description", "keywords", "resolution", "experiment", "cube:variables", FIELD_GRID)  # fmt: skip
#: A term matches at the start of a word: at the start of a field or after one of these.
WORD_STARTS: Final = ' "-_(/'
#: The property holding an item's parameter (short name): exact matches rank first.
PARAM_PROPERTY: Final = "param"
#: The lake's search text of an item (a property the database writes): its
#: :data:`FREE_TEXT_FIELDS`, upper-cased, one per line, every word start marked by
#: :data:`SEARCH_MARK`, so that a word matches with one ``LIKE '% word%'`` (:func:`mark_words`).
SEARCH_TEXT_PROPERTY: Final = "twinhub:search"
#: Marks a word start in the search text: a space before the field and after each
#: :data:`WORD_STARTS` character (a space after a space is always a mark, and no word
#: starts with a space, so a mark is never mistaken for a natural space).
SEARCH_MARK: Final = " "
_FREE_TOKEN = re.compile(r'([+-]?)"([^"]*)"|([+-]?)([^\s,"]+)|(,)')
_MAX_ALIAS_WORDS = 4
#: Terms of one ``q``: each becomes a few dozen text comparisons in the database.
MAX_FREE_TEXT_TERMS: Final = 16


def _alias_index() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for params, aliases in PARAM_SYNONYMS:
        for word in params + aliases:
            bucket = out.setdefault(word, [])
            bucket += [p for p in params if p not in bucket]
    return {k: tuple(v) for k, v in out.items()}


_PARAMS_OF: Final = _alias_index()
_PHRASES: Final = frozenset(w for w in [*_PARAMS_OF, *GRID_SYNONYMS] if " " in w)


@dataclass(frozen=True)
class FreeTextTerm:
    """One term: it matches an item when one of ``words`` starts a word of a searched field,
    or the item's parameter is one of ``params``; ``negated``: it must not match."""

    words: tuple[str, ...]
    params: tuple[str, ...]
    negated: bool = False

    @classmethod
    def of(cls, text: str, negated: bool = False) -> FreeTextTerm:
        words = (text, *(w for w in GRID_SYNONYMS.get(text, ()) if w != text))
        params = _PARAMS_OF.get(text, ())
        if " " not in text and text not in params:
            params = (text, *params)  # any one word may be a parameter's short name
        return cls(words, params, negated)

    def found(self, texts: Sequence[str], param: str) -> bool:
        if param in self.params:
            return True
        return any(_word_start(w, t) for w in self.words for t in texts)

    def accepts(self, texts: Sequence[str], param: str) -> bool:
        """This term's verdict on an item (its searched texts and parameter)."""
        return self.found(texts, param) != self.negated

    def to_cql2(self) -> dict[str, Any]:
        """CQL2-JSON over the lake's search text (:data:`SEARCH_TEXT_PROPERTY`): one ``like``
        per word, plus the parameter's short names."""
        params = [_param_in(self.params)] if self.params else []
        text = {"property": SEARCH_TEXT_PROPERTY}
        likes = [{"op": "like", "args": [text, _upper(f"%{_like_escape(mark_words(w))}%")]} for w in self.words]  # fmt: skip
        if not self.negated:
            return _any(params + likes)
        # SQL: a missing parameter compares as NULL, and NOT NULL is not true: "present and"
        named = [_all([{"op": "not", "args": [{"op": "isNull", "args": [{"property": PARAM_PROPERTY}]}]}, _any(params)])] if params else []  # fmt: skip
        return {"op": "not", "args": [_any(named + likes)]}


@dataclass(frozen=True)
class FreeTextQuery:
    """A parsed ``q``: any of ``groups`` matches, each when all its terms match."""

    groups: tuple[tuple[FreeTextTerm, ...], ...]

    @property
    def params(self) -> tuple[str, ...]:
        """The parameters the query names (short names and synonyms): items of these rank first."""
        out: list[str] = []
        for group in self.groups:
            for t in group:
                out += [p for p in t.params if not t.negated and p not in out]
        return tuple(out)

    def matches(self, item: Mapping[str, Any]) -> bool:
        """True when ``item`` (STAC item JSON) matches."""
        texts, param = item_texts(item), item_param(item)
        return any(all(t.accepts(texts, param) for t in g) for g in self.groups)

    def named(self, item: Mapping[str, Any]) -> bool:
        """True when the item's parameter is one :meth:`exact_cql2` takes (as the database
        compares: the name as written, lower or upper case)."""
        value = (item.get("properties") or {}).get(PARAM_PROPERTY)
        return isinstance(value, str) and value in _param_values(self.params)

    def rank(self, item: Mapping[str, Any]) -> int:
        """0 for an exact parameter match, 1 for the rest (sort ascending)."""
        return 0 if item_param(item) in self.params else 1

    def to_cql2(self) -> dict[str, Any]:
        """The query as a CQL2-JSON filter on the lake's search text (``like``, ``in``,
        ``and``/``or``/``not``)."""
        return _any([_all([t.to_cql2() for t in g]) for g in self.groups])

    def exact_cql2(self) -> dict[str, Any] | None:
        """CQL2-JSON true for the items that rank first (their parameter is named); None
        when the query names none (it only excludes)."""
        return _param_in(self.params) if self.params else None


def parse_free_text(q: str | Sequence[str]) -> FreeTextQuery:
    """Parse a free-text ``q``: words must all match (AND) unless ``OR`` (any case) or a comma
    separates them; ``"a phrase"`` is one term, ``-word`` must not match (``+word``: must, as
    any word); consecutive words naming a variable ("sea surface temperature") are one term.
    Raises ``ValueError`` naming the problem."""
    if not isinstance(q, str):
        q = ",".join(str(t) for t in q)  # the free-text extension's list: any of them
    if q.count('"') % 2:
        raise ValueError(f"q {q!r} has an unclosed quote")
    if re.search(r"[()]", re.sub(r'"[^"]*"', "", q)):
        raise ValueError(f"q {q!r}: parentheses are not supported; write 'a b OR c d'")
    groups: list[list[tuple[str, bool, bool]]] = [[]]  # (text, negated, quoted)
    for sign_q, phrase, sign, word, comma in _FREE_TOKEN.findall(q):
        if comma or (word.lower() == "or" and not sign):
            groups.append([])
            continue
        text = " ".join((phrase if sign_q or phrase else word).lower().split())
        if not text or (word.lower() == "and" and not sign):
            continue
        groups[-1].append((text, (sign_q or sign) == "-", bool(phrase or sign_q)))
    out = tuple(g for g in (_terms(g) for g in groups) if g)
    if not out:
        raise ValueError(f"q {q!r} has no search terms")
    if sum(len(g) for g in out) > MAX_FREE_TEXT_TERMS:
        raise ValueError(f"q {q[:60]!r} has more than {MAX_FREE_TEXT_TERMS} terms")
    return FreeTextQuery(out)


def _terms(words: list[tuple[str, bool, bool]]) -> tuple[FreeTextTerm, ...]:
    """Terms of one AND group; the longest runs of plain words that name a variable or a
    grid become one term."""
    out: list[FreeTextTerm] = []
    i = 0
    while i < len(words):
        text, negated, quoted = words[i]
        for n in range(min(_MAX_ALIAS_WORDS, len(words) - i), 1, -1):
            run = words[i : i + n]
            if any(neg or quo for _, neg, quo in run):
                continue
            phrase = " ".join(w for w, _, _ in run)
            if phrase in _PHRASES:
                text, i = phrase, i + n - 1
                break
        out.append(FreeTextTerm.of(text, negated))
        i += 1
    return tuple(out)


def item_param(item: Mapping[str, Any]) -> str:
    value = (item.get("properties") or {}).get(PARAM_PROPERTY)
    return value.lower() if isinstance(value, str) else ""


def item_texts(item: Mapping[str, Any]) -> list[str]:
    """The searched fields of STAC item JSON, lower-cased (objects and lists as JSON text,
    as the database sees them)."""
    props = item.get("properties") or {}
    out = []
    for field in FREE_TEXT_FIELDS:
        value = item.get(field) if field in ("id", "collection") else props.get(field)
        if isinstance(value, str):
            out.append(value.lower())
        elif isinstance(value, dict | list):
            out.append(json.dumps(value, ensure_ascii=False).lower())
    return out


def _word_start(word: str, text: str) -> bool:
    at = text.find(word)
    while at >= 0:
        if at == 0 or text[at - 1] in WORD_STARTS:
            return True
        at = text.find(word, at + 1)
    return False


def mark_words(text: str) -> str:
    """``text`` with :data:`SEARCH_MARK` first and after each :data:`WORD_STARTS` character:
    a word starts a word of a field exactly when its marked form is found in the field's
    (the database computes the same, twinhub.services.datalake.search_text)."""
    return SEARCH_MARK + _WORD_START_CHAR.sub(lambda m: m.group(0) + SEARCH_MARK, text)


_WORD_START_CHAR: Final = re.compile("[" + re.escape(WORD_STARTS) + "]")


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _param_in(params: Sequence[str]) -> dict[str, Any]:
    """The item's parameter is one of ``params`` (lower or upper case: short names are
    written either way, and one ``in`` costs the database less than ``casei`` per name)."""
    return {"op": "in", "args": [{"property": PARAM_PROPERTY}, _param_values(params)]}


def _param_values(params: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([*params, *(p.upper() for p in params)]))


def _upper(pattern: str) -> Any:
    """``pattern`` as the database upper-cases it: ASCII here, else by the database."""
    return pattern.upper() if pattern.isascii() else {"op": "casei", "args": [pattern]}


def _all(args: list[dict[str, Any]]) -> dict[str, Any]:
    return args[0] if len(args) == 1 else {"op": "and", "args": args}


def _any(args: list[dict[str, Any]]) -> dict[str, Any]:
    return args[0] if len(args) == 1 else {"op": "or", "args": args}
