"""The STAC API service (/services/stac/) on the real multi-user platform: hub auth, SSO,
bad input, ownership of collections, and what a user's kernel can reach around it."""

from __future__ import annotations

import json
import re
import textwrap

import pytest
import requests

from tests.helpers.kernel import run_code
from tests.helpers.stac import collection
from twinhub.process.runtime import Runtime
from twinhub.services import datalake
from twinhub.services.datalake.database import connection

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

USERS = ("stacy", "stan")


def item(cid: str, iid: str, **props) -> dict:
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": iid,
        "collection": cid,
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[0, 40], [10, 40], [10, 50], [0, 50], [0, 40]]],
        },
        "bbox": [0, 40, 10, 50],
        "properties": {"datetime": "2024-01-02T00:00:00Z", **props},
        "assets": {"data": {"href": f"s3://home-x/{iid}.zarr", "roles": ["data"]}},
        "links": [],
    }


@pytest.fixture(scope="module")
def stac(multiuser_platform):
    p = multiuser_platform
    passwords = {name: p.add_user(name) for name in USERS}
    url = p.url + "services/stac/"

    def call(method: str, path: str, user: str | None = None, token: str | None = None, **kw):
        headers = kw.pop("headers", {})
        tok = token or (p.token(user) if user else None)
        if tok:
            headers["Authorization"] = f"token {tok}"
        return requests.request(method, url + path, headers=headers, timeout=30, **kw)

    return p, url, call, passwords


def test_requests_need_a_hub_token_with_the_service_scope(stac):
    p, url, call, _ = stac
    r = call("GET", "collections")
    assert r.status_code == 401 and "Authorization: token" in r.json()["description"]
    r = call("GET", "collections", token="not-a-token")
    assert r.status_code == 401
    # A token of the user without the service's access scope
    r = p.api("POST", "/users/stacy/tokens", user="stacy", json={"scopes": ["users:activity!user"]})
    assert r.status_code == 201, r.text
    narrow = r.json()["token"]
    r = call("GET", "collections", token=narrow)
    assert r.status_code == 403
    assert "access:services!service=stac" in r.json()["description"]
    r = call("GET", "collections", user="stacy")
    assert r.status_code == 200
    # The health check alone answers without credentials (and says nothing else).
    assert call("GET", "_mgmt/ping").status_code == 200


def test_links_point_through_the_proxy_and_pystac_client_works(stac):
    from pystac_client import Client

    p, url, call, _ = stac
    root = call("GET", "", user="stacy").json()
    hrefs = [link["href"] for link in root["links"]]
    assert hrefs and all(h.startswith(url) for h in hrefs), hrefs
    client = Client.open(url, headers={"Authorization": f"token {p.token('stacy')}"})
    assert client.id and isinstance(list(client.get_collections()), list)


def test_a_browser_session_reaches_the_service_without_a_second_login(stac):
    p, url, call, passwords = stac
    s = p.login_session("stan", passwords["stan"])
    r = s.get(url + "collections", headers={"Accept": "text/html"}, timeout=30)
    # Redirected through the hub's OAuth (no consent page) and back, then served.
    assert r.status_code == 200, (r.status_code, r.url, r.text[:300])
    assert r.url.startswith(url + "collections")
    assert [h.status_code for h in r.history][:1] == [302]
    assert "collections" in r.json()
    # The session may read, but a write needs a token header.
    r = s.post(url + "collections", json=collection("stan-from-cookie"), timeout=30)
    assert r.status_code == 403 and "Authorization" in r.json()["description"]
    assert call("GET", "collections/stan-from-cookie", user="stan").status_code == 404


@pytest.mark.parametrize(
    "query, words",
    [
        ("bbox=1,2,3", "4 or 6"),
        ("bbox=200,0,210,10", "outside [-180, 180]"),
        ("bbox=0,50,10,40", "north of"),
        ("bbox=a,b,c,d", "numbers"),
        ("datetime=yesterday", "datetime"),
        ("limit=100000", "largest page"),
        ("limit=0", "at least 1"),
        ("limit=ten", "whole number"),
    ],
)
def test_bad_search_input_gets_400_with_a_message(stac, query, words):
    _, _, call, _ = stac
    r = call("GET", "search?" + query, user="stacy")
    assert r.status_code == 400, r.text
    text = json.dumps(r.json())
    assert words.lower() in text.lower(), text


