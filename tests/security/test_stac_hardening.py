"""The STAC API (/services/stac/) against hostile users, on the real multi-user platform.

Issue 17's reproductions, each a test: filters that crashed the process (cql2 recursion),
collection and item takeovers through body ids and patches, an admin token narrowed to the
service, junk ids and geometries, inputs that answered 500; and a corpus of bad inputs
per endpoint. After each, the STAC process is the same process (its pid is unchanged): no
request of a user may make it exit.
"""

from __future__ import annotations

import json

import pytest
import requests

from tests.helpers.stac import collection

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

OWNER = "twinhub:owner"
USERS = ("hana", "hugo")
SQUARE = [[0, 40], [10, 40], [10, 50], [0, 50], [0, 40]]


def item(cid: str, iid: str, geometry: dict | None = None, **extra) -> dict:
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": iid,
        "collection": cid,
        "geometry": geometry or {"type": "Polygon", "coordinates": [SQUARE]},
        "bbox": [0, 40, 10, 50],
        "properties": {"datetime": "2024-01-02T00:00:00Z"},
        "assets": {},
        "links": [],
        **extra,
    }


class Stac:
    def __init__(self, p) -> None:
        self.p = p
        self.url = p.url + "services/stac/"

    def call(self, method: str, path: str, user: str | None = None, token: str | None = None, **kw):
        headers = kw.pop("headers", {})
        tok = token or (self.p.token(user) if user else None)
        if tok:
            headers["Authorization"] = f"token {tok}"
        return requests.request(method, self.url + path, headers=headers, timeout=60, **kw)

    def raw(self, method: str, path: str, user: str, data: bytes | str, ctype="application/json"):
        """A body sent as it is (requests' json= cannot send NaN or bad UTF-8 on purpose)."""
        return self.call(method, path, user, data=data, headers={"Content-Type": ctype})

    def pid(self) -> int:
        return int((self.p.state / "run" / "stac.pid").read_text().strip())

    def count(self, cid: str) -> int:
        r = self.call("GET", f"collections/{cid}/items?limit=100", "admin")
        assert r.status_code == 200, r.text
        return len(r.json()["features"])

    def get(self, cid: str) -> dict:
        r = self.call("GET", f"collections/{cid}", "admin")
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def stac(multiuser_platform):
    p = multiuser_platform
    for name in USERS:
        if p.api("GET", f"/users/{name}", token=p.token("admin")).status_code == 404:
            p.add_user(name)
    s = Stac(p)
    # the platform's own collection (no owner) and one of each user
    r = s.call("POST", "collections", "admin", json=collection("lake-hard", **{OWNER: ""}))
    assert r.status_code in (200, 201), r.text
    r = s.call("POST", "collections/lake-hard/items", "admin", json=item("lake-hard", "l1"))
    assert r.status_code in (200, 201), r.text
    for name in USERS:
        r = s.call("POST", "collections", name, json=collection(f"{name}-own"))
        assert r.status_code in (200, 201), r.text
    s.pid0 = s.pid()
    yield s
    assert s.pid() == s.pid0, "the STAC process was replaced during the tests"


def json_error(r: requests.Response, status: int | set[int], *words: str) -> str:
    statuses = {status} if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    doc = r.json()
    assert doc["code"] == r.status_code and isinstance(doc["description"], str), doc
    for w in words:
        assert w.lower() in doc["description"].lower(), (w, doc)
    return doc["description"]


# -- 1. parser recursion ---------------------------------------------------------------------
DEEP_TEXT = "(" * 2000 + "1=1" + ")" * 2000


