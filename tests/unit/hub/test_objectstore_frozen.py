"""A project bucket over its storage budget is frozen: what the object store reads from the
accounting tables and the rights it derives (SeaweedFS identities, IAM policies).

The rights' effect on the real embedded store is tested in
tests/integration/test_accounting_storage.py.
"""

from __future__ import annotations

import pytest
from traitlets.config import Config

from tests.helpers import budget_states
from twinhub import db
from twinhub.objectstore import iam, memberships, seaweed
from twinhub.process.runtime import Runtime


@pytest.fixture
def rt(tmp_path) -> Runtime:
    r = Runtime(state_dir=tmp_path, config=Config(), instance_id="t")
    for sub in ("secrets", "run"):
        (tmp_path / sub).mkdir(mode=0o700)
    yield r
    memberships._last_frozen.clear()
    db.dispose_engines()


def test_identities_give_a_frozen_project_bucket_read_and_list_only():
    users = [("olga", "OK", "OS", "home-olga"), ("piet", "PK", "PS", "home-piet")]
    shared = {"olga": ["project-a", "project-b"], "piet": ["project-a"]}
    doc = seaweed.identities(("AK", "SK"), users, "lake", shared, frozen={"project-a"})
    _, olga, piet = doc["identities"]
    for who in (olga, piet):
        on_a = sorted(a for a in who["actions"] if a.endswith(":project-a"))
        assert on_a == ["List:project-a", "Read:project-a"]
    assert sorted(a for a in olga["actions"] if a.endswith(":project-b")) == sorted(
        f"{a}:project-b" for a in seaweed.HOME_ACTIONS
    )
    # Home buckets are never frozen (held against no budget), even if named.
    doc = seaweed.identities(("AK", "SK"), users[:1], "lake", {}, frozen={"home-olga"})
    assert "Write:home-olga" in doc["identities"][1]["actions"]


def _object_grants(doc: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for st in doc["Statement"]:
        for res in st["Resource"]:
            if res.endswith("/*"):
                out.setdefault(res.removeprefix("arn:aws:s3:::")[:-2], set()).update(st["Action"])
    return out


def test_policy_splits_writable_and_frozen_buckets():
    doc = iam.user_policy("lake", "home-ana", ["project-b", "project-a"], frozen=["project-a"])
    g = _object_grants(doc)
    assert (
        g["project-a"]
        == set(iam.FROZEN_OBJECT_ACTIONS)
        == {
            "s3:GetObject",
            "s3:GetObjectTagging",
        }
    )
    assert g["project-b"] == g["home-ana"] == set(iam.OWN_OBJECT_ACTIONS)
    assert g["lake"] == {"s3:GetObject"}
    # Listing stays for all of them; a frozen bucket is not left out of OwnBuckets.
    own = next(st for st in doc["Statement"] if st["Sid"] == "OwnBuckets")
    assert "arn:aws:s3:::project-a" in own["Resource"]
    # The home bucket cannot be frozen; an unfrozen policy has no FrozenObjects statement.
    assert _object_grants(iam.user_policy("lake", "home-ana", [], ["home-ana"]))["home-ana"] == (
        set(iam.OWN_OBJECT_ACTIONS)
    )
    plain = iam.user_policy("lake", "home-ana", ["project-a"])
    assert [st["Sid"] for st in plain["Statement"]] == [
        "LakeList",
        "LakeRead",
        "OwnBuckets",
        "OwnObjects",
    ]
    assert len(iam.policy_json(doc)) < iam.AWS_INLINE_POLICY_LIMIT


def test_no_accounting_tables_means_nothing_frozen(rt):
    db.upgrade(rt.db_url, "0005_allocations")  # before accounting's tables
    assert memberships.frozen_projects(rt) == set()
    assert memberships.frozen_buckets(rt) == frozenset()


def test_only_a_used_up_storage_budget_freezes(rt):
    db.upgrade(rt.db_url)
    budget_states.set_level(rt.db_url, "projects:climate", "storage_gb", 100, 12.0, 10.0)
    budget_states.set_level(rt.db_url, "warned", "storage_gb", 95, 9.6, 10.0)
    budget_states.set_level(rt.db_url, "cpu-over", "cpu_hours", 100, 101.0, 100.0)
    assert memberships.frozen_projects(rt) == {"projects:climate"}
    # The Keycloak path's prefix goes, as for the bucket itself.
    assert memberships.frozen_buckets(rt) == frozenset({"project-climate"})
    # A raised budget brings the level down: thawed at the next read.
    budget_states.set_level(rt.db_url, "projects:climate", "storage_gb", 80, 12.0, 15.0)
    assert memberships.frozen_buckets(rt) == frozenset()


def test_unreadable_budget_states_keep_the_last_frozen_set(rt, caplog):
    db.upgrade(rt.db_url)
    budget_states.set_level(rt.db_url, "full", "storage_gb", 100)
    assert memberships.frozen_buckets(rt) == {"project-full"}
    with db.engine(rt.db_url).begin() as conn:  # a table the reader cannot use
        conn.exec_driver_sql("DROP TABLE budget_states")
        conn.exec_driver_sql("CREATE TABLE budget_states (project TEXT)")
    assert memberships.frozen_buckets(rt) == {"project-full"}
    assert "budget states unreadable" in caplog.text


def test_frozen_projects_on_postgresql(tmp_path, postgres_db):
    cfg = Config()
    cfg.Twinhub.db_url = postgres_db
    rt = Runtime(state_dir=tmp_path, config=cfg, instance_id="t")
    db.upgrade(rt.db_url, "0005_allocations")
    assert memberships.frozen_projects(rt) == set()  # no accounting tables yet
    db.upgrade(rt.db_url)
    budget_states.set_level(rt.db_url, "projects:climate", "storage_gb", 100, 12.0, 10.0)
    budget_states.set_level(rt.db_url, "cpu-over", "cpu_hours", 100, 101.0, 100.0)
    assert memberships.frozen_buckets(rt) == frozenset({"project-climate"})
