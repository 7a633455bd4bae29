"""The data lake page's REST API (twinlab.serverext.lake) in a real hub-spawned server of
the multi-user platform with the sample data: STAC browsing, quick-looks, the code line run
in a real kernel, the user's buckets with the user's own S3 keys, bad input, and the page
itself behind jupyter-server-proxy (the Launcher's "Data lake" tile)."""

from __future__ import annotations

import io
import json
import re
import time
import uuid

import numpy as np
import pytest
import requests

from tests.helpers.kernel import run_code
from tests.helpers.platform import wait_for_seed
from tests.helpers.remote_stac import FOREIGN_HOST
from twinlab.browse import STATIC

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]

USER = "lakebrowse"
OTHER = "lakeother"


@pytest.fixture(scope="module")
def env(multiuser_platform):
    from twinhub.services.datalake.seed import build

    p = multiuser_platform
    state = wait_for_seed(p)
    seed = build(state["size"], progress=lambda _m: None)  # the cached build the platform loaded
    passwords = {}
    for name in (USER, OTHER):
        if p.api("GET", f"/users/{name}", user="admin").status_code == 404:
            passwords[name] = p.add_user(name)
    url = p.spawn(USER)
    return p, seed, list(seed.items()), url, passwords


def _get(env, path: str, auth: str | None = None, **params) -> requests.Response:
    """GET with ``auth`` (default the user's token; "" for none) and query ``params``."""
    p, _, _, url, _ = env
    tok = auth if auth is not None else p.token(USER)
    headers = {"Authorization": f"token {tok}"} if tok else {}
    return requests.get(
        url + path, params=params, headers=headers, timeout=120, allow_redirects=False
    )


def _ids(doc: dict) -> set[str]:
    return {f["id"] for f in doc["features"]}


# ---- lake ------------------------------------------------------------------------------
def test_collections_come_from_the_stac_service(env):
    r = _get(env, "twinlab/api/lake/collections")
    assert r.status_code == 200, r.text
    cols = {c["id"]: c for c in r.json()["collections"]}
    assert "climate-dt" in cols and cols["climate-dt"]["extent"]["temporal"]
    assert cols["climate-dt"]["source"] == "local"  # the lake's own (federation: its source)


def test_search_by_text_time_and_box_returns_exactly_the_matches(env):
    _, _, items, _, _ = env
    first = min(i["properties"]["start_datetime"] for i in items)[:10]
    expected = {
        i["id"]
        for i in items
        if i["properties"]["param"] == "msl" and i["properties"]["start_datetime"][:10] == first
    }
    assert expected
    r = _get(
        env,
        "twinlab/api/lake/search",
        q="msl",
        collections="climate-dt",
        datetime=f"{first}T00:00:00Z/{first}T23:59:59Z",
        bbox="-10,35,30,60",
        limit=100,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert _ids(doc) == expected
    # twinhub:source passes through when the STAC service federates (absent otherwise)
    for f in doc["features"]:
        assert f["properties"].get("twinhub:source", "local") == "local"
    # "-msl" excludes: nothing of that day's msl items remains
    r = _get(env, "twinlab/api/lake/search", q="-msl", datetime=f"{first}/{first}", limit=100)
    assert r.status_code == 200 and not _ids(r.json()) & expected


def test_search_understands_scientists_words(env):
    """The page's search is the STAC API's free text: "temperature" finds 2t (first) and sst,
    words must all match, OR joins."""
    _, _, items, _, _ = env
    r = _get(env, "twinlab/api/lake/search", q="temperature", limit=100)
    assert r.status_code == 200, r.text
    params = [f["properties"]["param"] for f in r.json()["features"]]
    n2t = sum(1 for i in items if i["properties"]["param"] == "2t")
    assert params[: min(n2t, 100)] == ["2t"] * min(n2t, 100)
    assert set(params) <= {"2t", "sst"}
    r = _get(env, "twinlab/api/lake/search", q="2t healpix", limit=100)
    assert r.status_code == 200, r.text
    for f in r.json()["features"]:
        assert f["properties"]["param"] == "2t"
        assert f["properties"]["twinhub:grid"]["grid_type"] == "healpix"
    r = _get(env, "twinlab/api/lake/search", q="2t OR tp", limit=100)
    assert {f["properties"]["param"] for f in r.json()["features"]} == {"2t", "tp"}


def test_search_passes_the_federation_report_through(env):
    """Whatever the STAC service says about its sources (``twinhub:sources`` and
    ``twinhub:warnings`` of a federated search) reaches the page unchanged."""
    p, _, _, _, _ = env
    body = {"collections": ["climate-dt"], "limit": 5}
    raw = requests.post(
        p.url + "services/stac/search",
        json=body,
        headers={"Authorization": f"token {p.token(USER)}"},
        timeout=60,
    )
    assert raw.status_code == 200, raw.text
    r = _get(env, "twinlab/api/lake/search", collections="climate-dt", limit=5)
    assert r.status_code == 200, r.text
    for key in ("twinhub:sources", "twinhub:warnings"):
        assert r.json().get(key) == raw.json().get(key)
    assert [f["id"] for f in r.json()["features"]] == [f["id"] for f in raw.json()["features"]]


def test_search_pages_with_the_token_through_every_item(env):
    _, _, items, _, _ = env
    seen: list[str] = []
    token = None
    for _ in range(50):
        params = {"collections": "climate-dt", "limit": 40}
        if token:
            params["token"] = token
        r = _get(env, "twinlab/api/lake/search", **params)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert len(doc["features"]) <= 40
        seen += [f["id"] for f in doc["features"]]
        token = doc["next_token"]
        if not token:
            break
    assert sorted(seen) == sorted(i["id"] for i in items)


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"limit": "1001"}, 400, "limit 1001 outside 1..1000"),
        ({"limit": "ten"}, 400, "not an integer"),
        ({"bbox": "0,0,10"}, 400, "bbox"),
        ({"bbox": "0,50,10,40"}, 400, "south"),
        ({"datetime": "yesterday"}, 400, "datetime"),
        ({"q": '"unclosed'}, 400, "unclosed quote"),
        ({"collections": "no-such-collection"}, 404, "no-such-collection"),
    ],
)
def test_bad_search_input_is_a_4xx_naming_the_problem(env, params, status, words):
    r = _get(env, "twinlab/api/lake/search", **params)
    assert r.status_code == status, r.text
    assert words in r.json()["message"]


