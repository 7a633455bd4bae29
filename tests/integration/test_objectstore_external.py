"""Per-user keys on an *external* S3 service (the Kubernetes shape), end to end.

The test starts a real SeaweedFS (``weed server``: S3 with its embedded IAM API writable,
loopback only, telemetry off, one admin identity from a config file) as the external
service, then real personal-mode platforms pointed at it with
``TwinhubObjectStore.endpoint_url`` and the admin keys:

- provisioner ``iam``: a spawn makes the user's IAM user, key and policy through the IAM API;
  from the user's server: the lake reads, the home bucket writes, another user's bucket and
  the lake refuse writes/reads/lists; project buckets follow the grants; revocation kills
  the key (also under a running server).
- provisioner ``none``: the spawn works, the server has the endpoint and bucket names and no
  AWS keys.

Personal mode has one platform user who can spawn; the second user's keys are made with
``ensure_user`` (what the hub's pre-spawn hook calls) and used with boto3: real S3 calls.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.helpers.platform import Platform, free_port, purge_shared_dir
from tests.integration.test_objectstore import kernel_json
from twinhub import objectstore
from twinhub.objectstore import iam
from twinhub.process.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# weed's port flags: "s3" -> -s3.port=N, "s3.grpc" -> -s3.port.grpc=N
WEED_PORTS = ("s3", "master", "volume", "filer")
WEED_PORTS += tuple(f"{name}.grpc" for name in WEED_PORTS)


class ExternalS3:
    """A SeaweedFS run by the test as someone else's S3 service."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.admin = ("EXTADMIN" + secrets.token_hex(6).upper(), secrets.token_urlsafe(24))
        self.ports = {k: free_port() for k in WEED_PORTS}
        self.url = f"http://127.0.0.1:{self.ports['s3']}"
        conf = base / "s3-admin.json"
        conf.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "operator",
                            "credentials": [
                                {"accessKey": self.admin[0], "secretKey": self.admin[1]}
                            ],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        conf.chmod(0o600)
        (base / "data").mkdir()
        flags = [
            f"-{k.removesuffix('.grpc')}.port{'.grpc' if k.endswith('.grpc') else ''}={v}"
            for k, v in self.ports.items()
        ]
        self.log = open(base / "weed.log", "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                objectstore.TwinhubObjectStore().weed_command(),
                "server",
                f"-dir={base / 'data'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                *flags,
                "-filer",
                "-s3",
                f"-s3.config={conf}",
                "-s3.iam.readOnly=false",  # the IAM API the provisioner talks to
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                "-master.telemetry=false",
                "-master.volumeSizeLimitMB=32",
                "-volume.max=0",
                "-volume.preStopSeconds=0",
                f"-filer.localSocket={base / 'filer.sock'}",
                f"-s3.localSocket={base / 's3.sock'}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            self._wait_ready(timeout=60)
        except Exception:
            self.stop()
            raise

    def client(self, service: str, access: str, secret: str):
        return boto3.client(
            service,
            endpoint_url=self.url,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def s3(self, access: str | None = None, secret: str | None = None):
        return self.client("s3", access or self.admin[0], secret or self.admin[1])

    def iam(self):
        return self.client("iam", *self.admin)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.base / 'weed.log').read_text()[-2000:]}")
            try:
                self.s3().list_buckets()
                self.iam().list_users()
                return
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.3)
        raise TimeoutError(f"external SeaweedFS not ready in {timeout} s: {last}")

    def stop(self) -> None:
        # weed's graceful stop waits on gRPC streams that never end (see objectstore.run).
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        for name in ("master", "volume", "filer", "s3"):
            Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports[name + '.grpc']}.sock").unlink(
                missing_ok=True
            )


@pytest.fixture(scope="module")
def external(tmp_path_factory) -> Iterator[ExternalS3]:
    s = ExternalS3(tmp_path_factory.mktemp("external-s3"))
    yield s
    s.stop()
    shutil.rmtree(s.base, ignore_errors=True)


