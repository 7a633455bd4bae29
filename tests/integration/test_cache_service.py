"""The rolling cache service on a real personal platform, with a source pointing at a real
local HTTP origin (tests.helpers.counting_origin in its own process, counting requests):
one upstream fetch for N concurrent readers through the proxy, counts in stats/metrics and
`twinhub status`, refusals, an origin killed mid-transfer, remote Zarr and GRIB opened with
twinlab.datalake in a user's kernel, contents kept across a platform restart, eviction at
the size limit."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.helpers.counting_origin import hits_of
from tests.helpers.kernel import run_code
from tests.helpers.platform import Platform, free_port
from twinhub.services.datalake.sources import cache_path, make_source

pytestmark = [pytest.mark.integration]

MB = 1_000_000
RATE = 8 * MB  # the origin's bytes/s per response: an 8 MB object takes ~1 s, readers overlap
ITEM = "climate-dt-gaussian-f48-2t-20300101"


def seed_root() -> Path:
    """The small sample data (built in a child process if missing, as the platform does)."""
    subprocess.run(
        [sys.executable, "-m", "twinhub.services.datalake.seed", "--size", "small"],
        check=True,
        capture_output=True,
        timeout=900,
    )
    from twinhub.services.datalake.seed import build

    return build("small", progress=lambda _m: None).root


class OriginProcess:
    """The counting origin in its own process, so that a test can kill it mid-transfer."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "tests.helpers.counting_origin", "--root", str(self.root)]
        argv += ["--port", str(self.port), "--rate", str(RATE)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
        assert "serving" in self.proc.stdout.readline()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def hits(self, path: str) -> int:
        return hits_of(self.url).get(path, 0)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("origin")
    seed = seed_root()
    (root / "climate-dt").mkdir()
    shutil.copytree(seed / "objects/climate-dt/gaussian-f48.zarr", root / "climate-dt/g.zarr")
    (root / "climate-dt/2t.grib2").write_bytes(
        (seed / "objects/climate-dt/gaussian-f48/2t/20300101.grib2").read_bytes()
    )
    for name in ("big1", "big2", "big3", "cut"):
        (root / f"{name}.bin").write_bytes(os.urandom(8 * MB))
    (root / "small.bin").write_bytes(os.urandom(1000))
    (root / "huge.bin").write_bytes(os.urandom(12 * MB))  # over max_object_gb
    (root / "catalog.json").write_text(
        json.dumps(
            {
                "type": "Catalog",
                "id": "o",
                "description": "origin",
                "stac_version": "1.0.0",
                "links": [],
            }
        )
    )
    origin = OriginProcess(root, free_port())
    origin.start()
    # A shared dir of its own (not /var/lib/twinhub/<id>, which other test sessions on this
    # machine sweep); world-traversable, as the STAC database's account must reach it.
    shared = Path(tempfile.mkdtemp(prefix="twinhub-cache-test-", dir="/tmp"))
    shared.chmod(0o755)
    box: dict = {"origin": origin, "root": root, "seed": seed}
    try:
        state = box["state"] = tmp_path_factory.mktemp("cache-platform") / "state"
        state.mkdir()
        # in the config file: sources are dicts, and --stac-source is the CLI's concern
        (state / "twinhub_config.py").write_text(
            f"c.TwinhubDataLake.sources = [{{'name': 'origin', 'url': '{origin.url}/catalog.json'}}]\n"
            "c.TwinhubCache.max_size = 0.02\n"  # 20 MB: three 8 MB objects do not fit
            "c.TwinhubCache.max_object_gb = 0.01\n"
            f"c.Twinhub.shared_dir = {str(shared)!r}\n"
        )
        box["platform"] = Platform.start(state, mode="personal")
        yield box
    finally:
        if "platform" in box:
            box["platform"].stop()
        origin.kill()
        shutil.rmtree(shared, ignore_errors=True)


def cache_url(p: Platform, path: str) -> str:
    return p.url + "services/cache/" + path


def asset_url(box, path: str) -> str:
    src = make_source({"name": "origin", "url": box["origin"].url + "/catalog.json"})
    return cache_url(box["platform"], "assets/" + cache_path(src, box["origin"].url + path))


def get(p: Platform, url: str, token: str | None = None, **kw) -> requests.Response:
    headers = kw.pop("headers", {})
    headers["Authorization"] = f"token {token or p.token('admin')}"
    kw.setdefault("timeout", 60)
    return requests.get(url, headers=headers, **kw)


def stats(p: Platform) -> dict:
    r = get(p, cache_url(p, "stats"))
    assert r.status_code == 200, r.text
    return r.json()


def test_unauthenticated_unscoped_and_unconfigured_requests_are_refused(env):
    p = env["platform"]
    url = asset_url(env, "/small.bin")
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(cache_url(p, "stats"), timeout=30).status_code == 401
    assert get(p, url, token="not-a-token").status_code == 401
    # a token of a real user that lacks the service's access scope
    r = p.api(
        "POST", "/users/admin/tokens", user="admin", json={"scopes": ["read:users!user=admin"]}
    )
    assert r.status_code == 201, r.text
    r = get(p, url, token=r.json()["token"])
    assert r.status_code == 403 and "access:services!service=cache" in r.json()["description"]

    bad = {
        "assets/nope/127.0.0.1:1/x": (404, "unknown source 'nope'"),
        f"assets/origin/127.0.0.2:{env['origin'].port}/small.bin": (400, "not a configured origin"),
        f"assets/origin/127.0.0.1:{env['origin'].port}/a/..%2Fsmall.bin": (400, "'..'"),
        "assets/origin/169.254.169.254/latest/meta-data": (400, "not a configured origin"),
    }
    for path, (status, words) in bad.items():
        r = get(p, cache_url(p, path))
        assert r.status_code == status and words in r.json()["description"], (path, r.text)
    # the proxy resolves a literal '..' before routing; the service refuses one on its own
    rt = json.loads((env["state"] / "run/runtime.json").read_text())
    direct = f"http://127.0.0.1:{rt['ports']['cache']}/services/cache/assets/origin/"
    r = requests.Session().send(
        requests.Request(
            "GET",
            direct + f"127.0.0.1:{env['origin'].port}/x/%2E%2E/small.bin",
            headers={"Authorization": f"token {p.token('admin')}"},
        ).prepare()
    )
    assert r.status_code == 400 and "'..'" in r.json()["description"]
    r = requests.post(url, headers={"Authorization": f"token {p.token('admin')}"}, timeout=30)
    assert r.status_code == 405
    assert env["origin"].hits("/small.bin") == 0  # nothing above reached the origin


def test_concurrent_readers_through_the_proxy_make_one_upstream_fetch(env):
    p, origin = env["platform"], env["origin"]
    before = stats(p)
    url = asset_url(env, "/big1.bin")
    want = (env["root"] / "big1.bin").read_bytes()
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: get(p, url), range(12)))
    assert [r.status_code for r in responses] == [200] * 12
    assert all(r.content == want for r in responses)
    assert origin.hits("/big1.bin") == 1
    after = stats(p)
    assert after["misses"] - before["misses"] == 1  # the others joined it (or came after)
    assert after["joined"] > before["joined"]  # (the origin's 1 s transfer: they overlap)
    assert after["hits"] + after["misses"] - before["hits"] - before["misses"] == 12
    assert after["bytes_fetched"] - before["bytes_fetched"] == len(want)
    assert after["bytes_served"] - before["bytes_served"] == 12 * len(want)

    # now a hit, whole or a range
    r = get(p, url, headers={"Range": "bytes=1000-1999"})
    assert r.status_code == 206 and r.content == want[1000:2000]
    assert r.headers["x-twinhub-cache"] == "hit"
    assert r.headers["content-range"] == f"bytes 1000-1999/{len(want)}"
    assert get(p, url, headers={"Range": f"bytes={len(want)}-"}).status_code == 416
    assert origin.hits("/big1.bin") == 1

    from prometheus_client.parser import text_string_to_metric_families

    text = get(p, cache_url(p, "metrics")).text
    final = stats(p)
    metrics = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert metrics["twinhub_cache_misses_total"] == final["misses"]
    assert metrics["twinhub_cache_hits_total"] == final["hits"]
    assert metrics["twinhub_cache_size_bytes"] == final["size"] == len(want)
    assert metrics["twinhub_cache_max_size_bytes"] == 20 * MB
    out = p.cli("status", check=False).stdout
    assert re.search(rf"cache +{final['hits']} hits, {final['misses']} misses", out), out