def test_item_endpoint_serves_the_item_and_404s_unknown_ones(env):
    _, _, items, _, _ = env
    item = items[3]
    r = _get(env, f"twinlab/api/lake/items/climate-dt/{item['id']}")
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["id"] == item["id"] and got["properties"]["param"] == item["properties"]["param"]
    assert _get(env, "twinlab/api/lake/items/climate-dt/no-such-item").status_code == 404
    assert _get(env, f"twinlab/api/lake/items/nope/{item['id']}").status_code == 404
    # ".." never reaches the STAC service: the proxies normalise it away (a redirect) or
    # the handler refuses it; a control character reaches the handler and is refused
    assert _get(env, "twinlab/api/lake/items/climate-dt/%2E%2E").status_code in (302, 400, 404)
    for ctl in ("%01", "%C2%85"):  # C0 and C1 controls
        bad = _get(env, f"twinlab/api/lake/items/climate-dt/a{ctl}b")
        assert bad.status_code == 400 and "not a valid id" in bad.json()["message"]


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_quicklook_is_the_items_field_and_is_cached(env):
    """The PNG served (data read from S3 in the user's server) has the pixels of the same
    quick-look drawn here from the seed's own files; the second request is served from the
    cache."""
    from twinlab.browse.quicklook import quicklook

    _, seed, items, _, _ = env
    item = next(i for i in items if i["properties"]["twinhub:grid"]["id"] == "octahedral-o96")
    params = {"collection": "climate-dt", "item": item["id"], "asset": "zarr", "time": "1"}
    t0 = time.monotonic()
    r = _get(env, "twinlab/api/lake/quicklook", **params)
    first = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/png"
    served = _pixels(r.content)
    assert served.shape == (390, 720, 3) and served.std() > 10  # a picture, not a blank

    local = json.loads(json.dumps(item))
    for a in local["assets"].values():
        a["href"] = str(seed.root / "objects" / a["href"].removeprefix("s3://lake/"))
    # drawn here from local files: the page's own check (s3:// on the user's buckets) off
    drawn = quicklook(local, "zarr", None, "1", check=lambda _href: None)
    assert np.array_equal(served, _pixels(drawn))

    other = _get(env, "twinlab/api/lake/quicklook", **{**params, "time": "3"})
    assert other.status_code == 200 and not np.array_equal(_pixels(other.content), served)

    t0 = time.monotonic()
    again = _get(env, "twinlab/api/lake/quicklook", **params)
    cached = time.monotonic() - t0
    assert again.content == r.content
    assert cached < first, (cached, first)


