"""The registry's entry model: validation (normalised output, messages naming the field)
and visibility."""

from __future__ import annotations

import copy

import pytest

from twinhub.services.registry.config import TwinhubRegistry
from twinhub.services.registry.entry import (
    KINDS,
    EntryError,
    can_see,
    registry_admin,
    validate_entry,
    viewer_scope,
)

SETTINGS = TwinhubRegistry()

GOOD = {
    "name": "  Flood maps  ",
    "slug": "flood-maps",
    "provider": "Example Institute",
    "description": "# Flood maps\n\nDaily *flood* extents.\n",
    "thematic_areas": ["water", "extremes", "water"],
    "kind": "web-application",
    "endpoints": [
        {
            "url": "https://floods.example.org/",
            "type": "openapi",
            "description_url": "https://floods.example.org/openapi.json",
        },
    ],  # fmt: skip
    "documentation": "https://floods.example.org/docs",
    "licence": "CC-BY-4.0",
    "contact": "help@example.org",
    "visibility": "project:climate",
    "keywords": ["flood", " rivers ", "flood"],
    "bbox": [-10, 35, 30, 70],
    "temporal": {"start": "2020-01-01", "end": "2024-12-31T00:00:00Z"},
}


def entry(**changes):
    doc = copy.deepcopy(GOOD)
    for k, v in changes.items():
        if v is ...:
            doc.pop(k)
        else:
            doc[k] = v
    return doc


def test_a_good_entry_is_normalised():
    out = validate_entry(GOOD, SETTINGS)
    assert out["name"] == "Flood maps"
    assert out["thematic_areas"] == ["water", "extremes"]
    assert out["keywords"] == ["flood", "rivers"]
    assert out["bbox"] == [-10.0, 35.0, 30.0, 70.0]
    assert out["endpoints"][0]["description_url"].endswith("openapi.json")
    # Markdown stays as it was given (rendering is the pages' job).
    assert out["description"] == GOOD["description"].strip()
    assert out["visibility"] == "project:climate"


def test_optional_fields_get_defaults():
    minimal = {
        "name": "Sea data",
        "slug": "sea-data",
        "provider": "Ocean Lab",
        "thematic_areas": ["ocean"],
        "kind": "dataset",
    }
    out = validate_entry(minimal, SETTINGS)
    assert out["endpoints"] == [] and out["keywords"] == []
    assert out["visibility"] == "public"
    assert out["bbox"] is None and out["temporal"] is None
    assert out["documentation"] == "" and out["contact"] == ""


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"name": ""}, "name is required"),
        ({"name": "x" * 201}, "name is 201 characters long; at most 200"),
        ({"name": 5}, "name must be a string"),
        ({"provider": ...}, "provider is required"),
        ({"slug": "Flood"}, "slug 'Flood' is not valid"),
        ({"slug": "a"}, "slug 'a' is not valid"),
        ({"slug": "-abc"}, "slug '-abc' is not valid"),
        ({"slug": "x" * 64}, "is not valid"),
        ({"slug": "registry"}, "slug 'registry' is reserved"),
        ({"slug": "hub"}, "slug 'hub' is reserved"),
        ({"description": "x" * 20_001}, "description is 20001 characters long"),
        ({"description": "a\x00b"}, "description holds control characters"),
        ({"thematic_areas": []}, "thematic_areas must be a non-empty list"),
        ({"thematic_areas": ["mars"]}, "thematic_areas: unknown id(s) ['mars']"),
        ({"kind": "game"}, "kind 'game' is not one of: web-application"),
        ({"endpoints": []}, "a web-application entry needs at least one endpoint"),
        ({"endpoints": [{"url": "ftp://x.org/"}]}, "endpoints[0].url: ftp scheme"),
        ({"endpoints": [{"url": "file:///etc/passwd"}]}, "endpoints[0].url: file scheme"),
        ({"endpoints": [{"url": "http://u:p@x.org/"}]}, "user name or password"),
        ({"endpoints": [{"url": "https://x.org/", "type": "soap"}]}, "endpoints[0].type 'soap'"),
        ({"endpoints": [{"url": "https://x.org/", "auth": 1}]}, "unknown field(s) ['auth']"),
        ({"endpoints": [{"url": "https://x.org/"}] * 11}, "11 given; at most 10"),
        ({"documentation": "javascript:alert(1)"}, "documentation: javascript scheme"),
        ({"contact": "nobody"}, "contact 'nobody' is neither an e-mail address nor"),
        ({"visibility": "secret"}, "visibility 'secret' is not one of"),
        ({"visibility": "project:"}, "visibility 'project:' is not one of"),
        ({"visibility": "project:a/b"}, "visibility 'project:a/b' is not one of"),
        ({"keywords": ["x"] * 21}, "keywords: 21 given; at most 20"),
        ({"keywords": "flood"}, "keywords must be a list of strings"),
        ({"bbox": [0, 0, 1]}, "bbox must be [west, south, east, north]"),
        ({"bbox": [0, 10, 1, 5]}, "south <= north"),
        ({"bbox": [0, 0, 1, float("nan")]}, "bbox must be"),
        ({"temporal": {"start": "yesterday"}}, "temporal.start 'yesterday' is not an ISO 8601"),
        ({"temporal": {"start": "2024-01-01", "end": "2020-01-01"}}, "start 2024-01-01 is after"),
        ({"temporal": {"begin": "2024-01-01"}}, "temporal must be"),
        ({"colour": "red"}, "entry: unknown field(s) ['colour']"),
    ],
)
def test_bad_entries_are_refused_naming_the_field(changes, message):
    with pytest.raises(EntryError) as e:
        validate_entry(entry(**changes), SETTINGS)
    assert message in str(e.value)


