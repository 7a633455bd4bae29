"""The tiles service (/services/tiles/) on the real multi-user platform (seeded lake): its
health and metrics, who may view which item (the lake: every user; a user's private item in
their home bucket: the users the object store lets read it; anonymous callers: the public
collection only), and the HTTP caching of tiles (ETag, 304, Cache-Control, chunk reads).

The private item is written by its owner with their own S3 keys and registered by them in
their ``user-<name>`` collection (tests/helpers/tiles.py); the public collection is the one
the platform fixture names in ``--TwinhubTiles.public_collections``.
"""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest
import requests
from PIL import Image

from tests.helpers.platform import wait_for_seed
from tests.helpers.tiles import (
    PUBLIC_COLLECTION,
    lake_test_item,
    private_item,
    register_item,
    stac_item,
    tiles_get,
    upload_netcdf,
    user_storage,
)
from twinhub import objectstore
from twinhub.process.runtime import Runtime
from twinhub.services.datalake.seed.grids import START

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

ALICE, BOB = "tsvcalice", "tsvcbob"
SEEDED = f"climate-dt-healpix-h128-2t-{START:%Y%m%d}"
TILE = "map/tiles/WebMercatorQuad/0/0/0"


@pytest.fixture(scope="module")
def tiles(multiuser_platform):
    p = multiuser_platform
    wait_for_seed(p)
    for name in (ALICE, BOB):
        user_storage(p, name)  # keys of their own, as at a first spawn
    mine = private_item(p, ALICE, f"{ALICE}-h8")
    public = lake_test_item(p, "tsvc-public-h8", PUBLIC_COLLECTION)
    return p, mine, public


def png(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))


def test_another_users_collection_never_shadows_a_lake_item(tiles):
    """bob makes collection ``0`` (his: twinhub:owner) holding an item with a seeded item's
    id: everyone (bob too) still gets the platform's item under that id. First in the module:
    the service keeps lookups access_ttl, and nothing may have looked this id up before."""
    p, _, _ = tiles
    h = {"Authorization": f"token {p.token(BOB)}"}
    seeded = requests.get(
        p.url + f"services/stac/collections/climate-dt/items/{SEEDED}", headers=h, timeout=60
    ).json()
    fake = {k: v for k, v in seeded.items() if k not in ("links", "assets")}
    fake.update(collection="0", links=[], assets={"zarr": seeded["assets"]["zarr"]})
    fake["properties"] = {**fake["properties"], "title": "bob's copy"}
    register_item(p, fake, BOB)
    try:
        owner = requests.get(p.url + "services/stac/collections/0", headers=h, timeout=60).json()
        assert owner.get("twinhub:owner") == BOB
        for user in (ALICE, BOB):
            r = tiles_get(p, f"layers/{SEEDED}", user=user)
            assert r.status_code == 200, r.text
            assert r.json()["collection"] == "climate-dt", user
            assert "bob's copy" not in r.json()["title"]
            assert r.headers["cache-control"] == "private, no-store"
    finally:  # the session's other modules look the seeded id up in the lake: one item again
        stac = p.url + "services/stac/collections/0"
        requests.delete(f"{stac}/items/{SEEDED}", headers=h, timeout=60)
        requests.delete(stac, headers=h, timeout=60)


def test_health_needs_no_login(tiles):
    p, _, _ = tiles
    r = tiles_get(p, "health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.headers["x-content-type-options"] == "nosniff"


def test_metrics_need_read_metrics(tiles):
    p, _, _ = tiles
    tiles_get(p, f"collections/{SEEDED}/2t/{TILE}", user=ALICE)  # something to count
    assert tiles_get(p, "metrics").status_code == 401
    r = tiles_get(p, "metrics", user=ALICE)
    assert r.status_code == 403 and "read:metrics" in r.json()["description"]
    r = tiles_get(p, "metrics", user="admin")
    assert r.status_code == 200
    for name in (
        "twinhub_tiles_requests",
        "twinhub_tiles_tile_seconds",
        "twinhub_tiles_render_seconds",
        "twinhub_tiles_chunk_reads",
        "twinhub_tiles_chunk_hits",
        "twinhub_tiles_refused",
    ):
        assert f"# HELP {name}" in r.text, name
    assert 'twinhub_tiles_requests_total{kind="tile",status="2xx"}' in r.text


def _gauge(text: str, name: str) -> float:
    (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])


