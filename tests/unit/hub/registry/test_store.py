"""The registry's store on a real database (SQLite and PostgreSQL): requests, the
compare-and-set transitions, versions, slugs, published entries, routes, health."""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from twinhub import db
from twinhub.db.models import RegistryEntryVersion, RegistryEvent, RegistryRequest
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


@pytest.mark.parametrize("rival_is", ["newer", "older"])
def test_of_two_racing_requests_for_one_slug_exactly_one_is_live(twinhub_db, monkeypatch, rival_is):
    """B checks the slug (free), then A is created and committed (A's caller got its 201),
    then B inserts and commits: the database's live-slug index refuses B with the 409, and
    nothing of B is stored. Whether A's row is dated before or after B's does not matter."""
    real = store._live_with_slug
    rival: dict = {}

    def check_then_rival(s, slug):
        out = real(s, slug)
        if not rival:  # B's own check: A slips in now
            monkeypatch.setattr(store, "_live_with_slug", real)
            if rival_is == "newer":
                rival.update(create(twinhub_db, provider="alice"))
            else:
                rival.update(create_direct(twinhub_db, slug))
        return out

    monkeypatch.setattr(store, "_live_with_slug", check_then_rival)
    with pytest.raises(store.StoreError) as e:
        create(twinhub_db, provider="bob")
    assert e.value.status == 409 and "slug 'flood-maps' is taken" in e.value.message
    with db.session(twinhub_db) as s:
        rows = list(s.execute(select(RegistryRequest.id, RegistryRequest.state)))
        events = set(s.scalars(select(RegistryEvent.request_id)))
        versions = set(s.scalars(select(RegistryEntryVersion.request_id)))
    assert rows == [(rival["id"], "submitted")]
    assert events <= {rival["id"]} and versions <= {rival["id"]}


def test_racing_threads_for_one_slug_leave_one_live_request(twinhub_db):
    """Several providers submit one slug at once (real threads, real connections)."""
    results: list[object] = []
    barrier = threading.Barrier(4)

    def submit(i):
        barrier.wait()
        try:
            results.append(create(twinhub_db, provider=f"p{i}")["id"])
        except store.StoreError as e:
            results.append(e.status)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [r for r in results if isinstance(r, str)]
    assert len(ids) == 1 and sorted(r for r in results if not isinstance(r, str)) == [409] * 3
    with db.session(twinhub_db) as s:
        assert list(s.scalars(select(RegistryRequest.id))) == ids


@pytest.mark.parametrize("process_lock", [True, False], ids=["process-lock", "advisory-only"])
def test_racing_creations_of_one_provider_stay_within_max_open(
    twinhub_db, monkeypatch, process_lock
):
    """Count-then-insert raced by one provider (real threads, real connections): at most
    ``max_open`` are created. Without the process lock (as between two replicas) the
    PostgreSQL advisory lock alone must hold."""
    if not process_lock:
        if not twinhub_db.startswith("postgresql"):
            pytest.skip("replicas share a database only on PostgreSQL")
        monkeypatch.setattr(store, "_PROVIDER_LOCKS", (contextlib.nullcontext(),))
    n, cap = 8, 2
    results: list[object] = []
    barrier = threading.Barrier(n)

    def submit(i):
        barrier.wait()
        try:
            store.create_request(
                twinhub_db, provider="pat", entry=entry(f"svc-{i}"), resources={},
                activity="", max_open=cap,
            )  # fmt: skip
            results.append("created")
        except store.StoreError as e:
            results.append(e.status)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=str) == [429] * (n - cap) + ["created"] * cap
    with db.session(twinhub_db) as s:
        assert len(list(s.scalars(select(RegistryRequest.id)))) == cap


def test_a_move_back_to_a_live_state_that_collides_is_a_409(twinhub_db):
    """The workflow has no such move, but the store answers the 409 rather than a 500 if a
    dead request were ever moved back while another holds its slug."""
    old = create(twinhub_db)
    store.transition(twinhub_db, old["id"], expect="submitted", to="retired", actor="pat")
    create(twinhub_db, provider="someone-else")
    with pytest.raises(store.StoreError) as e:
        store.transition(twinhub_db, old["id"], expect="retired", to="submitted", actor="pat")
    assert e.value.status == 409 and "is taken" in e.value.message
    assert store.get_request(twinhub_db, old["id"])["state"] == "retired"


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
    assert store.generation(twinhub_db) == g0  # the catalogue did not change
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


def test_open_requests_and_comments_are_capped(twinhub_db):
    def new(slug, provider="pat", max_open=2):
        return store.create_request(
            twinhub_db, provider=provider, entry=entry(slug), resources={}, activity="",
            max_open=max_open,
        )  # fmt: skip

    a = new("aa")
    new("bb")
    with pytest.raises(store.StoreError) as e:
        new("cc")
    assert e.value.status == 429 and "'pat' has 2 requests waiting" in e.value.message
    assert store.count_requests(twinhub_db) == 2  # nothing stored
    new("cc", provider="olga")  # another provider
    new("cc2", max_open=None)  # no cap asked
    # Decided requests do not count.
    store.transition(twinhub_db, a["id"], expect="submitted", to="retired", actor="pat")
    d = new("dd", max_open=3)  # pat: bb, cc2, dd open
    store.transition(twinhub_db, d["id"], expect="submitted", to="evaluated", actor="platform")
    with pytest.raises(store.StoreError):
        new("ee", max_open=3)

    for _ in range(2):
        store.add_comment(twinhub_db, a["id"], actor="rita", comment="x", max_comments=2)
    with pytest.raises(store.StoreError) as e:
        store.add_comment(twinhub_db, a["id"], actor="rita", comment="x", max_comments=2)
    assert e.value.status == 429
    events = store.get_request(twinhub_db, a["id"])["events"]
    assert sum(ev["kind"] == "comment" for ev in events) == 2