@pytest.mark.parametrize(
    "method, path, kw",
    [
        ("GET", "search", {"params": {"filter": DEEP_TEXT}}),
        ("GET", "search", {"params": {"filter": DEEP_TEXT, "filter-lang": "cql2-text"}}),
        ("GET", "collections", {"params": {"filter": DEEP_TEXT}}),
        ("GET", "collections/hana-own/items", {"params": {"filter": DEEP_TEXT}}),
        ("GET", "search", {"params": {"filter": "NOT " * 2000 + "id='x'"}}),
        ("GET", "search", {"params": {"filter": "f(" * 1000 + "1" + ")" * 1000 + " = 1"}}),
        ("POST", "search", {"json": {"filter": DEEP_TEXT, "filter-lang": "cql2-text"}}),
        ("POST", "search", {"json": {"filter": DEEP_TEXT}}),
    ],
)
def test_deep_filters_get_400_and_the_service_lives(stac, method, path, kw):
    r = stac.call(method, path, "hana", **kw)
    json_error(r, 400, "filter", "64 levels")
    assert stac.pid() == stac.pid0
    assert stac.call("GET", "search?limit=1", "hugo").status_code == 200  # for everyone


def test_long_and_json_filters_are_bounded_too(stac):
    chain = " AND ".join(["id='x'"] * 20_000)  # 16 000 terms crashed cql2
    r = stac.call("POST", "search", "hana", json={"filter": chain, "filter-lang": "cql2-text"})
    json_error(r, 400, "filter")
    deep_json = '{"op":"not","args":[' * 100 + '{"op":"=","args":[1,1]}' + "]}" * 100
    r = stac.call("GET", "search", "hana", params={"filter": deep_json, "filter-lang": "cql2-json"})
    json_error(r, 400, "64 levels")
    r = stac.raw("POST", "search", "hana", '{"filter": ' + deep_json + "}")
    json_error(r, 400, "64 levels")
    deep_geo = {"type": "GeometryCollection", "geometries": []}
    for _ in range(10):
        deep_geo = {"type": "GeometryCollection", "geometries": [deep_geo]}
    r = stac.call("POST", "search", "hana", json={"intersects": deep_geo})
    json_error(r, 400, "intersects")
    r = stac.call("GET", "search", "hana", params={"sortby": ",".join(["id"] * 100)})
    json_error(r, 400, "sortby")
    r = stac.call("GET", "search", "hana", params={"fields": "x" * 1000})
    json_error(r, 400, "fields")
    assert stac.pid() == stac.pid0


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("lang", ["cql2-text", "cql2-json"])
def test_a_malformed_nested_filter_is_cut_short(stac, method, lang):
    """cql2 backtracks 2^n steps on a malformed filter n levels deep (30: hours of CPU in
    the STAC process for everyone): parsed in a child process with a deadline, it is a 400 —
    also when filter-lang claims JSON (the federation layer would parse the text in-process)."""
    slow = "(" * 30 + "id = = 'x'" + ")" * 30
    if method == "GET":
        r = stac.call("GET", "search", "hana", params={"filter": slow, "filter-lang": lang})
    else:
        r = stac.call("POST", "search", "hana", json={"filter": slow, "filter-lang": lang})
    json_error(r, 400, "filter", "to parse")
    assert stac.call("GET", "search", "hugo", params={"filter": "id='l1'"}).status_code == 200
    assert stac.pid() == stac.pid0


def test_filters_within_the_limits_still_work(stac):
    for f in (
        "(" * 64 + "id='l1'" + ")" * 64,
        "NOT " * 64 + "id='nope'",
        "id='l1' AND collection='lake-hard'",
    ):
        r = stac.call("GET", "search", "hana", params={"filter": f, "collections": "lake-hard"})
        assert r.status_code == 200, (f[:40], r.text[:300])
    r = stac.call("GET", "search", "hana", params={"filter": "id='l1'", "collections": "lake-hard"})
    assert [f["id"] for f in r.json()["features"]] == ["l1"]
    body = {"filter": "id = 'l1'", "filter-lang": "cql2-text", "collections": ["lake-hard"]}
    r = stac.call("POST", "search", "hana", json=body)  # text in a body works too
    assert [f["id"] for f in r.json()["features"]] == ["l1"], r.text[:300]
    r = stac.call("GET", "collections/lake-hard/items", "hana", params={"filter": "id = 'nope'"})
    assert r.status_code == 200 and r.json()["features"] == [], r.text[:300]


