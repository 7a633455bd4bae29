"""The runners' endpoints (reports.py) over HTTP (httpx's ASGI transport into the router as
app.py mounts it), on a real database, with the fakes of conftest.py."""

from __future__ import annotations

import asyncio
import json

import httpx
from fastapi import FastAPI

from twinhub.services.processing import store
from twinhub.services.processing.jobs import JobManager
from twinhub.services.processing.metrics import REGISTRY
from twinhub.services.processing.reports import (
    MAX_LINE_BYTES,
    REPORTS_PER_SECOND,
    SECRET_HEADER,
    ReportRate,
    reports_router,
)

from .conftest import ALICE, PREFIX

ECHO_INPUTS = {"stringInput": "hi"}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def started_job(ctx, backend) -> tuple[JobManager, httpx.AsyncClient, str, str]:
    """A manager, an HTTP client of its router, and a running job's id and secret."""
    from twinlab.processing.schemas import TEMPLATED

    m = JobManager(ctx)
    app = FastAPI()
    app.include_router(reports_router(ctx, m), prefix=PREFIX.rstrip("/"))
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=f"http://runner{PREFIX}"
    )
    doc = await m.submit(ALICE, TEMPLATED["echo"], ECHO_INPUTS, request={}, project=None)
    await m.tick()
    await m.drain()
    return m, client, doc["jobID"], backend.started[-1][1]


async def post(client, jid: str, secret: str, events) -> httpx.Response:
    return await client.post(
        f"internal/jobs/{jid}/events", json={"events": events}, headers={SECRET_HEADER: secret}
    )


def test_the_spec_needs_the_job_secret(proc_ctx, fake_backend):
    async def main():
        m, c, jid, secret = await started_job(proc_ctx, fake_backend)
        ok = await c.get(f"internal/jobs/{jid}", headers={SECRET_HEADER: secret})
        none = await c.get(f"internal/jobs/{jid}")
        wrong = await c.get(f"internal/jobs/{jid}", headers={SECRET_HEADER: "x" * 43})
        unknown = await c.get(f"internal/jobs/{'f' * 32}", headers={SECRET_HEADER: secret})
        return ok, none, wrong, unknown

    ok, none, wrong, unknown = asyncio.run(main())
    assert ok.status_code == 200 and ok.json()["inputs"] == {**ECHO_INPUTS, "pause": 0}
    assert ok.headers["cache-control"] == "no-store"
    assert none.status_code == 401 and none.json() == {"code": 401, "description": "bad job secret"}
    assert wrong.status_code == 401
    # An unknown job answers as a wrong secret does: job ids are not disclosed (L14).
    assert unknown.status_code == 401 and unknown.json() == none.json()