@pytest.mark.parametrize(
    ("extra", "status", "words"),
    [
        ({"asset": "nope"}, 404, "no asset 'nope'"),
        ({"variable": "nope"}, 400, "nope"),
        ({"time": "99"}, 400, "time index 99 outside"),
        ({"time": "not-a-time"}, 400, "neither an index nor a timestamp"),
        ({"item": "no-such-item"}, 404, "no item"),
        ({"item": ""}, 400, "item is required"),
    ],
)
def test_quicklook_bad_input(env, extra, status, words):
    _, _, items, _, _ = env
    params = {"collection": "climate-dt", "item": items[0]["id"], **extra}
    r = _get(env, "twinlab/api/lake/quicklook", **params)
    assert r.status_code == status, r.text
    assert words in r.json()["message"]


def _user_item(cid: str, iid: str, href: str, media_type: str, props: dict) -> dict:
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": iid,
        "collection": cid,
        "geometry": {"type": "Polygon", "coordinates": [[[0, 40], [10, 40], [10, 50], [0, 40]]]},
        "bbox": [0, 40, 10, 50],
        "properties": props,
        "assets": {"data": {"href": href, "type": media_type, "roles": ["data"]}},
        "links": [],
    }


def test_quicklook_reads_only_the_users_buckets_and_the_cache(env):
    """Anyone may add items to the STAC API and the page draws an item on click: items
    pointing at local files, other users' buckets or other hosts are refused (403 naming
    why) before anything is read; the same data on the lake bucket is drawn."""
    p, seed, items, _, _ = env
    own = {b["kind"]: b["name"] for b in _get(env, "twinlab/api/storage/buckets").json()["buckets"]}
    other_home = own["home"].replace(USER, OTHER)  # the attacker's (or anyone else's) bucket
    stac = p.url + "services/stac/"
    headers = {"Authorization": f"token {p.token(OTHER)}"}  # the attacker's items
    cid = f"lakeother-{uuid.uuid4().hex[:8]}"
    lake_item = next(i for i in items if i["properties"]["twinhub:grid"]["id"] == "octahedral-o96")
    lake_href = lake_item["assets"]["zarr"]["href"]
    grid = lake_item["properties"]["twinhub:grid"]
    local = str(seed.root / "objects" / lake_href.removeprefix("s3://lake/"))
    zarr = "application/vnd+zarr"
    cases = {
        # an absolute path: pystac makes it a URL on the STAC service's host
        "path": (local, "a quick-look reads"),
        "file-url": ("file://" + local, "local file"),
        "other-bucket": (f"s3://{other_home}/x.zarr", "not one of this user's buckets"),
        "other-host": ("http://127.0.0.1:9/x.zarr", "host '127.0.0.1:9'"),
        "relative": ("../../x.zarr", "a quick-look reads"),  # against the item's own URL
        "lake": (lake_href, None),
    }
    collection = {
        "type": "Collection",
        "id": cid,
        "stac_version": "1.1.0",
        "description": "hrefs a quick-look must not read",
        "license": "CC-BY-4.0",
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [["2020-01-01T00:00:00Z", None]]},
        },
        "links": [],
    }
    r = requests.post(stac + "collections", json=collection, headers=headers, timeout=30)
    assert r.status_code in (200, 201), r.text
    try:
        for iid, (href, _) in cases.items():
            props = {
                k: v for k, v in lake_item["properties"].items() if not k.startswith("twinhub:")
            }
            body = _user_item(cid, iid, href, zarr, {**props, "twinhub:grid": grid})
            r = requests.post(
                stac + f"collections/{cid}/items", json=body, headers=headers, timeout=30
            )
            assert r.status_code in (200, 201), r.text
        for iid, (_, words) in cases.items():
            r = _get(env, "twinlab/api/lake/quicklook", collection=cid, item=iid, time="0")
            if words is None:
                assert r.status_code == 200 and r.headers["Content-Type"] == "image/png", r.text
            else:
                assert r.status_code == 403, (iid, r.status_code, r.text)
                assert words in r.json()["message"], (iid, r.text)
    finally:
        requests.delete(stac + f"collections/{cid}", headers=headers, timeout=30)


