"""Bad input to the platform's ASGI services answers a JSON 4xx, never a crash, never a 503
for the next caller (issue 17, items 1 and 6).

Against the session's real multi-user platform, through the real proxy (and straight to a
service's port where the proxy would stop the input first): for each projects and cache
endpoint a corpus of bad requests (too big, too deep, wrong types, control characters,
bad percent-encoding, huge headers, junk tokens).  Each must get a 4xx whose body is JSON
``{"code", "description"}``; right after each one another user's request through the proxy
must succeed (a service closing its connection after an error used to make the proxy answer
the *next* request with 503); and the service processes are the ones that were running
before (run/components.json: same pids).
"""

from __future__ import annotations

import json
import socket

import pytest
import requests

from tests.helpers.tiles import lake_test_item

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

DEEP = "[" * 100_000 + "]" * 100_000  # 200 KB: over the projects and cache body caps
DEEP_SMALL = "[" * 30_000 + "]" * 30_000  # 60 KB: under them (json.loads: RecursionError)
DEEP_OBJ = '{"a":' * 5000 + "1" + "}" * 5000
SERVICES = (
    "projects", "cache", "accounting", "stac", "registry", "desk", "processing", "tiles", "hub",
    "proxy",
)  # fmt: skip
#: A lake item the tiles rows ask about (HEALPix nside 8, 4 times from 2031-01-01, "2t"),
#: written by the env fixture: the refusals below are of the request, not of a missing item.
TILES_ITEM = "limits-tiles"
TILE = f"tiles/collections/{TILES_ITEM}/2t/map/tiles/"


def pids(p) -> dict[str, int]:
    records = json.loads((p.state / "run" / "components.json").read_text())
    return {name: records[name]["pid"] for name in SERVICES if name in records}


@pytest.fixture(scope="module")
def env(multiuser_platform):
    p = multiuser_platform
    for name in ("alice", "bob"):
        if p.api("GET", f"/users/{name}", token=p.token("admin")).status_code == 404:
            p.add_user(name)
    lake_test_item(p, TILES_ITEM, TILES_ITEM)
    before = pids(p)
    assert {"projects", "cache", "tiles"} <= set(before), before
    jobs_before = processing_jobs(p)
    yield p
    assert pids(p) == before, "a platform process was replaced while taking bad input"
    # no execute request of the corpus made a job, no deploy a process
    assert processing_jobs(p) == jobs_before
    assert svc(p, "processing/processes/p6-bad-deploy").status_code == 404
    # every write in the corpus was refused: nothing of it was stored
    r = svc(p, "projects/api/projects/limits-lab", who="admin")
    assert r.status_code == 404, r.text


def processing_jobs(p) -> set[str]:
    """alice's processing jobs (the corpus's execute requests must make none)."""
    r = svc(p, "processing/jobs?limit=1000")
    assert r.status_code == 200, r.text
    return {j["jobID"] for j in r.json()["jobs"]}


def svc(p, path: str, who: str | None = "alice", method: str = "GET", **kw):
    headers = kw.pop("headers", {})
    if who:
        headers.setdefault("Authorization", f"token {p.token(who)}")
    return requests.request(method, p.url + "services/" + path, headers=headers, timeout=60, **kw)


def chunks(n: int, size: int = 64 * 1024):
    for _ in range(n):
        yield b"x" * size


