"""Storage on the real multi-user platform: sizes the accounting meter samples, and a project
bucket frozen (read-only for its members) while its project is over its storage budget.

The project is made at run time through the real ``projects`` service (``storage_gb`` 1,
i.e. 10⁹ bytes); its bucket gets a 4000-byte object at once, so whatever the platform's own
accounting service samples of it is what this test measures too; its member gets S3 keys and
the bucket by a real spawn. The admin then lowers the budget under what is stored (over) and
raises it again (thawed). Each check
does here, at once, what the platform's accounting service does every tick (its storage
samples come only every ``storage_interval``, 300 s): the storage backend's readings go into
the usage store and the enforcement writes the budget's level into ``budget_states``
(``enforce.evaluate``, against the allocation as the projects service holds it). What is
checked is that the object store follows that table within
``TwinhubProjects.storage_sync_interval`` (10 s here), through the real SeaweedFS with the
member's own key.

The same freeze on an external S3 service (provisioner ``iam``): the IAM policies written
through the real IAM API of a SeaweedFS the test runs as that service, with no platform.

A bucket bigger than ``storage_max_objects`` listed over several samples against a real
SeaweedFS (no platform): a listing cut off is never taken for the size.
"""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ClientError
from traitlets.config import Config

from tests.helpers import budget_states
from tests.integration.test_objectstore_external import ExternalS3
from twinhub import db, objectstore
from twinhub.db.models import BudgetState
from twinhub.objectstore import iam
from twinhub.objectstore.memberships import ensure_project_buckets, project_bucket_name
from twinhub.process.runtime import Runtime
from twinhub.services.accounting import backend_storage, enforce
from twinhub.services.accounting.backend_storage import GIB, StorageBackend
from twinhub.services.accounting.config import TwinhubAccounting
from twinhub.services.accounting.energy import EnergyModel
from twinhub.services.accounting.readings import Source
from twinhub.services.accounting.store import UsageStore
from twinhub.services.projects.catalog import ProjectCatalog, TwinhubProjects
from twinhub.spawn.os_accounts import os_account_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER = "gstore"
PROJECT = "acct-storage-" + secrets.token_hex(2)
SEED = os.urandom(4000)  # in the project bucket from the start
#: What the platform's periodic sync may take to apply a change, plus SeaweedFS's reload.
SYNC_MARGIN = 5.0


def _svc(p, method: str, path: str, **kw) -> requests.Response:
    """The projects service's API with the admin's token."""
    headers = {"Authorization": f"token {p.token('admin')}"}
    return requests.request(
        method, p.url + "services/projects/api/" + path, headers=headers, timeout=30, **kw
    )


@pytest.fixture(scope="module")
def member(multiuser_platform):
    p = multiuser_platform
    if p.api("GET", f"/users/{USER}", user="admin").status_code == 404:
        p.add_user(USER, groups=(PROJECT,))
    else:
        p.api("POST", f"/groups/{PROJECT}", user="admin")
        p.api("POST", f"/groups/{PROJECT}/users", user="admin", json={"users": [USER]})
    r = _svc(p, "PUT", f"projects/{PROJECT}", json={"storage_gb": 1})
    assert r.status_code in (200, 201), r.text
    rt = Runtime.load(p.state)
    # The bucket and its first bytes before anything can sample it empty (see the module doc).
    admin = objectstore.admin_client(rt)
    ensure_project_buckets(rt, admin)
    admin.put_object(Bucket=project_bucket_name(PROJECT), Key="seed.bin", Body=SEED)
    p.spawn(USER)  # keys, OS account (home), the project bucket's grant
    creds = objectstore.get_user(rt, USER)
    s3 = objectstore.client(rt, creds.access_key, creds.secret_key)
    yield p, rt, creds, s3
    budget_states.clear(rt.db_url, PROJECT)
    p.stop_server(USER)
    _svc(p, "DELETE", f"projects/{PROJECT}")
    p.api("DELETE", f"/groups/{PROJECT}", user="admin")