# -- 3. collection and item takeover ---------------------------------------------------------
@pytest.mark.parametrize(
    "method, path, body, status, words",
    [
        ("PUT", "collections/hugo-own", collection("lake-hard"), 400, "not the one in the path"),
        ("PUT", "collections/hugo-own", collection("hana-own"), 400, "not the one in the path"),
        ("PATCH", "collections/hugo-own", {"id": "lake-hard"}, 400, "cannot change"),
        ("PATCH", "collections/hugo-own", [{"op": "replace", "path": "/id", "value": "lake-hard"}], 400, "cannot change"),
        ("PATCH", "collections/hugo-own", [{"op": "copy", "from": "/description", "path": "/id"}], 400, "cannot change"),
        ("PATCH", "collections/hugo-own", [{"op": "replace", "path": "", "value": collection("lake-hard")}], 400, "whole record"),
        ("PATCH", "collections/hugo-own", {OWNER: "hana"}, 403, "cannot be changed"),
        ("POST", "collections", collection("lake-hard"), 409, "already exists"),
        ("POST", "collections", collection("hana-own"), 409, "already exists"),
        ("PUT", "collections/lake-hard", collection("lake-hard"), 403, "platform's"),
        ("PATCH", "collections/hana-own", {"title": "mine now"}, 403, "belongs to 'hana'"),
        ("DELETE", "collections/lake-hard", None, 403, "platform's"),
        ("DELETE", "collections/hana-own", None, 403, "belongs to 'hana'"),
        # items: the body's collection or id is not where the path writes
        ("POST", "collections/hugo-own/items", item("lake-hard", "x1"), 400, "says collection 'lake-hard'"),
        ("POST", "collections/hugo-own/items", {"type": "FeatureCollection", "features": [item("hugo-own", "ok1"), item("lake-hard", "x2")]}, 400, "says collection"),
        ("PUT", "collections/hugo-own/items/a", item("hugo-own", "l1"), 400, "not the one in the path"),
        ("POST", "collections/hugo-own/bulk_items", {"items": {"ok2": item("hugo-own", "ok2"), "l1": item("lake-hard", "l1")}}, 400, "says collection"),
        ("POST", "collections/hugo-own/bulk_items", {"items": {"ok3": item("hugo-own", "ok3"), "k": item("hugo-own", "other")}}, 400, "not the one in the path"),
        ("POST", "collections/lake-hard/items", item("lake-hard", "x3"), 403, "platform's"),
        ("PUT", "collections/lake-hard/items/l1", item("lake-hard", "l1"), 403, "platform's"),
        ("DELETE", "collections/lake-hard/items/l1", None, 403, "platform's"),
    ],
)  # fmt: skip
def test_takeovers_are_refused_and_nothing_changes(stac, method, path, body, status, words):
    before = {c: stac.get(c) for c in ("lake-hard", "hana-own", "hugo-own")}
    counts = {c: stac.count(c) for c in before}
    kw = {"json": body} if body is not None else {}
    json_error(stac.call(method, path, "hugo", **kw), status, words)
    for c, doc in before.items():
        now = stac.get(c)
        assert now.get(OWNER) == doc.get(OWNER) and now.get("title") == doc.get("title"), c
        assert stac.count(c) == counts[c], c  # nothing partial stored (the good items either)
    assert stac.get("lake-hard").get(OWNER, "") == ""


