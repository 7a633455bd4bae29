"""The registry's store on a real database (SQLite and PostgreSQL): requests, the
compare-and-set transitions, versions, slugs, published entries, routes, health."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from twinhub import db
from twinhub.db.models import RegistryEvent, RegistryRequest
from twinhub.services.registry import store
from twinhub.services.registry.config import TwinhubRegistry
from twinhub.services.registry.entry import validate_entry


def entry(slug="flood-maps", **changes):
    doc = {
        "name": "Flood maps",
        "slug": slug,
        "provider": "Example Institute",
        "description": "Daily flood extents.",
        "thematic_areas": ["water"],
        "kind": "web-application",
        "endpoints": [{"url": "https://floods.example.org/", "type": "other"}],
        **changes,
    }
    return validate_entry(doc, TwinhubRegistry())


def create(db_url, slug="flood-maps", provider="pat"):
    return store.create_request(
        db_url,
        provider=provider,
        entry=entry(slug),
        resources={"project": "climate", "cpu": 1},
        activity="a year of daily maps",
    )


def test_create_and_get(twinhub_db):
    req = create(twinhub_db)
    assert req["state"] == "submitted" and req["version"] == 1 and req["provider"] == "pat"
    assert req["resources"] == {"project": "climate", "cpu": 1}
    assert req["findings"] is None and req["upstream"] is None
    assert [(e["kind"], e["from"], e["to"], e["actor"]) for e in req["events"]] == [
        ("transition", None, "submitted", "pat")
    ]
    assert req["created"].endswith("+00:00")
    assert store.get_request(twinhub_db, req["id"]) == req
    assert store.get_request(twinhub_db, "nope") is None
    assert store.versions(twinhub_db, req["id"])[0]["version"] == 1


def test_a_live_slug_cannot_be_taken_twice_but_a_retired_one_can(twinhub_db):
    first = create(twinhub_db)
    with pytest.raises(store.StoreError) as e:
        create(twinhub_db, provider="someone-else")
    assert e.value.status == 409 and "slug 'flood-maps' is taken" in e.value.message
    with db.session(twinhub_db) as s:
        assert s.scalar(select(RegistryRequest.id).where(RegistryRequest.provider == "someone-else")) is None  # fmt: skip
    store.transition(twinhub_db, first["id"], expect="submitted", to="retired", actor="pat")
    again = create(twinhub_db, provider="someone-else")
    assert again["state"] == "submitted"


def test_the_later_of_two_racing_requests_withdraws_itself(twinhub_db, monkeypatch):
    """A rival inserted after our check but before our commit (PostgreSQL: neither
    transaction saw the other's row) is found by the re-check after commit."""
    rival = {}
    real = store._live_with_slug
    calls = []

    def live_then_rival(s, slug):
        out = real(s, slug)
        if not calls:  # our first check: then the rival commits, earlier than us
            calls.append(1)
            rival.update(create_direct(twinhub_db, slug))
        return out

    monkeypatch.setattr(store, "_live_with_slug", live_then_rival)
    with pytest.raises(store.StoreError, match="is taken"):
        create(twinhub_db)
    monkeypatch.setattr(store, "_live_with_slug", real)
    with db.session(twinhub_db) as s:
        ids = list(s.scalars(select(RegistryRequest.id)))
        events = list(s.scalars(select(RegistryEvent.request_id)))
    assert ids == [rival["id"]] and set(events) <= {rival["id"]}


def create_direct(db_url, slug):
    """A request written as another process would, dated a minute back."""
    with db.session(db_url) as s:
        now = store._now() - timedelta(minutes=1)
        r = RegistryRequest(
            id="rival", slug=slug, provider="rival", state="submitted", entry=entry(slug),
            version=1, resources={}, activity="", created_at=now, updated_at=now,
        )  # fmt: skip
        s.add(r)
    return {"id": "rival"}


def test_transitions_compare_and_set(twinhub_db):
    req = create(twinhub_db)
    done = store.transition(
        twinhub_db,
        req["id"],
        expect="submitted",
        to="evaluated",
        actor="platform",
        findings=[{"check": "health", "ok": False, "message": "private address"}],
    )
    assert done["state"] == "evaluated"
    assert done["findings"][0]["message"] == "private address"
    kinds = [(e["kind"], e["actor"]) for e in done["events"]]
    assert kinds[-2:] == [("evaluation", "platform"), ("transition", "platform")]
    assert "1 of 1 check(s) flagged: private address" in done["events"][-2]["comment"]
    # A second caller that read "submitted" too loses, and learns the state.
    with pytest.raises(store.Conflict) as e:
        store.transition(twinhub_db, req["id"], expect="submitted", to="evaluated", actor="x")
    assert e.value.state == "evaluated" and e.value.status == 409
    assert "'evaluated'" in e.value.message
    after = store.get_request(twinhub_db, req["id"])
    assert after == done  # nothing changed by the refused call
    with pytest.raises(store.StoreError) as e:
        store.transition(twinhub_db, "nope", expect="submitted", to="evaluated", actor="x")
    assert e.value.status == 404


def test_racing_reviewers_only_one_wins(twinhub_db):
    req = create(twinhub_db)
    store.transition(twinhub_db, req["id"], expect="submitted", to="evaluated", actor="platform")
    results: list[str] = []

    def review(to):
        try:
            store.transition(twinhub_db, req["id"], expect="evaluated", to=to, actor=to)
            results.append("won")
        except store.Conflict:
            results.append("lost")

    threads = [threading.Thread(target=review, args=(to,)) for to in ("approved", "rejected")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost", "won"]
    events = store.get_request(twinhub_db, req["id"])["events"]
    assert [e["to"] for e in events if e["kind"] == "transition"][-1] in ("approved", "rejected")
    assert sum(1 for e in events if e["from"] == "evaluated") == 1


def test_new_entry_versions(twinhub_db):
    req = create(twinhub_db)
    rid = req["id"]
    store.transition(twinhub_db, rid, expect="submitted", to="evaluated", actor="platform")
    store.transition(twinhub_db, rid, expect="evaluated", to="changes-requested", actor="rita")
    changed = entry(description="Better words.")
    done = store.transition(
        twinhub_db, rid, expect="changes-requested", to="submitted", actor="pat", entry=changed
    )
    assert done["version"] == 2 and done["entry"]["description"] == "Better words."
    with pytest.raises(store.StoreError, match="slug cannot change"):
        store.update_entry(twinhub_db, rid, expect="submitted", entry=entry("other"), actor="pat")
    with pytest.raises(store.Conflict):
        store.update_entry(twinhub_db, rid, expect="integrated", entry=changed, actor="pat")
    assert store.get_request(twinhub_db, rid)["version"] == 2
    assert [v["version"] for v in store.versions(twinhub_db, rid)] == [2, 1]


def test_published_generation_route_and_health(twinhub_db):
    a = create(twinhub_db, "alpha")
    b = create(twinhub_db, "beta")
    g0 = store.generation(twinhub_db)
    assert store.published(twinhub_db) == [] and store.route(twinhub_db, "alpha") is None
    for to, frm in (("evaluated", "submitted"), ("approved", "evaluated")):
        store.transition(twinhub_db, a["id"], expect=frm, to=to, actor="x")
    assert store.generation(twinhub_db) != g0
    g1 = store.generation(twinhub_db)
    assert store.generation(twinhub_db) == g1  # stable while nothing changes
    store.transition(
        twinhub_db, a["id"], expect="approved", to="integrated", actor="root",
        integration={"upstream": "http://127.0.0.1:9/", "allow_private": True, "sandbox": True},
    )  # fmt: skip
    rows = store.published(twinhub_db)
    assert [r["slug"] for r in rows] == ["alpha"]
    assert set(rows[0]) == {
        "id", "slug", "provider", "entry", "version", "upstream", "allow_private",
        "created", "updated",
    }  # fmt: skip
    assert rows[0]["upstream"] == "http://127.0.0.1:9/" and rows[0]["allow_private"] is True
    assert store.published_one(twinhub_db, "alpha")["id"] == a["id"]
    assert store.published_one(twinhub_db, "beta") is None
    r = store.route(twinhub_db, "alpha")
    assert r == {
        "slug": "alpha", "state": "integrated", "provider": "pat", "upstream": "http://127.0.0.1:9/",
        "allow_private": True, "entry": a["entry"], "sandbox": True,
    }  # fmt: skip
    store.transition(twinhub_db, a["id"], expect="integrated", to="suspended", actor="root")
    assert store.route(twinhub_db, "alpha")["state"] == "suspended"
    assert store.published(twinhub_db) == []
    assert store.routed_slugs(twinhub_db) == ["alpha"]
    store.transition(twinhub_db, a["id"], expect="suspended", to="retired", actor="root")
    assert store.route(twinhub_db, "alpha") is None
    assert store.counts_by_state(twinhub_db) == {"retired": 1, "submitted": 1}
    assert store.list_requests(twinhub_db, provider="pat", state="submitted")[0]["id"] == b["id"]
    assert "events" not in store.list_requests(twinhub_db)[0]
    assert store.ids_in_state(twinhub_db, "submitted") == [b["id"]]

    assert store.health_all(twinhub_db) == {}
    store.record_health(twinhub_db, "alpha", status="up", latency_ms=3.5, http_status=200, detail="")  # fmt: skip
    store.record_health(twinhub_db, "alpha", status="down", latency_ms=None, http_status=None, detail="refused")  # fmt: skip
    h = store.health_all(twinhub_db)["alpha"]
    assert (h["status"], h["latency_ms"], h["http_status"], h["detail"]) == ("down", None, None, "refused")  # fmt: skip
    assert h["checked_at"].endswith("+00:00")


def test_comments(twinhub_db):
    req = create(twinhub_db)
    e = store.add_comment(twinhub_db, req["id"], actor="rita", comment="Which licence?")
    assert (e["kind"], e["actor"], e["comment"]) == ("comment", "rita", "Which licence?")
    assert store.get_request(twinhub_db, req["id"])["events"][-1] == e
    with pytest.raises(store.StoreError) as err:
        store.add_comment(twinhub_db, "nope", actor="rita", comment="x")
    assert err.value.status == 404