def _code(call) -> str:
    try:
        call()
        return "ok"
    except ClientError as e:
        return e.response.get("Error", {}).get("Code", "error")


def _check_budget(rt: Runtime) -> dict:
    """One storage check, as the accounting service makes it (see the module doc)."""
    settings = TwinhubAccounting(config=rt.config)
    backend = StorageBackend(rt, settings)
    backend.sample()
    store = UsageStore(rt.db_url, EnergyModel.from_settings(settings), settings.interval)
    store.apply(backend.read([], datetime.now(UTC)))
    enforce.evaluate(rt.db_url, ProjectCatalog.from_runtime(rt), settings)
    with db.session(rt.db_url) as s:
        row = s.get(BudgetState, (PROJECT, "storage_gb"))
        return {"used": row.used, "limit": row.limit, "fraction": row.fraction, "level": row.level}


def _until(fn, want: str, timeout: float) -> tuple[str, float]:
    """Poll ``fn`` until it returns ``want``; (last answer, seconds taken)."""
    t0 = time.monotonic()
    got = fn()
    while got != want and time.monotonic() - t0 < timeout:
        time.sleep(0.25)
        got = fn()
    return got, time.monotonic() - t0


@pytest.mark.multiuser
def test_bucket_and_home_sizes_are_what_is_stored(member):
    p, rt, creds, s3 = member
    bucket = project_bucket_name(PROJECT)
    sizes = [1, 1000, 65_536, 3 * 2**20 + 7, 12_345]
    for i, n in enumerate(sizes):
        s3.put_object(Bucket=bucket, Key=f"sizes/{i}.bin", Body=os.urandom(n))
    s3.put_object(Bucket=creds.home_bucket, Key="mine.bin", Body=os.urandom(50_000))
    prefix = os.environ.get("TWINHUB_TEST_USER_PREFIX", "twin-")
    home = Path(pwd.getpwnam(os_account_name(USER, prefix)).pw_dir)
    (home / "acct-file.bin").write_bytes(os.urandom(2 * 2**20))
    try:
        settings = TwinhubAccounting(config=rt.config)
        backend = StorageBackend(rt, settings)
        got = backend.sample()
        # S3 lists each object's exact size: no overhead at all.
        assert got[f"bucket:{bucket}"] * GIB == pytest.approx(sum(sizes) + len(SEED), abs=1e-3)
        assert got[f"bucket:{creds.home_bucket}"] * GIB == pytest.approx(50_000, abs=1e-3)
        du = int(subprocess.run(["du", "-x", "-s", "-B1", str(home)], capture_output=True,
                                text=True).stdout.split()[0])  # fmt: skip
        # du right after: the running server may have written a few files in between.
        assert got[f"home:{USER}"] * GIB == pytest.approx(du, abs=64 * 1024)
        assert du >= 2 * 2**20
        # Who each size is charged to: the project (no member), the user (no project).
        readings = {r.source.source_id: r for r in backend.read([], datetime.now(UTC))}
        proj = readings[f"bucket:{bucket}"].source
        assert (proj.user, proj.project, proj.kind) == ("", PROJECT, "storage")
        own = readings[f"bucket:{creds.home_bucket}"].source
        assert (own.user, own.project) == (USER, None)
        assert readings[f"home:{USER}"].method == "du"
        assert readings[f"bucket:{bucket}"].method == "s3-list"
        # The bound: listing stops after storage_max_objects (keys come in order: seed.bin,
        # sizes/0.bin, ...); the size is that of those listed.
        settings.storage_max_objects = 2
        bounded = StorageBackend(rt, settings)
        got = bounded.sample()
        assert got[f"bucket:{bucket}"] * GIB == pytest.approx(len(SEED) + sizes[0], abs=1e-3)
        assert f"bucket:{bucket}" in bounded.truncated
        # The next samples go on after the last key listed, until the listing's end.
        got = bounded.sample()
        assert got[f"bucket:{bucket}"] * GIB == pytest.approx(len(SEED) + sum(sizes[:3]), abs=1e-3)
        got = bounded.sample()
        assert got[f"bucket:{bucket}"] * GIB == pytest.approx(sum(sizes) + len(SEED), abs=1e-3)
        assert f"bucket:{bucket}" not in bounded.truncated
    finally:
        (home / "acct-file.bin").unlink()
        for i in range(len(sizes)):
            s3.delete_object(Bucket=bucket, Key=f"sizes/{i}.bin")


