"""The job manager (jobs.py) on a real database (SQLite and PostgreSQL), with the fakes of
conftest.py for what cannot run here (STAC, the backend, the gateway and S3 edges)."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select

from twinhub import db
from twinhub.db.models import BudgetState, ProcessingJob
from twinhub.services.asgi import BadRequest
from twinhub.services.processing import store
from twinhub.services.processing.jobs import JobManager
from twinhub.services.processing.metrics import REGISTRY
from twinhub.services.processing.model import JobFailed, NoSuchJob, ResultNotReady, status_doc
from twinhub.services.processing.reports import Gone
from twinlab.processing.schemas import TEMPLATED

from .conftest import ALICE, BOB, ROOT, SERVICE_TOKEN, make_ctx

ECHO = TEMPLATED["echo"]
ZONAL = TEMPLATED["zonal-mean"]


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
        (
            TEMPLATED["point-series"],
            {"item": "healpix-t2m", "variable": "t2m", "points": [[1, 2]] * 4},
            "at most 3 (max_points)",
        ),
        (
            TEMPLATED["regrid"],
            {
                "item": "healpix-t2m",
                "variables": ["t2m"],
                "target": {"type": "healpix", "nside": 64},
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

    async def main():
        with pytest.raises(BadRequest) as e:
            await submit(JobManager(ctx), process=process, inputs=inputs)
        return e.value

    err = run(main())
    assert err.status == 400 and words in err.message, err.message
    assert jobs_in_db(twinhub_db) == []


def test_items_are_looked_up_with_the_service_token_and_fill_the_collection(proc_ctx, fake_stac):
    async def main():
        m = JobManager(proc_ctx)
        a = await submit(m, process=ZONAL, inputs={"item": "healpix-t2m", "variable": "t2m"})
        b = await submit(
            m, process=ZONAL, inputs={"item": "dup", "collection": "other", "variable": "t2m",
                                      "datetime": "2020-11-01/.."}
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
    assert row["runner"]["pid"] == 1000 and row["token_id"] == f"tok-{first['jobID']}-1"
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
    assert released.revoked == [("alice", f"tok-{jid}-1")]


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
    assert released.revoked == [("alice", f"tok-{jid}-1")]
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
    assert released.revoked == [("alice", f"tok-{jid}-1")]


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


def test_retention_drops_old_jobs_at_the_first_tick(proc_ctx, released):
    async def main():
        m = JobManager(proc_ctx)
        old = await submit(m)
        await m.dismiss(ALICE, old["jobID"])
        store.update_job(
            proc_ctx.db_url, old["jobID"], finished_at=store.now() - timedelta(days=31)
        )
        await m.tick()
        return old["jobID"]

    jid = run(main())
    assert store.get_job(proc_ctx.db_url, jid) is None


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


def test_spec_is_for_the_runner_of_a_running_job_only(proc_ctx, fake_backend, released):
    async def main():
        m = JobManager(proc_ctx)
        doc = await submit(m, caller=BOB)
        with pytest.raises(BadRequest) as queued:
            m.spec(doc["jobID"], "anything")  # no secret yet: 401
        await m.tick()
        await m.drain()
        return m, doc["jobID"], queued.value

    m, jid, queued = run(main())
    assert queued.status == 401
    secret = fake_backend.started[0][1]
    spec = m.spec(jid, secret)
    assert spec["process"]["id"] == "echo" and spec["code"] is None
    assert spec["owner"] == "bob" and spec["project"] == "ocean-lab" and spec["attempt"] == 1
    assert spec["collection"] == "user-bob"
    assert spec["cluster"] == {"workers": 2, "worker_cores": 1, "worker_memory": 2.0,
                               "project": "ocean-lab", "job": jid}  # fmt: skip
    assert spec["limits"]["report_timeout"] == proc_ctx.settings.report_timeout
    with pytest.raises(BadRequest) as bad:
        m.spec(jid, secret + "x")
    assert bad.value.status == 401
    with pytest.raises(NoSuchJob):
        m.spec("0" * 32, secret)


def test_spec_of_a_user_process_carries_its_code(proc_ctx, fake_backend, released):
    desc = {"id": "my-fn", "version": "3", "inputs": {"x": {"schema": {"type": "number"}}},
            "outputs": {"y": {"schema": {"type": "number"}}}}  # fmt: skip
    store.save_user_process(proc_ctx.db_url, id="my-fn", owner="alice", visibility="private",
                            description=desc, code=b"\x00code", source="", python="3.12")  # fmt: skip

    async def main():
        m = JobManager(proc_ctx)
        doc = await submit(m, process=desc, inputs={"x": 2})
        await m.tick()
        await m.drain()
        return m, doc["jobID"]

    m, jid = run(main())
    spec = m.spec(jid, fake_backend.started[0][1])
    assert spec["code"] == "AGNvZGU=" and spec["process"]["id"] == "my-fn"
    assert spec["process_version"] == "3" and spec["inputs"] == {"x": 2}


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


def test_the_spec_of_a_deleted_user_process_is_404(proc_ctx, fake_backend, released):
    desc = {"id": "gone-fn", "version": "1", "inputs": {}, "outputs": {}}
    store.save_user_process(proc_ctx.db_url, id="gone-fn", owner="alice", visibility="private",
                            description=desc, code=b"x", source="", python="3.12")  # fmt: skip

    async def main():
        m = JobManager(proc_ctx)
        doc = await submit(m, process=desc, inputs={})
        await m.tick()
        await m.drain()
        return m, doc["jobID"]

    m, jid = run(main())
    store.delete_user_process(proc_ctx.db_url, "gone-fn")
    with pytest.raises(BadRequest) as e:
        m.spec(jid, fake_backend.started[0][1])
    assert e.value.status == 404 and "no longer exists" in e.value.message