# (label, service path, method, who, extra request arguments, allowed statuses, text)
PUT = "projects/api/projects/limits-lab"
CORPUS = [
    ("deep array", PUT, "PUT", "admin", {"data": DEEP_SMALL}, {400}, "nests deeper than 64"),
    ("deep and big", PUT, "PUT", "admin", {"data": DEEP}, {413}, "larger than"),
    ("deep object", PUT, "PUT", "admin", {"data": DEEP_OBJ}, {400}, "nests deeper than 64"),
    ("deep, as text/plain", PUT, "PATCH", "admin",
     {"data": DEEP_SMALL, "headers": {"Content-Type": "text/plain"}}, {400}, "nests deeper"),
    ("deep, non-admin", PUT, "PUT", "alice", {"data": DEEP_OBJ}, {400}, "nests deeper"),
    ("too big", PUT, "PUT", "admin", {"json": {"x": "a" * 200_000}}, {413}, "larger than"),
    ("too big, chunked", PUT, "PUT", "admin", {"data": chunks(32)}, {413}, "larger than"),
    ("not JSON", PUT, "PUT", "admin", {"data": b"\xff\xfe{"}, {400}, "not valid JSON"),
    ("a list", PUT, "PUT", "admin", {"json": []}, {400}, "must be a JSON object"),
    ("a string", PUT, "PUT", "admin", {"json": "cpu"}, {400}, "must be a JSON object"),
    ("wrong types", PUT, "PUT", "admin", {"json": {"profiles": 5}}, {400}, "profiles"),
    ("gpu not bool", PUT, "PUT", "admin", {"json": {"gpu": "yes"}}, {400}, "gpu"),
    ("NaN", PUT, "PUT", "admin", {"data": '{"cpu_hours": NaN}'}, {400}, "cpu_hours"),
    ("infinity", PUT, "PUT", "admin", {"data": '{"cpu_hours": 1e400}'}, {400}, "cpu_hours"),
    ("huge int", PUT, "PUT", "admin",
     {"data": '{"max_servers_per_user": ' + "9" * 5000 + "}"}, {400}, "JSON"),
    ("unknown key", PUT, "PUT", "admin", {"json": {"owner": "bob"}}, {400}, "unknown key"),
    ("NUL in name", "projects/api/projects/a%00b", "PUT", "admin", {"json": {}}, {400},
     "control characters"),
    ("10 000-character name", "projects/api/projects/" + "n" * 10_000, "PUT", "admin",
     {"json": {}}, {400, 414}, ""),
    ("NUL in user", "projects/api/users/a%00/allocation", "GET", "admin", {}, {400},
     "control characters"),
    ("no such user", "projects/api/users/nobody-here/allocation", "GET", "admin", {}, {404},
     "no user"),
    ("NUL in query", "projects/api/projects?ids=%00", "GET", "alice", {}, {400},
     "control characters"),
    ("token=garbage", "projects/api/projects?token=garbage", "GET", None, {}, {401}, ""),
    ("garbage token", "projects/api/projects", "GET", None,
     {"headers": {"Authorization": "token gar bage"}}, {401}, "invalid"),
    ("long token", "projects/api/projects", "GET", None,
     {"headers": {"Authorization": "token " + "a" * 5000}}, {401}, "invalid"),
    ("deep query", "projects/api/projects?x=" + "[" * 70 + "]" * 70, "GET", "alice", {}, {400},
     "nests deeper"),
    ("many params", "projects/api/projects?" + "&".join(f"a{i}=1" for i in range(300)), "GET",
     "alice", {}, {400}, "too many query parameters"),
    ("method", "projects/api/projects", "POST", "alice", {"json": {}}, {405}, ""),
    ("no route", "projects/api/nowhere", "GET", "alice", {}, {404}, ""),
    ("cache: NUL in path", "cache/assets/o/h%00st/x", "GET", "alice", {}, {400},
     "control characters"),
    ("cache: query", "cache/stats?x=%00", "GET", "alice", {}, {400}, "control characters"),
    ("cache: deep body", "cache/stats", "GET", "alice", {"data": DEEP_SMALL}, {400},
     "nests deeper"),
    ("cache: deep, big body", "cache/metrics", "GET", "alice", {"data": DEEP}, {413},
     "larger than"),
    ("cache: big body", "cache/stats", "POST", "alice", {"data": b"x" * 200_000}, {413},
     "larger than"),
    ("cache: write", "cache/stats", "POST", "alice", {"json": {}}, {405}, "read-only"),
    ("cache: long asset", "cache/assets/" + "a" * 10_000, "GET", "alice", {}, {404, 400, 414},
     ""),
    ("cache: garbage token", "cache/stats", "GET", None,
     {"headers": {"Authorization": "Bearer \x80\x81"}}, {401}, "invalid"),
    # the same layer, outermost in the STAC API too (its own input checks are tested apart)
    ("stac: deep search body", "stac/search", "POST", "alice", {"data": DEEP}, {400},
     "nests deeper than 64"),
    ("stac: NUL in ids", "stac/search?ids=%00", "GET", "alice", {}, {400},
     "control characters"),
    # free text (q) of item searches: the platform's own rules (twinlab.contract)
    ("stac: q of 40 words", "stac/search?q=" + "+".join(f"w{i}" for i in range(40)), "GET",
     "alice", {}, {400}, "more than 16 terms"),
    ("stac: q with parentheses", "stac/search?q=%28a+OR+b%29", "GET", "alice", {}, {400},
     "parentheses"),
    ("stac: q unclosed quote", "stac/search?q=%22two+words", "GET", "alice", {}, {400},
     "unclosed quote"),
    ("stac: q only OR", "stac/search", "POST", "alice", {"json": {"q": "OR"}}, {400},
     "no search terms"),
    ("stac: q a number", "stac/search", "POST", "alice", {"json": {"q": 5}}, {400}, "q must"),
    ("stac: q too long", "stac/search?q=" + "a" * 5000, "GET", "alice", {}, {400},
     "at most 1024 characters"),
    ("stac: NUL in q", "stac/search?q=a%00b", "GET", "alice", {}, {400}, "control characters"),
    # the accounting service's usage API (its parameter checks: services/accounting/access.py)
    ("accounting: bad start", "accounting/api/v1/usage?start=yesterday", "GET", "alice", {},
     {400}, "ISO 8601"),
    ("accounting: unknown parameter", "accounting/api/v1/usage?who=bob", "GET", "alice", {},
     {400}, "unknown parameter"),
    ("accounting: repeated parameter", "accounting/api/v1/usage?step=day&step=hour", "GET",
     "alice", {}, {400}, "more than once"),
    ("accounting: long parameter", "accounting/api/v1/usage?project=" + "p" * 5000, "GET",
     "alice", {}, {400}, "longer than"),
    ("accounting: start after end",
     "accounting/api/v1/usage?start=2026-02-01&end=2026-01-01", "GET", "alice", {}, {400},
     "must be before"),
    ("accounting: bad format", "accounting/api/v1/usage?format=xml", "GET", "alice", {}, {400},
     "format="),
    ("accounting: NUL in user", "accounting/api/v1/usage?user=a%00b", "GET", "alice", {},
     {400}, "control characters"),
    ("accounting: step not a step", "accounting/api/v1/usage?step=abc", "GET", "alice", {},
     {400}, "step"),
    ("accounting: by not a breakdown", "accounting/api/v1/usage?by=5", "GET", "alice", {},
     {400}, "by="),
    ("accounting: write", "accounting/api/v1/usage", "POST", "alice", {"json": {}}, {405}, ""),
    ("accounting: deep body", "accounting/api/v1/usage", "GET", "alice", {"data": DEEP}, {413},
     "larger than"),
    # the registry (issue 14): REST, the Records catalogue, the sign-on
    ("registry: deep request body", "registry/api/v1/requests", "POST", "alice",
     {"data": DEEP_SMALL, "headers": {"Content-Type": "application/json"}}, {400, 413}, ""),
    ("registry: big request body", "registry/api/v1/requests", "POST", "alice",
     {"data": b"x" * 2_000_000}, {413}, "larger than"),
    ("registry: entry not an object", "registry/api/v1/requests", "POST", "alice",
     {"json": {"entry": [1, 2]}}, {400}, "entry"),
    ("registry: entry of wrong types", "registry/api/v1/requests", "POST", "alice",
     {"json": {"entry": {"name": 5, "slug": ["x"], "thematic_areas": "ocean"}}}, {400}, ""),
    ("registry: NUL in a name", "registry/api/v1/requests", "POST", "alice",
     {"json": {"entry": {"name": "a\x00b"}}}, {400}, ""),
    ("registry: unknown state", "registry/api/v1/requests/nosuch/transitions", "POST", "alice",
     {"json": {"to": "flying"}}, {400, 404}, ""),
    ("registry: limit not a number", "registry/collections/services/items?limit=ten", "GET",
     "alice", {}, {400}, "limit"),
    ("registry: limit too large", "registry/collections/services/items?limit=100000", "GET",
     "alice", {}, {400}, "limit"),
    ("registry: bad bbox", "registry/collections/services/items?bbox=1,2,3", "GET", "alice",
     {}, {400}, "bbox"),
    ("registry: long q", "registry/collections/services/items?q=" + "a" * 5000, "GET",
     "alice", {}, {400}, ""),
    ("registry: NUL in q", "registry/collections/services/items?q=a%00b", "GET", "alice", {},
     {400}, "control characters"),
    ("registry: unknown parameter", "registry/collections/services/items?colour=red", "GET",
     "alice", {}, {400}, ""),
    ("registry: sso to elsewhere", "registry/sso?next=//evil.example/x", "GET", "alice", {},
     {400}, ""),
    # the service desk (issue 14)
    ("desk: deep ticket body", "desk/api/v1/tickets", "POST", "alice",
     {"data": DEEP_SMALL, "headers": {"Content-Type": "application/json"}}, {400, 413}, ""),
    ("desk: subject of wrong type", "desk/api/v1/tickets", "POST", "alice",
     {"json": {"subject": ["x"], "body": "b"}}, {400}, "subject"),
    ("desk: control characters in subject", "desk/api/v1/tickets", "POST", "alice",
     {"json": {"subject": "a\x07b", "body": "b"}}, {400}, ""),
    ("desk: ticket id not a number", "desk/api/v1/tickets/abc", "GET", "alice", {},
     {422}, "valid integer"),
    ("desk: unknown state filter", "desk/api/v1/tickets?state=flying", "GET", "alice", {},
     {400}, "state"),
    # processing (issue 16): OGC API - Processes execution, deployment, lists, reports
    ("processing: deep execute body", "processing/processes/echo/execution", "POST", "alice",
     {"data": DEEP_SMALL, "headers": {"Content-Type": "application/json"}}, {400, 413}, ""),
    # its cap is above the registry's: a registered process's code (4 MiB) travels in base64
    ("processing: big execute body", "processing/processes/echo/execution", "POST", "alice",
     {"data": b"x" * 8_000_000}, {413}, "larger than"),
    ("processing: not JSON", "processing/processes/echo/execution", "POST", "alice",
     {"data": b"\xff\xfe{", "headers": {"Content-Type": "application/json"}}, {400}, "JSON"),
    ("processing: inputs not an object", "processing/processes/echo/execution", "POST",
     "alice", {"json": {"inputs": [1, 2]}}, {400}, "inputs"),
    ("processing: input of the wrong type", "processing/processes/echo/execution", "POST",
     "alice", {"json": {"inputs": {"stringInput": 5}}}, {400}, "stringInput"),
    ("processing: unknown input", "processing/processes/echo/execution", "POST", "alice",
     {"json": {"inputs": {"stringInput": "a", "colour": "red"}}}, {400}, "colour"),
    ("processing: NaN input", "processing/processes/echo/execution", "POST", "alice",
     {"data": '{"inputs": {"stringInput": "a", "doubleInput": NaN}}',
      "headers": {"Content-Type": "application/json", "Prefer": "respond-async"}}, {400}, ""),
    ("processing: infinite input", "processing/processes/echo/execution", "POST", "alice",
     {"data": '{"inputs": {"stringInput": "a", "doubleInput": 1e400}}',
      "headers": {"Content-Type": "application/json", "Prefer": "respond-async"}}, {400}, ""),
    ("processing: pause past its maximum", "processing/processes/echo/execution", "POST",
     "alice", {"json": {"inputs": {"stringInput": "a", "pause": 100000}}}, {400}, "pause"),
    ("processing: response neither document nor raw", "processing/processes/echo/execution",
     "POST", "alice", {"json": {"inputs": {"stringInput": "a"}, "response": "zip"}}, {400},
     "response"),
    ("processing: unknown item", "processing/processes/zonal-mean/execution", "POST", "alice",
     {"json": {"inputs": {"item": "no-such-item", "variable": "2t"}}}, {400}, "no-such-item"),
    ("processing: unknown process", "processing/processes/nosuch/execution", "POST", "alice",
     {"json": {"inputs": {}}}, {404}, ""),
    ("processing: NUL in a process id", "processing/processes/a%00b", "GET", "alice", {},
     {400}, "control characters"),
    ("processing: 10 000-character process id", "processing/processes/" + "p" * 10_000,
     "GET", "alice", {}, {400, 404, 414}, ""),
    ("processing: limit not a number", "processing/processes?limit=ten", "GET", "alice", {},
     {400}, "limit"),
    ("processing: limit too large", "processing/jobs?limit=100000", "GET", "alice", {},
     {400}, "limit"),
    ("processing: unknown status filter", "processing/jobs?status=flying", "GET", "alice", {},
     {400}, "status"),
    ("processing: unknown representation", "processing/processes?f=xml", "GET", "alice", {},
     {400}, ""),
    ("processing: logs after -1", "processing/jobs/nosuch/logs?after=-1", "GET", "alice", {},
     {400, 404}, ""),
    ("processing: deploy not an object", "processing/processes", "POST", "alice",
     {"json": [1]}, {400}, ""),
    ("processing: deploy a bad id", "processing/processes", "POST", "alice",
     {"json": {"id": "../etc", "inputs": {}, "outputs": {"o": {"schema": {}}},
               "code": "AAAA", "visibility": "private"}}, {400}, "id"),
    ("processing: deploy a templated id", "processing/processes", "POST", "alice",
     {"json": {"id": "echo", "inputs": {}, "outputs": {"o": {"schema": {}}}, "code": "AAAA",
               "visibility": "private"}}, {400, 409}, "echo"),
    ("processing: deploy code not base64", "processing/processes", "POST", "alice",
     {"json": {"id": "p6-bad-deploy", "inputs": {}, "outputs": {"o": {"schema": {}}},
               "code": "!!! not base64", "visibility": "private"}}, {400}, "code"),
    ("processing: deploy to another's project", "processing/processes", "POST", "alice",
     {"json": {"id": "p6-bad-deploy", "inputs": {}, "outputs": {"o": {"schema": {}}},
               "code": "AAAA", "visibility": "project:not-alices"}}, {400, 403}, "project"),
    ("processing: report without a secret", "processing/internal/jobs/nosuch/events", "POST",
     None, {"json": {"events": []}}, {401, 404}, ""),
    ("processing: report with a wrong secret", "processing/internal/jobs/nosuch", "GET",
     None, {"headers": {"X-Twinhub-Job-Secret": "x" * 5000}}, {401, 404}, ""),
    # tiles (issue 15): item ids, tile addresses, styles, times, views, EDR coordinates and
    # the limits, each refused with a JSON 4xx naming what is wrong (the WMTS routes answer
    # OWS exception reports instead: tests/integration/test_tiles_wmts.py)
    ("tiles: item id with a space", "tiles/layers/a%20b", "GET", "alice", {}, {400},
     "item id"),
    ("tiles: item id with a NUL", "tiles/layers/a%00b", "GET", "alice", {}, {400}, ""),
    ("tiles: 10 000-character item id", "tiles/layers/" + "i" * 10_000, "GET", "alice", {},
     {400, 414}, ""),
    ("tiles: unknown item", "tiles/layers/limits-no-such-item", "GET", "alice", {}, {404},
     ""),
    ("tiles: unknown variable", "tiles/collections/limits-tiles/nosuch/map/tiles/"
     "WebMercatorQuad/0/0/0", "GET", "alice", {}, {404}, "nosuch"),
    ("tiles: zoom not a number", TILE + "WebMercatorQuad/x/0/0", "GET", "alice", {},
     {400}, "integer"),
    ("tiles: unknown tile matrix set", TILE + "EPSG:2056/0/0/0", "GET", "alice", {}, {400, 404},
     "tile matrix set"),
    ("tiles: zoom beyond the limit", TILE + "WebMercatorQuad/20/0/0", "GET", "alice", {}, {400},
     "TwinhubTiles.max_zoom_beyond_native"),
    ("tiles: row outside the matrix", TILE + "WebMercatorQuad/1/5/0", "GET", "alice", {}, {404},
     "row"),
    ("tiles: negative column", TILE + "WorldCRS84Quad/1/0/-1", "GET", "alice", {}, {404},
     "column"),
    ("tiles: time not one of the item's", TILE + "WebMercatorQuad/0/0/0?datetime="
     "1999-01-01T00:00:00Z", "GET", "alice", {}, {400}, "1999"),
    ("tiles: time not a time", TILE + "WebMercatorQuad/0/0/0?datetime=yesterday", "GET", "alice",
     {}, {400}, "yesterday"),
    ("tiles: vmin above vmax", TILE + "WebMercatorQuad/0/0/0?vmin=5&vmax=1", "GET", "alice", {},
     {400}, "vmin"),
    ("tiles: vmin not finite", TILE + "WebMercatorQuad/0/0/0?vmin=nan&vmax=1", "GET", "alice", {},
     {400}, "vmin"),
    ("tiles: unknown colour map", TILE + "WebMercatorQuad/0/0/0?cmap=jet", "GET", "alice", {},
     {400}, "viridis"),
    ("tiles: unknown method", TILE + "WebMercatorQuad/0/0/0?method=cubic", "GET", "alice", {},
     {400}, "nearest"),
    ("tiles: view beyond max_view_pixels", "tiles/view/limits-tiles/2t.png?width=5000"
     "&height=5000", "GET", "alice", {}, {400}, "TwinhubTiles.max_view_pixels"),
    ("tiles: unknown projection", "tiles/view/limits-tiles/2t.png?projection=lambert", "GET",
     "alice", {}, {400}, "orthographic"),
    ("tiles: view centre not lon,lat", "tiles/view/limits-tiles/2t.png?center=north", "GET",
     "alice", {}, {400}, "center"),
    ("tiles: view width not a number", "tiles/view/limits-tiles/2t.png?width=wide", "GET",
     "alice", {}, {400}, "width"),
    ("tiles: legend range inverted", "tiles/legend/limits-tiles/2t.png?vmin=3&vmax=2", "GET",
     "alice", {}, {400}, "vmin"),
    ("tiles: EDR without coords", "tiles/edr/collections/limits-tiles/position"
     "?parameter-name=2t", "GET", "alice", {}, {400}, "coords"),
    ("tiles: EDR coords not WKT", "tiles/edr/collections/limits-tiles/position"
     "?coords=POINT(ten%20twenty)", "GET", "alice", {}, {400}, "'ten' is not a number"),
    ("tiles: EDR latitude beyond the pole", "tiles/edr/collections/limits-tiles/position"
     "?coords=POINT(0%20100)", "GET", "alice", {}, {400}, ""),
    ("tiles: EDR deep WKT", "tiles/edr/collections/limits-tiles/area?coords=POLYGON"
     + "(" * 5000 + ")" * 5000, "GET", "alice", {}, {400, 414}, ""),
    ("tiles: EDR unknown parameter", "tiles/edr/collections/limits-tiles/position"
     "?coords=POINT(0%200)&parameter-name=nosuch", "GET", "alice", {}, {400}, "nosuch"),
    ("tiles: EDR area beyond max_edr_area_deg2", "tiles/edr/collections/limits-tiles/area"
     "?coords=POLYGON((-100%20-60,100%20-60,100%2060,-100%2060,-100%20-60))", "GET", "alice",
     {}, {400}, "TwinhubTiles.max_edr_area_deg2"),
    # the whole globe, edges along the antimeridian: no smaller than the one above
    ("tiles: EDR whole-globe area beyond max_edr_area_deg2",
     "tiles/edr/collections/limits-tiles/area"
     "?coords=POLYGON((-180%20-90,180%20-90,180%2090,-180%2090,-180%20-90))", "GET", "alice",
     {}, {400}, "TwinhubTiles.max_edr_area_deg2"),
    ("tiles: EDR time range inverted", "tiles/edr/collections/limits-tiles/position"
     "?coords=POINT(0%200)&datetime=2031-01-02T00:00:00Z/2031-01-01T00:00:00Z", "GET",
     "alice", {}, {400}, "start is after end"),
    ("tiles: EDR crs not CRS84", "tiles/edr/collections/limits-tiles/position"
     "?coords=POINT(0%200)&crs=EPSG:3857", "GET", "alice", {}, {400}, "crs"),
    ("tiles: EDR z on a field without levels", "tiles/edr/collections/limits-tiles/position"
     "?coords=POINT(0%200)&z=850", "GET", "alice", {}, {400}, "z needs exactly one"),
    ("tiles: EDR z not text of a number", "tiles/edr/collections/limits-tiles/position"
     "?coords=POINT(0%200)&z=" + "9" * 5000, "GET", "alice", {}, {400, 414}, ""),
    ("tiles: a body on a GET", "tiles/collections", "GET", "alice", {"data": DEEP},
     {400, 413}, ""),
    ("control bytes in a header", "cache/stats", "GET", None,
     {"headers": {"Authorization": "token \x01garbage"}}, {400, 401}, ""),
]  # fmt: skip