def test_an_origin_killed_mid_transfer_fails_the_reader_and_the_next_request_refetches(env):
    p, origin = env["platform"], env["origin"]
    url = asset_url(env, "/cut.bin")
    # configurable-http-proxy does not pass a backend's abort on: the client sees its read
    # time out instead of a reset (the service itself resets at once; docs/cache.md)
    r = get(p, url, stream=True, timeout=(10, 5))
    assert r.status_code == 200 and r.headers["x-twinhub-cache"] == "miss"
    chunks = r.iter_content(64 * 1024)
    got = next(chunks)
    assert got
    origin.kill()  # SIGKILL: the connection drops mid-body
    with pytest.raises(requests.exceptions.RequestException):
        for c in chunks:
            got += c
    assert len(got) < 8 * MB
    st = stats(p)
    assert st["downloading"] == 0
    r = get(p, url)
    assert r.status_code == 502 and f"127.0.0.1:{origin.port}" in r.json()["description"]

    origin.start()  # same port, counts from zero
    r = get(p, url)
    assert r.status_code == 200 and r.headers["x-twinhub-cache"] == "miss"
    assert r.content == (env["root"] / "cut.bin").read_bytes()
    assert origin.hits("/cut.bin") == 1


def test_objects_over_the_object_limit_are_streamed_uncached(env):
    p = env["platform"]
    before = stats(p)
    url = asset_url(env, "/huge.bin")
    for _ in range(2):
        r = get(p, url)
        assert r.status_code == 200 and r.headers["x-twinhub-cache"] == "bypass"
        assert r.content == (env["root"] / "huge.bin").read_bytes()
    after = stats(p)
    assert after["objects"] == before["objects"] and after["size"] == before["size"]
    assert after["bytes_served"] - before["bytes_served"] == 2 * 12 * MB


