"""Provisioners without a running store: the IAM policy documents, IAM user names, which
provisioner is in force and what a keyless ("none") user's server gets.

The policies' effect on a real S3 service is tested in
tests/integration/test_objectstore_external.py (SeaweedFS's IAM API, real S3 calls).
"""

from __future__ import annotations

import json

import pytest
from traitlets import TraitError
from traitlets.config import Config

from twinhub import db, objectstore
from twinhub.errors import PlatformError
from twinhub.objectstore import iam
from twinhub.objectstore.credentials import StorageError, UserStorage
from twinhub.process.runtime import Runtime

EXTERNAL = "http://127.0.0.1:1"  # never contacted by these tests


@pytest.fixture
def rt(tmp_path) -> Runtime:
    r = Runtime(state_dir=tmp_path, config=Config(), instance_id="t")
    for sub in ("secrets", "run"):
        (tmp_path / sub).mkdir(mode=0o700)
    yield r
    db.dispose_engines()


def external(rt: Runtime, provisioner: str = "auto", keys: bool = True) -> Runtime:
    c = rt.config.TwinhubObjectStore
    c.endpoint_url = EXTERNAL
    c.provisioner = provisioner
    if keys:
        c.admin_access_key, c.admin_secret_key = "ADMIN", "admin-secret"
    return rt


def grants(doc: dict) -> dict[str, set[tuple[str, str]]]:
    """{resource: {(effect, action)}} over all statements: what the policy allows where."""
    out: dict[str, set[tuple[str, str]]] = {}
    for st in doc["Statement"]:
        for res in st["Resource"]:
            out.setdefault(res, set()).update((st["Effect"], a) for a in st["Action"])
    return out


def test_policy_lake_read_list_home_and_projects_read_write():
    doc = iam.user_policy("lake", "home-ana", ["project-b", "project-a"])
    g = grants(doc)
    allow = {("Allow", a) for a in ("s3:ListBucket", "s3:GetBucketLocation")}
    assert g["arn:aws:s3:::lake"] == allow
    assert g["arn:aws:s3:::lake/*"] == {("Allow", "s3:GetObject")}
    rw = {("Allow", a) for a in iam.OWN_OBJECT_ACTIONS}
    for b in ("home-ana", "project-a", "project-b"):
        assert g[f"arn:aws:s3:::{b}"] == allow
        assert g[f"arn:aws:s3:::{b}/*"] == rw
    # Exactly these buckets: nobody else's, no wildcard, nothing account-wide.
    assert set(g) == {
        f"arn:aws:s3:::{b}{s}"
        for b in ("lake", "home-ana", "project-a", "project-b")
        for s in ("", "/*")
    }
    actions = {a for acts in g.values() for _, a in acts}
    assert {"s3:PutObject", "s3:DeleteObject", "s3:GetObject"} <= actions
    assert not any("*" in a for a in actions)
    bucket_admin = ("s3:CreateBucket", "s3:DeleteBucket", "s3:PutBucket")
    assert not any(a.startswith(bucket_admin) for a in actions)
    assert "s3:ListAllMyBuckets" not in actions and "s3:CreateBucket" not in actions
    assert all(st["Effect"] == "Allow" for st in doc["Statement"])
    # The lake is never writable.
    assert not {a for _, a in g["arn:aws:s3:::lake/*"]} & {"s3:PutObject", "s3:DeleteObject"}


def test_policy_without_projects_and_duplicates():
    g = grants(iam.user_policy("lake", "home-ana"))
    assert set(g) == {"arn:aws:s3:::lake", "arn:aws:s3:::lake/*"} | {
        "arn:aws:s3:::home-ana",
        "arn:aws:s3:::home-ana/*",
    }
    doc = iam.user_policy("lake", "home-ana", ["home-ana", "p-x", "p-x"])
    own = next(st for st in doc["Statement"] if st["Sid"] == "OwnBuckets")
    assert own["Resource"] == ["arn:aws:s3:::home-ana", "arn:aws:s3:::p-x"]


def test_policy_avoids_actions_seaweedfs_refuses():
    # weed 4.48 refuses the whole document for these (see iam.py); the integration test
    # runs the real policy through the real IAM API.
    actions = json.dumps(iam.user_policy("lake", "home-a", ["p"]))
    for bad in ("s3:ListBucketMultipartUploads", "s3:ListMultipartUploadParts", "s3:HeadObject"):
        assert bad not in actions


def test_policy_json_is_compact_and_fits_aws_with_a_dozen_projects():
    doc = iam.user_policy("lake", "home-someone", [f"project-{i:02d}-climate" for i in range(12)])
    text = iam.policy_json(doc)
    assert " " not in text and json.loads(text) == doc
    assert len(text) < iam.AWS_INLINE_POLICY_LIMIT


@pytest.mark.parametrize(
    ("user", "expected"),
    [("ana", "twinhub-ana"), ("ana.b@x.org", "twinhub-ana.b@x.org"), ("A_B", "twinhub-A_B")],
)
def test_iam_user_names_plain(user, expected):
    assert iam.iam_user_name("twinhub-", user) == expected


def test_iam_user_names_made_safe_and_distinct():
    odd = iam.iam_user_name("twinhub-", "ana/b c")
    assert odd.startswith("twinhub-ana-b-c-") and len(odd) == len("twinhub-ana-b-c-") + 8
    assert iam.iam_user_name("twinhub-", "ana/b c") != iam.iam_user_name("twinhub-", "ana b/c")
    long = iam.iam_user_name("twinhub-", "x" * 100)
    assert len(long) <= 64 and long != iam.iam_user_name("twinhub-", "x" * 99)
    assert iam.iam_user_name("twinhub-", "éé").startswith("twinhub-")  # only non-ASCII
    with pytest.raises(ValueError, match="empty"):
        iam.iam_user_name("twinhub-", "")


