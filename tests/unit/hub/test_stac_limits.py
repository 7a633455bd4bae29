"""The STAC API's bounds on parser input (twinhub.services.datalake.input_limits), as functions.

The CQL2 cases that matter most are run through the real ``cql2`` parser in a child
process: what the scanner lets through must never crash it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from twinhub.services.datalake.input_limits import (
    MAX_FILTER_CHARS,
    MAX_FILTER_DEPTH,
    LimitError,
    check_fields,
    check_filter,
    check_id_list,
    check_offset,
    check_sortby,
    cql2_text_depth,
    loads,
)


@pytest.mark.parametrize(
    "text, depth",
    [
        ("a=1", 0),
        ("(a=1)", 1),
        ("NOT a=1", 1),
        ("NOT NOT a=1", 2),
        ("a=1 AND b=2", 1),
        ("a=1 AND b=2 OR c=3", 2),  # cql2: or(a, and(b, c))
        ("NOT a=1 AND NOT b=2 AND NOT c=3", 2),  # siblings, not nested
        ("(a=1 AND (b=2 OR (c=3)))", 5),
        ("a = 1+2+3", 2),  # arithmetic chains nest
        ("a = -1", 1),
        ("f(1+1, 2+2) = 1", 2),  # arguments are siblings
        ("a IN (1,2,3)", 1),
        ("'((((((' = a", 0),  # strings do not count
        ('"(((" = 1', 0),  # nor quoted identifiers
        ("'it''s (' = a", 0),
        ("((((", 4),  # unbalanced: counted as if closed
        ("))))", 0),
        ("", 0),
    ],
)
def test_cql2_depth(text, depth):
    assert cql2_text_depth(text) == depth


def test_the_scan_stops_early_and_never_recurses():
    deep = "(" * 200_000 + "1=1" + ")" * 200_000  # far past the recursion limit
    assert cql2_text_depth(deep) == 200_000
    assert cql2_text_depth(deep, stop_at=64) == 65
    assert cql2_text_depth("NOT " * 1000 + "a", stop_at=64) == 65


@pytest.mark.parametrize(
    "text, words",
    [
        ("(" * 2000 + "1=1" + ")" * 2000, "deeper than 64 levels"),  # the reported crash
        ("NOT " * 65 + "a=1", "deeper than 64 levels"),
        ("f(" * 65 + "1" + ")" * 65 + " = 1", "deeper than 64 levels"),
        ("a = " + "-(" * 33 + "1" + ")" * 33, "deeper than 64 levels"),
        ("a = " + "+".join(["1"] * 70), "deeper than 64 levels"),
        (" AND ".join(["a=1"] * 5000), "AND/OR operators"),
        ("a IN (" + ",".join(["'xxxxxxxxxx'"] * 6000) + ")", f"at most {MAX_FILTER_CHARS}"),
    ],
)
def test_filters_over_the_limits_are_refused(text, words):
    with pytest.raises(LimitError, match=words):
        check_filter(text)


def test_filters_at_the_limit_pass_and_do_not_crash_cql2():
    """The worst shapes the scanner accepts, through the real parser in a child process
    (a crash there is a SIGSEGV, which would take pytest down with it)."""
    at_limit = [
        "(" * MAX_FILTER_DEPTH + "a=1" + ")" * MAX_FILTER_DEPTH,
        "NOT " * MAX_FILTER_DEPTH + "a=1",
        "f(" * MAX_FILTER_DEPTH + "1" + ")" * MAX_FILTER_DEPTH + " = 1",
        "NOT (" * 32 + "a=1" + ")" * 32,
        " AND ".join(["a=1"] * 4096),
        " OR ".join(["(" * 30 + "a" + ")" * 30] * 1000),
    ]
    code = (
        "import cql2, sys\n"
        "for text in sys.stdin.read().split('\\0'):\n"
        "    e = cql2.parse_text(text); e.to_json(); e.to_text()\n"
        "print('parsed')\n"
    )
    for text in at_limit:
        check_filter(text)  # accepted
    r = subprocess.run(
        [sys.executable, "-c", code], input="\0".join(at_limit), capture_output=True, text=True
    )
    assert r.returncode == 0 and "parsed" in r.stdout, (r.returncode, r.stderr[-500:])


def test_json_filters_are_bounded_by_json_depth():
    deep = '{"op":"not","args":[' * 40 + '{"op":"=","args":[1,1]}' + "]}" * 40
    with pytest.raises(LimitError, match="deeper than 64"):
        check_filter(deep)
    check_filter('{"op":"=","args":[{"property":"a"},1]}')
    with pytest.raises(LimitError, match="CQL2"):
        check_filter(42)


def test_strict_json():
    assert loads(b'{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    for raw, words in [
        (b'{"a": NaN}', "NaN"),
        (b'{"a": -Infinity}', "Infinity"),
        (b'{"a": 1e999}', "too large"),
        (b'{"a": "x\\u0000y"}', "NUL"),
        (b'{"x\\u0000": 1}', "NUL"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b"[" * 65 + b"]" * 65, "deeper than 64"),
        (b"[" * 100_000 + b"]" * 100_000, "deeper than 64"),
        (b'{"a": 1' + b"0" * 5000 + b"}", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"{not json", "not valid JSON"),
    ]:
        with pytest.raises(LimitError, match=words):
            loads(raw)


def test_sortby_fields_and_lists():
    check_sortby("+properties.datetime,-id")
    check_sortby([{"field": "id", "direction": "desc"}])
    check_fields("id,-properties")
    check_fields({"include": ["id"], "exclude": ["assets"]})
    for bad, words in [
        ("+", "empty"),
        (",,,", "empty"),
        ("x" * 300, "256 characters"),
        (",".join(["a"] * 17), "at most 16"),
        ([{"field": "a", "direction": "up"}], "asc"),
        ([{"direction": "asc"}], "field"),
        (42, "comma-separated"),
    ]:
        with pytest.raises(LimitError, match=words):
            check_sortby(bad)
    for bad, words in [(",,,", "empty"), ("-", "empty"), ({"include": "a"}, "list")]:
        with pytest.raises(LimitError, match=words):
            check_fields(bad)
    check_id_list("a,b", "ids")
    with pytest.raises(LimitError, match="at most 10000"):
        check_id_list(",".join(["a"] * 10_001), "ids")
    with pytest.raises(LimitError, match="list of strings"):
        check_id_list([1], "ids")
    check_offset("10")
    for bad in ("-1", "x", "1e3", "9" * 30):
        with pytest.raises(LimitError, match="offset"):
            check_offset(bad)
