"""The processing tables (store.py) on a real database: SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import delete

from twinhub import db
from twinhub.db.models import ProcessingLog
from twinhub.services.processing import store


def job_row(jid: str, owner: str = "alice", project: str = "personal", **more) -> dict:
    t = more.pop("created_at", store.now())
    return {
        "id": jid,
        "owner": owner,
        "project": project,
        "process_id": "echo",
        "process_version": "1.0.0",
        "inputs": {"stringInput": "x"},
        "request": {},
        "status": "accepted",
        "stage": "queued",
        "progress": 0,
        "stages": {"queued": {"started": store.rfc3339(t), "progress": 0}},
        "message": "accepted",
        "attempt": 0,
        "output_prefix": f"s3://home-{owner}/processing/{jid}/",
        "wall_time": 60.0,
        "max_output_bytes": 10_000,
        "created_at": t,
        "updated_at": t,
        **more,
    }


def add(db_url: str, jid: str, **more) -> dict:
    row = store.insert_job(db_url, job_row(jid, **more), max_queued=100, log_text="accepted")
    assert row is not None
    return row


# -- user processes ---------------------------------------------------------------------------
def test_user_process_versions_and_ownership(twinhub_db):
    kw = dict(
        visibility="private", description={"id": "p"}, code=b"\x80\x05", source="", python="3.12"
    )
    first = store.save_user_process(twinhub_db, id="p", owner="alice", **kw)
    assert (first["version"], first["owner"], first["code"]) == (1, "alice", b"\x80\x05")
    second = store.save_user_process(
        twinhub_db, id="p", owner="alice", **{**kw, "visibility": "project:ocean-lab"}
    )
    assert second["version"] == 2 and second["visibility"] == "project:ocean-lab"
    assert (
        second["created_at"] == first["created_at"] and second["updated_at"] >= first["updated_at"]
    )
    with pytest.raises(store.Taken) as e:
        store.save_user_process(twinhub_db, id="p", owner="bob", **kw)
    assert "taken" in str(e.value)
    # The refusal changed nothing.
    assert store.get_user_process(twinhub_db, "p")["owner"] == "alice"
    assert store.get_user_process(twinhub_db, "p")["version"] == 2
    store.save_user_process(twinhub_db, id="b", owner="bob", **kw)
    assert [p["id"] for p in store.list_user_processes(twinhub_db)] == ["b", "p"]
    assert store.count_user_processes(twinhub_db, "alice") == 1
    assert store.delete_user_process(twinhub_db, "p") is True
    assert store.delete_user_process(twinhub_db, "p") is False
    assert store.get_user_process(twinhub_db, "p") is None
    assert store.count_user_processes(twinhub_db, "alice") == 0


# -- jobs ----------------------------------------------------------------------------------------
def test_insert_respects_the_queue_cap_and_stores_nothing_past_it(twinhub_db):
    for i in range(2):
        assert store.insert_job(twinhub_db, job_row(f"j{i}"), max_queued=2, log_text="ok")
    with pytest.raises(store.Full) as full:
        store.insert_job(twinhub_db, job_row("j2"), max_queued=2, log_text="ok")
    assert (full.value.limit, full.value.count) == ("max_queued_per_user", 2)
    assert store.get_job(twinhub_db, "j2") is None
    assert store.get_logs(twinhub_db, "j2") == []
    # Another user's queue is their own.
    assert store.insert_job(twinhub_db, job_row("k0", owner="bob"), max_queued=2, log_text="ok")
    row = store.get_job(twinhub_db, "j0")
    assert row["created_at"].tzinfo is not None
    assert [ln["text"] for ln in store.get_logs(twinhub_db, "j0")] == ["ok"]


def test_insert_respects_the_cap_of_stored_jobs_whatever_their_status(twinhub_db):
    """M9: ended jobs count too (they stay retention_days); another user's are theirs."""
    add(twinhub_db, "s0")
    store.update_job(twinhub_db, "s0", status="failed", finished_at=store.now())
    add(twinhub_db, "s1")
    store.update_job(twinhub_db, "s1", status="successful", finished_at=store.now())
    with pytest.raises(store.Full) as full:
        store.insert_job(twinhub_db, job_row("s2"), max_queued=10, max_stored=2, log_text="x")
    assert (full.value.limit, full.value.count) == ("max_jobs_per_user", 2)
    assert store.get_job(twinhub_db, "s2") is None and store.get_logs(twinhub_db, "s2") == []
    assert store.insert_job(twinhub_db, job_row("b0", owner="bob"), max_queued=10,
                            max_stored=2, log_text="x")  # fmt: skip
    store.delete_job(twinhub_db, "s0")
    assert store.insert_job(twinhub_db, job_row("s2"), max_queued=10, max_stored=2, log_text="x")


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("service", "[log trimmed] x"),
        ("service", "[log trimmed]"),
        ("service", "[log trimmed] 9x earlier lines dropped"),
        ("runner", "[log trimmed] 1 earlier lines dropped (at most 5 are kept)"),
    ],
)
def test_a_line_that_looks_like_the_trim_mark_is_an_ordinary_one(twinhub_db, source, text):
    """L16: the log's first line only looks like the marker (a runner's words): it is
    dropped like any line and the count stays right."""
    add(twinhub_db, "t1")
    with db.session(twinhub_db) as s:  # the look-alike is to be the log's first line
        s.execute(delete(ProcessingLog))
    t = store.now()

    def line(src: str, txt: str) -> dict:
        return {"at": t, "stage": "processing", "level": "info", "source": src, "text": txt}

    lines = [line(source, text)] + [line("runner", f"l{i}") for i in range(4)]
    store.add_logs(twinhub_db, "t1", lines, max_lines=100)
    store.add_logs(twinhub_db, "t1", [line("runner", "l4"), line("runner", "l5")], max_lines=5)
    got = [g["text"] for g in store.get_logs(twinhub_db, "t1")]
    marker = f"{store.TRIM_MARK} 3 earlier lines dropped (at most 5 are kept)"
    assert got == [marker, "l2", "l3", "l4", "l5"]