def test_start_up_warm_up_ended_with_the_lakes_client_ready(tiles):
    """The service imported what a first view needs and created the lake's S3 client
    before any user asked (the platform has been up for a while: it has ended)."""
    p, _, _ = tiles
    r = tiles_get(p, "metrics", user="admin")
    assert r.status_code == 200
    assert "# HELP twinhub_tiles_warm_up_seconds" in r.text
    assert _gauge(r.text, "twinhub_tiles_warm_up_seconds") > 0
    assert _gauge(r.text, "twinhub_tiles_warm_up_lake_client") == 1


def test_seeded_layers_are_listed_for_every_user(tiles):
    p, mine, public = tiles
    r = tiles_get(p, "collections", user=BOB)
    assert r.status_code == 200, r.text
    ids = {c["id"] for c in r.json()["collections"]}
    assert f"{SEEDED}/2t" in ids
    assert public.layer_id in ids
    assert mine.layer_id not in ids  # alice's own: not bob's to see
    r = tiles_get(p, "collections", user=ALICE)
    assert mine.layer_id in {c["id"] for c in r.json()["collections"]}
    # a seeded tile renders for any user, with the item's own times
    info = tiles_get(p, f"layers/{SEEDED}", user=BOB).json()
    assert info["times"] and info["times"][0].startswith(f"{START:%Y-%m-%d}")
    image = png(tiles_get(p, f"collections/{SEEDED}/2t/{TILE}", user=BOB))
    assert image.shape == (256, 256, 4)
    assert len(np.unique(image.reshape(-1, 4), axis=0)) > 10  # a field, not one colour
    # the next day's item reads the same Zarr store: its own times, its own tiles
    day2 = SEEDED.replace(f"{START:%Y%m%d}", f"{START + timedelta(days=1):%Y%m%d}")
    info2 = tiles_get(p, f"layers/{day2}", user=BOB).json()
    assert info2["times"][0].startswith(f"{START + timedelta(days=1):%Y-%m-%d}")
    style = {"vmin": "240", "vmax": "300"}
    one = tiles_get(p, f"collections/{SEEDED}/2t/{TILE}", user=BOB, **style)
    two = tiles_get(p, f"collections/{day2}/2t/{TILE}", user=BOB, **style)
    assert png(one).tolist() != png(two).tolist()