def test_bad_post_search_and_paths_get_4xx(stac):
    _, url, call, _ = stac
    r = call("POST", "search", user="stacy", json={"limit": 50000})
    assert r.status_code == 400 and "largest page" in r.text
    r = call("POST", "search", user="stacy", json={"bbox": [0, 0, 400, 10]})
    assert r.status_code == 400
    r = call(
        "POST",
        "search",
        user="stacy",
        data="{not json",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "not valid JSON" in r.text
    # '..' sent raw (requests would normalise it away; so does the proxy): to the service
    import http.client

    rt = Runtime.load(stac[0].state)
    conn = http.client.HTTPConnection("127.0.0.1", datalake.StacPart().port(rt), timeout=30)
    tok = stac[0].token("stacy")
    for path in ("collections/../search", "collections/%2e%2e/search"):
        conn.request(
            "GET", datalake.SERVICE_PREFIX + path, headers={"Authorization": f"token {tok}"}
        )
        resp = conn.getresponse()
        assert resp.status == 400 and b"'..'" in resp.read(), path


def _count(call, cid: str, user: str) -> int:
    r = call("GET", f"collections/{cid}/items?limit=100", user=user)
    assert r.status_code == 200, r.text
    return len(r.json()["features"])


def test_users_write_only_their_own_collections(stac):
    p, _, call, _ = stac
    r = call("POST", "collections", user="stacy", json=collection("stacy-obs"))
    assert r.status_code in (200, 201), r.text
    r = call("POST", "collections/stacy-obs/items", user="stacy", json=item("stacy-obs", "a1"))
    assert r.status_code in (200, 201), r.text
    assert _count(call, "stacy-obs", "stan") == 1  # the catalogue is readable by all users

    # stan: no items into stacy's collection, no replacing or deleting it or its items
    r = call("POST", "collections/stacy-obs/items", user="stan", json=item("stacy-obs", "evil"))
    assert r.status_code == 403 and "belongs to 'stacy'" in r.json()["description"]
    r = call("PUT", "collections/stacy-obs/items/a1", user="stan", json=item("stacy-obs", "a1"))
    assert r.status_code == 403
    assert call("DELETE", "collections/stacy-obs/items/a1", user="stan").status_code == 403
    assert call("DELETE", "collections/stacy-obs", user="stan").status_code == 403
    r = call("PUT", "collections/stacy-obs", user="stan", json=collection("stacy-obs"))
    assert r.status_code == 403
    assert _count(call, "stacy-obs", "stacy") == 1

    # A forged owner is overwritten: stan's collection is stan's.
    r = call(
        "POST",
        "collections",
        user="stan",
        json=collection("stan-obs", **{"twinhub:owner": "stacy"}),
    )
    assert r.status_code in (200, 201), r.text
    got = call("GET", "collections/stan-obs", user="stan").json()
    assert got["twinhub:owner"] == "stan"
    # ... and the owner survives a PUT by its owner that tries to hand it over
    r = call(
        "PUT",
        "collections/stan-obs",
        user="stan",
        json=collection("stan-obs", **{"twinhub:owner": "stacy"}),
    )
    assert r.status_code == 200, r.text
    assert call("GET", "collections/stan-obs", user="stan").json()["twinhub:owner"] == "stan"
    r = call("POST", "collections/stan-obs/items", user="stacy", json=item("stan-obs", "x"))
    assert r.status_code == 403

    # Unknown collection: 404 naming it
    r = call("POST", "collections/nope/items", user="stan", json=item("nope", "x"))
    assert r.status_code == 404 and "'nope'" in r.json()["description"]

    # The owner deletes an item, then the collection
    assert call("DELETE", "collections/stacy-obs/items/a1", user="stacy").status_code in (200, 204)
    assert call("DELETE", "collections/stacy-obs", user="stacy").status_code in (200, 204)


def test_user_collection_ids_are_reserved_for_their_user(stac):
    """``user-<name>`` (where processing jobs publish <name>'s outputs) is <name>'s to
    create, or an admin's; nobody can take it first."""
    p, _, call, _ = stac
    r = call("POST", "collections", user="stan", json=collection("user-stacy"))
    assert r.status_code == 403 and "reserved" in r.json()["description"], r.text
    assert call("GET", "collections/user-stacy", user="stan").status_code == 404
    r = call("POST", "collections", user="stacy", json=collection("user-stacy"))
    assert r.status_code in (200, 201), r.text
    got = call("GET", "collections/user-stacy", user="stacy").json()
    assert got["twinhub:owner"] == "stacy"
    r = call("POST", "collections", token=p.token("admin"), json=collection("user-stan"))
    assert r.status_code in (200, 201), r.text
    for cid in ("user-stacy", "user-stan"):
        assert call("DELETE", f"collections/{cid}", token=p.token("admin")).status_code in (
            200,
            204,
        )


def test_platform_collections_are_admin_only(stac):
    p, _, call, _ = stac
    admin = "admin"
    r = call("POST", "collections", token=p.token(admin), json=collection("lake-extra"))
    assert r.status_code in (200, 201), r.text
    # created by an admin without an owner field: it stays the admin's own collection
    owner = call("GET", "collections/lake-extra", user="stan").json().get("twinhub:owner")
    assert owner == admin
    r = call(
        "POST",
        "collections",
        token=p.token(admin),
        json=collection("lake-shared", **{"twinhub:owner": ""}),
    )
    assert r.status_code in (200, 201), r.text
    r = call("POST", "collections/lake-shared/items", user="stan", json=item("lake-shared", "i"))
    assert r.status_code == 403 and "platform's" in r.json()["description"]
    r = call(
        "POST", "collections/lake-shared/items", token=p.token(admin), json=item("lake-shared", "i")
    )
    assert r.status_code in (200, 201), r.text


def test_malformed_items_are_refused_and_nothing_is_stored(stac):
    _, _, call, _ = stac
    assert call("POST", "collections", user="stan", json=collection("stan-bad")).status_code in (
        200,
        201,
    )
    bad = [
        {"type": "Feature", "id": 3},  # id not a string, no geometry, no properties
        {**item("stan-bad", "nogeom"), "geometry": {"type": "Polygon", "coordinates": "x"}},
        {**item("stan-bad", "nodate"), "properties": {}},
        {**item("stan-bad", "wrongcoll"), "collection": "stacy-obs"},
    ]
    for body in bad:
        r = call("POST", "collections/stan-bad/items", user="stan", json=body)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        assert r.json(), r.text
    r = call(
        "POST",
        "collections/stan-bad/items",
        user="stan",
        data=b"\x00garbage",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "not valid JSON" in r.text
    assert _count(call, "stan-bad", "stan") == 0


def test_users_kernels_cannot_reach_the_database_or_the_api_without_a_token(stac):
    p, url, call, _ = stac
    rt = Runtime.load(p.state)
    conn = connection(rt)
    server = p.spawn("stacy")
    code = textwrap.dedent(
        f"""
        import os, socket, urllib.request, urllib.error, json
        out = {{}}
        sock = {conn.host!r} + "/.s.PGSQL.{conn.port}"
        try:
            s = socket.socket(socket.AF_UNIX); s.connect(sock); out["socket"] = "CONNECTED"
        except OSError as e:
            out["socket"] = type(e).__name__
        try:
            os.listdir({conn.host!r}); out["listdir"] = "LISTED"
        except OSError as e:
            out["listdir"] = type(e).__name__
        try:
            open({conn.passfile!r}).read(); out["passfile"] = "READ"
        except OSError as e:
            out["passfile"] = type(e).__name__
        # The service's own port, past the proxy: still hub auth
        def get(u, headers={{}}):
            try:
                with urllib.request.urlopen(urllib.request.Request(u, headers=headers), timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code
        out["direct"] = get({datalake.StacPart().api_url(rt) + "collections"!r})
        out["env_url"] = os.environ.get("TWINHUB_STAC_URL", "")
        out["with_server_token"] = get(os.environ["TWINHUB_STAC_URL"] + "collections",
            {{"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}})
        print("RESULT " + json.dumps(out))
        """
    )
    text = run_code(server, p.token("stacy"), code, timeout=60)
    out = json.loads(re.findall(r"RESULT (.*)", text)[-1])
    assert out["socket"] in ("PermissionError", "FileNotFoundError"), out
    assert out["listdir"] == "PermissionError", out
    assert out["passfile"] in ("PermissionError", "FileNotFoundError"), out
    assert out["direct"] == 401, out
    assert out["env_url"] == url, out
    assert out["with_server_token"] == 200, out


def test_items_get_their_search_text_whatever_writes_them(stac):
    """The lake's free-text search text (twinhub:search) is written by the database on every
    insert and update (a client's value is replaced), filled in for items that lack it when
    the platform starts (idempotent), and is what q finds."""
    import psycopg

    from twinhub.services.datalake.database import DBNAME, local_cluster
    from twinhub.services.datalake.search_text import install_sql

    p, _, call, _ = stac
    r = call("POST", "collections", user="stacy", json=collection("stacy-text"))
    assert r.status_code in (200, 201), r.text
    variables = {"siconc": {"type": "data", "description": "Sea-ice area fraction", "unit": "%"}}
    body = item("stacy-text", "t1", title="Sea ice concentration", **{"cube:variables": variables})
    body["properties"]["twinhub:search"] = "FORGED"
    r = call("POST", "collections/stacy-text/items", user="stacy", json=body)
    assert r.status_code in (200, 201), r.text

    def found(q: str) -> list[str]:
        params = {"collections": "stacy-text", "q": q}
        r = call("GET", "search", user="stan", params=params)
        assert r.status_code == 200, r.text
        return [f["id"] for f in r.json()["features"]]

    text = call("GET", "collections/stacy-text/items/t1", user="stan").json()["properties"]
    assert (
        "FORGED" not in text["twinhub:search"] and "  ICE  CONCENTRATION" in text["twinhub:search"]
    )
    assert found("ice fraction") == ["t1"]  # title and a variable's description: both words
    assert found("area") == ["t1"] and found("rea") == []  # at a word start only
    assert found("ice -fraction") == [] and found("snow") == []
    # an update rewrites it
    body["properties"]["title"] = "Snow depth"
    r = call("PUT", "collections/stacy-text/items/t1", user="stacy", json=body)
    assert r.status_code == 200, r.text
    assert found("snow") == ["t1"] and found("concentration") == []

    # an item written without it (a database from before, triggers off) gets it at start-up
    rt = Runtime.load(p.state)
    pg = local_cluster(rt)
    pg._psql(
        "SET session_replication_role = replica;\n"
        "UPDATE pgstac.items SET content = content #- '{properties,twinhub:search}' "
        "WHERE collection = 'stacy-text';\n",
        DBNAME,
    )
    assert found("snow") == []
    pg._psql(install_sql(), DBNAME)  # what initialize runs at every start
    pg._psql(install_sql(), DBNAME)  # twice: nothing changes
    assert found("snow") == ["t1"]
    with psycopg.connect(connection(rt).libpq_dsn()) as db:
        stale = db.execute(
            "SELECT count(*) FROM pgstac.items WHERE content->'properties'->>'twinhub:search' "
            "IS DISTINCT FROM pgstac.twinhub_search_text(id, collection, content)"
        ).fetchone()[0]
    assert stale == 0  # every item of the lake (the seed included) carries its text
    assert call("DELETE", "collections/stacy-text", user="stacy").status_code in (200, 204)