OPEN_REMOTE = """
import json, os, numpy as np
import twinlab.datalake as dl
from twinlab.datalake.remote import RemoteAssetRefused
os.environ["TWINLAB_CACHE_DIR"] = {tmp!r}
item = json.loads({item!r})
z = dl.open(item)
g = dl.open(item, asset="grib")
out = {{"cache_url": os.environ.get("TWINHUB_CACHE_URL"), "shape": list(z["2t"].shape),
        "zarr": z["2t"].values.tolist(), "max_diff": float(np.nanmax(np.abs(z["2t"].values - g["2t"].values))),
        "grid": z.attrs.get("grid_type")}}
item["assets"]["grib"]["twinhub:refused"] = "host not configured"
item["assets"]["grib"]["href"] = "http://evil.example:8080/x.grib2"
try:
    dl.open(item, asset="grib")
except RemoteAssetRefused as e:
    out["refused"] = str(e)
print("RESULT " + json.dumps(out))
"""


def remote_item(env) -> dict:
    item = next(i for i in _seed_items(env["seed"]) if i["id"] == ITEM)
    item["properties"]["twinhub:source"] = "origin"
    paths = {"zarr": "/climate-dt/g.zarr", "grib": "/climate-dt/2t.grib2"}
    for key, a in item["assets"].items():
        a["href"] = env["origin"].url + paths[key]
        a["alternate"] = {"cache": {"href": asset_url(env, paths[key])}}
    return item


def _seed_items(seed: Path):
    with open(seed / "stac/items.ndjson") as f:
        for line in f:
            yield json.loads(line)


def test_remote_zarr_and_grib_open_in_a_users_kernel_through_the_cache(env, tmp_path):
    import xarray as xr

    p, origin = env["platform"], env["origin"]
    server = p.spawn("admin")
    try:
        info = get(p, server + "twinlab/api/info").json()
        assert info["cache"]["url"].endswith("/services/cache/"), info["cache"]
        assert "hits" in info["cache"] and "max_size" in info["cache"], info["cache"]
        tmp = tmp_path / "twinlab-cache"
        code = OPEN_REMOTE.format(tmp=str(tmp), item=json.dumps(remote_item(env)))
        text = run_code(server, p.token("admin"), textwrap.dedent(code), timeout=240)
    finally:
        p.stop_server("admin")
    out = json.loads(re.findall(r"RESULT (.*)", text)[-1])
    assert out["cache_url"] == info["cache"]["url"]
    item = remote_item(env)
    local = (
        xr.open_zarr(env["seed"] / "objects/climate-dt/gaussian-f48.zarr")["2t"]
        .sel(
            time=slice(
                item["properties"]["start_datetime"].rstrip("Z"),
                item["properties"]["end_datetime"].rstrip("Z"),
            )
        )
        .values
    )
    assert out["shape"] == list(local.shape)
    np.testing.assert_array_equal(np.asarray(out["zarr"], dtype=local.dtype), local)
    assert out["max_diff"] < 0.5  # GRIB packing of a 2 m temperature field, in K
    assert "evil.example:8080" in out["refused"] and "not configured" in out["refused"]
    assert origin.hits("/climate-dt/2t.grib2") == 1
    assert origin.hits("/climate-dt/g.zarr/zarr.json") == 1


def test_contents_survive_a_restart_and_the_size_limit_evicts_lru(env):
    p, origin = env["platform"], env["origin"]
    small = asset_url(env, "/small.bin")
    assert get(p, small).status_code == 200  # the most recently used object
    n = origin.hits("/small.bin")
    p.stop()
    p = env["platform"] = Platform.start(env["state"], mode="personal")
    r = get(p, asset_url(env, "/small.bin"))  # the new platform's URL, same cache path
    assert r.status_code == 200 and r.headers["x-twinhub-cache"] == "hit"
    assert r.content == (env["root"] / "small.bin").read_bytes()
    assert origin.hits("/small.bin") == n  # served from disk: no upstream request

    before = stats(p)
    for name in ("big2", "big3", "big1"):
        assert get(p, asset_url(env, f"/{name}.bin")).status_code == 200
    after = stats(p)
    assert after["size"] <= 20 * MB and after["evictions"] > before["evictions"]
    # big2 was the least recently used of the three big ones: evicted, fetched again
    hits = origin.hits("/big2.bin")
    r = get(p, asset_url(env, "/big2.bin"))
    assert r.headers["x-twinhub-cache"] == "miss" and origin.hits("/big2.bin") == hits + 1
