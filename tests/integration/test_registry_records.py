"""The registry's catalogue as OGC API - Records on the real multi-user platform, browsed with
OWSLib's standard client (``owslib.ogcapi.records.Records``) through the proxy and hub auth.

Entries are published through the onboarding REST API (provider submits, the platform
evaluates, a reviewer approves, an admin integrates); then each kind of caller lists and
searches them: anonymous visitors see public entries only, logged-in users also ``users``
ones, a ``project:<group>`` entry only members of that group (and admins). Every record
returned validates against the Records record schema.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable

import owslib.ogcapi
import pytest
import requests
from owslib.ogcapi.records import Records

from tests.helpers.platform import Platform
from tests.unit.hub.registry.test_records import assert_record

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

REC = "http://www.opengis.net/spec/ogcapi-records-1/1.0/conf/"
#: OWSLib's clients share one module-level headers dict that each constructor updates: every
#: client here starts from this clean copy, so one user's token never rides another's calls.
CLEAN_HEADERS = dict(owslib.ogcapi.REQUEST_HEADERS)


class World:
    """The users, the project group and the tag word that only this module's entries carry
    (the platform is shared with other tests' entries)."""

    def __init__(self, p: Platform) -> None:
        t = secrets.token_hex(3)
        self.p, self.tag = p, f"rrtag{t}"
        self.project = f"rrproj{t}"
        self.users = {
            "provider": f"rrprov{t}",
            "reviewer": f"rrrev{t}",
            "member": f"rrmem{t}",
            "outsider": f"rrout{t}",
        }
        p.add_user(self.users["provider"])
        p.add_user(self.users["reviewer"], groups=("registry-reviewers",))
        # The hub refuses `twinhub user add --admin` (the CLI's service is no admin): the
        # platform's first admin account integrates.
        first = re.search(r"first admin account: (\S+)", "\n".join(p.output))
        assert first, "the platform printed no first admin account"
        self.users["admin"] = first.group(1)
        p.add_user(self.users["member"], groups=(self.project,))
        p.add_user(self.users["outsider"])
        self.base = p.url + "services/registry/"

    def token(self, role: str) -> str:
        return self.p.token(self.users[role])

    def call(self, role: str, method: str, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"token {self.token(role)}"}
        return requests.request(
            method, self.base + "api/v1/" + path, headers=headers, timeout=60, **kw
        )


def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s"
        time.sleep(0.5)


def publish(w: World, slug: str, name: str, visibility: str, **more) -> None:
    """Through the whole workflow: submitted -> evaluated -> approved -> integrated."""
    entry = {
        "name": name,
        "slug": slug,
        "provider": "Records Test Institute",
        "description": f"A catalogue test entry ({w.tag}).",
        "thematic_areas": more.pop("thematic_areas", ["ocean"]),
        "kind": more.pop("kind", "dataset"),
        "endpoints": [],
        "visibility": visibility,
        "keywords": [w.tag],
        **more,
    }
    r = w.call(
        "provider", "POST", "requests", json={"entry": entry, "resources": {}, "activity": "tests"}
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    _until(
        lambda: w.call("reviewer", "GET", f"requests/{rid}").json()["state"] == "evaluated",
        f"evaluation of {slug}",
    )
    r = w.call("reviewer", "POST", f"requests/{rid}/reviews",
               json={"decision": "approved", "comment": "fine"})  # fmt: skip
    assert r.status_code == 200, r.text
    r = w.call("admin", "POST", f"requests/{rid}/transitions", json={"to": "integrated"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "integrated"


@pytest.fixture(scope="module")
def world(multiuser_platform: Platform) -> World:
    w = World(multiuser_platform)
    t = w.tag[-6:]
    publish(w, f"rr-pub-{t}", "Records Public Ocean", "public", bbox=[0.0, 40.0, 10.0, 50.0],
            temporal={"start": "2020-01-01", "end": "2020-12-31"})  # fmt: skip
    publish(w, f"rr-farm-{t}", "Records Public Farms", "public", kind="notebook",
            thematic_areas=["agriculture"])  # fmt: skip
    publish(w, f"rr-users-{t}", "Records Users Rivers", "users", thematic_areas=["water"])
    publish(w, f"rr-proj-{t}", "Records Project Reefs", f"project:{w.project}")
    w.slugs = {
        "public": f"rr-pub-{t}",
        "farm": f"rr-farm-{t}",
        "users": f"rr-users-{t}",
        "project": f"rr-proj-{t}",
    }
    return w


def records_as(w: World, role: str | None, monkeypatch) -> Records:
    monkeypatch.setattr(owslib.ogcapi, "REQUEST_HEADERS", dict(CLEAN_HEADERS))
    headers = {"Authorization": f"token {w.token(role)}"} if role else None
    return Records(w.base, headers=headers)


def found(doc: dict) -> set[str]:
    for f in doc["features"]:
        assert_record(f)
    return {f["id"] for f in doc["features"]}


def test_owslib_lists_and_searches_the_catalogue(world: World, monkeypatch) -> None:
    w, s = world, world.slugs
    rec = records_as(w, "outsider", monkeypatch)
    assert rec.records() == ["services"]
    assert rec.collection("services")["itemType"] == "record"
    conf = rec.conformance()["conformsTo"]
    assert REC + "record-core" in conf and REC + "searchable-catalog" in conf

    # The index catches up within a second or two of the integration.
    _until(lambda: len(rec.collection_items("services", q=w.tag)["features"]) == 3, "index")
    doc = rec.collection_items("services", q=w.tag)
    assert found(doc) == {s["public"], s["farm"], s["users"]}
    assert doc["numberMatched"] == 3
    kinds = {b["value"]: b["count"] for b in doc["facets"]["kind"]}
    assert kinds == {"dataset": 2, "notebook": 1}

    farm = rec.collection_items("services", q=w.tag, thematic_area="agriculture")
    assert found(farm) == {s["farm"]}
    assert found(rec.collection_items("services", q=w.tag, kind="notebook")) == {s["farm"]}
    assert found(rec.collection_items("services", q=w.tag, bbox=[5, 45, 6, 46])) == {s["public"]}
    assert found(rec.collection_items("services", q=w.tag, datetime="2020-06-01/2020-06-02")) == {
        s["public"]
    }
    paged = rec.collection_items("services", q=w.tag, limit=2)
    assert paged["numberReturned"] == 2 and any(x["rel"] == "next" for x in paged["links"])

    item = rec.collection_item("services", s["users"])
    assert_record(item)
    assert item["properties"]["title"] == "Records Users Rivers"
    assert item["properties"]["twinhub:visibility"] == "users"
    # Links are absolute, on the address the client used.
    assert item["links"][0]["href"] == f"{w.base}collections/services/items/{s['users']}"


def test_project_entries_only_for_members_and_admins(world: World, monkeypatch) -> None:
    w, s = world, world.slugs
    member = records_as(w, "member", monkeypatch)
    _until(lambda: s["project"] in found(member.collection_items("services", q=w.tag)), "index")
    assert found(member.collection_items("services", q=w.tag)) == set(s.values())
    assert member.collection_item("services", s["project"])["id"] == s["project"]
    admin = records_as(w, "admin", monkeypatch)
    assert found(admin.collection_items("services", q=w.tag)) == set(s.values())
    outsider = records_as(w, "outsider", monkeypatch)
    assert s["project"] not in found(outsider.collection_items("services", q=w.tag))
    with pytest.raises(RuntimeError):  # OWSLib raises on the 404
        outsider.collection_item("services", s["project"])
    # The facet counts never count what the caller may not see.
    doc = outsider.collection_items("services", q=w.tag)
    assert sum(b["count"] for b in doc["facets"]["kind"]) == doc["numberMatched"] == 3


def test_anonymous_visitors_see_public_entries_only(world: World, monkeypatch) -> None:
    w, s = world, world.slugs
    anon = records_as(w, None, monkeypatch)
    _until(lambda: len(anon.collection_items("services", q=w.tag)["features"]) == 2, "index")
    assert found(anon.collection_items("services", q=w.tag)) == {s["public"], s["farm"]}
    for hidden in (s["users"], s["project"]):
        r = requests.get(f"{w.base}collections/services/items/{hidden}", timeout=30)
        assert r.status_code == 404, hidden
        assert r.json()["code"] == 404
    # The HTML page a browser gets shows the same, escaped, with facet counts.
    r = requests.get(
        f"{w.base}collections/services/items", params={"q": w.tag},
        headers={"Accept": "text/html"}, timeout=30,
    )  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert s["public"] in r.text and s["farm"] in r.text
    assert s["users"] not in r.text and s["project"] not in r.text
    assert "<strong>2</strong> entries found" in r.text
    # A bad parameter: a clear 400, through the proxy.
    r = requests.get(f"{w.base}collections/services/items", params={"limit": "0"}, timeout=30)
    assert r.status_code == 400 and r.json()["code"] == 400
