"""The STAC API's input checks and database settings, as pure functions; the reservation
of ``user-<name>`` collection ids in the guard (a fake of the lake's pool)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from twinhub.services.datalake.database import _from_url
from twinhub.services.datalake.guard import (
    BadRequest,
    GuardMiddleware,
    check_bbox,
    check_limit,
    check_reserved,
)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0,40,10,50", [0, 40, 10, 50]),
        ([170, -10, -170, 10], [170, -10, -170, 10]),  # across the antimeridian
        ("0,40,-100,10,50,100", [0, 40, -100, 10, 50, 100]),  # 3-D box
    ],
)
def test_good_bboxes(value, expected):
    assert check_bbox(value) == expected


@pytest.mark.parametrize(
    "value, words",
    [
        ("1,2,3", "4 or 6"),
        ("0,0,181,1", "east longitude 181.0"),
        ("0,-91,1,1", "south latitude"),
        ("0,10,1,5", "north of"),
        ("0,nan,1,1", "finite"),
        ("a,b,c,d", "numbers"),
        (42, "4 or 6"),
    ],
)
def test_bad_bboxes_name_the_problem(value, words):
    with pytest.raises(BadRequest, match=words):
        check_bbox(value)


def test_limits():
    assert check_limit("10", 100) == 10
    assert check_limit(100, 100) == 100
    for bad, words in (
        ("101", "largest page"),
        ("0", "at least 1"),
        ("2.5", "whole"),
        (2.5, "whole"),
    ):
        with pytest.raises(BadRequest, match=words):
            check_limit(bad, 100)


def test_external_database_urls_must_keep_passwords_out():
    c = _from_url("postgresql://stac@db.example:5433/lake?passfile=/run/secrets/pgpass")
    assert (c.host, c.port, c.user, c.dbname, c.passfile) == (
        "db.example",
        5433,
        "stac",
        "lake",
        "/run/secrets/pgpass",
    )
    with pytest.raises(ValueError, match="passfile"):
        _from_url("postgresql://stac:hunter2@db.example/lake")
    with pytest.raises(ValueError, match="postgresql://"):
        _from_url("mysql://db/lake")


def test_user_collection_ids_are_reserved_for_their_user():
    check_reserved("user-alice", "alice", admin=False)
    check_reserved("user-alice", "root", admin=True)  # an admin's token may
    check_reserved("alice-obs", "mallory", admin=False)  # not reserved
    for cid, caller in (("user-alice", "mallory"), ("user-alice-2", "alice"), ("user-", "x")):
        with pytest.raises(BadRequest, match="reserved") as e:
            check_reserved(cid, caller, admin=False)
        assert e.value.status == 403
    check_reserved("user-alice", "mallory", admin=False, prefix="")  # no reservation
    with pytest.raises(BadRequest, match="'jobs-alice' is for the user 'alice'"):
        check_reserved("jobs-alice", "mallory", admin=False, prefix="jobs-")


class FakePool:
    """A fake of the lake's asyncpg pool (no pgstac here): collection id -> owner."""

    def __init__(self, owners: dict[str, str]) -> None:
        self.owners = owners
        self.asked: list[str] = []

    def acquire(self):
        pool = self

        class Conn:
            async def __aenter__(self):
                return self

            async def __aexit__(self, *exc):
                return False

            async def fetchrow(self, sql, cid, field):
                pool.asked.append(cid)
                return {"owner": pool.owners[cid]} if cid in pool.owners else None

        return Conn()


def test_the_guard_refuses_creating_another_users_collection():
    """POST /collections of user-<name> by anyone but <name> (or an admin): 403, before the
    lake is asked; <name> gets it, owned by them."""
    pool = FakePool({})
    app = SimpleNamespace(state=SimpleNamespace(readpool=pool))
    guard = GuardMiddleware(None, prefix="/stac/", max_page_size=10, max_body_bytes=4096)

    def create(cid: str, user: dict) -> dict:
        scope = {"app": app, "state": {"hub_user": user}}
        body = {
            "type": "Collection", "stac_version": "1.1.0", "id": cid, "description": "d",
            "license": "other", "links": [],
            "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                       "temporal": {"interval": [[None, None]]}},
        }  # fmt: skip
        return asyncio.run(guard._authorize_write(scope, "collections", "POST", body))

    mallory = {"name": "mallory", "kind": "user", "scopes": []}
    with pytest.raises(BadRequest, match="reserved") as e:
        create("user-alice", mallory)
    assert e.value.status == 403 and pool.asked == []
    assert (
        create("user-alice", {"name": "alice", "kind": "user", "scopes": []})["twinhub:owner"]
        == "alice"
    )
    assert create("user-mallory", mallory)["twinhub:owner"] == "mallory"
