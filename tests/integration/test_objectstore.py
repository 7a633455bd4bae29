"""The object store on the real multi-user platform, probed from users' own kernels.

Every check runs in a real kernel of a real spawned server (as the user's OS account) against
the real SeaweedFS started by `twinhub up`; the platform side is driven with its admin key.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import requests
from botocore.exceptions import ClientError

from tests.helpers.kernel import run_code
from twinhub import objectstore
from twinhub.objectstore import seaweed
from twinhub.process.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

USERS = ("olga", "pete")


def kernel_json(url: str, token: str, code: str, timeout: float = 90) -> dict:
    """Run ``code`` (which must set ``out``, a dict) in a kernel and return ``out``."""
    text = run_code(
        url,
        token,
        textwrap.dedent(code) + "\nimport json; print('RESULT ' + json.dumps(out))\n",
        timeout=timeout,
    )
    # Warnings (stderr) share the stream: pick the result line.
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert lines, text
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.fixture(scope="module")
def store(multiuser_platform):
    p = multiuser_platform
    for name in USERS:
        p.add_user(name)
    urls = {name: p.spawn(name) for name in USERS}
    rt = Runtime.load(p.state)
    admin = objectstore.admin_client(rt)
    lake = objectstore.settings(rt).lake_bucket
    admin.put_object(Bucket=lake, Key="readme.txt", Body=b"shared lake data")
    creds = {name: objectstore.get_user(rt, name) for name in USERS}
    admin.put_object(Bucket=creds["pete"].home_bucket, Key="private.txt", Body=b"pete only")
    return p, rt, urls, creds


def test_servers_get_their_own_keys_and_the_info_endpoint_says_where(store):
    p, rt, urls, creds = store
    olga, pete = creds["olga"], creds["pete"]
    assert olga and pete and olga.access_key != pete.access_key
    assert (olga.home_bucket, pete.home_bucket) == ("home-olga", "home-pete")
    r = requests.get(
        urls["olga"] + "twinlab/api/info",
        timeout=30,
        headers={"Authorization": f"token {p.token('olga')}"},
    )
    assert r.status_code == 200
    # Every service a user may use, the data lake's STAC API included (issue 18, item 8).
    base = p.url if p.url.endswith("/") else p.url + "/"
    assert r.json()["services"] == {
        name: f"{base}services/{name}/"
        for name in (
            "accounting",
            "cache",
            "dask-gateway",
            "desk",
            "processing",
            "projects",
            "registry",
            "stac",
            "tiles",
        )  # fmt: skip
    }
    assert r.json()["storage"] == {
        "endpoint": objectstore.endpoint(rt),
        "lake_bucket": "lake",
        "home_bucket": "home-olga",
        "credentials": "per-user",
    }
    env = kernel_json(
        urls["olga"],
        p.token("olga"),
        """
        import os
        out = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL")}
    """,
    )
    assert env == {
        "AWS_ACCESS_KEY_ID": olga.access_key,
        "AWS_ENDPOINT_URL": objectstore.endpoint(rt),
    }
    # The secret key is in no log of the platform.
    for log in (f for f in (p.state / "logs").rglob("*") if f.is_file()):
        text = log.read_text(errors="replace")
        assert olga.secret_key not in text and pete.secret_key not in text, log.name


def test_s3fs_and_xarray_work_with_no_arguments(store):
    p, _, urls, _ = store
    out = kernel_json(
        urls["olga"],
        p.token("olga"),
        """
        import numpy as np, s3fs, xarray as xr
        fs = s3fs.S3FileSystem()
        fs.pipe("home-olga/notes/hello.txt", b"hi from olga")
        ds = xr.Dataset({"t2m": (("y", "x"), np.arange(12.0).reshape(3, 4))})
        ds.to_zarr("s3://home-olga/demo.zarr", mode="w")
        back = xr.open_zarr("s3://home-olga/demo.zarr")
        out = {
            "own": fs.cat("home-olga/notes/hello.txt").decode(),
            "lake": fs.cat("lake/readme.txt").decode(),
            "zarr_sum": float(back.t2m.sum()),
        }
    """,
        timeout=120,
    )
    assert out == {"own": "hi from olga", "lake": "shared lake data", "zarr_sum": 66.0}


def test_a_user_cannot_touch_another_users_bucket_nor_write_the_lake(store):
    p, rt, urls, _ = store
    out = kernel_json(
        urls["olga"],
        p.token("olga"),
        """
        import boto3
        from botocore.exceptions import ClientError
        s3 = boto3.client("s3")
        tries = {
            "read other": lambda: s3.get_object(Bucket="home-pete", Key="private.txt"),
            "list other": lambda: s3.list_objects_v2(Bucket="home-pete"),
            "write other": lambda: s3.put_object(Bucket="home-pete", Key="x", Body=b"x"),
            "delete other": lambda: s3.delete_object(Bucket="home-pete", Key="private.txt"),
            "write lake": lambda: s3.put_object(Bucket="lake", Key="x", Body=b"x"),
            "delete lake": lambda: s3.delete_object(Bucket="lake", Key="readme.txt"),
            "new bucket": lambda: s3.create_bucket(Bucket="olga-extra"),
        }
        out = {}
        for name, f in tries.items():
            try:
                f()
                out[name] = "ALLOWED"
            except ClientError as e:
                out[name] = e.response["Error"]["Code"]
        # A key that walks up is refused outright (SeaweedFS maps keys onto filer paths).
        for key in ("../home-pete/evil.txt", "a/../../home-pete/evil.txt"):
            try:
                s3.put_object(Bucket="home-olga", Key=key, Body=b"x")
                out["dotdot " + key] = "ALLOWED"
            except ClientError as e:
                out["dotdot " + key] = e.response["Error"]["Code"]
        out["buckets"] = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
    """,
    )
    buckets = out.pop("buckets")
    dotdot = {k: out.pop(k) for k in list(out) if k.startswith("dotdot")}
    assert set(out.values()) == {"AccessDenied"}, out
    assert set(dotdot.values()) == {"InvalidRequest"}, dotdot
    assert "home-pete" not in buckets and "home-olga" in buckets
    admin = objectstore.admin_client(rt)
    keys = [o["Key"] for o in admin.list_objects_v2(Bucket="home-pete").get("Contents", [])]
    assert keys == ["private.txt"]
    assert admin.get_object(Bucket="lake", Key="readme.txt")["Body"].read() == b"shared lake data"


def test_anonymous_requests_and_expired_presigned_urls_are_refused(store):
    p, _, urls, _ = store
    out = kernel_json(
        urls["olga"],
        p.token("olga"),
        """
        import os, time, boto3, urllib.request, urllib.error
        s3 = boto3.client("s3")
        s3.put_object(Bucket="home-olga", Key="shared.txt", Body=b"presigned")
        def get(url):
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": "home-olga", "Key": "shared.txt"}, ExpiresIn=1)
        fresh = get(url)
        time.sleep(2.5)
        ep = os.environ["AWS_ENDPOINT_URL"]
        out = {"fresh": fresh, "expired": get(url),
               "anonymous object": get(ep + "/lake/readme.txt"), "anonymous list": get(ep + "/")}
    """,
    )
    assert out == {"fresh": 200, "expired": 403, "anonymous object": 403, "anonymous list": 403}


def test_seaweedfs_other_ports_are_closed_to_users(store):
    p, rt, urls, _ = store
    ports = {name: rt.ports[key] for name, key in seaweed.PORT_KEYS.items()}
    own_tmp = seaweed.private_network("auto") and seaweed.private_tmp_works()
    sockets = [str(s) for s in seaweed.grpc_unix_sockets(rt, own_tmp)]
    out = kernel_json(
        urls["olga"],
        p.token("olga"),
        f"""
        import socket, ssl, urllib.request, urllib.error
        ports = {ports!r}
        def http(method, url):
            req = urllib.request.Request(url, method=method, data=b"x" if method == "PUT" else None)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code
            except OSError:
                return "refused"
        out = {{}}
        m, f, v = (f"http://127.0.0.1:{{ports[k]}}" for k in ("master", "filer", "volume"))
        for path in ("/dir/assign", "/col/delete?collection=home-pete", "/vol/grow?count=1",
                     "/dir/lookup?volumeId=1", "/vol/status"):
            out["master " + path] = http("GET", m + path)
        for method, path in (("GET", "/buckets/home-pete/private.txt"), ("GET", "/buckets/"),
                             ("PUT", "/buckets/lake/evil.txt")):
            out[f"filer {{method}} {{path}}"] = http(method, f + path)
        for method, path in (("GET", "/1,0100000000"), ("PUT", "/1,0100000000")):
            out[f"volume {{method}}"] = http(method, v + path)
        # gRPC: mutual TLS. Without a client certificate the handshake (or the first read)
        # fails; in clear text the server hangs up.
        for name in ("master.grpc", "volume.grpc", "filer.grpc", "s3.grpc"):
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            try:
                with socket.create_connection(("127.0.0.1", ports[name]), timeout=5) as raw:
                    with ctx.wrap_socket(raw) as tls:
                        tls.sendall(b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n")
                        data = tls.recv(100)
                out[name + " tls"] = "OPEN" if data else "closed"
            except (ssl.SSLError, OSError) as e:
                out[name + " tls"] = "refused"
            try:
                with socket.create_connection(("127.0.0.1", ports[name]), timeout=5) as raw:
                    raw.sendall(b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n\\x00\\x00\\x00\\x04\\x00\\x00\\x00\\x00\\x00")
                    data = raw.recv(100)
                out[name + " plain"] = "OPEN" if data else "closed"
            except OSError:
                out[name + " plain"] = "closed"
        for path in {sockets!r}:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                out[path] = "OPEN"
            except PermissionError:
                out[path] = "denied"
            except OSError as e:
                out[path] = type(e).__name__
            finally:
                s.close()
        # No server of webdav/iceberg/lance/admin UI on their default ports.
        for port in (7333, 8181, 9101, 23646):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                out[f"port {{port}}"] = "OPEN"
            except OSError:
                out[f"port {{port}}"] = "closed"
    """,
        timeout=120,
    )
    assert "OPEN" not in out.values(), out
    assert {v for k, v in out.items() if k.endswith(" tls")} == {"refused"}, out
    # As root, weed runs in its own network namespace (TwinhubObjectStore.private_network):
    # on the host only the S3 port exists; the others are served inside, where weed is.
    from twinhub.process.supervisor import port_in_use

    weed = next(
        pr
        for pr in psutil.process_iter(["cmdline"])
        if str(seaweed.data_dir(rt)) in " ".join(pr.info["cmdline"] or [])
        and "server" in (pr.info["cmdline"] or [])
    )
    assert os.readlink(f"/proc/{weed.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert port_in_use("127.0.0.1", ports["s3"])
    internal = {k: v for k, v in ports.items() if k != "s3"}
    if own_tmp:
        # fixed, above the ephemeral range: no platform component on the host draws them, so
        # a port in use here would be weed's own
        assert internal == seaweed.NAMESPACE_PORTS
    assert not any(port_in_use("127.0.0.1", port) for port in internal.values()), internal
    for key, value in out.items():
        if key.startswith(("master ", "filer ", "volume ")):
            assert value == "refused", (key, value)
        elif key.startswith("/"):
            assert value == "denied", (key, value)
    # weed's gRPC sockets exist, in weed's own /tmp (a 0700 dir of the run dir): the probe hit
    # real files; none is in the host's /tmp, where another platform's weed could take it.
    home = seaweed.private_tmp(rt) if own_tmp else Path("/tmp")
    assert all(Path(s).is_socket() and Path(s).parent == home for s in sockets)
    if own_tmp:
        assert not any((Path("/tmp") / Path(s).name).exists() for s in sockets)


@pytest.mark.slow
def test_dask_workers_get_their_users_keys_only(store):
    p, _, urls, creds = store
    out = kernel_json(
        urls["pete"],
        p.token("pete"),
        """
        import os, s3fs
        from dask_gateway import Gateway
        cluster = Gateway().new_cluster()
        cluster.scale(1)
        client = cluster.get_client()
        client.wait_for_workers(1, timeout=180)
        def probe():
            import os, s3fs
            return {"key": os.environ.get("AWS_ACCESS_KEY_ID"),
                    "data": s3fs.S3FileSystem().cat("home-pete/private.txt").decode()}
        out = list(client.run(probe).values())[0]
        out["scheduler_key"] = client.run_on_scheduler(lambda: os.environ.get("AWS_ACCESS_KEY_ID"))
        cluster.shutdown()
    """,
        timeout=300,
    )
    assert out == {
        "key": creds["pete"].access_key,
        "data": "pete only",
        "scheduler_key": creds["pete"].access_key,
    }


def assert_refused_soon(s3, bucket: str, within: float = 10) -> None:
    """The store applies a revocation on reload: wait for the key to be refused."""
    code = None
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as e:
            code = e.response["Error"]["Code"]
            break
        time.sleep(0.1)
    assert code in ("403", "InvalidAccessKeyId", "AccessDenied"), code


def test_forgetting_a_user_revokes_their_key_on_the_running_store(store):
    _, rt, _, _ = store
    quinn = objectstore.ensure_user(rt, "quinn")  # what the hub does at a first spawn
    assert objectstore.ensure_user(rt, "quinn") == quinn  # idempotent: same keys
    s3 = objectstore.client(rt, quinn.access_key, quinn.secret_key)
    s3.put_object(Bucket=quinn.home_bucket, Key="a.txt", Body=b"q")
    assert objectstore.forget_user(rt, "quinn")
    assert_refused_soon(s3, quinn.home_bucket)
    assert objectstore.get_user(rt, "quinn") is None


def test_removing_a_user_through_the_hub_revokes_their_key(store):
    p, rt, _, _ = store
    p.add_user("rosa")
    rosa = objectstore.ensure_user(rt, "rosa")  # what the hub does at a first spawn
    s3 = objectstore.client(rt, rosa.access_key, rosa.secret_key)
    s3.put_object(Bucket=rosa.home_bucket, Key="a.txt", Body=b"r")
    r = p.api("DELETE", "/users/rosa", user="admin")
    assert r.status_code == 204, r.text
    assert objectstore.get_user(rt, "rosa") is None
    assert_refused_soon(s3, rosa.home_bucket)