def test_stages_and_progress_in_order_to_success(proc_ctx, fake_backend, released):
    delays = metric("twinhub_processing_start_delay_seconds_count")
    fetch_seconds = metric("twinhub_processing_stage_seconds_count", stage="fetching")

    async def main():
        m, c, jid, secret = await started_job(proc_ctx, fake_backend)
        seen = []

        async def send(*events):
            r = await post(c, jid, secret, list(events))
            assert r.status_code == 200, r.text
            doc = m.status(ALICE, jid)
            seen.append((doc["stage"], doc["progress"]))
            return r.json()

        await send({"type": "stage", "stage": "scheduling", "at": "2020-01-01T00:00:00Z"})
        await send({"type": "progress", "progress": 50, "message": "1 of 2 workers"})
        await send({"type": "stage", "stage": "fetching"}, {"type": "progress", "progress": 50})
        await send({"type": "sources", "items": ["http://x/items/a"]},
                   {"type": "stage", "stage": "processing"})  # fmt: skip
        await send({"type": "progress", "progress": 100, "message": "computed"},
                   {"type": "log", "level": "warning", "text": "slow chunk"})  # fmt: skip
        await send({"type": "stage", "stage": "ingesting"})
        last = await send(
            {"type": "done", "results": {"stringInput": "hi"}, "output_bytes": 12,
             "stac_item": "http://x/collections/user-alice/items/" + jid},
        )  # fmt: skip
        after = await post(c, jid, secret, [{"type": "log", "text": "late"}])
        fake_backend.die(jid)
        await m.drain()
        return m, jid, seen, last, after

    m, jid, seen, last, after = asyncio.run(main())
    assert seen == [
        ("scheduling", 0),
        ("scheduling", 5),
        ("fetching", 20),
        ("processing", 30),
        ("processing", 90),
        ("ingesting", 90),
        ("finished", 100),
    ]
    assert last == {"status": "successful", "stop": True}
    assert after.status_code == 410
    assert after.json() == {
        "code": 410,
        "description": "the job has ended (successful); stop",
        "status": "successful",
        "stop": True,
    }
    doc = m.status(ALICE, jid)
    stages = doc["stages"]
    assert list(stages) == [
        "queued",
        "scheduling",
        "fetching",
        "processing",
        "ingesting",
        "finished",
    ]
    for name in ("scheduling", "fetching", "processing", "ingesting"):
        assert stages[name]["started"] <= stages[name]["finished"], name
        assert stages[name]["progress"] == 100
    # The first stage event (same stage as the service had opened) changed nothing.
    assert stages["scheduling"]["started"] > "2020"
    row = store.get_job(proc_ctx.db_url, jid)
    assert row["source_items"] == ["http://x/items/a"] and row["output_bytes"] == 12
    assert row["stac_item"].endswith(jid) and doc["message"] == "finished"
    logs = m.logs(ALICE, jid)
    assert {
        "stage": "processing",
        "level": "warning",
        "source": "runner",
        "text": "slow chunk",
    }.items() <= next(ln for ln in logs if ln["text"] == "slow chunk").items()
    assert "late" not in [ln["text"] for ln in logs]
    assert metric("twinhub_processing_start_delay_seconds_count") == delays + 1
    assert metric("twinhub_processing_stage_seconds_count", stage="fetching") == fetch_seconds + 1


def test_a_bad_event_refuses_the_whole_report(proc_ctx, fake_backend):
    refused = metric("twinhub_processing_runner_reports_total", outcome="refused")

    async def main():
        m, c, jid, secret = await started_job(proc_ctx, fake_backend)
        answers = {}
        good = [{"type": "stage", "stage": "fetching"}, {"type": "log", "text": "x"}]
        for name, events in {
            "type": [*good, {"type": "explode"}],
            "progress": [*good, {"type": "progress", "progress": "half"}],
            "level": [{"type": "log", "level": "debug", "text": "x"}],
            "stage": [{"type": "stage", "stage": "finished"}],
            "size": [{"type": "done", "results": {}, "output_bytes": -1}],
            "at": [{"type": "log", "text": "x", "at": "yesterday"}],
            "many": [{"type": "log", "text": "x"}] * 201,
            "shape": [["log"]],
        }.items():
            answers[name] = await post(c, jid, secret, events)
        answers["nan"] = await c.post(
            f"internal/jobs/{jid}/events",
            content=b'{"events": [{"type": "progress", "progress": Infinity}]}',
            headers={SECRET_HEADER: secret},
        )
        answers["not-json"] = await c.post(
            f"internal/jobs/{jid}/events", content=b"{", headers={SECRET_HEADER: secret}
        )
        answers["no-list"] = await c.post(
            f"internal/jobs/{jid}/events", json={"events": {}}, headers={SECRET_HEADER: secret}
        )
        answers["big"] = await c.post(
            f"internal/jobs/{jid}/events",
            content=json.dumps({"events": [], "pad": "x" * (1024 * 1024)}),
            headers={SECRET_HEADER: secret},
        )
        answers["secret"] = await post(c, jid, "wrong", good)
        return m, jid, answers

    m, jid, answers = asyncio.run(main())
    want = {
        "type": (400, "event 2: unknown type 'explode'"),
        "progress": (400, "event 2: 'progress' must be a number"),
        "nan": (400, "the report: Infinity is not a JSON number"),
        "level": (400, "event 0: 'level' must be one of info, warning, error"),
        "stage": (400, "event 0: 'stage' must be one of"),
        "size": (400, "event 0: 'output_bytes' must be an integer >= 0"),
        "at": (400, "event 0: 'at' is not an RFC 3339 time"),
        "many": (400, "201 events in one report; at most 200"),
        "shape": (400, "event 0: must be a JSON object"),
        "not-json": (400, "the report is not valid JSON"),
        "no-list": (400, "the body must be"),
        "big": (413, "a report is at most"),
        "secret": (401, "bad job secret"),
    }
    for name, (status, words) in want.items():
        r = answers[name]
        assert r.status_code == status, (name, r.text)
        assert r.json()["code"] == status and words in r.json()["description"], (name, r.text)
    # Nothing of any refused report was applied.
    row = store.get_job(proc_ctx.db_url, jid)
    assert row["stage"] == "scheduling" and row["status"] == "running"
    assert "x" not in [ln["text"] for ln in m.logs(ALICE, jid)]
    after = metric("twinhub_processing_runner_reports_total", outcome="refused")
    assert after == refused + len(want)


