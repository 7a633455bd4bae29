"""The cache's upstream fetch sends a source's headers (credentials) only to the source's own
origin: not to its asset origins, and not after a redirect that changed origin.  Two real
local HTTP servers (tests/helpers/routes_server.py) record what they were sent."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers.routes_server import RoutesServer
from twinhub.services.cache.store import CacheError
from twinhub.services.cache.upstream import fetcher, make_client
from twinhub.services.datalake.sources import make_source

SECRET = "Bearer cache-s3cr3t"


@pytest.fixture(scope="module")
def hosts():
    own, other = RoutesServer(), RoutesServer()

    def redirect(to: str):
        return lambda h: (302, {"Location": to}, b"")

    for s in (own, other):
        for name in ("a", "b", "c", "z"):
            s.route(f"/{name}.bin", lambda h, n=name: (200, {}, n.encode() * 10))
    own.route("/to-asset", redirect(f"{other.origin}/b.bin"))
    own.route("/to-self", redirect("/c.bin"))
    own.route("/bounce", redirect(f"{other.origin}/back"))
    other.route("/back", redirect(f"{own.origin}/z.bin"))
    own.route("/to-garbage", redirect("http://["))
    yield own, other
    own.close()
    other.close()


def get(own, other, url: str) -> bytes:
    src = make_source({"name": "s", "url": own.origin + "/api/", "asset_origins": [other.origin],
                       "headers": {"Authorization": SECRET}})  # fmt: skip

    async def go():
        async with make_client(5) as client, fetcher(client, src, url)() as up:
            return b"".join([c async for c in up.chunks])

    return asyncio.run(go())


def auth(server, path: str) -> list[str | None]:
    return [h.get("authorization") for h in server.headers_of(path)]


def test_headers_go_to_the_own_origin_only(hosts):
    own, other = hosts
    assert get(own, other, own.origin + "/a.bin") == b"a" * 10
    assert get(own, other, other.origin + "/a.bin") == b"a" * 10
    assert auth(own, "/a.bin") == [SECRET] and auth(other, "/a.bin") == [None]


def test_a_redirect_to_another_origin_drops_the_headers_for_good(hosts):
    own, other = hosts
    assert get(own, other, own.origin + "/to-asset") == b"b" * 10
    assert auth(own, "/to-asset") == [SECRET] and auth(other, "/b.bin") == [None]
    assert get(own, other, own.origin + "/to-self") == b"c" * 10
    assert auth(own, "/c.bin") == [SECRET]  # same origin: still the source's own
    # own -> asset origin -> own: the last hop is on the own origin, but what redirected
    # there was not: no credentials
    assert get(own, other, own.origin + "/bounce") == b"z" * 10
    assert auth(other, "/back") == [None] and auth(own, "/z.bin") == [None]


def test_a_garbage_redirect_is_a_502_naming_it(hosts):
    own, other = hosts
    with pytest.raises(CacheError) as e:
        get(own, other, own.origin + "/to-garbage")
    assert e.value.status == 502 and "http://[" in str(e.value)