def test_list_filters_pages_and_orders_newest_first(twinhub_db):
    t = store.now()
    add(twinhub_db, "a1", created_at=t - timedelta(seconds=3))
    add(twinhub_db, "a2", created_at=t - timedelta(seconds=2), process_id="regrid")
    add(twinhub_db, "b1", owner="bob", created_at=t - timedelta(seconds=1))
    rows, total = store.list_jobs(twinhub_db, owner="alice")
    assert [r["id"] for r in rows] == ["a2", "a1"] and total == 2
    rows, total = store.list_jobs(twinhub_db, owner=None, limit=1, offset=1)
    assert [r["id"] for r in rows] == ["a2"] and total == 3
    rows, total = store.list_jobs(twinhub_db, owner=None, process_ids=["regrid"])
    assert [r["id"] for r in rows] == ["a2"] and total == 1
    rows, total = store.list_jobs(twinhub_db, owner=None, statuses=["running"])
    assert rows == [] and total == 0


def test_claim_respects_user_and_project_limits(twinhub_db):
    t = store.now()
    for i, (owner, project) in enumerate(
        [("alice", "p"), ("alice", "p"), ("alice", "p"), ("bob", "p"), ("carol", "q")]
    ):
        add(twinhub_db, f"j{i}", owner=owner, project=project, created_at=t + timedelta(seconds=i))
    claim = dict(max_per_user=2, max_per_project=3, secret_hash="h" * 64)
    assert store.claim_job(twinhub_db, "j0", **claim)["status"] == "running"
    got = store.claim_job(twinhub_db, "j1", **claim)
    assert (got["stage"], got["attempt"], got["secret_hash"]) == ("scheduling", 1, "h" * 64)
    assert got["stages"]["queued"]["finished"] and got["stages"]["scheduling"]["started"]
    assert got["started_at"] is not None
    assert store.claim_job(twinhub_db, "j2", **claim) is None  # alice: 2 running
    assert store.claim_job(twinhub_db, "j3", **claim)["owner"] == "bob"  # project p: 3 now
    add(twinhub_db, "j5", owner="dave", project="p")
    assert store.claim_job(twinhub_db, "j5", **claim) is None  # project p is full
    assert store.claim_job(twinhub_db, "j4", **claim) is not None  # project q is not
    assert store.claim_job(twinhub_db, "j0", **claim) is None  # not queued any more
    assert store.get_job(twinhub_db, "j2")["status"] == "accepted"