def test_long_lines_are_cut_and_a_failure_keeps_its_stage(proc_ctx, fake_backend, released):
    async def main():
        m, c, jid, secret = await started_job(proc_ctx, fake_backend)
        await post(c, jid, secret, [{"type": "stage", "stage": "fetching"},
                                    {"type": "progress", "progress": 40},
                                    {"type": "log", "level": "error", "text": "é" * 5000}])  # fmt: skip
        r = await post(c, jid, secret, [
            {"type": "failed", "reason": "variable 'q' not in item 'a'"},
            {"type": "stage", "stage": "processing"},  # after the end: ignored
            {"type": "log", "text": "cleaning up"},  # log lines still count
        ])  # fmt: skip
        fake_backend.die(jid)
        await m.drain()
        return m, jid, r

    m, jid, r = asyncio.run(main())
    assert r.status_code == 200 and r.json() == {"status": "failed", "stop": True}
    doc = m.status(ALICE, jid)
    assert doc["status"] == "failed" and doc["stage"] == "fetching"
    assert doc["message"] == "variable 'q' not in item 'a'"
    assert doc["stages"]["fetching"]["progress"] == 40 and doc["stages"]["fetching"]["finished"]
    texts = [ln["text"] for ln in m.logs(ALICE, jid)]
    long = next(t for t in texts if t.startswith("é"))
    assert len(long.encode()) <= MAX_LINE_BYTES and long.endswith("[line cut]")
    assert texts[-1] == "cleaning up"
    assert released.removed  # a failed job's partial outputs are removed
    # The reason is the runner's words, logged as such (L16), not as the service's.
    reason = [ln for ln in m.logs(ALICE, jid) if ln["text"] == "variable 'q' not in item 'a'"]
    assert [ln["source"] for ln in reason] == ["runner"]


def test_reports_past_the_rate_are_429_and_the_runner_may_send_them_again(
    proc_ctx, fake_backend, released
):
    """M9: at most REPORTS_PER_SECOND reports of one job a second (the clock stands still
    here): the next is 429 with Retry-After and applies nothing; a moment later it goes."""
    now = [1000.0]

    async def main():
        m, c, jid, secret = await started_job(proc_ctx, fake_backend)
        m.report_rate = ReportRate(clock=lambda: now[0])
        ok = [await post(c, jid, secret, []) for _ in range(int(REPORTS_PER_SECOND))]
        refused = await post(c, jid, secret, [{"type": "log", "text": "too soon"}])
        now[0] += 0.1  # two more allowed
        again = await post(c, jid, secret, [{"type": "log", "text": "later"}])
        return m, jid, ok, refused, again

    m, jid, ok, refused, again = asyncio.run(main())
    assert {r.status_code for r in ok} == {200}
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "reports a second" in refused.json()["description"]
    assert again.status_code == 200
    texts = [ln["text"] for ln in m.logs(ALICE, jid)]
    assert "later" in texts and "too soon" not in texts


def test_report_rate_buckets_are_per_job_and_refill():
    t = [0.0]
    rate = ReportRate(rate=2.0, clock=lambda: t[0])
    assert [rate.take("a") for _ in range(3)] == [True, True, False]
    assert rate.take("b")  # another job's own bucket
    t[0] += 0.5  # one more for "a"
    assert [rate.take("a"), rate.take("a")] == [True, False]
    rate.forget("a")
    assert rate.take("a")


def test_reports_of_an_unknown_job_are_401_as_a_wrong_secret(proc_ctx, fake_backend, released):
    """L14: no answer tells a job id that exists from one that does not."""

    async def main():
        m, c, jid, secret = await started_job(proc_ctx, fake_backend)
        return await post(c, "f" * 32, secret, []), await post(c, jid, "wrong", [])

    unknown, wrong = asyncio.run(main())
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json() == {"code": 401, "description": "bad job secret"}