def test_owners_still_write_their_own(stac):
    r = stac.call("PUT", "collections/hugo-own", "hugo", json=collection("hugo-own", title="t"))
    assert r.status_code == 200, r.text
    r = stac.call("PATCH", "collections/hugo-own", "hugo", json={"title": "t2", "id": "hugo-own"})
    assert r.status_code == 200, r.text
    assert stac.get("hugo-own")["title"] == "t2" and stac.get("hugo-own")[OWNER] == "hugo"
    r = stac.call("POST", "collections/hugo-own/items", "hugo", json=item("hugo-own", "h1"))
    assert r.status_code in (200, 201), r.text
    r = stac.call(
        "POST",
        "collections/hugo-own/bulk_items",
        "hugo",
        json={"items": {"h2": item("hugo-own", "h2"), "h3": item("hugo-own", "h3")}},
    )
    assert r.status_code in (200, 201), r.text
    assert stac.count("hugo-own") == 3
    for iid in ("h1", "h2", "h3"):
        assert stac.call("DELETE", f"collections/hugo-own/items/{iid}", "hugo").status_code == 200


# -- 5. scopes -------------------------------------------------------------------------------
def test_an_admin_token_narrowed_to_the_service_has_no_admin_power(stac):
    p = stac.p
    r = p.api(
        "POST",
        "/users/admin/tokens",
        user="admin",
        json={"scopes": ["access:services!service=stac"]},
    )
    assert r.status_code == 201, r.text
    narrow = r.json()["token"]
    r = stac.call(
        "PUT", "collections/lake-hard", token=narrow, json=collection("lake-hard", title="x")
    )
    json_error(r, 403, "platform's")
    r = stac.call("DELETE", "collections/hana-own", token=narrow)
    json_error(r, 403, "belongs to 'hana'")
    # a collection it creates is the admin's own, whatever owner the body names
    r = stac.call(
        "POST", "collections", token=narrow, json=collection("adm-narrow", **{OWNER: "hana"})
    )
    assert r.status_code in (200, 201), r.text
    assert stac.get("adm-narrow")[OWNER] == "admin"
    # the admin's full token keeps its powers
    r = stac.call("PATCH", "collections/lake-hard", "admin", json={"title": "by the admin"})
    assert r.status_code == 200, r.text
    assert stac.call("DELETE", "collections/adm-narrow", "admin").status_code == 200


# -- 7. junk ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["..", "a\x01b", "x" * 10_000, "-lead", "sp ace", "é", "a/b"])
def test_junk_ids_are_refused(stac, bad):
    json_error(stac.call("POST", "collections", "hana", json=collection(bad)), 400, "collection id")
    r = stac.call("POST", "collections/hana-own/items", "hana", json=item("hana-own", bad))
    json_error(r, 400, "item id")
    assert stac.count("hana-own") == 0


BOWTIE = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}


@pytest.mark.parametrize(
    "body, words",
    [
        (json.dumps(item("hana-own", "g1", BOWTIE)), "intersects itself"),
        (json.dumps(item("hana-own", "g2", {"type": "Point", "coordinates": [0, 91]})), "latitude"),
        (json.dumps(item("hana-own", "g3", {"type": "Point", "coordinates": [200, 0]})), "longitude"),
        (json.dumps(item("hana-own", "g4", {"type": "Point", "coordinates": [1, 2]})).replace("[1, 2]", "[NaN, 2]"), "NaN"),
        (json.dumps(item("hana-own", "g5", {"type": "Point", "coordinates": [1, 2]})).replace("[1, 2]", "[1e999, 2]"), "too large"),
        (json.dumps(item("hana-own", "g6")).replace("[0, 40, 10, 50]", "[0, 40, Infinity, 50]"), "Infinity"),
        (json.dumps(item("hana-own", "g7", geometry=None)).replace('"geometry": {', '"geometry": null, "g": {'), "geometry"),
    ],
)  # fmt: skip
def test_bad_geometries_are_refused(stac, body, words):
    json_error(stac.raw("POST", "collections/hana-own/items", "hana", body), 400, words)
    assert stac.count("hana-own") == 0


