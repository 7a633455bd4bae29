"""Processing jobs under faults, dismissal, limits and isolation on the real multi-user
platform (issue 16).

- kill -9 of the processing service mid-job: the supervisor restarts it, the new service
  adopts the live runner, the job ends successful on its first attempt, none is left running;
- kill -9 of a Dask worker of a job's cluster mid-job: the job still ends (successful, or
  failed with a reason), never stays running;
- dismissing a running job: its cluster leaves the gateway and its runner the process table
  within seconds, and what it had written to the user's bucket is removed;
- the wall-time limit: a job past it fails with the reason, its runner and cluster stopped
  (the limit is lowered on that one job's stored row: the service enforces the row's limit,
  so no platform of its own is needed);
- isolation: another user cannot see, read the results or log of, or dismiss someone's job,
  and a private user process is invisible to them.

The long-running work is a process the user registers (as twinlab.processing.register does):
it writes a partial output, then sleeps in a task on the job's own Dask cluster.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.helpers.processing import (
    TERMINAL,
    call,
    cluster_processes,
    cluster_workers,
    components,
    gateway_clusters,
    job_ids,
    job_row,
    job_rows,
    logs_text,
    objects_under,
    register,
    runner_processes,
    set_job_limit,
    submit,
    wait_job,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]

OWNER, OTHER = "p6faultann", "p6faultbob"
SLOW = "p6-slow-sleeper"


def sleep_on_cluster(ctx, seconds: int = 20) -> dict:
    """A partial output first (dismissal must remove it), then a sleep on a Dask worker."""
    import time as _time

    ctx.write_json("partial", {"started": True})
    ctx.progress(10, "sleeping on the cluster")
    done = ctx.client.submit(_time.sleep, seconds, pure=False)
    done.result()
    return {"slept": seconds}


@pytest.fixture(scope="module")
def env(multiuser_platform):
    p = multiuser_platform
    for name in (OWNER, OTHER):
        if p.api("GET", f"/users/{name}", user="admin").status_code == 404:
            p.add_user(name)
    r = register(
        p,
        OWNER,
        sleep_on_cluster,
        pid=SLOW,
        inputs={"seconds": {"schema": {"type": "integer", "minimum": 1, "maximum": 600}}},
        outputs={"slept": {"schema": {"type": "integer"}}},
    )
    assert r.status_code in (200, 201), r.text
    yield p
    # whatever a failed test left running is dismissed (never left to the next module)
    for row in job_rows(p, owner=OWNER):
        if row["status"] not in TERMINAL:
            call(p, "DELETE", f"jobs/{row['id']}", OWNER)


def running_in(p, job: str, stage: str, timeout: float = 300) -> dict:
    doc, _ = wait_job(p, OWNER, job, stage=stage, timeout=timeout)
    assert doc["status"] == "running" and doc["stage"] == stage, (doc, logs_text(p, OWNER, job))
    return doc


def job_cluster(p, job: str, timeout: float = 120) -> str:
    """The name of the Dask cluster the job's runner made (as the service recorded it)."""
    return wait_until(lambda: job_row(p, job)["cluster"], timeout, f"job {job}'s cluster")


def wait_component_restarted(p, name: str, old_pid: int, timeout: float = 90) -> dict:
    def back():
        rec = components(p).get(name, {})
        return rec if rec.get("pid") != old_pid and rec.get("state") == "running" else None

    return wait_until(back, timeout, f"{name} restarted by the supervisor")


def test_kill_9_of_the_service_mid_job_is_adopted(env):
    p = env
    job = submit(p, OWNER, SLOW, {"seconds": 25})
    running_in(p, job, "processing")
    runner = runner_processes(job)
    assert len(runner) == 1, runner
    old = components(p)["processing"]["pid"]
    os.kill(old, signal.SIGKILL)
    wait_component_restarted(p, "processing", old)
    # the runner never stopped: it kept its work and reports again to the new service
    assert runner[0].is_running()
    doc, _ = wait_job(p, OWNER, job, timeout=240)
    assert doc["status"] == "successful", doc
    assert doc["attempt"] == 1, "the live runner was adopted, not run again"
    assert "adopted" in logs_text(p, OWNER, job)
    r = call(p, "GET", f"jobs/{job}/results", OWNER)
    assert r.status_code == 200 and r.json()["slept"] in (25, {"value": 25}), r.text
    assert [r for r in job_rows(p, owner=OWNER) if r["status"] not in TERMINAL] == []
    wait_until(lambda: not runner_processes(job), 60, "the runner's exit")


def test_kill_9_of_a_worker_mid_job_still_ends(env):
    p = env
    job = submit(p, OWNER, SLOW, {"seconds": 20})
    running_in(p, job, "processing")
    name = job_cluster(p, job)
    workers = wait_until(lambda: cluster_workers(name), 60, f"a worker of {name}")
    time.sleep(2)  # the sleep task is on it
    for w in workers:
        os.kill(w.pid, signal.SIGKILL)
    try:
        doc, _ = wait_job(p, OWNER, job, timeout=300)
    except AssertionError:
        call(p, "DELETE", f"jobs/{job}", OWNER)
        raise AssertionError(f"job {job} still running 300 s after its worker was killed") from None
    assert doc["status"] in ("successful", "failed"), doc
    if doc["status"] == "failed":
        assert doc["message"], doc  # with a reason
    # either way its cluster is gone afterwards
    wait_until(lambda: not cluster_processes(name), 60, f"{name}'s processes gone")