def start_platform(base: Path, external: ExternalS3, provisioner: str) -> Platform:
    state = base / "state"
    state.mkdir()
    # The platform's own config file (as an operator writes it): the admin secret stays off
    # every command line.
    (state / "twinhub_config.py").write_text(
        f"""
c.TwinhubObjectStore.endpoint_url = {external.url!r}
c.TwinhubObjectStore.admin_access_key = {external.admin[0]!r}
c.TwinhubObjectStore.admin_secret_key = {external.admin[1]!r}
c.TwinhubObjectStore.provisioner = {provisioner!r}
c.TwinhubObjectStore.lake_bucket = {provisioner + "-lake"!r}
c.TwinhubObjectStore.home_bucket_prefix = {provisioner + "-home-"!r}
c.TwinhubObjectStore.iam_user_prefix = {"th-" + provisioner + "-"!r}
c.TwinhubDataLake.enabled = False
"""
    )
    return Platform.start(state, mode="personal")


def stop_platform(p: Platform) -> None:
    p.stop()
    purge_shared_dir(p.state)


@pytest.fixture(scope="module")
def iam_platform(tmp_path_factory, external) -> Iterator[tuple[Platform, Runtime, str]]:
    p = start_platform(tmp_path_factory.mktemp("extiam"), external, "iam")
    try:
        p.add_user("ana")
        url = p.spawn("ana")
        yield p, Runtime.load(p.state), url
    finally:
        stop_platform(p)


def _statements(doc: dict) -> list[tuple]:
    """A policy's statements, compared by meaning (the store writes a one-item list back as
    a plain string)."""

    def items(v) -> tuple:
        return tuple(sorted([v] if isinstance(v, str) else v))

    return sorted(
        (st.get("Sid", ""), st["Effect"], items(st["Action"]), items(st["Resource"]))
        for st in doc["Statement"]
    )


def _denied(fn) -> str:
    try:
        fn()
    except ClientError as e:
        return e.response["Error"]["Code"]
    return "allowed"