def next_request_is_fine(p) -> None:
    for path in ("projects/api/projects", "cache/stats"):
        r = svc(p, path, who="bob")
        assert r.status_code == 200, f"after a bad request, bob's {path}: {r.status_code} {r.text}"


@pytest.mark.parametrize(
    ("label", "path", "method", "who", "kw", "allowed", "text"),
    CORPUS,
    ids=[c[0] for c in CORPUS],
)
def test_bad_input_gets_a_json_4xx_and_the_next_caller_is_served(
    env, label, path, method, who, kw, allowed, text
):
    r = svc(env, path, who=who, method=method, **kw)
    assert r.status_code in allowed, f"{label}: {r.status_code} {r.text[:300]}"
    if r.status_code != 414:  # the proxy's own refusal of a too-long URL (never reached us)
        doc = r.json()
        assert doc["code"] == r.status_code and doc["description"], doc
        assert text in doc["description"], doc
    next_request_is_fine(env)


def test_errors_in_a_row_never_make_the_proxy_answer_503(env):
    """Twenty rounds of one user's bad requests (4xx and 5xx answers), each followed at once
    by another user's request on the proxy's kept-alive connections."""
    bad = [
        ("projects/api/projects/limits-lab", "PUT", {"data": DEEP}),
        ("projects/api/projects/limits-lab", "PUT", {"data": b"{"}),
        ("projects/api/nowhere", "GET", {}),
        ("cache/assets/nosuch/127.0.0.1:1/x", "GET", {}),
        ("cache/stats", "DELETE", {}),
    ]
    seen = []
    for _ in range(20):
        for path, method, kw in bad:
            r = svc(env, path, who="alice", method=method, **kw)
            seen.append(r.status_code)
            r = svc(env, "projects/api/projects", who="bob")
            seen.append(r.status_code)
            assert r.status_code == 200, (path, r.status_code, r.text)
    assert 503 not in seen and 502 not in seen