def test_code_line_opens_the_item_in_a_kernel(env):
    p, _, items, url, _ = env
    item = items[5]
    r = _get(env, "twinlab/api/lake/code", collection="climate-dt", item=item["id"])
    assert r.status_code == 200, r.text
    line = r.json()["code"]
    assert "\n" not in line and item["id"] in line
    out = run_code(
        url,
        p.token(USER),
        line + "\nprint('OPENED', ds.attrs['stac_item'], sorted(ds.data_vars))",
        timeout=180,
    )
    assert f"OPENED {item['id']} ['{item['properties']['param']}']" in out, out
    missing = _get(env, "twinlab/api/lake/code", collection="climate-dt", item="no-such-item")
    assert missing.status_code == 404


# ---- storage ---------------------------------------------------------------------------
def test_buckets_are_the_users_own(env):
    r = _get(env, "twinlab/api/storage/buckets")
    assert r.status_code == 200, r.text
    kinds = {b["kind"]: b["name"] for b in r.json()["buckets"]}
    assert kinds["home"].startswith("home-") and USER in kinds["home"]
    assert kinds["lake"] == "lake"


def test_list_the_lake_bucket(env):
    r = _get(env, "twinlab/api/storage/list", bucket="lake", prefix="climate-dt/", limit=1000)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert "climate-dt/healpix-h128.zarr/" in doc["folders"]
    small = _get(env, "twinlab/api/storage/list", bucket="lake", prefix="climate-dt/", limit=1)
    assert small.status_code == 200 and small.json()["next_token"]


