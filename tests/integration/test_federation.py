"""Federated search on a real platform: the lake, a static catalogue (a real HTTP server),
a second real STAC API (stac-fastapi-pgstac on its own database) and, for the edges no
real server produces on demand, a FAKE remote API (tests/helpers/remote_stac.py).

One search through /services/stac/ returns items of all of them, each saying where it comes
from; a source that stops degrades the answer (200, partial, a warning naming it) and comes
back when restarted; paging across sources returns every match exactly once; nothing makes
the platform contact a host no source configures (a counting server stands on one).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import requests

from tests.helpers.platform import Platform, free_port, remove_state, twinhub_cli, wait_for_seed
from tests.helpers.remote_stac import (
    CountingServer,
    FakeStacApi,
    StaticServer,
    build_static_catalogue,
    load_api,
    pick,
    remote_item,
    seed_items,
    seed_root,
    start_pgstac_api,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER = "fedora"


@pytest.fixture(scope="module")
def fed(tmp_path_factory, postgres_cluster):
    base = tmp_path_factory.mktemp("federation")
    shared = Path(tempfile.mkdtemp(prefix="twinhub-fed-", dir="/tmp"))
    shared.chmod(0o711)  # the postgres account must traverse it
    foreign = CountingServer()
    port = free_port()
    static_info = build_static_catalogue(base / "static", port, foreign_port=foreign.port)
    static = StaticServer(base / "static", port).start()
    api_proc, api_url = start_pgstac_api(postgres_cluster, "federation_api", base / "api")
    fake = FakeStacApi(foreign.origin)
    p = None
    try:
        items = seed_items(seed_root())
        api_items = [
            remote_item(i, prefix="api-", collection="api-climate-dt", origin=static.origin,
                        relative_grib=False)
            for i in pick(items, "gaussian-f48", ("2t", "msl"))
        ]  # fmt: skip
        coll = json.loads((seed_root() / "stac" / "collections.json").read_text())[0]
        coll = {**coll, "id": "api-climate-dt", "links": []}
        load_api(api_url, coll, api_items)
        # "remote" comes from the command line, the others from the config file: the
        # flag adds to the file's list.
        sources = [
            {"name": "api", "url": api_url, "asset_origins": [static.origin], "timeout": 10},
            {"name": "fake", "url": fake.url, "timeout": 2},
        ]
        cfg = base / "twinhub_config.py"
        # The shared dir (the STAC database) in a dir of our own, not /var/lib/twinhub/<id>:
        # other test sessions on this machine clean up new dirs there when they end.
        cfg.write_text(
            f"c.TwinhubDataLake.sources = {sources!r}\n"
            f"c.Twinhub.shared_dir = {str(shared / 'shared')!r}\n"
        )
        p = Platform.start(
            base / "state",
            seed="small",
            extra=["--config", str(cfg), "--stac-source", f"remote={static_info['url']}"],
        )
        wait_for_seed(p)
        p.add_user(USER)
        ns = type("Fed", (), {})()
        ns.p, ns.static, ns.fake, ns.foreign = p, static, fake, foreign
        ns.url = p.url + "services/stac/"
        ns.headers = {"Authorization": f"token {p.token(USER)}"}
        ns.static_items, ns.foreign_id = static_info["items"], static_info["foreign_id"]
        ns.api_items, ns.local_items = api_items, items
        yield ns
    finally:
        if p is not None:
            p.stop()
            remove_state(base / "state")
        static.stop()
        api_proc.terminate()
        api_proc.wait(20)
        postgres_cluster.drop_database("federation_api")
        fake.close()
        foreign.close()
        shutil.rmtree(shared, ignore_errors=True)


def get(fed, path, **params):
    return requests.get(fed.url + path, params=params, headers=fed.headers, timeout=60)


def search_all(fed, method="GET", **params):
    """Every page of a search (following our next links); the pages as JSON."""
    pages = []
    if method == "GET":
        r = requests.get(fed.url + "search", params=params, headers=fed.headers, timeout=60)
    else:
        r = requests.post(fed.url + "search", json=params, headers=fed.headers, timeout=60)
    while True:
        assert r.status_code == 200, r.text
        page = r.json()
        pages.append(page)
        nxt = next((lk for lk in page["links"] if lk["rel"] == "next"), None)
        if nxt is None:
            return pages
        assert nxt["href"].startswith(fed.url)  # always back through this API
        if nxt.get("method") == "POST":
            r = requests.post(nxt["href"], json=nxt["body"], headers=fed.headers, timeout=60)
        else:
            r = requests.get(nxt["href"], headers=fed.headers, timeout=60)


def ids_by_source(features):
    out: dict[str, list[str]] = {}
    for f in features:
        out.setdefault(f["properties"]["twinhub:source"], []).append(f["id"])
    return out


def expected_2t(fed):
    return {
        "local": {i["id"] for i in fed.local_items if i["properties"]["param"] == "2t"},
        "remote": {i["id"] for i in fed.static_items if i["properties"]["param"] == "2t"},
        "api": {i["id"] for i in fed.api_items if i["properties"]["param"] == "2t"},
    }


def test_one_pystac_client_search_spans_the_lake_and_the_sources(fed):
    from pystac_client import Client

    client = Client.open(fed.url, headers=fed.headers)
    found = client.search(
        filter="param = '2t'", filter_lang="cql2-text", max_items=None, limit=100,
        method="GET",
    )  # fmt: skip
    items = list(found.items())
    first = get(fed, "search", filter="param = '2t'", limit=100).json()
    # the fake answers every search (its item has param 2t too)
    got = ids_by_source([i.to_dict() for i in items])
    want = expected_2t(fed)
    for name in ("local", "remote", "api"):
        assert set(got.get(name, ())) == want[name], (name, first["twinhub:sources"])
    assert got["fake"] == ["fake-1"]
    remote = next(i for i in items if i.properties["twinhub:source"] == "remote")
    assert remote.collection_id == "remote-climate-dt" and remote.id.startswith("remote-")
    cache = remote.assets["zarr"].extra_fields["alternate"]["cache"]["href"]
    assert cache == (
        f"{fed.p.url}services/cache/assets/remote/127.0.0.1:{fed.static.port}/"
        "objects/climate-dt/healpix-h128.zarr"
    )
    # the GRIB href was relative in the catalogue: resolved against the item's own URL
    grib = remote.assets["grib"].href
    assert grib.startswith(f"{fed.static.origin}/objects/climate-dt/healpix-h128/2t/")
    api_item = next(i for i in items if i.properties["twinhub:source"] == "api")
    assert (
        api_item.assets["zarr"]
        .extra_fields["alternate"]["cache"]["href"]
        .startswith(f"{fed.p.url}services/cache/assets/api/127.0.0.1:{fed.static.port}/objects/")
    )
    assert [lk.href for lk in api_item.links if lk.rel == "self"] == [
        f"{fed.url}collections/api-climate-dt/items/{api_item.id}"
    ]


# limits below the sources' match counts (7 each): their own next links are followed too
@pytest.mark.parametrize("method, limit", [("GET", 3), ("POST", 4), ("GET", 11)])
def test_paging_across_sources_returns_every_match_exactly_once(fed, method, limit):
    pages = search_all(
        fed, method, limit=limit, sources="local,remote,api" if method == "GET" else
        ["local", "remote", "api"], filter="param = '2t'",
    )  # fmt: skip
    feats = [f for p in pages for f in p["features"]]
    assert all(len(p["features"]) <= limit for p in pages) and len(pages) > 3
    keys = [(f["properties"]["twinhub:source"], f["id"]) for f in feats]
    assert len(keys) == len(set(keys))
    got = {k: set(v) for k, v in ids_by_source(feats).items()}
    assert got == expected_2t(fed)
    times = [f["properties"]["datetime"] for f in feats]
    assert times == sorted(times, reverse=True)  # one order across sources
    assert all(p["twinhub:warnings"] == [] for p in pages)


def test_a_stopped_source_degrades_the_answer_and_comes_back(fed):
    import importlib

    search = importlib.import_module("twinlab.datalake.search")
    kw = dict(url=fed.url, token=fed.headers["Authorization"].split()[1], param="2t",
              sources=["local", "remote", "api"], max_items=None)  # fmt: skip
    fed.static.stop()
    try:
        t0 = time.monotonic()
        with pytest.warns(search.SourceWarning, match="source 'remote'"):
            result = search.search(**kw)
        assert time.monotonic() - t0 < 30
        got = {k: {i.id for i in v} for k, v in result.by_source().items()}
        want = expected_2t(fed)
        assert got == {"local": want["local"], "api": want["api"]}
        assert result.sources["remote"]["status"] == "error"
        assert any("remote" in w for w in result.warnings)
        # over plain HTTP: 200, the warning in the answer
        r = get(fed, "search", sources="remote,local", limit=5)
        assert r.status_code == 200
        assert r.json()["twinhub:sources"]["remote"]["status"] == "error"
        assert "source 'remote'" in r.json()["twinhub:warnings"][0]
    finally:
        fed.static.start()
    with warnings.catch_warnings():
        warnings.simplefilter("error", search.SourceWarning)
        result = search.search(**kw, limit=5)  # many pages: POST next links with the token
    assert {k: {i.id for i in v} for k, v in result.by_source().items()} == expected_2t(fed)
    assert len(result) == sum(len(v) for v in expected_2t(fed).values())
    assert result.warnings == [] and result.sources["remote"]["status"] == "ok"


def test_an_asset_on_an_unconfigured_host_is_refused_and_never_contacted(fed):
    r = get(fed, "search", ids=fed.foreign_id, sources="remote")
    (item,) = r.json()["features"]
    for asset in item["assets"].values():
        assert "alternate" not in asset
        assert (
            f"127.0.0.2:{fed.foreign.port} is not a configured origin" in asset["twinhub:refused"]
        )
    r = get(fed, f"collections/remote-climate-dt/items/{fed.foreign_id}")
    assert r.status_code == 200 and "twinhub:refused" in r.json()["assets"]["zarr"]
    # the catalogue links a child on that host too: the crawl did not read it
    assert fed.foreign.hits == []


def test_a_remote_next_link_to_a_foreign_host_is_not_followed(fed):
    fed.fake.mode = "foreign-next"
    pages = search_all(fed, "POST", sources=["fake"], limit=5)
    assert len(pages) == 1 and [f["id"] for f in pages[0]["features"]] == ["fake-1"]
    (warning,) = pages[0]["twinhub:warnings"]
    assert "'fake'" in warning and "not followed" in warning and "127.0.0.2" in warning
    assert fed.foreign.hits == []


def test_redirects_elsewhere_and_slow_sources_are_reported_not_followed(fed):
    try:
        fed.fake.mode = "redirect"
        r = get(fed, "search", sources="fake,local", limit=3)
        st = r.json()["twinhub:sources"]
        assert r.status_code == 200 and st["fake"]["status"] == "error"
        assert "another origin; not followed" in st["fake"]["message"]
        assert st["local"] == {"status": "ok", "returned": 3}
        fed.fake.mode, fed.fake.delay = "slow", 6
        t0 = time.monotonic()
        r = get(fed, "search", sources="fake,local", limit=3)
        assert time.monotonic() - t0 < 5  # the source's timeout is 2 s
        assert r.json()["twinhub:sources"]["fake"]["status"] == "timeout"
        assert len(r.json()["features"]) == 3
    finally:
        fed.fake.mode = "foreign-next"
    assert fed.foreign.hits == []


def test_collections_and_remote_items_resolve_through_the_api(fed):
    r = get(fed, "collections")
    assert r.status_code == 200
    by_id = {c["id"]: c["twinhub:source"] for c in r.json()["collections"]}
    assert {"climate-dt": "local", "remote-climate-dt": "remote", "api-climate-dt": "api",
            "fake": "fake"}.items() <= by_id.items()  # fmt: skip
    c = get(fed, "collections/api-climate-dt").json()
    assert c["twinhub:source"] == "api"
    assert {lk["rel"]: lk["href"] for lk in c["links"]}["items"] == (
        f"{fed.url}collections/api-climate-dt/items"
    )
    page = get(fed, "collections/api-climate-dt/items", limit=4).json()
    assert len(page["features"]) == 4 and ids_by_source(page["features"]).keys() == {"api"}
    nxt = next(lk["href"] for lk in page["links"] if lk["rel"] == "next")
    assert nxt.startswith(f"{fed.url}collections/api-climate-dt/items?")
    iid = fed.static_items[0]["id"]
    it = get(fed, f"collections/remote-climate-dt/items/{iid}").json()
    assert it["id"] == iid and it["properties"]["twinhub:source"] == "remote"
    local = get(fed, "collections/climate-dt/items/climate-dt-healpix-h128-2t-20300101").json()
    assert local["properties"]["twinhub:source"] == "local"
    assert get(fed, "collections/nowhere").status_code == 404
    assert get(fed, "collections/remote-climate-dt/items/nothing-here").status_code == 404


@pytest.mark.parametrize(
    "params, words",
    [
        ({"sources": "local,nope"}, "unknown source(s) 'nope'"),
        ({"token": "fed1.abc.def"}, "token"),
        ({"intersects": '{"type":"Point","coordinates":[0,0]}'}, "intersects"),
        ({"limit": "100000"}, "largest page"),
    ],
)
def test_bad_input_is_refused_naming_the_problem(fed, params, words):
    anonymous = requests.get(fed.url + "search", params=params, timeout=30)
    assert anonymous.status_code == 401  # hub authentication comes before everything
    r = get(fed, "search", **params)
    assert r.status_code == 400, r.text
    assert words in r.json()["description"]


def test_twinhub_up_refuses_a_malformed_stac_source(tmp_path):
    r = twinhub_cli("up", "--state", str(tmp_path / "s"), "--stac-source", "bad", timeout=60)
    assert r.returncode != 0
    assert "NAME=URL" in r.stderr and "'bad'" in r.stderr
    r = twinhub_cli("up", "--state", str(tmp_path / "s"), "--stac-source", "x=ftp://h/", timeout=60)
    assert r.returncode != 0 and "http(s)" in r.stderr


def test_without_sources_the_lake_alone_answers_and_checks_the_sources_parameter(
    personal_platform,
):
    p = personal_platform
    url = p.url + "services/stac/search"
    r = p.cli("user", "list")
    user = r.stdout.split()[0]
    headers = {"Authorization": f"token {p.token(user)}"}
    r = requests.get(url, params={"sources": "local", "limit": 3}, headers=headers, timeout=30)
    assert r.status_code == 200 and "twinhub:sources" not in r.json()  # the lake's own answer
    r = requests.post(url, json={"sources": ["local"], "limit": 3}, headers=headers, timeout=30)
    assert r.status_code == 200
    for bad in ({"sources": "elsewhere"},):
        r = requests.get(url, params=bad, headers=headers, timeout=30)
        assert r.status_code == 400 and "unknown source(s) 'elsewhere'" in r.json()["description"]
    r = requests.post(url, json={"sources": ["elsewhere"]}, headers=headers, timeout=30)
    assert r.status_code == 400 and "this API searches local" in r.json()["description"]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_free_text_matches_static_and_remote_items_by_the_lakes_rules(fed, method):
    """q over the lake, a static catalogue and a remote STAC API: every source's items by
    the same rules (all words, synonyms, grid names in object fields), the items whose
    parameter q names first, across sources and pages."""
    from twinlab.contract import parse_free_text

    q = "temperature healpix"
    sources = "local,remote,api" if method == "GET" else ["local", "remote", "api"]
    pages = search_all(fed, method, q=q, limit=5, sources=sources)
    feats = [f for p in pages for f in p["features"]]
    assert all(p["twinhub:warnings"] == [] for p in pages)
    got = {k: set(v) for k, v in ids_by_source(feats).items()}
    keys = [(f["properties"]["twinhub:source"], f["id"]) for f in feats]
    assert len(keys) == len(set(keys))  # no item twice (the ranking phases do not overlap)
    # "temperature": 2t by synonym and long name, sst by its long name (a word of the
    # cube:variables object); "healpix" a word of the grid object. 2t (named) comes first.
    for f in feats:
        props = f["properties"]
        assert props["param"] in ("2t", "sst") and "healpix" in props["twinhub:grid"]["id"], f
    named = [f["properties"]["param"] == "2t" for f in feats]
    assert named == sorted(named, reverse=True) and any(named) and not all(named)
    query = parse_free_text(q)
    static_want = {i["id"] for i in fed.static_items if query.matches(i)}
    assert static_want and got["remote"] == static_want
    assert got["local"] == {i["id"] for i in fed.local_items if query.matches(i)}
    assert "api" not in got  # its items are on the gaussian grid: none matches "healpix"
    # "tp OR temperature" names 2t and tp: those of every source come before sst (matched
    # by its long name only), across pages; the api's msl items match neither
    pages = search_all(fed, method, q="tp OR temperature", limit=7, sources=sources)
    params = [f["properties"]["param"] for p in pages for f in p["features"]]
    assert set(params) == {"2t", "tp", "sst"}
    first_sst = params.index("sst")
    assert set(params[first_sst:]) == {"sst"} and len(params[:first_sst]) > 7
    by_source = ids_by_source([f for p in pages for f in p["features"]])
    assert set(by_source["api"]) == expected_2t(fed)["api"]  # api: 2t and msl; q names 2t


def test_remote_apis_get_the_users_q_and_filter_not_the_lakes_cql2():
    """What a remote API is sent for a free-text search: the client's q (the free-text
    extension) and the client's own filter, never the lake's filter on its search text."""
    from twinhub.services.datalake.federation.params import FreeText, from_query
    from twinlab.contract import parse_free_text

    params = from_query("filter=param%3D%272t%27&q=ignored", 100)
    own = params.filter
    params.filter = {"op": "and", "args": [own, parse_free_text("wind").to_cql2()]}
    params.free_text = FreeText(parse_free_text("wind"), "wind", own, exact=True)
    body = params.remote_body(10, None)
    assert body["q"] == "wind" and body["filter"] == own
    query = params.remote_query(10, None)
    assert query["q"] == "wind" and "twinhub:search" not in query["filter"]
    # items the API returns are checked here: phase "exact" takes 10u/10v only
    item = {"id": "x", "properties": {"param": "10u", "title": "10 metre wind"}}
    assert params.free_text.accepts(item)
    assert not FreeText(parse_free_text("wind"), "wind", own, exact=False).accepts(item)
    assert not params.free_text.accepts({"id": "y", "properties": {"param": "tp"}})