def test_non_finite_extents_are_400_not_500(stac):
    for bad in ("NaN", "Infinity", "-Infinity", "1e999"):
        body = json.dumps(collection("hana-nan")).replace("-180", bad)
        json_error(stac.raw("POST", "collections", "hana", body), 400)
        body = json.dumps(collection("hana-own")).replace("-180", bad)
        json_error(stac.raw("PUT", "collections/hana-own", "hana", body), 400)
    assert stac.call("GET", "collections/hana-nan", "hana").status_code == 404
    assert stac.get("hana-own")["extent"]["spatial"]["bbox"] == [[-180, -90, 180, 90]]


# -- 6. 500s, and a corpus of bad input per endpoint -----------------------------------------
def corpus() -> list[tuple[str, str, dict]]:
    """(method, path, requests kwargs): too big, too deep, wrong types, control characters,
    NUL, bad UTF-8, huge numbers, against every endpoint a user may call."""
    cases: list[tuple[str, str, dict]] = []
    values = [
        "%00", "\x00", "\x7f", "\u202e", "'", '"', "\\", "..", "x" * 8000, "1e999", "NaN",
        "-1", "99999999999999999999999", "[" * 100, "{" * 100, '{"a":' * 70 + "1" + "}" * 70,
        "garbage", ",,,", "+", "-", "next:garbage", "prev:x", "\ud7ff", "(" * 70,
    ]  # fmt: skip
    params = [
        "ids", "collections", "bbox", "datetime", "limit", "token", "filter", "filter-lang",
        "intersects", "query", "sortby", "fields", "offset", "q",
    ]  # fmt: skip
    for path in ("search", "collections", "collections/hana-own/items", "queryables"):
        for key in params:
            for v in values:
                cases.append(("GET", path, {"params": {key: v}}))
    for path in (
        "collections/%00", "collections/hana-own/items/%00", "collections/" + "x" * 5000,
        "collections/hana-own/items/" + "x" * 5000, "collections/hana-own/queryables",
    ):  # fmt: skip
        cases.append(("GET", path, {}))
    bodies: list = [
        [], "str", 1, None, {"limit": "x"}, {"limit": 10**30}, {"ids": ["\u0000"]},
        {"ids": "a" * 100_000}, {"ids": [1]}, {"collections": ["\ud800"]}, {"token": 5},
        {"token": "garbage"}, {"bbox": [0, 0, 1]}, {"bbox": ["a", 0, 1, 1]},
        {"intersects": {"type": "Point", "coordinates": [0, 99]}}, {"intersects": BOWTIE},
        {"intersects": "x"}, {"sortby": [{"field": ""}]}, {"sortby": "x"}, {"fields": "x"},
        {"fields": {"include": [1]}}, {"filter": {"op": "zz", "args": []}},
        {"filter": {"op": "=", "args": [{"property": "a"}, "\u0000"]}}, {"filter": 5},
        {"query": {"a": {"eq": "\u0000"}}}, {"query": "x"}, {"datetime": "9999999-01-01"},
        {"filter-lang": "cql2-text", "filter": "a ="}, {"q": ["x"] * 1000},
    ]  # fmt: skip
    for b in bodies:
        cases.append(("POST", "search", {"json": b}))
    raw = [b"\xff\xfe", b"\x00", b"{", b'{"limit": NaN}', b'{"a": 1' + b"0" * 5000 + b"}",
           b"[" * 100_000, b'{"ids": ["\\ud800"]}', b"\x1f\x8b\x08\x00"]  # fmt: skip
    for data in raw:
        for method, path in (
            ("POST", "search"), ("POST", "collections"), ("PUT", "collections/hana-own"),
            ("PATCH", "collections/hana-own"), ("POST", "collections/hana-own/items"),
            ("PUT", "collections/hana-own/items/x"), ("POST", "collections/hana-own/bulk_items"),
        ):  # fmt: skip
            cases.append(
                (method, path, {"data": data, "headers": {"Content-Type": "application/json"}})
            )
    writes: list = [
        ("POST", "collections", {"id": 5}), ("POST", "collections", {"type": "Collection"}),
        ("POST", "collections", collection("hana-w", extent="x")),
        ("POST", "collections", collection("hana-w", extent={"spatial": {"bbox": [[0, 0, 999, 1]]}})),
        ("POST", "collections", collection("hana-w", links="x")),
        ("PATCH", "collections/hana-own", "x"), ("PATCH", "collections/hana-own", [1]),
        ("PATCH", "collections/hana-own", [{"op": "replace", "path": 5}]),
        ("PATCH", "collections/hana-own", [{"op": "bogus", "path": "/title"}]),
        ("PATCH", "collections/hana-own", [{"op": "remove", "path": "/nope/deeper"}]),
        ("POST", "collections/hana-own/items", {"type": "FeatureCollection", "features": "x"}),
        ("POST", "collections/hana-own/items", {"type": "FeatureCollection", "features": [item("hana-own", "d"), item("hana-own", "d")]}),
        ("POST", "collections/hana-own/items", item("hana-own", "p", properties="x")),
        ("POST", "collections/hana-own/items", item("hana-own", "p", properties={"datetime": "never"})),
        ("POST", "collections/hana-own/bulk_items", {"items": []}),
        ("POST", "collections/hana-own/bulk_items", {"items": {}, "method": "drop"}),
        ("PATCH", "collections/hana-own/items/nope", {"title": 1}),
        ("PATCH", "collections/hana-own/items/nope", [{"op": "replace", "path": "/geometry", "value": BOWTIE}]),
        ("DELETE", "collections/hana-own/items/nope", None),
        ("DELETE", "collections/nope", None),
        ("PUT", "collections/hana-own/items", item("hana-own", "z")),
        ("POST", "collections/hana-own", collection("hana-own")),
        ("PUT", "search", {}), ("DELETE", "search", None), ("POST", "queryables", {}),
    ]  # fmt: skip
    for method, path, body in writes:
        cases.append((method, path, {"json": body} if body is not None else {}))
    return cases