@pytest.mark.multiuser
def test_over_storage_budget_the_project_bucket_is_read_only_until_raised(member):
    p, rt, creds, s3 = member
    bucket = project_bucket_name(PROJECT)
    interval = TwinhubProjects(config=rt.config).storage_sync_interval
    body = os.urandom(1000)

    def put() -> str:
        return _code(lambda: s3.put_object(Bucket=bucket, Key="w.bin", Body=body))

    assert put() == "ok"
    state = _check_budget(rt)
    assert state["used"] == pytest.approx(5000 / 1e9) and state["limit"] == 1
    assert state["level"] == 0
    # An admin lowers the budget under what is stored (4 kB of 5 kB): over.
    r = _svc(p, "PATCH", f"projects/{PROJECT}", json={"storage_gb": 4e-6})
    assert r.status_code == 200, r.text
    state = _check_budget(rt)
    assert (state["fraction"], state["level"]) == (pytest.approx(1.25), 100)
    got, took = _until(put, "AccessDenied", interval + SYNC_MARGIN)
    assert got == "AccessDenied", f"still writable {took:.1f} s after the budget ran out"
    print(f"frozen {took:.1f} s after the over-budget state (sync interval {interval} s)")
    # Reads and listing go on; deleting is a write; the member's own bucket is not frozen.
    assert s3.get_object(Bucket=bucket, Key="w.bin")["Body"].read() == body
    assert s3.get_object(Bucket=bucket, Key="seed.bin")["Body"].read() == SEED
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == ["seed.bin", "w.bin"]
    assert _code(lambda: s3.delete_object(Bucket=bucket, Key="w.bin")) == "AccessDenied"
    assert _code(lambda: s3.put_object(Bucket=creds.home_bucket, Key="h", Body=b"h")) == "ok"
    # A new spawn (which syncs before starting) keeps it frozen.
    p.stop_server(USER)
    p.spawn(USER)
    assert put() == "AccessDenied"
    # An admin raises the budget: the next check brings the level down, the bucket thaws.
    r = _svc(p, "PATCH", f"projects/{PROJECT}", json={"storage_gb": 1})
    assert r.status_code == 200, r.text
    assert _check_budget(rt)["level"] == 0
    got, took = _until(put, "ok", interval + SYNC_MARGIN)
    assert got == "ok", f"still read-only {took:.1f} s after the budget was raised"
    print(f"thawed {took:.1f} s after the raised budget's state")
    assert _code(lambda: s3.delete_object(Bucket=bucket, Key="w.bin")) == "ok"