def test_a_private_item_is_its_owners_only(tiles):
    p, mine, _ = tiles
    path = f"collections/{mine.item_id}/{mine.variable}/{TILE}"
    image = png(tiles_get(p, path, user=ALICE))
    assert image[..., 3].max() == 255
    r = tiles_get(p, path, user=BOB)
    assert r.status_code == 403, r.text
    assert "tsvcbob" in r.text and "home-tsvcalice" in r.text
    r = tiles_get(p, f"layers/{mine.item_id}", user=BOB)
    assert r.status_code == 403
    r = tiles_get(p, f"edr/collections/{mine.item_id}/position", user=BOB,
                  coords="POINT(10 10)", **{"parameter-name": mine.variable})  # fmt: skip
    assert r.status_code == 403
    # anonymous: a login is asked for (the hub's challenge), nothing is said about the data
    r = tiles_get(p, path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'token realm="jupyterhub"'
    assert "home-tsvcalice" not in r.text


def test_the_lake_needs_a_login_and_the_public_collection_none(tiles):
    p, mine, public = tiles
    r = tiles_get(p, f"collections/{SEEDED}/2t/{TILE}")
    assert r.status_code == 401
    image = png(tiles_get(p, f"collections/{public.item_id}/{public.variable}/{TILE}"))
    assert image[..., 3].max() == 255
    # anonymous listings show the public collection only
    r = tiles_get(p, "collections")
    assert r.status_code == 200
    ids = {c["id"] for c in r.json()["collections"]}
    assert ids and all(i.startswith("tsvc-public") or "public" in i for i in ids), ids
    assert f"{SEEDED}/2t" not in ids
    # a public collection never opens a private bucket, whoever put the item there
    leak = stac_item(f"{ALICE}-leak", PUBLIC_COLLECTION, mine.href, mine.ds, mine.variable)
    register_item(p, leak, "admin")
    path = f"collections/{leak['id']}/{mine.variable}/{TILE}"
    r = tiles_get(p, path)
    assert r.status_code == 403 and "outside the lake bucket" in r.json()["description"]
    assert tiles_get(p, path, user=BOB).status_code == 403
    assert tiles_get(p, path, user=ALICE).status_code == 200
    # the page itself always needs a login
    assert tiles_get(p, "vizlab").status_code in (401, 302)


def test_tiles_are_cached_with_etags(tiles):
    p, mine, public = tiles
    path = f"collections/{mine.item_id}/{mine.variable}/map/tiles/WorldCRS84Quad/0/0/1"
    first = tiles_get(p, path, user=ALICE, datetime=mine.times[1])
    assert first.status_code == 200, first.text
    tag = first.headers["etag"]
    assert tag.startswith('"') and first.headers["cache-control"].startswith("private, max-age=")
    # a time step not drawn before: its chunk (one per time step here) is read once
    assert 1 <= int(first.headers["x-twinhub-chunk-reads"]) <= 4
    again = tiles_get(p, path, user=ALICE, datetime=mine.times[1])
    assert again.content == first.content and again.headers["etag"] == tag
    assert again.headers["x-twinhub-chunk-reads"] == "0"  # kept: nothing read
    r304 = tiles_get(
        p, path, user=ALICE, datetime=mine.times[1], extra_headers={"If-None-Match": tag}
    )
    assert r304.status_code == 304 and r304.content == b""
    # another time step is another tile (and cold: its chunk is read from the store)
    other = tiles_get(p, path, user=ALICE, datetime=mine.times[2])
    assert other.status_code == 200 and other.headers["etag"] != tag
    assert int(other.headers["x-twinhub-chunk-reads"]) >= 1
    # the public collection's tiles may be kept by shared caches
    r = tiles_get(p, f"collections/{public.item_id}/{public.variable}/{TILE}")
    assert r.headers["cache-control"].startswith("public, max-age=")
    assert r.headers["x-content-type-options"] == "nosniff"


def test_netcdf_and_grib_assets_give_the_zarr_tiles(tiles):
    """The same values as NetCDF (read by range) and GRIB (copied whole) draw the same
    tiles as from Zarr: the asset's format changes nothing but how it is read."""
    p, mine, _ = tiles
    rt = Runtime.load(p.state)
    creds = user_storage(p, ALICE)
    s3 = objectstore.client(rt, creds.access_key, creds.secret_key)
    nc_id = f"{ALICE}-h8-nc"
    href = upload_netcdf(s3, creds.home_bucket, f"tiles-tests/{nc_id}.nc", mine.ds)
    nc = stac_item(nc_id, f"user-{ALICE}", href, mine.ds, mine.variable, "application/x-netcdf")
    register_item(p, nc, ALICE)
    style = {"vmin": "250", "vmax": "290", "datetime": mine.times[2]}
    for tile in ("WebMercatorQuad/1/0/1", "WorldCRS84Quad/0/0/0"):
        want = tiles_get(p, f"collections/{mine.item_id}/2t/map/tiles/{tile}", ALICE, **style)
        got = tiles_get(p, f"collections/{nc_id}/2t/map/tiles/{tile}", ALICE, **style)
        assert png(got).tolist() == png(want).tolist(), tile
    assert tiles_get(p, f"collections/{nc_id}/2t/{TILE}", BOB).status_code == 403

    # GRIB: the seeded day's file of the lake, as the only asset of an item of alice's
    seeded = requests.get(
        p.url + f"services/stac/collections/climate-dt/items/{SEEDED}",
        headers={"Authorization": f"token {p.token(ALICE)}"},
        timeout=60,
    ).json()
    grib = {k: v for k, v in seeded.items() if k not in ("links", "assets")}
    grib.update(id=f"{ALICE}-grib", collection=f"user-{ALICE}", links=[])
    grib["assets"] = {"grib": seeded["assets"]["grib"]}
    register_item(p, grib, ALICE)
    times = tiles_get(p, f"layers/{SEEDED}", ALICE).json()["times"]
    assert tiles_get(p, f"layers/{grib['id']}", ALICE).json()["times"] == times
    style = {"vmin": "240", "vmax": "300", "datetime": times[-1]}
    want = tiles_get(p, f"collections/{SEEDED}/2t/map/tiles/WebMercatorQuad/2/1/2", ALICE, **style)
    got = tiles_get(
        p, f"collections/{grib['id']}/2t/map/tiles/WebMercatorQuad/2/1/2", ALICE, **style
    )
    assert png(got).tolist() == png(want).tolist()