def test_dismiss_stops_the_cluster_and_runner_and_removes_outputs(env):
    p = env
    job = submit(p, OWNER, SLOW, {"seconds": 300})
    running_in(p, job, "processing")
    name = job_cluster(p, job)
    prefix = job_row(p, job)["output_prefix"]
    wait_until(lambda: objects_under(p, prefix), 60, "the partial output written")
    assert name in {c["name"] for c in gateway_clusters(p, OWNER)}
    assert runner_processes(job)
    t0 = time.monotonic()
    r = call(p, "DELETE", f"jobs/{job}", OWNER)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "dismissed", r.json()
    wait_until(
        lambda: name not in {c["name"] for c in gateway_clusters(p, OWNER)},
        30,
        "the job's cluster gone from the gateway",
    )
    took = time.monotonic() - t0
    wait_until(lambda: not runner_processes(job), 15, "the runner gone")
    wait_until(lambda: not cluster_processes(name), 30, "the cluster's processes gone")
    wait_until(lambda: objects_under(p, prefix) == [], 30, "the partial outputs removed")
    doc = call(p, "GET", f"jobs/{job}", OWNER).json()
    assert doc["status"] == "dismissed" and doc["finished"], doc
    r = call(p, "GET", f"jobs/{job}/results", OWNER)
    assert r.status_code in (404, 410), r.text
    print(f"cluster gone {took:.1f} s after DELETE")
    assert took <= 30


def test_wall_time_limit_fails_the_job_with_the_reason(env):
    p = env
    job = submit(p, OWNER, SLOW, {"seconds": 300})
    running_in(p, job, "processing")
    name = job_cluster(p, job)
    prefix = job_row(p, job)["output_prefix"]
    wait_until(lambda: objects_under(p, prefix), 60, "the partial output written")
    set_job_limit(p, job, wall_time=2.0)
    doc, _ = wait_job(p, OWNER, job, timeout=60)
    assert doc["status"] == "failed", doc
    assert "wall-time limit of 2 s exceeded" in doc["message"], doc
    wait_until(lambda: not runner_processes(job), 15, "the runner gone")
    wait_until(
        lambda: name not in {c["name"] for c in gateway_clusters(p, OWNER)},
        30,
        "the job's cluster gone",
    )
    # the release removes the outputs once the cluster is stopped
    wait_until(lambda: objects_under(p, prefix) == [], 30, "the job's outputs removed")


def test_another_user_cannot_see_read_or_dismiss_a_job(env):
    p = env
    job = submit(p, OWNER, "echo", {"stringInput": "mine", "pause": 5})
    assert job not in job_ids(p, OTHER)
    for method, path in (
        ("GET", f"jobs/{job}"),
        ("GET", f"jobs/{job}/results"),
        ("GET", f"jobs/{job}/logs"),
        ("DELETE", f"jobs/{job}"),
    ):
        r = call(p, method, path, OTHER)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert "mine" not in r.text
    # the page too
    r = call(p, "GET", f"jobs/{job}", OTHER, headers={"Accept": "text/html"})
    assert r.status_code == 404
    doc, _ = wait_job(p, OWNER, job, timeout=120)
    assert doc["status"] == "successful", "another user's DELETE stopped the job"
    for path in (f"jobs/{job}", f"jobs/{job}/results"):
        assert call(p, "GET", path, OTHER).status_code == 404
    r = call(p, "GET", "jobs", OTHER, params={"processID": "echo"})
    assert job not in {j["jobID"] for j in r.json()["jobs"]}


def test_a_private_process_is_invisible_to_others(env):
    p = env
    assert SLOW in {x["id"] for x in call(p, "GET", "processes", OWNER).json()["processes"]}
    listed = call(p, "GET", "processes?limit=1000", OTHER).json()["processes"]
    assert SLOW not in {x["id"] for x in listed}
    assert call(p, "GET", f"processes/{SLOW}", OTHER).status_code == 404
    before = job_ids(p, OTHER)
    r = call(p, "POST", f"processes/{SLOW}/execution", OTHER, json={"inputs": {"seconds": 1}})
    assert r.status_code == 404, r.text
    assert job_ids(p, OTHER) == before
    assert call(p, "DELETE", f"processes/{SLOW}", OTHER).status_code == 404
    # nor can the other user take its id
    r = register(
        p, OTHER, sleep_on_cluster, pid=SLOW, inputs={"seconds": {"schema": {"type": "integer"}}},
        outputs={"slept": {"schema": {"type": "integer"}}},
    )  # fmt: skip
    assert r.status_code == 409, r.text
    assert call(p, "GET", f"processes/{SLOW}", OWNER).status_code == 200
