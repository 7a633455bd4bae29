"""The processing service end to end on the real multi-user platform (issue 16).

OWSLib's OGC API - Processes client lists the processes, describes ``zonal-mean`` and runs
it asynchronously on the seeded HEALPix item; the job's runner is a process of the user's
OS account, its stages and progress advance in order with timestamps, its output lands in
the user's bucket and is ingested as a STAC item of the user's collection, which
``twinlab.datalake`` finds and opens from the user's kernel; the series equals what
``twinlab.grids`` computes there on the same data. Then: bad inputs are refused (400, a
message, no job), echo runs synchronously, JSON is the default and the HTML pages answer.
"""

from __future__ import annotations

import json
import pwd
import re
import textwrap
from datetime import datetime, timedelta

import numpy as np
import pytest
import requests

from tests.helpers.kernel import run_code
from tests.helpers.platform import wait_for_seed
from tests.helpers.processing import (
    STAGES,
    RunnerWatch,
    call,
    count_jobs,
    execute,
    job_ids,
    job_row,
    objects_under,
    owslib_processes,
    runner_processes,
    split_s3,
    user_prefix,
    wait_job,
    wait_until,
)
from tests.helpers.processing import healpix_item as seeded_healpix_item

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

USER = "p6ann"
PROCESS_IDS = {"echo", "regrid", "zonal-mean", "area-mean", "climatology", "point-series"}


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def env(multiuser_platform):
    p = multiuser_platform
    wait_for_seed(p)
    if p.api("GET", f"/users/{USER}", user="admin").status_code == 404:
        p.add_user(USER)
    item = seeded_healpix_item(p)
    return p, item


@pytest.fixture(scope="module")
def zonal(env) -> dict:
    """One zonal-mean job through OWSLib, watched from submission to its end."""
    p, item = env
    start = _when(item["properties"]["start_datetime"])
    window = f"{start:%Y-%m-%dT%H:%M:%SZ}/{start + timedelta(hours=12):%Y-%m-%dT%H:%M:%SZ}"
    inputs = {"item": item["id"], "variable": "2t", "datetime": window}
    with owslib_processes(p, USER) as client, RunnerWatch() as watch:
        listed = client.processes()
        described = client.process("zonal-mean")
        submitted = client.execute("zonal-mean", inputs, async_=True)
        location = client.response_headers.get("Location", "")
        job_id = submitted["jobID"]
        final, seen = wait_job(p, USER, job_id, timeout=600, interval=0.1)
    r = call(p, "GET", f"jobs/{job_id}/results", USER)
    return {
        "p": p,
        "item": item,
        "inputs": inputs,
        "listed": listed,
        "described": described,
        "submitted": submitted,
        "location": location,
        "job": job_id,
        "final": final,
        "seen": seen,
        "runners": watch.seen.get(job_id, {}),
        "results": r.json()
        if r.status_code == 200
        else {"_status": r.status_code, "_text": r.text},
    }


def test_owslib_lists_and_describes(zonal):
    assert {x["id"] for x in zonal["listed"]} >= PROCESS_IDS
    d = zonal["described"]
    assert d["id"] == "zonal-mean"
    assert {"item", "variable", "datetime", "collection"} <= set(d["inputs"])
    assert d["inputs"]["item"]["minOccurs"] == 1 and d["inputs"]["datetime"]["minOccurs"] == 0
    assert "zonal_mean" in d["outputs"]
    assert {"sync-execute", "async-execute", "dismiss"} <= set(d["jobControlOptions"])


def test_async_execution_answers_201_with_the_job_location(zonal):
    assert zonal["submitted"]["status"] in ("accepted", "running"), zonal["submitted"]
    assert zonal["location"].endswith(f"/services/processing/jobs/{zonal['job']}")


def test_zonal_mean_job_succeeds(zonal):
    final = zonal["final"]
    assert final["status"] == "successful", (final, zonal["results"])
    assert final["stage"] == "finished" and final["progress"] == 100, final
    assert final["processID"] == "zonal-mean" and final["owner"] == USER
    assert final["project"], final  # charged to a project (the personal one here)
    assert final["attempt"] == 1