def test_spawn_makes_the_users_iam_user_key_and_policy(iam_platform, external):
    p, rt, url = iam_platform
    store = objectstore.settings(rt)
    ana = objectstore.get_user(rt, "ana")
    assert ana is not None and ana.home_bucket == "iam-home-ana"
    # Made through the IAM API of the external service, with exactly our policy.
    admin_iam = external.iam()
    keys = admin_iam.list_access_keys(UserName="th-iam-ana")["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [ana.access_key]
    doc = admin_iam.get_user_policy(UserName="th-iam-ana", PolicyName=iam.POLICY_NAME)
    assert _statements(doc["PolicyDocument"]) == _statements(
        iam.user_policy(store.lake_bucket, "iam-home-ana")
    )
    # The server has the keys, the endpoint, and where its buckets are.
    env = kernel_json(
        url,
        p.token("ana"),
        """
        import os, json
        out = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL")}
        out["storage"] = json.loads(os.environ["TWINHUB_STORAGE"])
        """,
    )
    assert env == {
        "AWS_ACCESS_KEY_ID": ana.access_key,
        "AWS_ENDPOINT_URL": external.url,
        "storage": {
            "endpoint": external.url,
            "lake_bucket": store.lake_bucket,
            "home_bucket": "iam-home-ana",
            "credentials": "per-user",
        },
    }
    # The secret key reaches no log of the platform.
    for log in (f for f in (p.state / "logs").rglob("*") if f.is_file()):
        assert ana.secret_key not in log.read_text(errors="replace"), log.name


def test_from_the_users_server_lake_reads_home_writes_others_refuse(iam_platform, external):
    p, rt, url = iam_platform
    lake = objectstore.settings(rt).lake_bucket
    # A second user, made as the hub's pre-spawn hook makes one.
    ben = objectstore.ensure_user(rt, "ben")
    assert ben.access_key != objectstore.get_user(rt, "ana").access_key
    admin = external.s3()
    admin.put_object(Bucket=lake, Key="readme.txt", Body=b"shared lake data")
    admin.put_object(Bucket=ben.home_bucket, Key="private.txt", Body=b"ben only")
    out = kernel_json(
        url,
        p.token("ana"),
        f"""
        import boto3, s3fs
        from botocore.exceptions import ClientError
        fs = s3fs.S3FileSystem()  # no arguments: all from the environment
        fs.pipe("iam-home-ana/notes/hello.txt", b"hi from ana")
        with fs.open("iam-home-ana/big.bin", "wb", block_size=5 * 2**20) as f:
            f.write(b"x" * (11 * 2**20))  # multipart upload
        s3 = boto3.client("s3")
        def code(fn):
            try:
                fn()
                return "allowed"
            except ClientError as e:
                return e.response["Error"]["Code"]
        out = {{
            "own": fs.cat("iam-home-ana/notes/hello.txt").decode(),
            "big": fs.size("iam-home-ana/big.bin"),
            "own_list": sorted(fs.ls("iam-home-ana")),
            "lake": fs.cat("{lake}/readme.txt").decode(),
            "lake_list": fs.ls("{lake}"),
            "lake_put": code(lambda: s3.put_object(Bucket="{lake}", Key="x", Body=b"x")),
            "ben_get": code(lambda: s3.get_object(Bucket="{ben.home_bucket}", Key="private.txt")),
            "ben_list": code(lambda: s3.list_objects_v2(Bucket="{ben.home_bucket}")),
            "ben_put": code(lambda: s3.put_object(Bucket="{ben.home_bucket}", Key="y", Body=b"y")),
            "create": code(lambda: s3.create_bucket(Bucket="ana-made-this")),
            "delete_own": code(lambda: s3.delete_object(Bucket="iam-home-ana", Key="big.bin")),
        }}
        """,
        timeout=120,
    )
    assert out == {
        "own": "hi from ana",
        "big": 11 * 2**20,
        "own_list": ["iam-home-ana/big.bin", "iam-home-ana/notes"],
        "lake": "shared lake data",
        "lake_list": [f"{lake}/readme.txt"],
        "lake_put": "AccessDenied",
        "ben_get": "AccessDenied",
        "ben_list": "AccessDenied",
        "ben_put": "AccessDenied",
        "create": "AccessDenied",
        "delete_own": "allowed",
    }
    # ...and the other way round, with ben's own key from this process.
    s3b = external.s3(ben.access_key, ben.secret_key)
    assert s3b.get_object(Bucket=ben.home_bucket, Key="private.txt")["Body"].read() == b"ben only"
    assert _denied(lambda: s3b.get_object(Bucket="iam-home-ana", Key="notes/hello.txt")) == (
        "AccessDenied"
    )
    assert _denied(lambda: s3b.list_objects_v2(Bucket="iam-home-ana")) == "AccessDenied"
    assert {b["Name"] for b in s3b.list_buckets()["Buckets"]} <= {ben.home_bucket, lake}


def test_project_buckets_follow_the_grants(iam_platform, external):
    _, rt, _ = iam_platform
    ben = objectstore.ensure_user(rt, "ben")
    ana = objectstore.get_user(rt, "ana")
    objectstore.credentials.ensure_bucket(rt, "project-extiam")
    s3b = external.s3(ben.access_key, ben.secret_key)
    s3a = external.s3(ana.access_key, ana.secret_key)

    def put(c):
        return _denied(lambda: c.put_object(Bucket="project-extiam", Key="k", Body=b"v"))

    assert (put(s3b), put(s3a)) == ("AccessDenied", "AccessDenied")
    grants = {"ben": ["project-extiam"]}
    assert sorted(iam.sync_policies(rt, grants, None)) == ["ana", "ben"]  # first: everyone
    assert put(s3b) == "allowed" and put(s3a) == "AccessDenied"
    assert s3b.get_object(Bucket="project-extiam", Key="k")["Body"].read() == b"v"
    assert iam.sync_policies(rt, grants, grants) == []  # nothing changed: no IAM call
    # ben leaves the project: his policy is rewritten, the bucket refuses him at once.
    assert iam.sync_policies(rt, {}, grants) == ["ben"]
    assert put(s3b) == "AccessDenied"
    assert _denied(lambda: s3b.list_objects_v2(Bucket="project-extiam")) == "AccessDenied"
    # His home still works: only the project went.
    s3b.put_object(Bucket=ben.home_bucket, Key="after-project.txt", Body=b"still mine")


def test_racing_first_spawns_leave_one_key(iam_platform, external):
    """The hub and the gateway may make the same user's storage at once (no shared lock in
    Kubernetes): both get the same keys and the IAM user keeps exactly one."""
    from concurrent.futures import ThreadPoolExecutor

    _, rt, _ = iam_platform
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda _: objectstore.ensure_user(rt, "cara"), range(3)))
    assert got[0] == got[1] == got[2] == objectstore.get_user(rt, "cara")
    keys = external.iam().list_access_keys(UserName="th-iam-cara")["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [got[0].access_key]
    s3c = external.s3(got[0].access_key, got[0].secret_key)
    s3c.put_object(Bucket=got[0].home_bucket, Key="raced.txt", Body=b"ok")


def test_keys_of_an_earlier_installation_are_deleted(iam_platform, external):
    """An IAM user already there (a reset database, an earlier platform) keeps no old key."""
    _, rt, _ = iam_platform
    admin_iam = external.iam()
    admin_iam.create_user(UserName="th-iam-dora")
    old = admin_iam.create_access_key(UserName="th-iam-dora")["AccessKey"]
    dora = objectstore.ensure_user(rt, "dora")
    keys = admin_iam.list_access_keys(UserName="th-iam-dora")["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [dora.access_key] != [old["AccessKeyId"]]
    stale = external.s3(old["AccessKeyId"], old["SecretAccessKey"])
    assert _denied(lambda: stale.list_objects_v2(Bucket=dora.home_bucket)) == "InvalidAccessKeyId"


def test_forget_user_revokes_the_key_and_the_iam_user(iam_platform, external):
    p, rt, url = iam_platform
    ben = objectstore.ensure_user(rt, "ben")
    s3b = external.s3(ben.access_key, ben.secret_key)
    assert s3b.head_bucket(Bucket=ben.home_bucket)
    assert objectstore.forget_user(rt, "ben")
    assert objectstore.get_user(rt, "ben") is None
    assert _denied(lambda: s3b.head_bucket(Bucket=ben.home_bucket)) in ("403", "InvalidAccessKeyId")
    assert _denied(lambda: s3b.list_objects_v2(Bucket=ben.home_bucket)) == "InvalidAccessKeyId"
    with pytest.raises(ClientError, match="NoSuchEntity"):
        external.iam().get_user(UserName="th-iam-ben")
    assert not objectstore.forget_user(rt, "ben")  # nothing left to revoke
    # Coming back makes a fresh key; the bucket and its objects stayed.
    again = objectstore.ensure_user(rt, "ben")
    assert again.access_key != ben.access_key and again.home_bucket == ben.home_bucket
    s3b2 = external.s3(again.access_key, again.secret_key)
    assert s3b2.get_object(Bucket=ben.home_bucket, Key="private.txt")["Body"].read() == b"ben only"
    # Revoking the user whose server runs: the key in that server's environment is refused.
    assert objectstore.forget_user(rt, "ana")
    out = kernel_json(
        url,
        p.token("ana"),
        """
        import boto3
        from botocore.exceptions import ClientError
        try:
            boto3.client("s3").list_objects_v2(Bucket="iam-home-ana")
            out = {"code": "allowed"}
        except ClientError as e:
            out = {"code": e.response["Error"]["Code"]}
        """,
    )
    assert out == {"code": "InvalidAccessKeyId"}


def test_provisioner_none_spawns_without_keys(tmp_path_factory, external):
    p = start_platform(tmp_path_factory.mktemp("extnone"), external, "none")
    try:
        p.add_user("nora")
        url = p.spawn("nora")
        rt = Runtime.load(p.state)
        lake = objectstore.settings(rt).lake_bucket
        env = kernel_json(
            url,
            p.token("nora"),
            """
            import os, json
            out = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
            out["storage"] = json.loads(os.environ["TWINHUB_STORAGE"])
            """,
        )
        assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env
        assert env["AWS_ENDPOINT_URL"] == external.url
        assert env["storage"] == {
            "endpoint": external.url,
            "lake_bucket": lake,
            "home_bucket": "none-home-nora",
            "credentials": "none",
        }
        info = requests.get(
            url + "twinlab/api/info",
            headers={"Authorization": f"token {p.token('nora')}"},
            timeout=30,
        ).json()
        assert info["storage"]["credentials"] == "none"
        assert info["storage"]["home_bucket"] == "none-home-nora"
        # No key was recorded nor made; the buckets were (with the admin key).
        assert objectstore.get_user(rt, "nora") is None
        users = {u["UserName"] for u in external.iam().list_users()["Users"]}
        assert not any(u.startswith("th-none-") for u in users)
        have = {b["Name"] for b in external.s3().list_buckets()["Buckets"]}
        assert {"none-home-nora", lake} <= have
    finally:
        stop_platform(p)