def test_upload_stat_presign_round_trip_in_the_home_bucket(env):
    p, _, _, url, _ = env
    home = next(
        b["name"]
        for b in _get(env, "twinlab/api/storage/buckets").json()["buckets"]
        if b["kind"] == "home"
    )
    key = f"browse-test/{uuid.uuid4().hex}.bin"
    body = np.random.default_rng(1).bytes(300_000)
    r = requests.put(
        url + "twinlab/api/storage/upload",
        params={"key": key},
        data=body,
        headers={"Authorization": f"token {p.token(USER)}"},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    assert r.json() == {"bucket": home, "key": key, "size": len(body)}
    st = _get(env, "twinlab/api/storage/stat", bucket=home, key=key)
    assert st.status_code == 200 and st.json()["size"] == len(body)
    listed = _get(env, "twinlab/api/storage/list", bucket=home, prefix="browse-test/").json()
    assert key in [o["key"] for o in listed["objects"]]
    signed = _get(env, "twinlab/api/storage/presign", bucket=home, key=key)
    assert signed.status_code == 200 and 0 < signed.json()["expires_in"] <= 900
    got = requests.get(signed.json()["url"], timeout=60)  # no hub credentials: the signature
    assert got.status_code == 200 and got.content == body
    # a download in the browser, not a page: the object store answers "attachment"
    assert got.headers["Content-Disposition"].startswith("attachment; filename*=UTF-8''")
    assert _get(env, "twinlab/api/storage/stat", bucket=home, key=key + "x").status_code == 404


def test_upload_over_the_size_cap_is_refused(env):
    p, _, _, url, _ = env
    from twinlab.browse.storage import UPLOAD_MAX_BYTES

    headers = {"Authorization": f"token {p.token(USER)}"}
    r = requests.put(
        url + "twinlab/api/storage/upload",
        params={"key": "too-big.bin"},
        data=b"\0" * (UPLOAD_MAX_BYTES + 1),
        headers=headers,
        timeout=120,
    )
    assert r.status_code == 413, r.text
    assert "limit" in r.json()["message"]

    def chunks():  # no Content-Length (chunked): the server counts, and stops at the cap
        block = b"\0" * (1 << 20)
        for _ in range(UPLOAD_MAX_BYTES >> 20):
            yield block
        yield b"\0" * 1000

    r = requests.put(
        url + "twinlab/api/storage/upload",
        params={"key": "too-big-chunked.bin"},
        data=chunks(),
        headers=headers,
        timeout=120,
    )
    assert r.status_code == 413, r.text
    assert "limit" in r.json()["message"]
    home = next(
        b["name"]
        for b in _get(env, "twinlab/api/storage/buckets").json()["buckets"]
        if b["kind"] == "home"
    )
    for key in ("too-big.bin", "too-big-chunked.bin"):  # nothing was stored
        assert _get(env, "twinlab/api/storage/stat", bucket=home, key=key).status_code == 404


@pytest.mark.parametrize(
    ("path", "params", "status", "words"),
    [
        ("list", {"bucket": "lake", "limit": "1001"}, 400, "limit 1001 outside 1..1000"),
        ("list", {"bucket": "lake", "prefix": "climate-dt/../x"}, 400, "'..' segment"),
        ("list", {"bucket": "home-somebody-else"}, 404, "unknown bucket"),
        ("list", {"bucket": ""}, 400, "bucket is required"),
        ("stat", {"bucket": "lake", "key": "a/\x01b"}, 400, "control characters"),
        ("stat", {"bucket": "lake", "key": "a/\x85b"}, 400, "control characters"),  # C1
        ("stat", {"bucket": "lake", "key": "a//b"}, 400, "empty segment"),
        ("stat", {"bucket": "lake", "key": "a/"}, 400, "ends in '/'"),
        ("list", {"bucket": "lake", "prefix": "a//"}, 400, "empty segment"),
        ("stat", {"bucket": "lake", "key": ""}, 400, "key is required"),
        ("stat", {"bucket": "lake", "key": "/abs"}, 400, "must not start with '/'"),
        ("presign", {"bucket": "lake", "key": "../etc/passwd"}, 400, "'..' segment"),
        ("presign", {"bucket": "lake", "key": "no/such/object"}, 404, "not found"),
    ],
)
def test_bad_storage_input_is_a_4xx_naming_the_problem(env, path, params, status, words):
    r = _get(env, f"twinlab/api/storage/{path}", **params)
    assert r.status_code == status, r.text
    assert words in r.json()["message"]


def test_bad_upload_keys_are_refused(env):
    p, _, _, url, _ = env
    for key in ("", "a/../b", "x\ny", "x\x9by", "a//b", "dir/"):
        r = requests.put(
            url + "twinlab/api/storage/upload",
            params={"key": key},
            data=b"x",
            headers={"Authorization": f"token {p.token(USER)}"},
            timeout=30,
        )
        assert r.status_code == 400, (key, r.text)


def test_cookie_uploads_need_the_xsrf_token(env):
    """A browser session (hub login cookie) may upload only with the _xsrf cookie echoed."""
    p, _, _, url, passwords = env
    if USER not in passwords:
        pytest.skip("the account existed before this module: its password is unknown")
    s = p.login_session(USER, passwords[USER])
    assert s.get(url, timeout=60).status_code == 200  # the server's OAuth round trip
    assert s.get(url + "twinlab/api/storage/buckets", timeout=30).status_code == 200
    # the hub has its own _xsrf cookie (path /hub/): the server's is at its base path
    path = url.split("://", 1)[1].partition("/")[2]
    xsrf = next((c.value for c in s.cookies if c.name == "_xsrf" and c.path == "/" + path), "")
    assert xsrf, "the buckets call sets the _xsrf cookie the page echoes"
    put = url + "twinlab/api/storage/upload"
    assert s.put(put, params={"key": "c.txt"}, data=b"c", timeout=30).status_code == 403
    r = s.put(put, params={"key": "c.txt"}, data=b"c", headers={"X-XSRFToken": xsrf}, timeout=30)
    assert r.status_code == 201, r.text


def test_endpoints_need_the_owner(env):
    p, _, _, _, _ = env
    for path in ("twinlab/api/lake/collections", "twinlab/api/storage/buckets"):
        assert _get(env, path, auth="").status_code in (302, 401, 403)
        assert _get(env, path, auth=p.token(OTHER)).status_code in (403, 404)


# ---- the page and its Launcher tile ------------------------------------------------------
def test_launcher_tile_and_page_behind_server_proxy(env):
    r = _get(env, "server-proxy/servers-info")
    assert r.status_code == 200, r.text
    entry = next(s for s in r.json()["server_processes"] if s["name"] == "datalake")
    assert entry["launcher_entry"]["title"] == "Data lake"
    assert entry["launcher_entry"]["enabled"] is True
    page = _get(env, "datalake/")  # jupyter-server-proxy starts python -m twinlab.browse
    assert page.status_code == 200, page.text
    assert "<title>Data lake</title>" in page.text
    scripts = re.findall(r'src="([^"]+\.js)"', page.text)
    assert scripts == ["app.js"]
    js = _get(env, "datalake/app.js")
    assert js.status_code == 200 and js.text == (STATIC / "app.js").read_text()
    assert _get(env, "datalake/").headers.get("X-Content-Type-Options") == "nosniff"
    assert _get(env, "datalake/no-such-file.js").status_code == 404
    assert _get(env, "datalake/", auth="").status_code in (302, 401, 403)
    p = env[0]
    assert _get(env, "datalake/", auth=p.token(OTHER)).status_code in (403, 404)


def test_page_server_serves_only_its_static_files():
    """``python -m twinlab.browse`` as jupyter-server-proxy runs it: the page's files with
    a UTF-8 charset, nothing outside static/, no directory listings, loopback only."""
    import socket
    import subprocess
    import sys

    from tests.helpers.platform import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "twinlab.browse", "--port", str(port)])
    try:
        base = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while True:
            try:
                r = requests.get(base, timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the page server did not start"
                time.sleep(0.1)
        assert r.status_code == 200 and "<title>Data lake</title>" in r.text
        js = requests.get(base + "app.js", timeout=5)
        assert js.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert js.text == (STATIC / "app.js").read_text()
        for path in ("../__init__.py", "%2e%2e/__init__.py", "..%2f__main__.py", "nope.js"):
            assert requests.get(base + path, timeout=5).status_code == 404, path
        with socket.socket() as s:  # bound to loopback only
            outside = socket.gethostbyname(socket.gethostname())
            if not outside.startswith("127."):
                assert s.connect_ex((outside, port)) != 0
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run(
        [sys.executable, "-m", "twinlab.browse", "--port", "70000"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "not a TCP port" in bad.stderr


# ---- federated sources (a real static catalogue served over HTTP) ----------------------------
FED_USER = "lakefed"


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    """A personal platform federating a static STAC catalogue (a real http.server) as
    source "remote", and a server of FED_USER on it."""
    from tests.helpers.platform import Platform, free_port, remove_state
    from tests.helpers.remote_stac import StaticServer, build_static_catalogue

    base = tmp_path_factory.mktemp("browse-federated")
    port = free_port()
    info = build_static_catalogue(base / "static", port)
    static = StaticServer(base / "static", port).start()
    p = None
    try:
        p = Platform.start(
            base / "state", mode="personal", extra=["--stac-source", f"remote={info['url']}"]
        )
        p.add_user(FED_USER)
        url = p.spawn(FED_USER)
        yield p, static, info, url
    finally:
        if p is not None:
            p.stop()
            remove_state(base / "state")
        static.stop()


def _fed_get(fed, path: str, **params) -> requests.Response:
    p, _, _, url = fed
    headers = {"Authorization": f"token {p.token(FED_USER)}"}
    return requests.get(url + path, params=params, headers=headers, timeout=120)


def test_federated_items_come_through_with_their_source(fed):
    _, _, info, _ = fed
    cols = {c["id"]: c for c in _fed_get(fed, "twinlab/api/lake/collections").json()["collections"]}
    assert cols["remote-climate-dt"]["source"] == "remote"
    r = _fed_get(fed, "twinlab/api/lake/search", collections="remote-climate-dt", limit=100)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert {f["id"] for f in doc["features"]} == {i["id"] for i in info["items"]}
    assert {f["properties"]["twinhub:source"] for f in doc["features"]} == {"remote"}
    assert doc["twinhub:sources"]["remote"]["status"] == "ok"
    # the item on a host no source configures: its assets are marked refused, not rewritten
    foreign = next(f for f in doc["features"] if f["id"] == info["foreign_id"])
    assert all("twinhub:refused" in a for a in foreign["assets"].values())
    item = info["items"][0]["id"]
    got = _fed_get(fed, f"twinlab/api/lake/items/remote-climate-dt/{item}")
    assert got.status_code == 200 and got.json()["properties"]["twinhub:source"] == "remote"
    code = _fed_get(fed, "twinlab/api/lake/code", collection="remote-climate-dt", item=item)
    assert code.status_code == 200 and item in code.json()["code"]
    # a remote item's quick-look: its data read through the platform's cache
    ql = _fed_get(fed, "twinlab/api/lake/quicklook", collection="remote-climate-dt", item=item)
    assert ql.status_code == 200, ql.text
    assert ql.headers["Content-Type"] == "image/png" and _pixels(ql.content).std() > 10
    # ...and none for the item whose data is on an unconfigured host: refused, not fetched
    refused = _fed_get(
        fed, "twinlab/api/lake/quicklook", collection="remote-climate-dt", item=info["foreign_id"]
    )
    assert refused.status_code == 403 and FOREIGN_HOST in refused.json()["message"]


def test_a_stopped_source_gives_partial_results_and_a_warning(fed):
    _, static, _, _ = fed
    static.stop()
    try:
        r = _fed_get(fed, "twinlab/api/lake/search", limit=100)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["twinhub:sources"]["remote"]["status"] in ("error", "timeout")
        assert any("remote" in w for w in doc["twinhub:warnings"])
        assert not [f for f in doc["features"] if f["properties"]["twinhub:source"] == "remote"]
    finally:
        static.start()