def raw_request(port: int, head: bytes) -> tuple[int, bytes]:
    """One request (with Connection: close) straight to a port; status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("service", ["projects", "cache"])
def test_what_the_proxy_stops_gets_json_from_the_service_itself(env, service):
    # through the proxy: it refuses a header block over 16 KiB itself, with a status
    r = svc(env, f"{service}/health", headers={"X-Big": "a" * 100_000})
    assert r.status_code == 431
    # straight to the service (any local process can): a JSON 431 from the limits layer
    rt = json.loads((env.state / "run" / "runtime.json").read_text())
    port = rt["ports"][service]
    head = (
        f"GET /services/{service}/health HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 40_000}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    status, body = raw_request(port, head)
    assert status == 431
    doc = json.loads(body)
    assert doc["code"] == 431 and "headers too large" in doc["description"]
    # and straight, a query nested too deep (the proxy passes it as it is)
    q = "%5B" * 70 + "%5D" * 70
    status, body = raw_request(
        port,
        f"GET /services/{service}/health?f={q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        .encode(),
    )  # fmt: skip
    assert status == 400 and "nests deeper than 64" in json.loads(body)["description"]
    # and straight, a path that is not UTF-8 once percent-decoded (the proxy answers those
    # with its own 500 before any service sees them: configurable-http-proxy's route lookup)
    status, body = raw_request(
        port,
        f"GET /services/{service}/x%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        .encode(),
    )  # fmt: skip
    assert status == 400 and "UTF-8" in json.loads(body)["description"]