def test_bad_input_corpus_never_gets_a_500_nor_kills_the_service(stac):
    failures = []
    for method, path, kw in corpus():
        r = stac.call(method, path, "hana", **kw)
        ok = r.status_code < 500 or r.status_code in (502, 503, 504)
        if r.status_code >= 400:
            try:
                doc = r.json()
                ok = ok and isinstance(doc, dict) and doc.get("code") is not None
                ok = ok and isinstance(doc.get("description"), str)
            except ValueError:
                ok = False
        if not ok:
            failures.append(f"{method} {path} {str(kw)[:120]}: {r.status_code} {r.text[:200]}")
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures[:40])
    assert stac.pid() == stac.pid0
    assert stac.count("hana-own") == 0  # nothing was stored by any of them
    assert stac.call("GET", "collections/hana-w", "hana").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "search?ids=%00", "search?token=garbage", "search?intersects=garbage",
        "search?fields=,,,", "collections?query=garbage", "collections?sortby=+",
        "collections?offset=-1", "collections?q=next:garbage", "collections?q=%27",
    ],
)  # fmt: skip
def test_inputs_that_answered_500_get_a_json_400(stac, path):
    json_error(stac.call("GET", path, "hana"), 400)


def test_paths_that_are_not_utf8_get_a_json_400_from_the_service(stac):
    """Straight to the service's port: through the proxy such a path never reaches it (the
    proxy cannot route it and hands it to the hub)."""
    import http.client

    from twinhub.process.runtime import Runtime
    from twinhub.services import datalake

    port = datalake.StacPart().port(Runtime.load(stac.p.state))
    tok = stac.p.token("hana")
    for path in ("collections/%ff%fe", "collections/hana-own/items/%ff", "search%00"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(
            "GET", datalake.SERVICE_PREFIX + path, headers={"Authorization": f"token {tok}"}
        )
        resp = conn.getresponse()
        doc = json.loads(resp.read())
        assert resp.status == 400 and doc["code"] == 400, (path, resp.status, doc)
        conn.close()
    assert stac.pid() == stac.pid0
