"""Bounds on what the STAC API's parsers are fed, checked before any of them runs.

The ``cql2`` parser (Rust, in-process) recurses per nesting level of a filter and per term
of a long AND/OR chain: past ~1500 parentheses, ~500 NOTs or function calls, or ~16 000
chained terms it overflows the C stack and the whole STAC process dies (SIGSEGV, which no
``except`` can catch). Python's parsers (``json``, pydantic, ``orjson``) recurse too. So every
parameter a parser will read is measured here by flat scans (no recursion, bounded state)
and refused with a 400 naming the limit when it is over:

- CQL2 text: at most :data:`MAX_FILTER_DEPTH` levels (:func:`cql2_text_depth`), at most
  :data:`MAX_FILTER_CHARS` characters and :data:`MAX_FILTER_TERMS` AND/OR operators;
- CQL2 JSON and other JSON parameters (``intersects``, ``query``): at most
  :data:`MAX_JSON_DEPTH` levels of arrays/objects, :data:`MAX_JSON_PARAM_BYTES` bytes;
- the free-text ``q``: at most :data:`MAX_FREE_TEXT_CHARS` characters;
- ``sortby`` and ``fields``: at most :data:`MAX_SORT_FIELDS` / :data:`MAX_FIELDS` entries of at
  most :data:`MAX_FIELD_CHARS` characters each, none empty; ``ids`` and ``collections`` at
  most :data:`MAX_ID_LIST` entries;
- JSON texts are parsed strictly (:func:`loads`): no NaN/Infinity, no number that only fits as
  infinity, no NUL or unpaired surrogate in a string (PostgreSQL's jsonb cannot hold them).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from twinlab import contract

from ..asgi import MAX_JSON_DEPTH, BadRequest, json_depth

#: Nesting of a CQL2 filter: parentheses, NOT, AND/OR, unary and arithmetic operators.
MAX_FILTER_DEPTH = 64
#: Length of a CQL2 text filter (a chain of 16 000 terms crashes cql2: 64 KiB holds < 11 000).
MAX_FILTER_CHARS = 64 * 1024
#: AND/OR operators in one CQL2 text filter (a quarter of what crashes cql2).
MAX_FILTER_TERMS = 4096
#: Size of a JSON-valued parameter or body field (CQL2 JSON, intersects, query).
MAX_JSON_PARAM_BYTES = 1024 * 1024
#: Entries of ``sortby`` / ``fields``; characters of one entry.
MAX_SORT_FIELDS = 16
MAX_FIELDS = 256
MAX_FIELD_CHARS = 256
#: Entries of ``ids`` / ``collections`` in one search.
MAX_ID_LIST = 10_000
#: Characters of the free-text search ``q`` (PostgreSQL parses it as a tsquery).
MAX_FREE_TEXT_CHARS = 1024


class LimitError(BadRequest):
    """An input over a limit or malformed (400)."""


def check_bbox(value: Any) -> list[float]:
    """A bbox by the platform's one rule (:func:`twinlab.contract.check_bbox`), as a 400."""
    try:
        return contract.check_bbox(value)
    except ValueError as e:
        raise BadRequest(str(e)) from None


def check_limit(value: Any, maximum: int) -> int:
    try:
        n = int(value)
        if isinstance(value, float) and n != value:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"limit must be a whole number, got {value!r}") from None
    if n < 1:
        raise BadRequest(f"limit must be at least 1, got {n}")
    if n > maximum:
        raise BadRequest(
            f"limit {n} is above the largest page this API serves ({maximum}); "
            "ask for fewer and follow the 'next' links"
        )
    return n