def test_provisioner_in_force(rt):
    assert objectstore.settings(rt).provisioner_kind == "seaweedfs"  # embedded default
    assert objectstore.settings(external(rt)).provisioner_kind == "iam"  # external default
    assert objectstore.settings(external(rt, "none", keys=False)).provisioner_kind == "none"
    with pytest.raises(TraitError):
        objectstore.TwinhubObjectStore(provisioner="ldap")


@pytest.mark.parametrize(
    ("endpoint", "provisioner", "keys", "message"),
    [
        (EXTERNAL, "seaweedfs", True, "provisioner 'seaweedfs' writes the embedded store"),
        ("", "iam", True, "provisioner 'iam' needs an external S3 endpoint"),
        (EXTERNAL, "iam", False, "set admin_access_key and admin_secret_key"),
        (EXTERNAL, "auto", False, "set admin_access_key and admin_secret_key"),
    ],
)
def test_provisioners_that_cannot_work_are_refused_by_name(
    rt, endpoint, provisioner, keys, message
):
    c = rt.config.TwinhubObjectStore
    c.endpoint_url, c.provisioner = endpoint, provisioner
    if keys:
        c.admin_access_key, c.admin_secret_key = "ADMIN", "admin-secret"
    with pytest.raises(StorageError, match=message):
        _ = objectstore.settings(rt).provisioner_kind
    # ...at `twinhub up` (prepare), before any user spawns, as an error the CLI prints.
    with pytest.raises(PlatformError, match=message):
        objectstore.ObjectStorePart().prepare(rt, print)


def test_none_gives_names_and_no_keys_without_touching_a_store(rt):
    external(rt, "none", keys=False)
    db.upgrade(rt.db_url)
    creds = objectstore.ensure_user(rt, "nora")  # no admin key: no bucket call either
    assert creds == UserStorage("nora", "", "", "home-nora") and not creds.has_keys
    assert objectstore.get_user(rt, "nora") is None  # nothing recorded
    env = objectstore.user_environment(rt, creds)
    assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["AWS_ENDPOINT_URL"] == EXTERNAL
    assert json.loads(env["TWINHUB_STORAGE"]) == {
        "endpoint": EXTERNAL,
        "lake_bucket": "lake",
        "home_bucket": "home-nora",
        "credentials": "none",
    }
    assert objectstore.cluster_environment(rt, "nora") == env
    assert not objectstore.forget_user(rt, "nora")
    assert not objectstore.has_admin_keys(rt)
    assert not objectstore.syncs_project_storage(rt)


def test_keyed_servers_say_per_user(rt):
    external(rt, "iam")
    env = objectstore.user_environment(rt, UserStorage("ana", "AK", "SK", "home-ana"))
    assert env["AWS_ACCESS_KEY_ID"] == "AK" and env["AWS_SECRET_ACCESS_KEY"] == "SK"
    assert json.loads(env["TWINHUB_STORAGE"])["credentials"] == "per-user"


def test_project_sync_runs_for_iam_and_embedded_only(rt):
    rt.ports["object-store"] = 40000
    assert objectstore.syncs_project_storage(rt)  # embedded, store running
    assert objectstore.syncs_project_storage(external(rt, "iam"))
    assert not objectstore.syncs_project_storage(external(rt, "none"))


def test_provisioner_classes_chosen_by_name(rt):
    from twinhub.objectstore import provisioners

    # One class per value of the option ("auto" resolves to one of them).
    assert set(provisioners.PROVISIONERS) == set(objectstore.PROVISIONERS) - {"auto"}
    assert isinstance(provisioners.provisioner(rt), provisioners.SeaweedfsProvisioner)
    assert isinstance(provisioners.provisioner(external(rt)), provisioners.IamProvisioner)
    keyless = provisioners.provisioner(external(rt, "none", keys=False))
    assert isinstance(keyless, provisioners.KeylessProvisioner)
    rt.config.TwinhubObjectStore.admin_access_key = ""
    with pytest.raises(StorageError, match="admin_access_key"):
        provisioners.provisioner(external(rt, "iam", keys=False))


def test_memberships_read_through_the_hubs_orm(rt):
    from jupyterhub import orm
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from twinhub.objectstore import memberships

    rt.hub_dir.mkdir(parents=True, exist_ok=True)
    assert memberships.memberships(rt, ["climate"]) == {}  # no hub tables yet (first start)
    engine = create_engine(db.default_hub_db_url(rt))
    orm.Base.metadata.create_all(engine)
    with Session(engine) as s:
        climate, ocean, other = (orm.Group(name=n) for n in ("climate", "ocean", "other"))
        s.add_all(
            [
                orm.User(name="ana", groups=[climate, ocean]),
                orm.User(name="ben", groups=[ocean, other]),
                orm.User(name="cleo", groups=[other]),
            ]
        )
        s.commit()
    engine.dispose()
    got = memberships.memberships(rt, ["climate", "ocean"])
    assert {u: sorted(g) for u, g in got.items()} == {"ana": ["climate", "ocean"], "ben": ["ocean"]}
    assert memberships.memberships(rt, []) == {}