def test_stages_advance_in_order_with_progress_and_timestamps(zonal):
    final, seen = zonal["final"], zonal["seen"]
    order = [STAGES.index(s["stage"]) for s in seen]
    assert order == sorted(order), [s["stage"] for s in seen]
    progress = [s["progress"] for s in seen if s.get("progress") is not None]
    assert progress == sorted(progress) and progress[-1] == 100, progress
    # more than the start and the end were seen: the job is observable while it works
    assert len({s["stage"] for s in seen}) >= 3, [s["stage"] for s in seen]
    stages = final["stages"]
    bounds = []
    for name in ("scheduling", "fetching", "processing", "ingesting"):
        st = stages[name]
        a, b = _when(st["started"]), _when(st["finished"])
        assert a <= b, (name, st)
        assert 0 <= st["progress"] <= 100, (name, st)
        bounds.append((a, b))
    for (_, end), (nxt, _) in zip(bounds, bounds[1:], strict=False):
        assert end <= nxt, bounds
    # the job's own times frame its stages (a second of slack: fields may be rounded apart)
    slack = timedelta(seconds=1)
    created, started, finished = (_when(final[k]) for k in ("created", "started", "finished"))
    assert created <= started + slack and started <= bounds[0][0] + slack, final
    assert bounds[-1][1] <= finished + slack, final
    for key in ("created", "started", "finished", "updated"):
        assert final[key].endswith("Z"), (key, final[key])


def test_the_runner_ran_as_the_users_os_account(zonal):
    runners = zonal["runners"]
    assert runners, "no runner process of the job was seen in the process table"
    account = user_prefix() + USER
    home = pwd.getpwnam(account).pw_dir
    for pid, info in runners.items():
        assert info["user"] == account, (pid, info)
        assert info["uids"] == pwd.getpwnam(account).pw_uid
        assert info["cwd"] == home and info["env_user"] == account, info
        assert info["has_secret"]
    # and it exits once the job ended (after closing its cluster)
    wait_until(lambda: not runner_processes(zonal["job"]), 60, "the runner's exit")


def test_outputs_are_in_the_users_bucket(zonal):
    p, job = zonal["p"], zonal["job"]
    res = zonal["results"]
    assert "zonal_mean" in res, res
    files = {k: v for k, v in res.items() if isinstance(v, dict) and "href" in v}
    hrefs = [v["href"] for k, v in files.items() if k != "item"]
    assert hrefs, res
    row = job_row(p, job)
    bucket, prefix = split_s3(row["output_prefix"])
    assert prefix == f"processing/{job}/", row["output_prefix"]
    assert USER in bucket, bucket  # the home bucket is named after its user
    for href in hrefs:
        assert href.startswith(row["output_prefix"]), (href, row["output_prefix"])
    keys = objects_under(p, row["output_prefix"])
    assert keys and all(k.startswith(prefix) for k in keys), keys
    assert row["output_bytes"] > 0 and row["stac_item"], row
    assert res["item"]["type"] == "application/geo+json"
    assert res["item"]["href"] == row["stac_item"]


