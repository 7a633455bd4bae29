"""The job manager (jobs.py) on a real database (SQLite and PostgreSQL), with the fakes of
conftest.py for what cannot run here (STAC, the backend, the gateway and S3 edges)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from sqlalchemy import select

from twinhub import db
from twinhub.db.models import BudgetState, ProcessingJob
from twinhub.services.asgi import BadRequest
from twinhub.services.processing import catalogue, jobs, store
from twinhub.services.processing.jobs import JobManager
from twinhub.services.processing.metrics import REGISTRY
from twinhub.services.processing.model import JobFailed, NoSuchJob, ResultNotReady, status_doc
from twinhub.services.processing.reports import Gone
from twinlab.processing.schemas import TEMPLATED, describe_user_process

from .conftest import ALICE, BOB, ROOT, SERVICE_TOKEN, make_ctx

ECHO = TEMPLATED["echo"]
#: A user process whose schema is cheap to hold and slow to check: 2000 branches per value.
WIDE = describe_user_process(
    "wide", "t", "", {"x": {"type": "array", "items": {"anyOf": [{"const": i} for i in range(2000)]}}},
    {"y": int}, "1",
)  # fmt: skip
ZONAL = TEMPLATED["zonal-mean"]
JAN = "2020-01-01T00:00:00Z/2020-01-31T00:00:00Z"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def run(coro):
    return asyncio.run(coro)


async def submit(m: JobManager, caller=ALICE, process=ECHO, inputs=None, project=None) -> dict:
    inputs = {"stringInput": "hello"} if inputs is None else inputs
    return await m.submit(caller, process, inputs, request={}, project=project)


def jobs_in_db(db_url: str) -> list[str]:
    with db.session(db_url) as s:
        return list(s.scalars(select(ProcessingJob.id)))


# -- admission -----------------------------------------------------------------------------------
def test_submit_stores_an_accepted_job_and_answers_its_status(proc_ctx):
    before = metric("twinhub_processing_submissions_total", process="echo", outcome="accepted")

    async def main():
        m = JobManager(proc_ctx)
        doc = await submit(m)
        return m, doc

    m, doc = run(main())
    assert doc["status"] == "accepted" and doc["stage"] == "queued" and doc["progress"] == 0
    assert doc["processID"] == "echo" and doc["type"] == "process"
    assert doc["owner"] == "alice" and doc["project"] == "personal" and doc["attempt"] == 0
    assert doc["created"].endswith("Z") and "started" not in doc and "finished" not in doc
    assert doc["links"][0] == {
        "href": f"http://127.0.0.1:9/services/processing/jobs/{doc['jobID']}",
        "rel": "self",
        "type": "application/json",
        "title": "this job",
    }
    assert not any(link["rel"].endswith("/results") for link in doc["links"])
    row = store.get_job(proc_ctx.db_url, doc["jobID"])
    assert row["inputs"] == {"stringInput": "hello", "pause": 0}  # defaults filled
    assert row["output_prefix"].endswith(f"/processing/{doc['jobID']}/")
    assert row["wall_time"] == proc_ctx.settings.wall_time
    assert [ln["text"] for ln in m.logs(ALICE, doc["jobID"])][0].startswith("accepted")
    after = metric("twinhub_processing_submissions_total", process="echo", outcome="accepted")
    assert after == before + 1


@pytest.mark.parametrize(
    ("process", "inputs", "words"),
    [
        (ECHO, {"stringInput": 3}, "stringInput"),
        (ECHO, {"nope": 1, "stringInput": "x"}, "unknown input 'nope'"),
        (ZONAL, {"item": "no-such-item", "variable": "t2m"}, "unknown item 'no-such-item'"),
        (ZONAL, {"item": "dup", "variable": "t2m"}, "several collections (lake, other)"),
        (
            ZONAL,
            {"item": "healpix-t2m", "collection": "other", "variable": "t2m"},
            "unknown item 'healpix-t2m' in collection 'other'",
        ),
        (
            ZONAL,
            {"item": "healpix-t2m", "variable": "t2m", "datetime": "1990-01-01/2020-01-01"},
            "max_time_range_days",
        ),
        (
            ZONAL,
            {"item": "healpix-t2m", "variable": "t2m", "datetime": "2020-01-01/.."},
            "spans 365 days",
        ),
        (  # no datetime: every time step, the item's whole extent (M11)
            ZONAL,
            {"item": "healpix-t2m", "variable": "t2m"},
            "the items' time range (no 'datetime' given) spans 365 days; at most 100 days",
        ),
        # an item without a usable extent cannot bound an open range (review 2 R7)
        (
            ZONAL,
            {"item": "dup", "collection": "lake", "variable": "t2m"},
            "item 'dup' has no usable time extent (datetime or start_datetime/end_datetime) "
            "to bound the job's time range: give 'datetime' with both ends",
        ),
        (
            ZONAL,
            {"item": "dup", "collection": "lake", "variable": "t2m", "datetime": "2020-11-01/.."},
            "item 'dup' has no usable time extent",
        ),
        (ZONAL, {"item": "odd-time", "variable": "t2m"}, "item 'odd-time' has no usable"),
        (ZONAL, {"item": "odd-time", "variable": "t2m", "datetime": "../2020-01-02"}, "no usable"),
        # a check that would take hours is refused before it runs (review 2 R3)
        (WIDE, {"x": [-1] * 300}, "these inputs are too large for this process's schema"),
        (
            TEMPLATED["point-series"],
            {"item": "healpix-t2m", "variable": "t2m", "points": [[1, 2]] * 4, "datetime": JAN},
            "at most 3 (max_points)",
        ),
        (
            TEMPLATED["regrid"],
            {
                "item": "healpix-t2m",
                "variables": ["t2m"],
                "target": {"type": "healpix", "nside": 64},
                "datetime": JAN,
            },
            "max_target_cells",
        ),
    ],
)
def test_bad_input_is_400_and_stores_nothing(
    twinhub_db, tmp_path, fake_stac, fake_backend, released, process, inputs, words
):
    ctx = make_ctx(
        twinhub_db,
        tmp_path,
        fake_stac,
        fake_backend,
        max_points=3,
        max_target_cells=1000,
        max_time_range_days=100.0,
    )

    fake_stac.add("lake", "odd-time", "yesterday")  # a datetime that does not parse

    async def main():
        with pytest.raises(BadRequest) as e:
            await submit(JobManager(ctx), process=process, inputs=inputs)
        return e.value

    t = time.monotonic()
    err = run(main())
    assert err.status == 400 and words in err.message, err.message
    assert jobs_in_db(twinhub_db) == []
    assert time.monotonic() - t < 5


def test_inputs_are_checked_in_threads_of_their_own(proc_ctx, monkeypatch):
    # many costly checks at once queue there, not in the pool that reads the database
    seen = []
    real = jobs.schemas.validate_inputs

    def validate(process, inputs):
        seen.append(threading.current_thread().name)
        return real(process, inputs)

    monkeypatch.setattr(jobs.schemas, "validate_inputs", validate)
    run(submit(JobManager(proc_ctx)))
    assert len(seen) == 1 and seen[0].startswith("processing-validate")


def test_an_item_with_an_extent_bounds_an_open_end_and_a_closed_range_needs_none(proc_ctx):
    proc_ctx.settings.max_time_range_days = 400.0

    async def main():
        m = JobManager(proc_ctx)
        a = await submit(
            m,
            process=ZONAL,
            inputs={"item": "healpix-t2m", "variable": "t2m", "datetime": "2020-03-01/.."},
        )
        b = await submit(
            m,
            process=ZONAL,
            inputs={"item": "dup", "collection": "lake", "variable": "t2m", "datetime": JAN},
        )
        return a, b  # fmt: skip

    a, b = run(main())
    assert {a["status"], b["status"]} == {"accepted"}


def test_items_are_looked_up_with_the_service_token_and_fill_the_collection(proc_ctx, fake_stac):
    async def main():
        m = JobManager(proc_ctx)
        a = await submit(m, process=ZONAL, inputs={"item": "healpix-t2m", "variable": "t2m"})
        b = await submit(
            m, process=ZONAL, inputs={"item": "dup", "collection": "other", "variable": "t2m",
                                      "datetime": "2020-11-01/2020-11-30"}
        )  # fmt: skip
        return a, b

    a, b = run(main())
    assert store.get_job(proc_ctx.db_url, a["jobID"])["inputs"]["collection"] == "lake"
    assert store.get_job(proc_ctx.db_url, b["jobID"])["inputs"]["collection"] == "other"
    assert fake_stac.auth and set(fake_stac.auth) == {f"token {SERVICE_TOKEN}"}


def test_project_default_choice_and_refusal(proc_ctx):
    async def main():
        m = JobManager(proc_ctx)
        bob = await submit(m, caller=BOB)
        with pytest.raises(BadRequest) as e:
            await submit(m, caller=ALICE, project="ocean-lab")
        return bob, e.value

    bob, err = run(main())
    assert bob["project"] == "ocean-lab"
    assert err.status == 403 and "not one of alice's projects (personal)" in err.message
    assert jobs_in_db(proc_ctx.db_url) == [bob["jobID"]]


def test_an_exhausted_allocation_refuses_with_403(proc_ctx):
    with db.session(proc_ctx.db_url) as s:
        s.add(BudgetState(project="ocean-lab", budget="cpu_hours", used=10, limit=10,
                          fraction=1.0, level=100, over_since=store.now()))  # fmt: skip

    async def main():
        with pytest.raises(BadRequest) as e:
            await submit(JobManager(proc_ctx), caller=BOB)
        return e.value

    err = run(main())
    assert err.status == 403 and "ocean-lab" in err.message
    assert jobs_in_db(proc_ctx.db_url) == []


def test_the_queue_cap_is_429(twinhub_db, tmp_path, fake_stac, fake_backend, released):
    ctx = make_ctx(twinhub_db, tmp_path, fake_stac, fake_backend, max_queued_per_user=2)

    async def main():
        m = JobManager(ctx)
        await submit(m)
        await submit(m)
        with pytest.raises(BadRequest) as e:
            await submit(m)
        await submit(m, caller=BOB)  # bob's queue is his own
        return e.value

    err = run(main())
    assert err.status == 429 and "max_queued_per_user" in err.message
    assert len(jobs_in_db(twinhub_db)) == 3


# -- the queue and the runners ---------------------------------------------------------------------
def test_tick_starts_jobs_within_the_limits_oldest_first(
    twinhub_db, tmp_path, fake_stac, fake_backend, released
):
    ctx = make_ctx(twinhub_db, tmp_path, fake_stac, fake_backend, max_running_per_user=1)

    async def main():
        m = JobManager(ctx)
        first = await submit(m)
        second = await submit(m)
        await m.tick()
        await m.drain()
        return m, first, second

    m, first, second = run(main())
    assert [job["id"] for job, _ in fake_backend.started] == [first["jobID"]]
    job, secret = fake_backend.started[0]
    row = store.get_job(twinhub_db, first["jobID"])
    assert row["status"] == "running" and row["stage"] == "scheduling" and row["attempt"] == 1
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert row["runner"]["pid"] == 1000 and row["token_id"] == "tok-1"
    # The runner's token is minted by the manager, for the job's wall time and then some,
    # and handed to the backend (L17).
    seconds = int(ctx.settings.wall_time + ctx.settings.report_timeout) + 600
    assert released.minted == [("alice", seconds, f"twinhub processing job {first['jobID']}")]
    assert fake_backend.tokens == [("secret-token-1", "tok-1")]
    assert store.get_job(twinhub_db, second["jobID"])["status"] == "accepted"
    doc = m.status(ALICE, first["jobID"])
    assert doc["started"].endswith("Z") and "scheduling" in doc["stages"]
    assert doc["stages"]["queued"]["finished"]


def test_two_managers_on_one_database_start_a_job_once(
    twinhub_db, tmp_path, fake_stac, fake_backend, released
):
    """Two replicas (managers over one database and one machine's runners) tick together
    over one queue with room for one running job: one runner starts, and stays."""
    ctx1 = make_ctx(twinhub_db, tmp_path, fake_stac, fake_backend, max_running_per_user=1)
    ctx2 = make_ctx(twinhub_db, tmp_path, fake_stac, fake_backend, max_running_per_user=1)

    async def main():
        a, b = JobManager(ctx1), JobManager(ctx2)
        for _ in range(3):
            await submit(a)
        await asyncio.gather(a.tick(), b.tick())
        await asyncio.gather(a.drain(), b.drain())
        await asyncio.gather(a.tick(), b.tick())  # each watches the other's runner alive

    run(main())
    assert len(fake_backend.started) == 1
    assert len(store.jobs_with_status(twinhub_db, "running")) == 1


def test_a_runner_that_cannot_start_fails_the_job(proc_ctx, fake_backend, released):
    fake_backend.fail = "no such account twin-alice"

    async def main():
        m = JobManager(proc_ctx)
        doc = await submit(m)
        await m.tick()
        await m.drain()
        return m.status(ALICE, doc["jobID"])

    doc = run(main())
    assert doc["status"] == "failed"
    assert doc["message"] == "the job's runner could not start: no such account twin-alice"
    assert doc["finished"].endswith("Z")
    # The token minted for it (L17) was given to the backend, then revoked.
    assert fake_backend.tokens == [("secret-token-1", "tok-1")]
    assert ("alice", "tok-1") in released.revoked and fake_backend.started == []


def test_a_dead_runner_fails_its_job_with_the_tail_of_its_output(proc_ctx, fake_backend, released):
    async def main():
        m = JobManager(proc_ctx)
        doc = await submit(m)
        await m.tick()
        await m.drain()
        fake_backend.die(doc["jobID"])
        await m.tick()
        await m.drain()
        return m, doc["jobID"]

    m, jid = run(main())
    doc = m.status(ALICE, jid)
    assert doc["status"] == "failed" and doc["stage"] == "scheduling"
    assert doc["message"] == "the job's runner ended without a result: MemoryError: out of memory"
    texts = [ln["text"] for ln in m.logs(ALICE, jid)]
    assert "Traceback (most recent call last):" in texts
    assert released.removed == [("alice", store.get_job(proc_ctx.db_url, jid)["output_prefix"])]
    assert released.revoked == [("alice", "tok-1")]


def test_the_wall_time_limit_fails_a_job_and_stops_its_runner(
    twinhub_db, tmp_path, fake_stac, fake_backend, released
):
    ctx = make_ctx(twinhub_db, tmp_path, fake_stac, fake_backend, wall_time=5.0)
    before = metric("twinhub_processing_limit_failures_total", limit="wall_time")

    async def main():
        m = JobManager(ctx)
        doc = await submit(m)
        await m.tick()
        await m.drain()
        await m.report(
            doc["jobID"], fake_backend.started[0][1], [{"type": "cluster", "name": "c1"}]
        )
        await m.tick()  # within the limit: nothing happens
        assert store.get_job(twinhub_db, doc["jobID"])["status"] == "running"
        store.update_job(twinhub_db, doc["jobID"], started_at=store.now() - timedelta(seconds=6))
        await m.tick()
        await m.drain()
        return m.status(ALICE, doc["jobID"])

    doc = run(main())
    assert doc["status"] == "failed" and doc["message"] == "wall-time limit of 5 s exceeded"
    assert fake_backend.stopped == [1000] and not fake_backend.live
    assert released.clusters == [("alice", "c1")]
    assert metric("twinhub_processing_limit_failures_total", limit="wall_time") == before + 1


# -- the end of a job ----------------------------------------------------------------------------
def test_a_successful_job_answers_its_results_and_frees_its_resources(
    proc_ctx, fake_backend, released
):
    async def main():
        m = JobManager(proc_ctx)
        doc = await submit(m)
        await m.tick()
        await m.drain()
        jid, secret = doc["jobID"], fake_backend.started[0][1]
        with pytest.raises(ResultNotReady):
            m.results(ALICE, jid)
        waiter = asyncio.create_task(m.wait(jid, 30))
        results = {"stringInput": "hello"}
        answer = await m.report(jid, secret, [
            {"type": "stage", "stage": "processing"},
            {"type": "cluster", "name": "c9"},
            {"type": "done", "results": results, "output_bytes": 0, "stac_item": ""},
        ])  # fmt: skip
        fake_backend.die(jid)  # the runner exits after its last report
        waited = await asyncio.wait_for(waiter, 5)
        await m.drain()
        return m, jid, answer, waited

    m, jid, answer, waited = run(main())
    assert answer == {"status": "successful", "stop": True}
    assert waited["status"] == "successful" and waited["progress"] == 100
    assert waited["stage"] == "finished"
    assert any(link["rel"].endswith("/results") for link in waited["links"])
    assert m.results(ALICE, jid) == {"stringInput": "hello"}
    assert released.clusters == [("alice", "c9")] and released.removed == []
    assert released.revoked == [("alice", "tok-1")]
    assert fake_backend.stopped == [1000]  # stop is idempotent: called once it had exited


def test_a_job_that_ends_before_its_start_returns_keeps_its_outputs(
    proc_ctx, fake_backend, released
):
    """echo's runner may report its end before the backend's start() has returned: the
    job stays successful, keeps its outputs, and its runner handle and token are kept and
    released."""

    async def main():
        m = JobManager(proc_ctx)

        async def quick(job, secret):
            await m.report(job["id"], secret, [{"type": "done", "results": {"a": 1}}])
            fake_backend.die(job["id"])

        fake_backend.on_start = quick
        doc = await submit(m)
        await m.tick()
        await m.drain()
        return m, doc["jobID"]

    m, jid = run(main())
    row = store.get_job(proc_ctx.db_url, jid)
    assert row["status"] == "successful" and row["runner"]["pid"] == 1000
    assert m.results(ALICE, jid) == {"a": 1}
    assert released.removed == []
    # revoked by the release its report started, and again (a no-op) once its start returned
    assert set(released.revoked) == {("alice", "tok-1")}


def test_an_output_over_its_limit_fails_the_job_and_removes_it(
    twinhub_db, tmp_path, fake_stac, fake_backend, released
):
    ctx = make_ctx(twinhub_db, tmp_path, fake_stac, fake_backend, max_output_bytes=2048)

    async def main():
        m = JobManager(ctx)
        doc = await submit(m)
        await m.tick()
        await m.drain()
        fake_backend.die(doc["jobID"])
        ans = await m.report(doc["jobID"], fake_backend.started[0][1], [
            {"type": "done", "results": {}, "output_bytes": 4096},
        ])  # fmt: skip
        await m.drain()
        return m, doc["jobID"], ans

    m, jid, ans = run(main())
    assert ans == {"status": "failed", "stop": True}
    doc = m.status(ALICE, jid)
    assert doc["message"] == "output size limit of 2048 bytes exceeded (4096 written)"
    assert released.removed and released.removed[0][1].endswith(f"/{jid}/")
    with pytest.raises(JobFailed) as e:
        m.results(ALICE, jid)
    assert e.value.status == 500 and "output size limit" in e.value.message


def test_dismiss_stops_a_running_job_and_its_runner_learns_it(proc_ctx, fake_backend, released):
    async def main():
        m = JobManager(proc_ctx)
        doc = await submit(m)
        await m.tick()
        await m.drain()
        jid, secret = doc["jobID"], fake_backend.started[0][1]
        await m.report(jid, secret, [{"type": "cluster", "name": "c2"}])
        with pytest.raises(NoSuchJob):
            await m.dismiss(BOB, jid)  # not his
        dismissed = await m.dismiss(ALICE, jid)
        with pytest.raises(Gone) as gone:
            await m.report(jid, secret, [{"type": "progress", "progress": 50}])
        again = await m.dismiss(ALICE, jid)
        return jid, dismissed, gone.value, again

    jid, dismissed, gone, again = run(main())
    assert dismissed["status"] == "dismissed" and dismissed["message"] == "dismissed by alice"
    assert again["status"] == "dismissed" and again["message"] == "dismissed by alice"
    assert gone.status == 410 and gone.job_status == "dismissed"
    assert fake_backend.stopped == [1000]
    assert released.clusters == [("alice", "c2")]
    assert [u for u, _ in released.removed] == ["alice"]


def test_dismiss_of_a_queued_job_and_removal_of_an_ended_one(proc_ctx, fake_backend, released):
    async def main():
        m = JobManager(proc_ctx)
        queued = await submit(m)
        d = await m.dismiss(ROOT, queued["jobID"])  # an admin may
        await m.tick()
        await m.drain()
        ended = await submit(m)
        await m.tick()
        await m.drain()
        fake_backend.die(ended["jobID"])
        await m.report(ended["jobID"], fake_backend.started[0][1],
                       [{"type": "failed", "reason": "variable 'x' not found"}])  # fmt: skip
        await m.drain()
        removed = await m.dismiss(ALICE, ended["jobID"])
        return m, d, removed

    m, d, removed = run(main())
    assert d["status"] == "dismissed" and d["message"] == "dismissed by root"
    assert len(fake_backend.started) == 1  # the dismissed job never started
    assert removed["status"] == "dismissed"
    with pytest.raises(NoSuchJob):
        m.status(ALICE, removed["jobID"])
    assert store.get_logs(proc_ctx.db_url, removed["jobID"]) == []


def test_isolation_of_jobs_between_users(proc_ctx, released):
    async def main():
        m = JobManager(proc_ctx)
        a = await submit(m)
        b = await submit(m, caller=BOB)
        return m, a["jobID"], b["jobID"]

    m, a, b = run(main())
    for call in (m.status, m.results, m.logs):
        with pytest.raises(NoSuchJob) as e:
            call(BOB, a)
        assert e.value.status == 404
    mine, total = m.list(BOB, status=[], process_ids=[], limit=10, offset=0)
    assert [d["jobID"] for d in mine] == [b] and total == 1
    everyone, total = m.list(ROOT, status=[], process_ids=[], limit=10, offset=0)
    assert {d["jobID"] for d in everyone} == {a, b} and total == 2
    assert m.status(ROOT, a)["owner"] == "alice"


def test_retention_drops_old_jobs_at_the_first_tick(proc_ctx, fake_backend, released):
    async def main():
        m = JobManager(proc_ctx)
        old = await submit(m)
        await m.tick()
        await m.drain()
        await m.dismiss(ALICE, old["jobID"])
        released_files = list(fake_backend.cleaned)
        fake_backend.cleaned.clear()
        store.update_job(
            proc_ctx.db_url, old["jobID"], finished_at=store.now() - timedelta(days=31)
        )
        await JobManager(proc_ctx).tick()  # a manager's first tick sweeps
        return old["jobID"], released_files

    jid, released_files = run(main())
    assert store.get_job(proc_ctx.db_url, jid) is None
    # The runner's files went at the release, and retention asks again (M12: a release
    # that failed leaves nothing behind for good).
    assert released_files == [1000] and fake_backend.cleaned == [1000]


# -- a restart --------------------------------------------------------------------------------------
def test_recover_adopts_resumes_and_fails(twinhub_db, tmp_path, fake_stac, fake_backend, released):
    ctx = make_ctx(twinhub_db, tmp_path, fake_stac, fake_backend, max_running_per_user=3)
    before = {
        k: metric("twinhub_processing_recovered_jobs_total", outcome=k)
        for k in ("adopted", "resumed", "failed")
    }

    async def first_life():
        m = JobManager(ctx)
        ids = [(await submit(m))["jobID"] for _ in range(3)]
        await m.tick()
        await m.drain()
        return ids

    live, lost, last = run(first_life())
    # The service is gone; two runners died with it (the machine...). One was already on
    # its last attempt.
    fake_backend.die(lost)
    fake_backend.die(last)
    store.update_job(twinhub_db, last, attempt=2)

    async def second_life():
        m = JobManager(ctx)
        await m.recover()
        states = {j: store.get_job(twinhub_db, j) for j in (live, lost, last)}
        await m.tick()
        await m.drain()
        return m, states

    m, states = run(second_life())
    assert states[live]["status"] == "running"
    assert "runner adopted" in [ln["text"] for ln in m.logs(ALICE, live)][-1]
    assert states[lost]["status"] == "accepted" and states[lost]["stage"] == "queued"
    assert states[lost]["message"] == ("resumed after the processing service restarted (attempt 2)")
    assert states[last]["status"] == "failed"
    assert states[last]["message"] == (
        "interrupted by a restart of the processing service; no attempt left"
    )
    # The resumed job ran again, as its second attempt, with a new secret.
    again = store.get_job(twinhub_db, lost)
    assert again["status"] == "running" and again["attempt"] == 2
    assert [j["id"] for j, _ in fake_backend.started].count(lost) == 2
    assert fake_backend.started[0][1] != fake_backend.started[-1][1]
    for k, n in (("adopted", 1), ("resumed", 1), ("failed", 1)):
        assert metric("twinhub_processing_recovered_jobs_total", outcome=k) == before[k] + n


def test_recover_reads_the_backend_first_and_releases_what_a_restart_cut_short(
    twinhub_db, tmp_path, fake_stac, fake_backend, released
):
    """A backend with a state to read (Kubernetes: the pods' phases) is read before any
    runner is judged; an ended job whose runner the backend still holds something of (its
    release killed with the service) is released again; one held of nothing is left be."""
    ctx = make_ctx(twinhub_db, tmp_path, fake_stac, fake_backend)
    calls = []

    async def refresh():
        calls.append(("refresh", len(fake_backend.stopped)))

    async def first_life():
        m = JobManager(ctx)
        ids = [(await submit(m))["jobID"] for _ in range(2)]
        await m.tick()
        await m.drain()
        return ids

    held, done = run(first_life())
    for jid in (held, done):  # both ended while the service was down, unreleased
        store.update_job(twinhub_db, jid, status="failed", finished_at=store.now())
    pid_held = store.get_job(twinhub_db, held)["runner"]["pid"]
    fake_backend.refresh = refresh
    fake_backend.holds = lambda handle: handle["pid"] == pid_held

    async def second_life():
        m = JobManager(ctx)
        await m.recover()
        await m.drain()

    run(second_life())
    assert calls == [("refresh", 0)]  # first of all
    assert fake_backend.stopped == [pid_held]  # released again: the held one only
    assert [p for _, p in released.removed] == [store.get_job(twinhub_db, held)["output_prefix"]]


def test_spec_is_for_the_runner_of_a_running_job_only(proc_ctx, fake_backend, released):
    async def main():
        m = JobManager(proc_ctx)
        doc = await submit(m, caller=BOB)
        with pytest.raises(BadRequest) as queued:
            await m.spec(doc["jobID"], "anything")  # no secret yet: 401
        await m.tick()
        await m.drain()
        return m, doc["jobID"], queued.value

    m, jid, queued = run(main())
    assert queued.status == 401
    secret = fake_backend.started[0][1]
    spec = run(m.spec(jid, secret))
    assert spec["process"]["id"] == "echo" and spec["code"] is None
    assert spec["owner"] == "bob" and spec["project"] == "ocean-lab" and spec["attempt"] == 1
    assert spec["collection"] == "user-bob"
    assert spec["cluster"] == {"workers": 2, "worker_cores": 1, "worker_memory": 2.0,
                               "project": "ocean-lab", "job": jid}  # fmt: skip
    assert spec["limits"]["report_timeout"] == proc_ctx.settings.report_timeout
    with pytest.raises(BadRequest) as bad:
        run(m.spec(jid, secret + "x"))
    assert bad.value.status == 401
    with pytest.raises(BadRequest) as unknown:  # as a wrong secret: ids are not disclosed
        run(m.spec("0" * 32, secret))
    assert (unknown.value.status, unknown.value.message) == (401, "bad job secret")


def test_status_doc_leaves_unknown_times_out():
    t = store.now()
    row = {"id": "j", "process_id": "echo", "status": "accepted", "message": "", "progress": 0,
           "stage": "queued", "stages": {}, "owner": "a", "project": "p", "attempt": 0,
           "created_at": t, "updated_at": t, "started_at": None, "finished_at": None}  # fmt: skip
    doc = status_doc(row, "https://x/services/processing/")
    assert set(doc) >= {"jobID", "processID", "type", "status", "created", "updated", "links"}
    assert "started" not in doc and "finished" not in doc
    assert doc["created"] == store.rfc3339(t) and doc["created"].endswith("Z")


def test_a_job_whose_starter_died_is_failed_after_the_grace(proc_ctx, fake_backend, released):
    """A running job with no runner recorded: left alone (another replica may be starting
    it), until START_GRACE has passed."""
    from twinhub.services.processing.jobs import START_GRACE

    async def main():
        m = JobManager(proc_ctx)
        doc = await submit(m)
        jid = doc["jobID"]
        # claimed as a replica would, which then died before its backend answered
        store.claim_job(proc_ctx.db_url, jid, max_per_user=5, max_per_project=5, secret_hash="h")
        await m.recover()
        await m.tick()
        young = store.get_job(proc_ctx.db_url, jid)["status"]
        old = store.now() - timedelta(seconds=START_GRACE + 1)
        store.update_job(proc_ctx.db_url, jid, started_at=old)
        await m.tick()
        await m.drain()
        return m, jid, young

    m, jid, young = run(main())
    assert young == "running"
    assert m.status(ALICE, jid)["message"] == "the job's runner never started"
    assert fake_backend.started == []


def test_wait_answers_at_its_timeout_with_the_job_still_going(proc_ctx, released):
    async def main():
        m = JobManager(proc_ctx)
        doc = await submit(m)
        t0 = asyncio.get_running_loop().time()
        waited = await m.wait(doc["jobID"], 0.5)
        return waited, asyncio.get_running_loop().time() - t0

    waited, took = run(main())
    assert waited["status"] == "accepted" and 0.45 <= took < 3


# -- what a user process's job runs (H3) -------------------------------------------------------
FN = {"inputs": {"x": {"schema": {"type": "number"}}}, "outputs": {"y": {"schema": {}}}}


def register(db_url: str, owner: str, code: bytes, pid: str = "my-fn") -> dict:
    """Store a user process; its description as the API shows it (what submit gets)."""
    row = store.save_user_process(db_url, id=pid, owner=owner, visibility="private",
                                  description={"id": pid, **FN}, code=code, source="",
                                  python="3.12")  # fmt: skip
    return catalogue.user_description(row)


async def started(m: JobManager, process: dict, caller=ALICE) -> str:
    doc = await submit(m, caller=caller, process=process, inputs={"x": 2})
    await m.tick()
    await m.drain()
    return doc["jobID"]


def test_spec_of_a_user_process_carries_the_code_fixed_at_submission(
    proc_ctx, fake_backend, released
):
    desc = register(proc_ctx.db_url, "alice", b"\x00code")

    async def main():
        m = JobManager(proc_ctx)
        jid = await started(m, desc)
        return jid, await m.spec(jid, fake_backend.started[0][1])

    jid, spec = run(main())
    assert spec["code"] == "AGNvZGU=" and spec["process"]["id"] == "my-fn"
    assert spec["process_version"] == "1" and spec["inputs"] == {"x": 2}
    fixed = store.get_job(proc_ctx.db_url, jid)["request"]["process"]
    assert fixed == {"owner": "alice", "version": 1,
                     "sha256": hashlib.sha256(b"\x00code").hexdigest()}  # fmt: skip


@pytest.mark.parametrize("change", ["another-user", "new-version", "same-version", "removed"])
def test_a_process_changed_before_its_runner_asks_fails_the_job(
    proc_ctx, fake_backend, released, change
):
    """The process of a job changes between its submission and its runner's start (a
    queued or resumed job): its runner gets no code (409), the job fails with the reason,
    and the runner's next ask is 410."""
    desc = register(proc_ctx.db_url, "alice", b"alice's code")

    async def main():
        m = JobManager(proc_ctx)
        doc = await submit(m, process=desc, inputs={"x": 2})
        if change == "another-user":  # deleted, then taken by mallory
            store.delete_user_process(proc_ctx.db_url, "my-fn")
            register(proc_ctx.db_url, "mallory", b"mallory's code")
        elif change == "new-version":  # the owner replaced it
            register(proc_ctx.db_url, "alice", b"alice's new code")
        elif change == "same-version":  # deleted and registered again: version 1 again
            store.delete_user_process(proc_ctx.db_url, "my-fn")
            register(proc_ctx.db_url, "alice", b"other code")
        else:
            store.delete_user_process(proc_ctx.db_url, "my-fn")
        await m.tick()
        await m.drain()
        jid, secret = doc["jobID"], fake_backend.started[0][1]
        with pytest.raises(BadRequest) as refused:
            await m.spec(jid, secret)
        fake_backend.die(jid)  # the runner exits, refused
        await m.drain()
        with pytest.raises(Gone) as gone:
            await m.spec(jid, secret)
        return m, jid, refused.value, gone.value

    m, jid, refused, gone = run(main())
    assert refused.status == 409
    assert refused.message.startswith("the process changed since it was submitted")
    doc = m.status(ALICE, jid)
    assert doc["status"] == "failed" and doc["message"] == refused.message
    assert gone.job_status == "failed"
    assert fake_backend.stopped == [1000] and released.revoked == [("alice", "tok-1")]


def test_a_stale_description_is_refused_at_submission(proc_ctx, released):
    """The description the caller was shown is not the stored one any more (the id was
    taken by another user meanwhile): 409, nothing stored."""
    shown = register(proc_ctx.db_url, "alice", b"v1")
    store.delete_user_process(proc_ctx.db_url, "my-fn")
    register(proc_ctx.db_url, "mallory", b"evil")

    async def main():
        with pytest.raises(BadRequest) as e:
            await submit(JobManager(proc_ctx), process=shown, inputs={"x": 2})
        return e.value

    err = run(main())
    assert err.status == 409 and "changed while it was submitted" in err.message
    assert jobs_in_db(proc_ctx.db_url) == []


# -- limits and clean-up (security review 1) -----------------------------------------------------
def test_release_stops_every_cluster_made_for_the_job(proc_ctx, fake_backend, released):
    """M6: the runner reported one cluster and made two more for its job: all three are
    stopped (the reported one once), and the runner's files removed (M12)."""

    async def main():
        m = JobManager(proc_ctx)
        doc = await submit(m)
        await m.tick()
        await m.drain()
        jid = doc["jobID"]
        released.job_clusters[jid] = ["c1", "hidden-1", "hidden-2"]
        released.job_clusters["another-job"] = ["theirs"]
        await m.report(jid, fake_backend.started[0][1], [{"type": "cluster", "name": "c1"}])
        await m.dismiss(ALICE, jid)
        return jid

    run(main())
    assert sorted(released.clusters) == [("alice", "c1"), ("alice", "hidden-1"),
                                         ("alice", "hidden-2")]  # fmt: skip
    assert released.job_clusters == {"another-job": ["theirs"]}
    assert fake_backend.cleaned == [1000]


def test_the_stored_jobs_cap_refuses_with_429(
    twinhub_db, tmp_path, fake_stac, fake_backend, released
):
    """M9: ended jobs count against max_jobs_per_user; removing one makes room."""
    ctx = make_ctx(twinhub_db, tmp_path, fake_stac, fake_backend, max_jobs_per_user=2)

    async def main():
        m = JobManager(ctx)
        first = await submit(m)
        fake_backend.fail = "no runner"
        await m.tick()
        await m.drain()
        fake_backend.fail = None
        assert m.status(ALICE, first["jobID"])["status"] == "failed"  # ended: still stored
        await submit(m)
        with pytest.raises(BadRequest) as e:
            await submit(m)
        await submit(m, caller=BOB)  # his own count
        await m.dismiss(ALICE, first["jobID"])  # removed: room for one more
        await submit(m)
        return e.value

    err = run(main())
    assert err.status == 429 and "2 jobs stored (max_jobs_per_user)" in err.message
    assert len(jobs_in_db(twinhub_db)) == 3


def test_mint_failure_fails_the_job_before_anything_starts(proc_ctx, fake_backend, released):
    released.fail_mint = "the hub refused a token for alice (403)"

    async def main():
        m = JobManager(proc_ctx)
        doc = await submit(m)
        await m.tick()
        await m.drain()
        return m.status(ALICE, doc["jobID"])

    doc = run(main())
    assert doc["status"] == "failed" and "the hub refused a token" in doc["message"]
    assert fake_backend.tokens == [] and fake_backend.started == []


def test_a_job_dismissed_while_its_token_is_minted_never_starts(
    proc_ctx, fake_backend, released, monkeypatch
):
    """L17: the token's id is stored before the backend starts; a job that ended by then
    has its token revoked and no runner."""
    from twinhub.services.processing import hubtokens

    async def main():
        m = JobManager(proc_ctx)
        doc = await submit(m)

        async def slow_mint(ctx, user, expires_in, note="", scopes=()):
            await m.dismiss(ALICE, doc["jobID"])  # meanwhile
            return await released.mint(ctx, user, expires_in, note, scopes)

        monkeypatch.setattr(hubtokens, "mint", slow_mint)
        await m.tick()
        await m.drain()
        return m.status(ALICE, doc["jobID"])

    doc = run(main())
    assert doc["status"] == "dismissed" and fake_backend.tokens == []
    assert released.revoked == [("alice", "tok-1")]


def test_validation_runs_off_the_event_loop(proc_ctx, released, monkeypatch):
    """H2: a slow validation of a submission leaves the loop free (reports, health)."""
    from twinlab.processing import schemas

    real = schemas.validate_inputs

    def slow(description, inputs):
        time.sleep(1.0)
        return real(description, inputs)

    monkeypatch.setattr(schemas, "validate_inputs", slow)

    async def main():
        ticks = 0

        async def heartbeat():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        beat = asyncio.create_task(heartbeat())
        await submit(JobManager(proc_ctx))
        beat.cancel()
        return ticks

    assert run(main()) >= 10


class FakeGateway:
    """A fake of the Dask gateway's cluster API (its list, delete and statuses), as
    :func:`hubtokens.stop_job_clusters` uses it; ``auth``: each request's Authorization."""

    def __init__(self, clusters: dict[str, str]) -> None:
        #: name -> the job option; every cluster is RUNNING until deleted.
        self.status = {name: "RUNNING" for name in clusters}
        self.jobs = clusters
        self.deleted: list[str] = []
        self.auth: set[str] = set()
        self.app = FastAPI()
        base = "/services/dask-gateway/api/v1/clusters/"

        @self.app.get(base)
        async def listed(request: Request, status: str = "") -> dict:
            self.auth.add(request.headers.get("authorization", ""))
            wanted = {s.upper() for s in status.split(",")} if status else {"PENDING", "RUNNING"}
            out = {}
            for name, st in list(self.status.items()):
                if st == "STOPPING":  # stopped by the next look
                    self.status[name] = "STOPPED"
                if st in wanted:
                    out[name] = {"name": name, "status": st, "options": {"job": self.jobs[name]}}
            return out

        @self.app.delete(base + "{name}")
        async def stop(name: str) -> Response:
            self.deleted.append(name)
            self.status[name] = "STOPPING"
            return Response(status_code=204)


def test_stop_job_clusters_stops_every_cluster_of_the_job_through_the_gateway(
    twinhub_db, tmp_path, monkeypatch
):
    """M6, hubtokens' side: the user's clusters made for the job (option ``job``) are
    listed, stopped and waited for, with a short token of the user's, revoked after."""
    from twinhub.services.processing import hubtokens

    gw = FakeGateway({"a": "job-1", "b": "job-1", "c": "job-2", "d": ""})
    ctx = make_ctx(twinhub_db, tmp_path, None, None)
    ctx.hub = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app))
    calls = []

    async def mint(ctx, user, expires_in, note="", scopes=()):
        calls.append(("mint", user, expires_in, tuple(scopes)))
        return "stop-token", "stop-id"

    async def revoke(ctx, user, token_id):
        calls.append(("revoke", user, token_id))
        return True

    monkeypatch.setattr(hubtokens, "mint", mint)
    monkeypatch.setattr(hubtokens, "revoke", revoke)
    stopped = asyncio.run(hubtokens.stop_job_clusters(ctx, "alice", "job-1", wait=5))
    assert sorted(stopped) == ["a", "b"] and sorted(gw.deleted) == ["a", "b"]
    assert gw.status == {"a": "STOPPED", "b": "STOPPED", "c": "RUNNING", "d": "RUNNING"}
    assert gw.auth == {"jupyterhub stop-token"}
    assert calls == [
        ("mint", "alice", hubtokens.STOP_TOKEN_SECONDS, (hubtokens.GATEWAY_SCOPE,)),
        ("revoke", "alice", "stop-id"),
    ]
