"""The tiles app's own routes and layers: health, metrics, hub auth and anonymous paths,
refusals counted, ``nosniff`` on every answer."""

from __future__ import annotations

import httpx
import pytest

from twinhub.services.asgi import BadRequest
from twinhub.services.tiles import app as tiles_app
from twinhub.services.tiles.app import create_app, refusal_reason, request_kind

from .conftest import fake_hub_auth, lake_item, make_ctx

pytestmark = pytest.mark.anyio
P = "/services/tiles/"


async def client_for(tmp_path, stac=None, **settings):
    ctx = make_ctx(tmp_path, stac, **settings)
    app = create_app(ctx=ctx, hub_auth=fake_hub_auth())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://twin.test")


async def test_health_needs_no_credentials(tmp_path):
    async with await client_for(tmp_path) as c:
        r = await c.get(P + "health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_metrics_need_the_scope(tmp_path):
    async with await client_for(tmp_path) as c:
        anonymous = await c.get(P + "metrics")
        alice = await c.get(P + "metrics", headers={"Authorization": "token alice-token"})
        root = await c.get(P + "metrics", headers={"Authorization": "token root-token"})
    assert anonymous.status_code == 401
    assert alice.status_code == 403
    assert "read:metrics" in alice.json()["description"]
    assert root.status_code == 200
    for name in (
        "twinhub_tiles_requests",
        "twinhub_tiles_tile_seconds",
        "twinhub_tiles_chunk_reads",
        "twinhub_tiles_refused",
    ):
        assert f"# HELP {name}" in root.text
    # the refusals before were counted, by reason
    assert 'twinhub_tiles_refused_total{reason="forbidden"}' in root.text
    assert 'twinhub_tiles_requests_total{kind="metadata",status="4xx"}' in root.text


async def test_data_routes_need_a_login_unless_some_collection_is_public(tmp_path, fake_stac):
    fake_stac.items += [lake_item("open-1", "open"), lake_item("closed-1", "climate-dt")]
    async with await client_for(tmp_path / "a", fake_stac) as c:
        r = await c.get(P + "collections")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'token realm="jupyterhub"'

    async with await client_for(tmp_path / "b", fake_stac, public_collections=["open"]) as c:
        listed = await c.get(P + "collections")
        page = await c.get(P + "vizlab")
        closed = await c.get(P + "layers/closed-1")
    assert listed.status_code == 200, listed.text
    ids = {col["id"] for col in listed.json()["collections"]}
    assert ids == {"open-1/2t"}
    assert page.status_code == 401  # the page is never anonymous
    # a non-public item, anonymously: the route's own refusal, with the hub's challenge
    assert closed.status_code == 401
    assert closed.headers["www-authenticate"] == 'token realm="jupyterhub"'


async def test_unknown_paths_are_json_and_nosniff(tmp_path):
    async with await client_for(tmp_path) as c:
        r = await c.get(P + "no-such-route", headers={"Authorization": "token alice-token"})
    assert r.status_code == 404
    assert r.json()["code"] == 404
    assert r.headers["x-content-type-options"] == "nosniff"


def test_request_kinds():
    assert request_kind(P, P + "wmts") == "capabilities"
    assert (
        request_kind(P, P + "wmts/1.0.0/i/2t/default/default/WebMercatorQuad/1/0/0.png") == "tile"
    )
    assert request_kind(P, P + "collections/i/2t/map/tiles/WebMercatorQuad/1/0/0") == "tile"
    assert request_kind(P, P + "collections/i/2t/map/tiles/WebMercatorQuad") == "metadata"
    assert request_kind(P, P + "edr/collections/i/position") == "edr_position"
    assert request_kind(P, P + "edr/collections/i/area") == "edr_area"
    assert request_kind(P, P + "view/i/2t.png") == "view"
    assert request_kind(P, P + "legend/i/2t.png") == "legend"
    assert request_kind(P, P + "vizlab") == "page"


def test_refusal_reasons():
    assert refusal_reason(BadRequest("x", 401)) == "auth"
    assert refusal_reason(BadRequest("x", 403)) == "forbidden"
    assert refusal_reason(BadRequest("x", 404)) == "not_found"
    assert refusal_reason(BadRequest("zoom 12 is beyond the limit: ...", 400)) == "limit"
    assert refusal_reason(BadRequest("bad cmap", 400)) == "bad_request"
    assert tiles_app.ANONYMOUS_PATHS and "vizlab" not in tiles_app.ANONYMOUS_PATHS