def test_series_equals_twinlab_grids_and_item_opens_from_the_kernel(zonal):
    """In the user's kernel: the same computation with twinlab.grids, the ingested item
    found by twinlab.datalake.search, opened, and its provenance."""
    p, job, item = zonal["p"], zonal["job"], zonal["item"]
    start, end = zonal["inputs"]["datetime"].split("/")
    code = f"""
    import json, os, numpy as np, twinlab.datalake as dl
    out = {{}}
    src = dl.resolve_item({item["id"]!r})
    da = dl.open(src)["2t"].sel(time=slice({start.rstrip("Z")!r}, {end.rstrip("Z")!r}))
    zm = da.grid.zonal_mean().transpose("time", "latitude").compute()
    out["latitude"] = zm["latitude"].values.tolist()
    out["time"] = [str(t)[:19] for t in zm["time"].values]
    out["values"] = zm.values.tolist()
    out["home_bucket"] = json.loads(os.environ["TWINHUB_STORAGE"])["home_bucket"]
    found = dl.search(collections=["user-{USER}"], ids=[{job!r}])
    out["found"] = [i.id for i in found.items]
    if found.items:
        it = found.items[0]
        out["properties"] = {{k: v for k, v in it.properties.items() if k.startswith(("twinhub:", "processing:")) or "datetime" in k}}
        out["assets"] = {{k: a.href for k, a in it.assets.items()}}
        try:
            ds = dl.open(it)
            names = [v for v in ds.data_vars if "latitude" in ds[v].dims]
            out["opened"] = names
            if names:
                out["ingested"] = ds[names[0]].transpose(..., "latitude").values.tolist()
        except Exception as e:
            out["open_error"] = f"{{type(e).__name__}}: {{e}}"
    print("RESULT " + json.dumps(out, default=str))
    """
    url = p.spawn(USER, timeout=180)
    text = run_code(url, p.token(USER), textwrap.dedent(code), timeout=400)
    out = json.loads(re.findall(r"RESULT (.*)", text)[-1])
    got = zonal["results"]["zonal_mean"]
    if isinstance(got, dict) and "value" in got and "latitude" not in got:
        got = got["value"]
    # HEALPix H128: 4 * nside - 1 rings
    assert len(got["latitude"]) == 4 * 128 - 1 == len(out["latitude"])
    # rings compared by latitude (the order of the rows is not part of the contract)
    mine, theirs = np.argsort(got["latitude"]), np.argsort(out["latitude"])
    np.testing.assert_allclose(
        np.asarray(got["latitude"])[mine], np.asarray(out["latitude"])[theirs], atol=1e-9
    )
    assert [t.rstrip("Z")[:19] for t in got["time"]] == out["time"] and len(out["time"]) == 3
    np.testing.assert_allclose(
        np.asarray(got["values"], dtype=float)[:, mine],
        np.asarray(out["values"], dtype=float)[:, theirs],
        rtol=1e-5,
        atol=1e-6,
    )
    # the output is in the user's own bucket, and the ingested item is theirs to find
    assert split_s3(job_row(p, job)["output_prefix"])[0] == out["home_bucket"]
    assert out["found"] == [job], out
    prov = out["properties"]["twinhub:provenance"]
    assert prov["process"] == "zonal-mean" and prov["job"] == job, prov
    assert prov["inputs"]["item"] == item["id"]
    assert any(item["id"] in s for s in prov["source_items"]), prov
    assert "open_error" not in out, out.get("open_error")
    assert out.get("opened"), out
    ingested = np.asarray(out["ingested"], dtype=float).reshape(len(got["time"]), -1)
    np.testing.assert_allclose(
        np.sort(ingested, axis=1), np.sort(np.asarray(got["values"], dtype=float), axis=1),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip


def test_job_log_is_readable(zonal):
    p, job = zonal["p"], zonal["job"]
    r = call(p, "GET", f"jobs/{job}/logs", USER)
    assert r.status_code == 200, r.text
    lines = r.json()["lines"]
    assert lines and {"id", "at", "stage", "level", "source", "text"} <= set(lines[0])
    ids = [x["id"] for x in lines]
    assert ids == sorted(ids)
    # "after" pages on
    r = call(p, "GET", f"jobs/{job}/logs", USER, params={"after": ids[0]})
    assert [x["id"] for x in r.json()["lines"]] == ids[1:]
    text = call(p, "GET", f"jobs/{job}/logs", USER, params={"f": "text"})
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert lines[-1]["text"] in text.text


# -- bad inputs -----------------------------------------------------------------------------
def _bad_cases(item_id: str) -> list[tuple[str, str, dict, set[int], str]]:
    """(label, process, request body, allowed statuses, a word the message must hold)."""
    many = [[float(i % 360), 0.0] for i in range(1001)]
    zm = {"item": item_id, "variable": "2t"}
    return [
        ("variable of the wrong type", "zonal-mean", {"inputs": {**zm, "variable": 5}},
         {400}, "variable"),
        ("a required input missing", "zonal-mean", {"inputs": {"variable": "2t"}}, {400},
         "item"),
        ("an unknown input", "zonal-mean", {"inputs": {**zm, "colour": "red"}}, {400},
         "colour"),
        ("an unknown item", "zonal-mean", {"inputs": {**zm, "item": "no-such-item-p6"}},
         {400}, "no-such-item-p6"),
        ("a huge time range", "zonal-mean",
         {"inputs": {**zm, "datetime": "1800-01-01T00:00:00Z/2200-01-01T00:00:00Z"}}, {400},
         "datetime"),
        ("a datetime that is none", "zonal-mean", {"inputs": {**zm, "datetime": "yesterday"}},
         {400}, "datetime"),
        ("too many points", "point-series", {"inputs": {**zm, "points": many}}, {400},
         "points"),
        ("a point off the globe", "point-series", {"inputs": {**zm, "points": [[0, 95]]}},
         {400}, "points"),
        ("a target grid past the cell limit", "regrid",
         {"inputs": {"item": item_id, "variables": ["2t"],
                     "target": {"type": "latlon", "resolution": 0.001}}}, {400}, "target"),
        ("an unknown regrid method", "regrid",
         {"inputs": {"item": item_id, "variables": ["2t"], "method": "magic",
                     "target": {"type": "healpix", "nside": 4}}}, {400}, "method"),
        ("bbox and polygon missing", "area-mean", {"inputs": zm}, {400}, "bbox"),
        ("inputs not an object", "zonal-mean", {"inputs": ["item"]}, {400}, "inputs"),
        ("a project not the caller's", "echo",
         {"inputs": {"stringInput": "x"}, "project": "nobody-s-project"}, {400, 403},
         "project"),
        ("an unknown process", "no-such-process", {"inputs": {}}, {404}, "no-such-process"),
    ]  # fmt: skip


def test_bad_inputs_are_refused_and_make_no_job(env):
    p, item = env
    before_ids, before_rows = job_ids(p, USER), count_jobs(p)
    failures = []
    for label, process, body, allowed, word in _bad_cases(item["id"]):
        r = call(p, "POST", f"processes/{process}/execution", USER, json=body,
                 headers={"Prefer": "respond-async"})  # fmt: skip
        try:
            doc = r.json()
        except ValueError:
            doc = {}
        if r.status_code not in allowed:
            failures.append(f"{label}: {r.status_code} {r.text[:200]}")
        elif not (doc.get("description") or doc.get("detail")):
            failures.append(f"{label}: no message: {doc}")
        elif word not in (doc.get("description") or doc.get("detail", "")):
            failures.append(f"{label}: {word!r} not in {doc}")
    assert not failures, "\n".join(failures)
    assert job_ids(p, USER) == before_ids
    assert count_jobs(p) == before_rows


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused_and_make_no_job(env, number):
    """JSON has no NaN or infinity (Python's parser takes them): such an input must be
    refused before a job is stored (its spec could not be served to the runner)."""
    p, _ = env
    before = count_jobs(p)
    body = '{"inputs": {"stringInput": "a", "doubleInput": ' + number + "}}"
    r = call(p, "POST", "processes/echo/execution", USER, data=body,
             headers={"Content-Type": "application/json", "Prefer": "respond-async"})  # fmt: skip
    assert r.status_code == 400 and r.json()["code"] == 400, r.text
    assert count_jobs(p) == before


def test_a_body_that_is_not_json_is_a_400(env):
    p, _ = env
    before = count_jobs(p)
    r = call(p, "POST", "processes/echo/execution", USER, data=b"{not json",
             headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and r.json()["code"] == 400, r.text
    assert count_jobs(p) == before


# -- sync execution, negotiation, pages ---------------------------------------------------------
def test_sync_echo_returns_its_inputs(env):
    p, _ = env
    inputs = {"stringInput": "hello", "doubleInput": 2.5, "objectInput": {"a": [1, 2]}}
    r = execute(p, USER, "echo", inputs, asynchronous=False)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    for name, value in inputs.items():
        got = doc[name]
        assert got == value or (isinstance(got, dict) and got.get("value") == value), (name, got)


def test_json_is_the_default_with_no_accept_header(env):
    p, _ = env
    for path in ("", "conformance", "processes", "processes/zonal-mean", "jobs"):
        r = requests.get(
            p.url + "services/processing/" + path,
            headers={"Authorization": f"token {p.token(USER)}"},
            timeout=30,
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), (
            path,
            r.headers,
        )
        r.json()
    r = call(p, "GET", "processes", USER, params={"f": "xml"})
    assert r.status_code == 400 and "f" in r.json()["description"], r.text


def test_html_pages_answer(env, zonal):
    p, job = env[0], zonal["job"]
    for path, words in (
        ("", ("processes",)),
        ("processes", ("zonal-mean", "echo")),
        ("processes/zonal-mean", ("Zonal mean", "variable")),
        ("jobs", (job,)),
        (f"jobs/{job}", (job, "scheduling", "ingesting")),
    ):
        for how in ({"headers": {"Accept": "text/html"}}, {"params": {"f": "html"}}):
            r = call(p, "GET", path, USER, **how)
            assert r.status_code == 200, (path, r.status_code)
            assert r.headers["content-type"].startswith("text/html"), (path, r.headers)
            for w in words:
                assert w in r.text, (path, w)
            assert "cdn." not in r.text.lower()
