"""OGC API - Records (services/registry/records.py) through the real service app: request
limits, hub auth (anonymous paths, tokens), FastAPI, the search index and the templates,
against a real SQLite store holding integrated entries of every visibility. Records are
validated against the OGC API - Records record schema (``ogcapi_records_schemas/``, copies
of the standard's files).

The one fake is the hub's token check (``FakeHubAuth`` in conftest.py: a table of token ->
user model where JupyterHub would answer).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from twinhub.services.registry import metrics, records, store
from twinhub.services.registry.app import create_app
from twinhub.services.registry.context import RegistryContext

PREFIX = "/services/registry/"
ITEMS = PREFIX + "collections/services/items"
ACCESS = "access:services!service=registry"
SERVICE_TOKEN = "registry-service-token"
FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "twin.example.org"}
ORIGIN = "https://twin.example.org"

# -- the record schema, read as JSON Schema ---------------------------------------------------
SCHEMAS = Path(__file__).parent / "ogcapi_records_schemas"
#: Where the copies are said to live, so that their relative references resolve (never fetched).
SCHEMA_BASE = "https://schemas.invalid/ogcapi-records/"
FEATURES_GEOMETRY = (
    "https://schemas.opengis.net/ogcapi/features/part1/1.0/openapi/schemas/geometryGeoJSON.yaml"
)


def _as_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema -> JSON Schema 2020-12, where the standard's files need it:
    ``nullable``; a ``oneOf`` whose first branch is a bare "object or null" (it would make
    every object match twice, so a valid value fail ``oneOf``): "null, or the other
    branches"; ``items`` given as a list (meant as any of them); the Features geometry
    reference (a local copy)."""
    if isinstance(node, list):
        return [_as_json_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    branches = node.get("oneOf")
    if branches and branches[0] == {"type": "object", "nullable": True}:
        node = {k: v for k, v in node.items() if k != "oneOf"}
        node["anyOf"] = [{"type": "null"}, *branches[1:]]
    node = {k: _as_json_schema(v) for k, v in node.items()}
    if node.get("$ref") == FEATURES_GEOMETRY:
        node["$ref"] = "geometryGeoJSON.yaml"
    if isinstance(node.get("items"), list):
        node["items"] = {"anyOf": node["items"]}
    if node.pop("nullable", False):
        node = {"anyOf": [{"type": "null"}, node]}
    return node


def record_validator() -> jsonschema.Draft202012Validator:
    resources = []
    for path in SCHEMAS.glob("*.yaml"):
        schema = _as_json_schema(yaml.safe_load(path.read_text()))
        resources.append((f"{SCHEMA_BASE}{path.name}", Resource(schema, DRAFT202012)))
    registry = Registry().with_resources(resources)
    return jsonschema.Draft202012Validator(
        {"$ref": f"{SCHEMA_BASE}recordGeoJSON.yaml"},
        registry=registry,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


VALIDATOR = record_validator()


def assert_record(doc: dict) -> None:
    errors = sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_the_schema_check_can_fail() -> None:
    """The validator refuses what the standard refuses (so a pass means something)."""
    good = {"id": "x", "type": "Feature", "geometry": None, "properties": None}
    assert_record(good)
    for bad in (
        {k: v for k, v in good.items() if k != "geometry"},  # geometry is required
        {**good, "type": "FeatureCollection"},
        {**good, "time": {"interval": ["2020-01-01T00:00:00+01:00", ".."]}},  # Z only
        {**good, "properties": {"themes": [{"concepts": [{"id": "a"}]}]}},  # no scheme
        {**good, "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}},
        {**good, "links": [{"rel": "self"}]},  # no href
    ):
        assert list(VALIDATOR.iter_errors(bad)), bad


# -- the service --------------------------------------------------------------------------------
@pytest.fixture
def ctx(registry_ctx, registry_entries) -> RegistryContext:
    """The shared registry context (conftest.py) holding entries of every visibility."""
    _entry, _publish = registry_entries
    url, settings = registry_ctx.db_url, registry_ctx.settings
    _publish(url, _entry(
        settings, "wave-watch", "Wave Watch", "public",
        description="Wave **forecasts**.\n\n<script>alert(1)</script> [docs](https://w.org/d)"
        " ![logout-pixel](/hub/logout)",
        keywords=["swell", "surf"], bbox=[-10.0, 40.0, 5.0, 60.0],
        temporal={"start": "2020-01-01", "end": "2021-06-30T12:00:00+02:00"},
        endpoints=[{"url": "https://waves.example.org/api", "type": "openapi",
                    "description_url": "https://waves.example.org/openapi.json"}],
        documentation="https://waves.example.org/docs", licence="CC-BY-4.0",
        contact="help@waves.example.org",
    ))  # fmt: skip
    _publish(url, _entry(
        settings, "flood-maps", "Flood Maps", "public", kind="dataset",
        thematic_areas=["water", "disaster-risk"], licence="https://flood.example.org/licence",
        contact="https://flood.example.org/contact", bbox=[170.0, -50.0, -170.0, -30.0],
    ))  # fmt: skip
    _publish(url, _entry(settings, "crop-yields", "Crop Yields", "users", kind="dataset",
                         thematic_areas=["agriculture"]))  # fmt: skip
    _publish(url, _entry(settings, "lab-tides", "Lab Tides", "project:ocean-lab", kind="api"))
    _publish(url, _entry(settings, "secret-reefs", "Secret Reefs", "project:other-lab"))
    _publish(url, _entry(settings, "pending-swell", "Pending Swell", "public"), state="approved")
    _publish(url, _entry(settings, "evil-svc", "<img src=x onerror=alert(1)>", "public",
                         kind="notebook", thematic_areas=["health"]))  # fmt: skip
    store.record_health(url, "wave-watch", status="up", latency_ms=12.6, http_status=200,
                        detail="")  # fmt: skip
    return registry_ctx


def _get(app, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.get(path, headers=headers or {})

    return asyncio.run(go())


@pytest.fixture
def get(ctx, hub_auth):
    app = create_app(ctx=ctx, hub_auth=hub_auth, background=False)

    def call(path: str, token: str | None = None, **headers: str) -> httpx.Response:
        h = {k.replace("_", "-"): v for k, v in headers.items()}
        if token:
            h["Authorization"] = f"token {token}"
        return _get(app, path, h)

    return call


def ids(doc: dict) -> list[str]:
    return [f["id"] for f in doc["features"]]


def links(doc: dict, rel: str) -> list[dict]:
    return [link for link in doc["links"] if link["rel"] == rel]


# -- landing page, conformance, collections ---------------------------------------------------
def test_landing_page_is_json_by_default_with_absolute_forwarded_links(get) -> None:
    r = get(PREFIX, **{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "twin.example.org"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["title"] == "Blue Twin services"
    base = ORIGIN + PREFIX
    assert links(doc, "self")[0]["href"] == base
    assert links(doc, "conformance")[0]["href"] == base + "conformance"
    assert links(doc, "data")[0]["href"] == base + "collections"
    assert all(link["href"].startswith(base) for link in doc["links"])
    # Without forwarded headers: the Host the client used.
    assert get(PREFIX).json()["links"][0]["href"] == "http://testserver" + PREFIX


def test_conformance_names_only_what_is_implemented(get) -> None:
    conf = get(PREFIX + "conformance").json()["conformsTo"]
    rec = "http://www.opengis.net/spec/ogcapi-records-1/1.0/conf/"
    for c in ("record-core", "record-collection", "searchable-catalog", "json", "html"):
        assert rec + c in conf
    for c in ("sorting", "oas30", "cql-filter", "filtering", "autodiscovery"):
        assert rec + c not in conf


def test_collections_hold_the_services_catalogue(get) -> None:
    doc = get(PREFIX + "collections").json()
    assert [c["id"] for c in doc["collections"]] == ["services"]
    services = get(PREFIX + "collections/services")
    assert services.status_code == 200
    c = services.json()
    assert c == doc["collections"][0]
    assert (c["itemType"], c["type"]) == ("record", "Collection")
    assert [link["href"] for link in links(c, "items")][0].endswith("/collections/services/items")
    assert get(PREFIX + "collections/other").status_code == 404


# -- items ------------------------------------------------------------------------------------
def test_visitor_gets_public_records_only_valid_against_the_schema(get) -> None:
    r = get(ITEMS, **FORWARDED)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/geo+json")
    doc = r.json()
    assert doc["type"] == "FeatureCollection"
    # Sorted by name: "<img ..." sorts first.
    assert ids(doc) == ["evil-svc", "flood-maps", "wave-watch"]
    assert (doc["numberMatched"], doc["numberReturned"]) == (3, 3)
    for f in doc["features"]:
        assert_record(f)
    assert doc["facets"]["kind"] == [
        {"value": "dataset", "count": 1, "title": "Dataset"},
        {"value": "notebook", "count": 1, "title": "Notebook"},
        {"value": "web-application", "count": 1, "title": "Web application"},
    ]
    areas = {b["value"]: b["count"] for b in doc["facets"]["thematic_area"]}
    assert areas == {"ocean": 1, "water": 1, "disaster-risk": 1, "health": 1}
    assert links(doc, "self")[0]["href"].startswith(ORIGIN + ITEMS)
    assert not links(doc, "next") and not links(doc, "prev")


def test_a_record_carries_the_entry(get) -> None:
    doc = get(ITEMS + "?ids=wave-watch", **FORWARDED).json()
    (f,) = doc["features"]
    p = f["properties"]
    assert (f["id"], p["title"], p["type"]) == ("wave-watch", "Wave Watch", "web-application")
    assert p["description"].startswith("Wave **forecasts**")  # Markdown as given
    assert p["keywords"] == ["swell", "surf"]
    assert p["themes"] == [
        {"concepts": [{"id": "ocean", "title": "Ocean"}],
         "scheme": ORIGIN + PREFIX + "api/v1/vocabulary"}
    ]  # fmt: skip
    assert p["contacts"] == [
        {"organization": "Ocean Institute", "emails": [{"value": "help@waves.example.org"}]}
    ]
    assert p["license"] == "CC-BY-4.0"
    assert (p["twinhub:status"], p["twinhub:latency_ms"]) == ("up", 12.6)
    assert (p["twinhub:visibility"], p["twinhub:version"]) == ("public", 1)
    assert f["geometry"] == {
        "type": "Polygon",
        "coordinates": [[[-10.0, 40.0], [5.0, 40.0], [5.0, 60.0], [-10.0, 60.0], [-10.0, 40.0]]],
    }
    # A date stays a date; a date-time is written in UTC.
    assert f["time"] == {"interval": ["2020-01-01", "2021-06-30T10:00:00Z"]}
    by_rel = {link["rel"]: link for link in f["links"]}
    assert by_rel["self"]["href"] == ORIGIN + ITEMS + "/wave-watch"
    assert by_rel["service"]["href"] == ORIGIN + "/services/wave-watch/"
    assert by_rel["service-desc"]["href"] == "https://waves.example.org/openapi.json"
    assert by_rel["service-desc"]["type"] == records.OPENAPI_JSON
    assert by_rel["related"]["href"] == "https://waves.example.org/api"
    assert by_rel["describedby"]["href"] == "https://waves.example.org/docs"
    # The other: a licence link, a contact URL, no service link (a dataset), and a bbox
    # across the antimeridian as two polygons.
    f = get(ITEMS + "/flood-maps").json()
    assert_record(f)
    assert f["properties"]["license"] == "other"
    assert [link["href"] for link in links(f, "license")] == ["https://flood.example.org/licence"]
    assert f["properties"]["contacts"][0]["links"][0]["href"] == "https://flood.example.org/contact"
    assert not links(f, "service") and f["properties"]["twinhub:status"] == "unknown"
    assert f["geometry"]["type"] == "MultiPolygon"
    assert f["time"] is None


def test_logged_in_users_see_what_their_visibility_allows(get) -> None:
    alice = get(ITEMS + "?limit=100", "alice-token").json()
    assert ids(alice) == ["evil-svc", "crop-yields", "flood-maps", "wave-watch"]
    bob = get(ITEMS + "?limit=100", "bob-token").json()
    assert ids(bob) == ["evil-svc", "crop-yields", "flood-maps", "lab-tides", "wave-watch"]
    kinds = {b["value"]: b["count"] for b in bob["facets"]["kind"]}
    assert kinds == {"dataset": 2, "web-application": 1, "api": 1, "notebook": 1}
    root = get(ITEMS + "?limit=100", "root-token").json()
    assert "secret-reefs" in ids(root) and "pending-swell" not in ids(root)
    for doc in (alice, bob, root):
        for f in doc["features"]:
            assert_record(f)
    # A bad token is no anonymous pass.
    r = get(ITEMS, "wrong-token")
    assert r.status_code == 401, r.text


def test_one_record_404_when_unknown_or_not_visible(get) -> None:
    assert get(ITEMS + "/lab-tides", "bob-token").status_code == 200
    for path, token in (
        ("/lab-tides", "alice-token"),
        ("/lab-tides", None),
        ("/crop-yields", None),
        ("/secret-reefs", "bob-token"),
        ("/pending-swell", "root-token"),  # approved, not integrated
        ("/no-such-thing", "bob-token"),
    ):
        r = get(ITEMS + path, token)
        assert r.status_code == 404, (path, token)
        assert r.json() == {"code": 404, "description": f"no record {path[1:]!r} in 'services'"}


def test_search_parameters(get) -> None:
    assert ids(get(ITEMS + "?q=forecasts", "bob-token").json()) == ["wave-watch"]
    assert ids(get(ITEMS + "?q=wave,flood").json()) == ["flood-maps", "wave-watch"]
    assert ids(get(ITEMS + "?q=tides").json()) == []  # lab-tides is a project's
    assert ids(get(ITEMS + "?thematic_area=water").json()) == ["flood-maps"]
    assert ids(get(ITEMS + "?thematic_area=water&thematic_area=health").json()) == [
        "evil-svc", "flood-maps"
    ]  # fmt: skip
    assert ids(get(ITEMS + "?kind=dataset,notebook").json()) == ["evil-svc", "flood-maps"]
    assert ids(get(ITEMS + "?type=web-application").json()) == ["wave-watch"]
    assert ids(get(ITEMS + "?bbox=0,50,1,51").json()) == ["wave-watch"]
    assert ids(get(ITEMS + "?bbox=179,-40,180,-39").json()) == ["flood-maps"]
    assert ids(get(ITEMS + "?datetime=2021-01-01/..").json()) == ["wave-watch"]
    assert ids(get(ITEMS + "?datetime=2022-01-01").json()) == []
    doc = get(ITEMS + "?facets=false").json()
    assert "facets" not in doc and doc["numberMatched"] == 3


def test_external_ids_are_a_core_parameter_that_no_record_matches(get) -> None:
    """OGC API - Records core query parameter ``externalIds``: only records with one of the
    given external identifiers match, and entries carry none; an empty value is ignored."""
    doc = get(ITEMS + "?externalIds=wave-watch,urn:x:1", "root-token").json()
    assert ids(doc) == [] and doc["numberMatched"] == 0
    assert all(not buckets for buckets in doc["facets"].values())
    doc = get(ITEMS + "?externalIds=&q=wave").json()
    assert ids(doc) == ["wave-watch"]


def test_paging_links(get) -> None:
    first = get(ITEMS + "?limit=1&q=wave,flood", **FORWARDED).json()
    assert ids(first) == ["flood-maps"] and first["numberMatched"] == 2
    (nxt,) = links(first, "next")
    assert not links(first, "prev")
    assert nxt["href"].startswith(ORIGIN + ITEMS + "?")
    second = get(nxt["href"].removeprefix(ORIGIN)).json()
    assert ids(second) == ["wave-watch"] and not links(second, "next")
    (prev,) = links(second, "prev")
    assert ids(get(prev["href"].removeprefix(ORIGIN)).json()) == ["flood-maps"]


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "offset=-1",
        "bbox=1,2,3",
        "bbox=0,0,500,1",
        "datetime=tomorrow",
        "datetime=2021-01-01/2020-01-01",
        "sortby=title",
        "filter=x",
        "f=xml",
        "facets=maybe",
        "q=a&q=b",
        "q=" + "x" * 257,
        "q=" + ",".join("abcdefghijk"),
        "q=a+b+c+d+e+f+g+h+i",
    ],
)
def test_bad_parameters_are_a_clear_400(get, query) -> None:
    r = get(f"{ITEMS}?{query}")
    assert r.status_code == 400, (query, r.text)
    body = r.json()
    assert body["code"] == 400 and body["description"]


def test_searches_are_timed(get) -> None:
    def count() -> float:
        return metrics.REGISTRY.get_sample_value("twinhub_registry_search_seconds_count") or 0.0

    before = count()
    get(ITEMS + "?q=wave")
    get(ITEMS)
    assert count() == before + 2


def test_index_follows_the_store(get, ctx, registry_entries) -> None:
    _entry, _publish = registry_entries
    assert ids(get(ITEMS + "?q=swell").json()) == ["wave-watch"]
    _publish(ctx.db_url, _entry(ctx.settings, "swell-now", "Swell Now", "public"))
    ctx.index._checked = float("-inf")  # the once-a-second look is due
    assert ids(get(ITEMS + "?q=swell").json()) == ["swell-now", "wave-watch"]


# -- HTML ---------------------------------------------------------------------------------------
def test_browsers_get_html_and_f_decides(get) -> None:
    r = get(ITEMS, Accept="text/html,application/xhtml+xml,*/*;q=0.8")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    r = get(ITEMS + "?f=json", Accept="text/html")
    assert r.headers["content-type"].startswith("application/geo+json")
    r = get(ITEMS + "?f=html")
    assert r.headers["content-type"].startswith("text/html")
    for path in ("", "conformance", "collections", "collections/services"):
        r = get(PREFIX + path + "?f=html")
        assert r.status_code == 200 and "<h1>" in r.text, path


def test_html_search_page(get) -> None:
    html = get(ITEMS + "?f=html&limit=2&q=wave,flood,img", "bob-token").text
    assert re.findall(r'class="th-card rc-result" data-slug="([^"]+)"', html) == [
        "evil-svc", "flood-maps"
    ]  # fmt: skip
    assert 'id="rc-count"><strong>3</strong> entries found, 1&ndash;2 shown' in html
    # Facets with counts, as links that add the filter.
    assert re.search(
        r'href="[^"]*thematic_area=water[^"]*" data-value="water">Water</a> '
        r'<span class="rc-n">1</span>',
        html,
    )
    assert 'id="rc-next"' in html and 'id="rc-prev"' not in html
    # Names are text, never markup; no asset from elsewhere; no inline script.
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert not re.search(r'src="(https?:)?//', html)
    assert not re.search(r'<link[^>]+href="(https?:)?//', html)
    assert "<script>" not in html and "style=" not in html


def test_html_record_page_renders_markdown_without_raw_html(get) -> None:
    r = get(ITEMS + "/wave-watch?f=html")
    assert r.status_code == 200
    html = r.text
    assert "<strong>forecasts</strong>" in html
    assert "<img" not in html.split('id="rc-description"')[-1]  # the logout image: its alt
    assert "logout-pixel" in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)" in html
    assert 'href="https://w.org/d"' in html
    assert 'data-status="up"' in html and "13 ms" in html
    assert 'id="rc-open" href="http://testserver/services/wave-watch/"' in html
    assert get(ITEMS + "/lab-tides?f=html").status_code == 404