def test_two_claimers_race_and_only_the_limit_is_started(twinhub_db):
    """Eight threads (as replicas) claim eight queued jobs of one user at once with a limit
    of two running: exactly two start."""
    for i in range(8):
        add(twinhub_db, f"r{i}")
    won: list[str] = []
    barrier = threading.Barrier(8)

    def claim(jid: str) -> None:
        barrier.wait()
        if store.claim_job(twinhub_db, jid, max_per_user=2, max_per_project=10, secret_hash="x"):
            won.append(jid)

    threads = [threading.Thread(target=claim, args=(f"r{i}",)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(won) == 2
    assert len(store.jobs_with_status(twinhub_db, "running")) == 2


def test_update_is_conditional_on_status_and_carries_logs(twinhub_db):
    add(twinhub_db, "u1")
    line = {"at": store.now(), "stage": "queued", "level": "info", "source": "service", "text": "x"}
    assert (
        store.update_job(twinhub_db, "u1", expect=("running",), message="no", logs=[line]) is None
    )
    assert store.get_job(twinhub_db, "u1")["message"] == "accepted"
    assert len(store.get_logs(twinhub_db, "u1")) == 1  # the refused change added no line
    row = store.update_job(
        twinhub_db, "u1", expect=("accepted",), status="dismissed", logs=[line], max_lines=100
    )
    assert row["status"] == "dismissed"
    assert [ln["text"] for ln in store.get_logs(twinhub_db, "u1")] == ["accepted", "x"]


def test_logs_are_trimmed_with_one_marker_first(twinhub_db):
    add(twinhub_db, "l1")

    def lines(n: int, start: int) -> list[dict]:
        t = store.now()
        return [
            {"at": t, "stage": "processing", "level": "info", "source": "runner", "text": f"l{i}"}
            for i in range(start, start + n)
        ]

    store.add_logs(twinhub_db, "l1", lines(9, 0), max_lines=10)
    assert len(store.get_logs(twinhub_db, "l1")) == 10  # "accepted" + 9
    store.add_logs(twinhub_db, "l1", lines(5, 9), max_lines=10)
    got = store.get_logs(twinhub_db, "l1")
    assert len(got) == 10
    assert got[0]["text"].startswith(store.TRIM_MARK) and " 6 earlier" in got[0]["text"]
    assert [g["text"] for g in got[1:]] == [f"l{i}" for i in range(5, 14)]
    store.add_logs(twinhub_db, "l1", lines(3, 14), max_lines=10)
    got = store.get_logs(twinhub_db, "l1")
    assert len(got) == 10 and " 9 earlier" in got[0]["text"]
    assert got[-1]["text"] == "l16"
    # Paging by id.
    after = store.get_logs(twinhub_db, "l1", after=got[5]["id"], limit=2)
    assert [g["text"] for g in after] == [got[6]["text"], got[7]["text"]]


def test_retention_and_delete_remove_jobs_with_their_logs(twinhub_db):
    old = store.now() - timedelta(days=40)
    add(twinhub_db, "old")
    store.update_job(twinhub_db, "old", status="successful", finished_at=old)
    add(twinhub_db, "new")
    store.update_job(twinhub_db, "new", status="failed", finished_at=store.now())
    add(twinhub_db, "live")
    store.update_job(twinhub_db, "old", runner={"kind": "fake", "pid": 7})
    gone = store.delete_ended_before(twinhub_db, store.now() - timedelta(days=30))
    assert gone == [("old", {"kind": "fake", "pid": 7})]
    assert store.get_job(twinhub_db, "old") is None and store.get_logs(twinhub_db, "old") == []
    assert store.get_job(twinhub_db, "new") and store.get_job(twinhub_db, "live")
    assert store.delete_job(twinhub_db, "new") is True
    assert store.get_logs(twinhub_db, "new") == []
    assert sorted(store.count_jobs(twinhub_db)) == [("accepted", "queued", 1)]


def test_running_counts_per_owner_and_project(twinhub_db):
    for jid, owner, project in [("a", "alice", "p"), ("b", "alice", "q"), ("c", "bob", "p")]:
        add(twinhub_db, jid, owner=owner, project=project)
        store.claim_job(twinhub_db, jid, max_per_user=5, max_per_project=5, secret_hash="h")
    add(twinhub_db, "d", owner="bob", project="q")  # queued: not counted
    assert store.running_counts(twinhub_db) == ({"alice": 2, "bob": 1}, {"p": 2, "q": 1})