def test_paging_and_the_evaluation_queue(twinhub_db):
    made = [create(twinhub_db, slug=f"s{i}", provider=f"p{i % 2}") for i in range(5)]
    everything = [r["id"] for r in store.list_requests(twinhub_db)]
    assert len(everything) == 5
    assert [r["id"] for r in store.list_requests(twinhub_db, limit=2, offset=1)] == everything[1:3]
    assert store.count_requests(twinhub_db) == 5
    assert store.count_requests(twinhub_db, provider="p0") == 3
    assert store.count_requests(twinhub_db, provider="p0", state="approved") == 0
    assert store.queue(twinhub_db, "submitted") == [(r["id"], r["provider"]) for r in made]
    assert store.queue(twinhub_db, "submitted", 2) == [(r["id"], r["provider"]) for r in made[:2]]


def test_generation_moves_only_with_the_catalogue(twinhub_db):
    """Submissions, evaluations, reviews, comments and edits before integration leave the
    search index as it is; entering, changing in and leaving ``integrated`` do not."""
    a = create(twinhub_db, "alpha")
    for frm, to in (("submitted", "evaluated"), ("evaluated", "approved")):
        store.transition(twinhub_db, a["id"], expect=frm, to=to, actor="x")
    gens = [store.generation(twinhub_db)]

    def same():
        assert store.generation(twinhub_db) == gens[-1]

    def moved():
        g = store.generation(twinhub_db)
        assert g != gens[-1]  # (the last one is back to the first: both catalogues empty)
        gens.append(g)

    store.transition(twinhub_db, a["id"], expect="approved", to="integrated", actor="root")
    moved()
    b = create(twinhub_db, "beta")  # a submission
    same()
    store.transition(twinhub_db, b["id"], expect="submitted", to="evaluated", actor="platform")
    store.transition(twinhub_db, b["id"], expect="evaluated", to="changes-requested", actor="rita")  # fmt: skip
    store.add_comment(twinhub_db, b["id"], actor="rita", comment="more, please")
    store.transition(twinhub_db, b["id"], expect="changes-requested", to="submitted", actor="pat", entry=entry("beta", name="B"))  # fmt: skip
    store.transition(twinhub_db, b["id"], expect="submitted", to="evaluated", actor="platform")
    store.transition(twinhub_db, b["id"], expect="evaluated", to="rejected", actor="rita")
    same()
    store.update_entry(twinhub_db, a["id"], expect="integrated", entry=entry("alpha", name="A2"), actor="root")  # fmt: skip
    moved()
    store.transition(twinhub_db, a["id"], expect="integrated", to="suspended", actor="root")
    moved()
    store.transition(twinhub_db, a["id"], expect="suspended", to="integrated", actor="root")
    moved()
    store.transition(twinhub_db, a["id"], expect="integrated", to="retired", actor="root")
    moved()


def test_health_rows_go_with_their_request(twinhub_db):
    """A slug's health row is dropped when its request is retired, and when a request of
    that slug is integrated (a new service is "unknown" until its own first check)."""

    def health():
        return store.health_all(twinhub_db)

    old = create(twinhub_db, "alpha")
    for frm, to in (("submitted", "evaluated"), ("evaluated", "approved"), ("approved", "integrated")):  # fmt: skip
        store.transition(twinhub_db, old["id"], expect=frm, to=to, actor="x")
    store.record_health(twinhub_db, "alpha", status="up", latency_ms=5.0, http_status=200, detail="")  # fmt: skip
    store.record_health(twinhub_db, "beta", status="down", latency_ms=None, http_status=None, detail="")  # fmt: skip
    store.transition(twinhub_db, old["id"], expect="integrated", to="suspended", actor="root")
    store.transition(twinhub_db, old["id"], expect="suspended", to="integrated", actor="root")
    assert set(health()) == {"alpha", "beta"}  # resuming keeps the service's own row
    store.transition(twinhub_db, old["id"], expect="integrated", to="retired", actor="root")
    assert set(health()) == {"beta"}
    # A row written after the retirement (a check in flight) goes at the next integration.
    store.record_health(twinhub_db, "alpha", status="up", latency_ms=5.0, http_status=200, detail="")  # fmt: skip
    new = create(twinhub_db, "alpha", provider="olga")
    for frm, to in (("submitted", "evaluated"), ("evaluated", "approved")):
        store.transition(twinhub_db, new["id"], expect=frm, to=to, actor="x")
    assert set(health()) == {"alpha", "beta"}
    store.transition(twinhub_db, new["id"], expect="approved", to="integrated", actor="root")
    assert set(health()) == {"beta"}


def test_iso_is_one_utc_format_whatever_the_backend():
    naive = datetime(2026, 12, 5, 10, 0, 0, 5)  # SQLite hands these back (stored as UTC)
    assert db.iso(naive) == "2026-12-05T10:00:00.000005+00:00"
    cet = datetime(2026, 12, 5, 11, 0, tzinfo=timezone(timedelta(hours=1)))
    assert db.iso(cet) == "2026-12-05T10:00:00+00:00"
    assert db.iso(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00+00:00"
    assert db.iso(None) is None