# -- strict JSON -----------------------------------------------------------------------------
def _refuse_constant(name: str) -> Any:
    raise LimitError(f"{name} is not a JSON number: only finite numbers are allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise LimitError(f"the number {text[:40]} is too large: only finite numbers are allowed")
    return value


def loads(raw: bytes | str, what: str = "the body") -> Any:
    """JSON, strictly: depth checked first, finite numbers only, strings PostgreSQL can store.

    Raises :class:`LimitError` naming ``what`` and the problem.
    """
    if json_depth(raw, stop_at=MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise LimitError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels (the limit)")
    try:
        doc = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except LimitError as e:
        raise LimitError(f"{what}: {e}") from None
    except RecursionError:  # cannot happen below MAX_JSON_DEPTH; refuse rather than fail
        raise LimitError(f"{what} nests too deeply") from None
    except ValueError as e:  # includes bad UTF-8 and integers of more than 4300 digits
        raise LimitError(f"{what} is not valid JSON: {str(e)[:200]}") from None
    check_strings(doc, what)
    return doc


def check_strings(doc: Any, what: str) -> None:
    """Refuse NUL and unpaired surrogates in any string or key of ``doc`` (iteratively)."""
    todo = [doc]
    while todo:
        x = todo.pop()
        if isinstance(x, str):
            _check_text(x, what)
        elif isinstance(x, Mapping):
            for k, v in x.items():
                if isinstance(k, str):
                    _check_text(k, what)
                todo.append(v)
        elif isinstance(x, list | tuple):
            todo.extend(x)


def _check_text(s: str, what: str) -> None:
    if "\x00" in s:
        raise LimitError(f"{what}: NUL characters are not allowed in strings")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise LimitError(f"{what}: a string holds an unpaired UTF-16 surrogate") from None


# -- CQL2 text -------------------------------------------------------------------------------
_CQL2_TOKENS = re.compile(
    r"""
    '(?:[^']|'')*'?                               # a string ('' escapes a quote)
    | "(?:[^"]|"")*"?                             # a quoted identifier
    | [A-Za-z_][A-Za-z0-9_.:]*                    # a keyword or an identifier
    | (?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?        # a number
    | <> | <= | >= | [-+*/%^(),]                  # what counts or resets
    """,
    re.VERBOSE,
)
_BOOLEAN = {"AND": 1, "OR": 2}
_PREFIX_OR_ARITHMETIC = frozenset({"NOT", "DIV", "-", "+", "*", "/", "%", "^"})


def cql2_text_depth(text: str, stop_at: int | None = None) -> int:
    """How deep a CQL2 text expression nests, by one flat scan (no recursion, no parse).

    Each parenthesis counts a level, and inside one group (or at the top): each NOT, unary
    or arithmetic operator in a run (a run ends at AND, OR or a comma: what follows is a
    sibling, not a child), plus one for AND and one for OR when the group has them (cql2
    flattens a chain into one node). Strings and quoted identifiers are skipped. It errs
    towards counting more, never fewer; valid or not, any text gets a number. With
    ``stop_at`` it may return as soon as the depth is known to exceed it.
    """
    # one entry per open group: [boolean mask, run, deepest inside, run of the parent at open]
    stack: list[list[int]] = [[0, 0, 0, 0]]
    base = 0  # levels of the open groups and of their parents' runs at their opening
    for m in _CQL2_TOKENS.finditer(text):
        tok = m.group()
        g = stack[-1]
        c = tok[0]
        if c == "(":
            base += g[1] + 1
            stack.append([0, 0, 0, g[1]])
            if stop_at is not None and base > stop_at:
                return base
        elif c == ")":
            if len(stack) > 1:  # an unmatched ")" is the parser's to refuse
                total = _close(stack.pop())
                parent = stack[-1]
                parent[2] = max(parent[2], g[3] + total)
                base -= g[3] + 1
        elif c == ",":
            g[2], g[1] = max(g[2], g[1]), 0
        elif c in "'\"" or c.isdigit() or c == ".":
            continue
        else:
            word = tok.upper()
            if word in _BOOLEAN:
                g[0] |= _BOOLEAN[word]
                g[2], g[1] = max(g[2], g[1]), 0
            elif word in _PREFIX_OR_ARITHMETIC:
                g[1] += 1
                if stop_at is not None and base + g[1] > stop_at:
                    return base + g[1]
    while len(stack) > 1:  # groups never closed: counted as if closed at the end
        g = stack.pop()
        stack[-1][2] = max(stack[-1][2], g[3] + _close(g))
    top = stack[0]
    return bin(top[0]).count("1") + max(top[1], top[2])


def _close(g: list[int]) -> int:
    return 1 + bin(g[0]).count("1") + max(g[1], g[2])


def _boolean_terms(text: str) -> int:
    return sum(
        1
        for m in _CQL2_TOKENS.finditer(text)
        if m.group()[:1].isalpha() and m.group().upper() in _BOOLEAN
    )


def check_filter_text(text: str, what: str = "filter") -> None:
    if len(text) > MAX_FILTER_CHARS:
        raise LimitError(
            f"{what} is {len(text)} characters long; at most {MAX_FILTER_CHARS} are allowed"
        )
    depth = cql2_text_depth(text, stop_at=MAX_FILTER_DEPTH)
    if depth > MAX_FILTER_DEPTH:
        raise LimitError(
            f"{what} nests deeper than {MAX_FILTER_DEPTH} levels (the limit; parentheses, "
            "NOT, AND/OR, unary and arithmetic operators each count)"
        )
    terms = _boolean_terms(text)
    if terms > MAX_FILTER_TERMS:
        raise LimitError(
            f"{what} chains {terms} AND/OR operators; at most {MAX_FILTER_TERMS} are allowed "
            "(use IN (...) for lists of values)"
        )


def check_json_text(text: str | bytes, what: str) -> None:
    if len(text) > MAX_JSON_PARAM_BYTES:
        raise LimitError(f"{what} is larger than {MAX_JSON_PARAM_BYTES} bytes (the limit)")
    if json_depth(text, stop_at=MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise LimitError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels (the limit)")


def check_filter(value: Any, what: str = "filter") -> None:
    """A filter as a GET parameter or a body field: CQL2 text, CQL2 JSON text, or a JSON
    object (already parsed: its depth was bounded with the body's)."""
    if value is None or value == "":
        return
    if isinstance(value, str):
        if value.lstrip().startswith("{"):  # CQL2-JSON, whatever filter-lang says
            check_json_text(value, what)
        else:
            check_filter_text(value, what)
    elif isinstance(value, Mapping):
        check_json_text(json.dumps(value), what)
    else:
        raise LimitError(f"{what} must be CQL2 text or a CQL2-JSON object")


# -- other search parameters -----------------------------------------------------------------
def check_sortby(value: Any) -> None:
    """``sortby``: "+a,-b" (GET) or [{"field": "a", "direction": "asc"}] (POST)."""
    if value is None or value == "":
        return
    if isinstance(value, str):
        entries = [e.strip() for e in value.split(",")]
        fields = [e[1:] if e[:1] in "+-" else e for e in entries]
    elif isinstance(value, list):
        fields = []
        for e in value:
            if not isinstance(e, Mapping) or not isinstance(e.get("field"), str):
                raise LimitError(
                    'sortby entries must be {"field": name, "direction": "asc"|"desc"}'
                )
            if e.get("direction", "asc") not in ("asc", "desc"):
                raise LimitError(
                    f"sortby direction must be 'asc' or 'desc', got {e.get('direction')!r}"
                )
            fields.append(e["field"].strip())
    else:
        raise LimitError("sortby must be a comma-separated string or a list of sort fields")
    _check_names(fields, "sortby", MAX_SORT_FIELDS)


def check_fields(value: Any) -> None:
    """``fields``: "a,-b" (GET) or {"include": [...], "exclude": [...]} (POST)."""
    if value is None or value == "":
        return
    if isinstance(value, str):
        names = [e.strip() for e in value.split(",")]
        names = [n[1:] if n[:1] in "+-" else n for n in names]
    elif isinstance(value, Mapping):
        names = []
        for key in ("include", "exclude"):
            part = value.get(key) or []
            if not isinstance(part, list) or not all(isinstance(n, str) for n in part):
                raise LimitError(f"fields.{key} must be a list of field names")
            names += [n.strip() for n in part]
    else:
        raise LimitError(
            'fields must be a comma-separated string or {"include": [...], "exclude": [...]}'
        )
    _check_names(names, "fields", MAX_FIELDS)


def _check_names(names: list[str], what: str, most: int) -> None:
    if len(names) > most:
        raise LimitError(f"{what} has {len(names)} entries; at most {most} are allowed")
    for n in names:
        if not n:
            raise LimitError(f"{what} has an empty entry")
        if len(n) > MAX_FIELD_CHARS:
            raise LimitError(f"{what} entries may have at most {MAX_FIELD_CHARS} characters")


def check_id_list(value: Any, what: str) -> None:
    if value is None or value == "":
        return
    if isinstance(value, str):
        count = value.count(",") + 1
    elif isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise LimitError(f"{what} must be a list of strings")
        count = len(value)
    else:
        raise LimitError(f"{what} must be a list of strings (or a comma-separated string)")
    if count > MAX_ID_LIST:
        raise LimitError(f"{what} lists {count} entries; at most {MAX_ID_LIST} are allowed")


def check_free_text(value: Any) -> None:
    if not isinstance(value, str):
        raise LimitError("q must be a string or a list of strings")
    if len(value) > MAX_FREE_TEXT_CHARS:
        raise LimitError(f"q may have at most {MAX_FREE_TEXT_CHARS} characters")
    if value.count("(") > MAX_FILTER_DEPTH:
        raise LimitError(f"q may have at most {MAX_FILTER_DEPTH} parentheses")


def check_offset(value: Any) -> None:
    if value is None or value == "":
        return
    text = str(value)
    if isinstance(value, bool) or not text.isdigit() or len(text) > 18:
        raise LimitError(f"offset must be a whole number of at least 0, got {text[:40]!r}")
