"""The STAC API's input checks and database settings, as pure functions."""

from __future__ import annotations

import pytest

from twinhub.services.datalake.database import _from_url
from twinhub.services.datalake.guard import BadRequest, check_bbox, check_limit


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