def test_not_an_object():
    with pytest.raises(EntryError, match="entry must be an object, not list"):
        validate_entry([], SETTINGS)


def test_a_configured_vocabulary_and_reserved_slugs_count():
    s = TwinhubRegistry(thematic_areas={"moon": "Moon"}, reserved_slugs=["flood-maps"])
    with pytest.raises(EntryError, match="slug 'flood-maps' is reserved"):
        validate_entry(GOOD, s)
    with pytest.raises(EntryError, match="known: moon"):
        validate_entry(entry(slug="other"), s)
    assert validate_entry(entry(slug="other", thematic_areas=["moon"]), s)["thematic_areas"] == [
        "moon"
    ]


def test_non_web_kinds_need_no_endpoint():
    for kind in KINDS:
        if kind in ("web-application", "api"):
            continue
        assert validate_entry(entry(kind=kind, endpoints=[]), SETTINGS)["endpoints"] == []


ADMIN = {"name": "root", "admin": True, "groups": [], "scopes": ["admin:users"]}
NARROWED_ADMIN = {"name": "root", "admin": True, "groups": [], "scopes": ["access:services"]}
ALICE = {"name": "alice", "admin": False, "groups": ["climate"], "scopes": []}


BROWSER_ADMIN = {"name": "root", "admin": True, "groups": [], "scopes": ["access:services", "admin-ui"]}  # fmt: skip


def test_registry_admin():
    assert registry_admin(ADMIN) and registry_admin(BROWSER_ADMIN)
    assert viewer_scope(BROWSER_ADMIN) is None
    assert not registry_admin(NARROWED_ADMIN)  # access only
    assert not registry_admin(None) and not registry_admin(ALICE)
    # admin-ui without the hub's admin flag is not enough.
    assert not registry_admin({**ALICE, "scopes": ["admin-ui"]})


def test_viewer_scope():
    assert viewer_scope(None) == {"public"}
    assert viewer_scope(ADMIN) is None
    assert viewer_scope(ALICE) == {"public", "users", "project:climate"}
    # An admin's token narrowed to the service carries no admin power.
    assert viewer_scope(NARROWED_ADMIN) == {"public", "users"}


@pytest.mark.parametrize(
    "visibility, anonymous, alice, admin",
    [
        ("public", True, True, True),
        ("users", False, True, True),
        ("project:climate", False, True, True),
        ("project:ocean", False, False, True),
    ],
)
def test_can_see(visibility, anonymous, alice, admin):
    assert can_see(visibility, None) is anonymous
    assert can_see(visibility, ALICE) is alice
    assert can_see(visibility, ADMIN) is admin
