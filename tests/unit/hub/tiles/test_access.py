"""Who may view an item: public collections, anonymous callers, the lake bucket, other
buckets decided by the caller's own keys (a fake S3 client here; the real object store in
tests/integration/test_tiles_service.py), hrefs the service never reads."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from botocore.exceptions import ClientError

from twinhub.services.asgi import BadRequest
from twinhub.services.tiles import access
from twinhub.services.tiles.access import Caller, caller_of, check_item, data_asset, split_s3

from .conftest import FakeS3, lake_item, make_ctx

pytestmark = pytest.mark.anyio
ALICE, BOB, ROOT, ANON = Caller("alice"), Caller("bob"), Caller("root", admin=True), Caller(None)


@pytest.fixture
def s3(monkeypatch):
    """Per-user fake clients: alice reads her home bucket, bob reads nothing of hers;
    carol has no keys."""
    clients = {"alice": FakeS3({"home-alice"}), "bob": FakeS3(set())}

    def user_client(ctx, name):
        if name not in clients:
            raise BadRequest(f"{name!r} has no S3 keys of their own", 403)
        return clients[name]

    monkeypatch.setattr(access, "_user_client", user_client)
    return clients


async def refusal(ctx, caller, item) -> BadRequest:
    with pytest.raises(BadRequest) as e:
        await check_item(ctx, caller, item)
    return e.value


def test_caller_of_request_state():
    def req(user):
        return SimpleNamespace(scope={"state": {"hub_user": user}})

    assert caller_of(req(None)).anonymous
    assert caller_of(SimpleNamespace(scope={})).anonymous
    c = caller_of(req({"name": "alice", "admin": False, "groups": ["lab"], "scopes": []}))
    assert c == Caller("alice", False, frozenset({"lab"}))
    # an admin's narrowed token (a browser's) carries no admin power
    assert not caller_of(req({"name": "root", "admin": True, "scopes": ["x"]})).admin
    assert caller_of(req({"name": "root", "admin": True, "scopes": ["admin:users"]})).admin


def test_data_asset_prefers_zarr_then_netcdf_then_grib():
    item = lake_item("i")
    assert data_asset(item)[0] == "zarr"
    del item["assets"]["zarr"]
    item["assets"]["nc"] = {"href": "s3://lake/x.nc", "type": "application/x-netcdf"}
    assert data_asset(item)[0] == "nc"
    del item["assets"]["nc"]
    assert data_asset(item)[2] == "grib"
    item["assets"] = {"thumb": {"href": "s3://lake/x.png", "type": "image/png"}}
    e = pytest.raises(BadRequest, data_asset, item).value
    assert e.status == 400 and "no Zarr, NetCDF or GRIB asset" in e.message and "thumb" in e.message


@pytest.mark.parametrize(
    "href,why",
    [
        ("https://elsewhere.test/x.zarr", "not on the platform's object store"),
        ("/etc/passwd.nc", "not on the platform's object store"),
        ("file:///data/x.zarr", "not on the platform's object store"),
        ("s3://lake", "names no object"),
        ("s3://lake/a/../home-bob/x.zarr", "'..' segment"),
        ("s3://lake/a//x.zarr", "empty"),
        # bucket names boto refuses before asking (a listing must not fail on them)
        ("s3://Bad_Bucket!/x.zarr", "invalid bucket"),
        ("s3://ab/x.zarr", "invalid bucket"),
        ("s3://" + "b" * 64 + "/x.zarr", "invalid bucket"),
    ],
)
def test_hrefs_the_service_never_reads(href, why):
    e = pytest.raises(BadRequest, split_s3, href).value
    assert e.status == 403 and why in e.message


def test_split_s3():
    assert split_s3("s3://home-alice/data/x.zarr/") == ("home-alice", "data/x.zarr")


async def test_anonymous_callers_see_only_public_collections(tmp_path, s3):
    ctx = make_ctx(tmp_path, public_collections=["open"])
    e = await refusal(ctx, ANON, lake_item("i", "climate-dt"))
    assert e.status == 401
    assert (b"www-authenticate", b'token realm="jupyterhub"') in e.headers
    assert "climate-dt" in e.message
    # public, on the lake bucket: anyone
    assert (await check_item(ctx, ANON, lake_item("p", "open")))[0] == "zarr"
    # public but in someone's bucket: a public collection never opens a private bucket
    # (whoever put the item there); logged-in users as everywhere else
    theirs = lake_item("q", "open", href="s3://home-alice/p.zarr")
    e = await refusal(ctx, ANON, theirs)
    assert e.status == 403 and "outside the lake bucket" in e.message
    assert (await refusal(ctx, BOB, theirs)).status == 403
    assert (await check_item(ctx, ALICE, theirs))[0] == "zarr"
    # but never data off the object store, public or not
    elsewhere = lake_item("e", "open", href="https://elsewhere.test/e.zarr")
    del elsewhere["assets"]["grib"]
    assert (await refusal(ctx, ANON, elsewhere)).status == 403


async def test_the_lake_is_for_every_logged_in_user(tmp_path, s3):
    ctx = make_ctx(tmp_path)
    for who in (ALICE, BOB, Caller("carol")):
        assert (await check_item(ctx, who, lake_item("i")))[1]["href"].startswith("s3://lake/")
    assert not s3["alice"].calls and not s3["bob"].calls  # no S3 call needed


async def test_other_buckets_ask_the_object_store_with_the_callers_keys(tmp_path, s3):
    ctx = make_ctx(tmp_path)
    private = lake_item("mine", "user-alice", href="s3://home-alice/viz/mine.zarr")
    assert (await check_item(ctx, ALICE, private))[0] == "zarr"
    assert s3["alice"].calls == [("home-alice", "viz/mine.zarr/zarr.json")]
    e = await refusal(ctx, BOB, private)
    assert e.status == 403 and "'bob' may not read s3://home-alice/viz/mine.zarr" in e.message
    e = await refusal(ctx, Caller("carol"), private)
    assert e.status == 403 and "no S3 keys" in e.message
    # admins with an admin-scoped token see every item
    assert (await check_item(ctx, ROOT, private))[0] == "zarr"


async def test_decisions_are_kept_for_access_ttl(tmp_path, s3, monkeypatch):
    ctx = make_ctx(tmp_path, access_ttl=60.0)
    private = lake_item("mine", "user-alice", href="s3://home-alice/mine.zarr")
    for _ in range(3):
        await check_item(ctx, ALICE, private)
        await refusal(ctx, BOB, private)
    assert len(s3["alice"].calls) == 1 and len(s3["bob"].calls) == 1
    # after the ttl the object store is asked again (bob was given the bucket meanwhile)
    s3["bob"].readable.add("home-alice")
    now = access.time.monotonic()
    monkeypatch.setattr(access.time, "monotonic", lambda: now + 61)
    assert (await check_item(ctx, BOB, private))[0] == "zarr"
    assert len(s3["bob"].calls) == 2


def test_can_read_probes_zarr_v3_then_v2():
    class V2Only(FakeS3):
        def head_object(self, Bucket, Key):  # noqa: N803
            self.calls.append((Bucket, Key))
            if Key.endswith(".zgroup"):
                return {}
            raise ClientError({"ResponseMetadata": {"HTTPStatusCode": 404}}, "HeadObject")

    c = V2Only(set())
    assert access.can_read(c, "b", access.probe_keys("x.zarr", "zarr")) == 200
    assert c.calls == [("b", "x.zarr/zarr.json"), ("b", "x.zarr/.zgroup")]  # found: no more
    assert access.can_read(FakeS3(set()), "b", access.probe_keys("x.nc", "netcdf")) == 403


def test_can_read_an_invalid_bucket_is_a_refusal_not_an_outage():
    from botocore.exceptions import ParamValidationError

    class Strict(FakeS3):
        def head_object(self, Bucket, Key):  # noqa: N803
            raise ParamValidationError(report=f"Invalid bucket name {Bucket!r}")

    assert access.can_read(Strict(set()), "Bad!", ["x"]) == 403


def test_on_lake():
    assert access.on_lake("s3://lake/a/x.zarr", "lake")
    for href in ("s3://home-bob/x.zarr", "s3://lake/../x", "https://lake/x", "s3://lake"):
        assert not access.on_lake(href, "lake"), href