# -- external S3 (IAM policies) -----------------------------------------------------------
def test_iam_policy_freezes_and_thaws_a_project_bucket(tmp_path):
    (tmp_path / "ext").mkdir()
    ext = ExternalS3(tmp_path / "ext")
    try:
        cfg = Config()
        store = cfg.TwinhubObjectStore
        store.endpoint_url = ext.url
        store.admin_access_key, store.admin_secret_key = ext.admin
        store.provisioner = "iam"
        store.iam_user_prefix = "th-frz-"
        rt = Runtime(state_dir=tmp_path, config=cfg, instance_id="frz")
        for sub in ("secrets", "run"):
            (tmp_path / sub).mkdir(mode=0o700)
        db.upgrade(rt.db_url)
        ext.s3().create_bucket(Bucket="project-frz")
        grants = {"ana": ["project-frz"]}
        ana = iam.provision(rt, "ana", grants["ana"])
        s3 = ext.s3(ana.access_key, ana.secret_key)

        def put() -> str:
            return _code(lambda: s3.put_object(Bucket="project-frz", Key="k", Body=b"v"))

        assert put() == "ok"
        frozen = {"project-frz"}
        assert iam.sync_policies(rt, grants, grants, frozen, set()) == ["ana"]
        assert put() == "AccessDenied"
        assert s3.get_object(Bucket="project-frz", Key="k")["Body"].read() == b"v"
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="project-frz")["Contents"]] == ["k"]
        assert _code(lambda: s3.delete_object(Bucket="project-frz", Key="k")) == "AccessDenied"
        assert _code(lambda: s3.put_object(Bucket=ana.home_bucket, Key="h", Body=b"h")) == "ok"
        # Nothing changed: no IAM call; a user created while frozen gets the frozen policy.
        assert iam.sync_policies(rt, grants, grants, frozen, frozen) == []
        ben = iam.provision(rt, "ben", ["project-frz"], frozen)
        s3b = ext.s3(ben.access_key, ben.secret_key)
        assert _code(lambda: s3b.put_object(Bucket="project-frz", Key="b", Body=b"b")) == (
            "AccessDenied"
        )
        assert s3b.get_object(Bucket="project-frz", Key="k")["Body"].read() == b"v"
        # Thawed: writable again.
        grants["ben"] = ["project-frz"]
        assert sorted(iam.sync_policies(rt, grants, grants, set(), frozen)) == ["ana", "ben"]
        assert put() == "ok"
        assert _code(lambda: s3b.put_object(Bucket="project-frz", Key="b", Body=b"b")) == "ok"
    finally:
        ext.stop()
        db.dispose_engines()


# -- a bucket listed over several samples (a real SeaweedFS, no platform) ------------------
def test_a_cut_off_listing_is_never_taken_for_the_bucket_size(tmp_path, monkeypatch, caplog):
    """The dodge: fill the first ``storage_max_objects`` keys with empty objects and put the
    data after them. The listing goes on from the last key at the next sample, and between
    complete listings the bucket is recorded at its last complete size (or more)."""
    ext = ExternalS3(tmp_path)
    try:
        s3 = ext.s3()
        s3.create_bucket(Bucket="project-big")
        for i in range(5):
            s3.put_object(Bucket="project-big", Key=f"a/{i:03}", Body=b"")
        s3.put_object(Bucket="project-big", Key="z/data.bin", Body=os.urandom(5000))
        src = Source("bucket:project-big", "", "big", "storage", "project-big")
        # The platform's list of buckets is the platform tests'; here only the listing.
        monkeypatch.setattr(StorageBackend, "_buckets", lambda self: [(src, "project-big")])
        monkeypatch.setattr(backend_storage, "home_dirs", lambda _rt: {})
        rt = Runtime(state_dir=tmp_path, config=Config(), instance_id="big")
        b = StorageBackend(rt, TwinhubAccounting(storage_max_objects=3), s3=ext.s3)
        sid = src.source_id

        def size() -> float:
            return b.sample()[sid] * GIB

        # 1: a/000..a/002, cut off: no complete size yet, at least the partial sum (0).
        assert size() == 0 and sid in b.truncated
        assert "cut off after 3 objects" in caplog.text and "'a/002'" in caplog.text
        # 2: a/003, a/004, z/data.bin: the end, the full size.
        assert size() == 5000 and sid not in b.truncated
        # 3: a new listing, cut off at a/002 again: the last complete size stands, not 0.
        caplog.clear()
        assert size() == 5000 and sid in b.truncated
        assert "last complete size 5000 B" in caplog.text
        # More data behind the filler: counted as soon as the listing reaches it.
        s3.put_object(Bucket="project-big", Key="z/more.bin", Body=os.urandom(3000))
        assert size() == 5000 and sid in b.truncated  # a/003, a/004, z/data.bin: cut off
        assert size() == 8000 and sid not in b.truncated  # z/more.bin: the end
        # Objects removed: the next complete listing brings the size down.
        s3.delete_object(Bucket="project-big", Key="z/data.bin")
        assert size() == 8000  # a/000..a/002
        assert size() == 3000 and sid not in b.truncated
    finally:
        ext.stop()
