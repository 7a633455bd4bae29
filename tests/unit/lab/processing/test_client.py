"""twinlab.processing's notebook API against a fake processing service.

``FakeProcessing`` is a real HTTP server on loopback standing in for the platform's
processing service (a fake: no jobs run). It answers the OGC API - Processes routes the
client uses, with two users' tokens, and moves a job one stage further on each look at
its status, so the client's polling, progress display, results, logs, dismissal and
registration are exercised over real sockets.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cloudpickle
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from twinlab import processing as tp
from twinlab.contract import ENV_HUB_API_URL, ENV_HUB_TOKEN, ENV_SERVICES
from twinlab.processing import client as client_mod

# the submodule, not the function tp.job of the same name
job_mod = importlib.import_module("twinlab.processing.job")

TOKENS = {"alice-token": "alice", "bob-token": "bob"}
#: Each look at a running job's status moves it to the next of these.
STEPS = [
    ("accepted", "queued", 0),
    ("running", "scheduling", 5),
    ("running", "fetching", 20),
    ("running", "processing", 60),
    ("running", "ingesting", 95),
    ("successful", "finished", 100),
]
TEMPLATED = {
    "echo": {
        "id": "echo",
        "title": "Echo",
        "version": "1.0.0",
        "inputs": {"text": {"schema": {"type": "string"}}, "n": {"schema": {"type": "integer"}}},
        "outputs": {"text": {"schema": {"type": "string"}}, "n": {"schema": {"type": "integer"}}},
    },
    "files": {"id": "files", "title": "Files", "version": "1", "inputs": {}, "outputs": {}},
    "single": {
        "id": "single",
        "title": "One output",
        "version": "1",
        "inputs": {},
        "outputs": {"value": {"schema": {}}, "item": {"schema": {}}},
    },
    "hang": {"id": "hang", "title": "Never ends", "version": "1", "inputs": {}, "outputs": {}},
    "breaks": {"id": "breaks", "title": "Fails", "version": "1", "inputs": {}, "outputs": {}},
    "chatty": {"id": "chatty", "title": "Logs", "version": "1", "inputs": {}, "outputs": {}},
}


class FakeProcessing(ThreadingHTTPServer):
    """The fake service: ``requests`` records (method, path, query, headers, body)."""

    daemon_threads = True

    def __init__(self, files: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict, dict, Any]] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.user_processes: dict[str, dict[str, Any]] = {}
        self.files = files

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/services/processing/"


class _Handler(BaseHTTPRequestHandler):
    server: FakeProcessing

    def log_message(self, *args: Any) -> None:  # quiet test output
        pass

    def _send(self, status: int, doc: Any = None, headers: dict[str, str] | None = None) -> None:
        body = b"" if doc is None else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, status: int, message: str) -> None:
        self._send(status, {"code": status, "description": message})

    def _handle(self, method: str) -> None:
        s = self.server
        parts = urlsplit(self.path)
        path = parts.path.removeprefix("/services/processing/")
        query = parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        with s.lock:
            s.requests.append((method, path, query, dict(self.headers), body))
        auth = self.headers.get("Authorization", "")
        user = TOKENS.get(auth.removeprefix("token "))
        if path == "moved":
            return self._send(302, None, {"Location": "http://127.0.0.1:9/elsewhere"})
        if not user:
            return self._refuse(401, "a token is needed")
        seg = path.strip("/").split("/")
        with s.lock:
            if seg == ["processes"] and method == "GET":
                mine = [d for d in s.user_processes.values() if d["owner"] == user]
                listed = list(TEMPLATED.values()) + mine
                start, limit = int(query["offset"][0]), int(query["limit"][0])
                return self._send(200, {"processes": listed[start : start + limit], "links": []})
            if seg == ["processes"] and method == "POST":
                if body["id"] in TEMPLATED:
                    return self._refuse(409, f"process {body['id']} exists")
                desc = {k: v for k, v in body.items() if k != "code"} | {"owner": user}
                s.user_processes[body["id"]] = desc | {"code": body["code"]}
                return self._send(201, desc, {"Location": f"processes/{body['id']}"})
            if seg[0] == "processes" and len(seg) == 2:
                found = TEMPLATED.get(seg[1]) or s.user_processes.get(seg[1])
                if not found or found.get("owner", user) != user:
                    return self._refuse(404, f"no process {seg[1]}")
                if method == "DELETE":
                    del s.user_processes[seg[1]]
                    return self._send(204)
                return self._send(200, found)
            if seg[0] == "processes" and seg[2:] == ["execution"] and method == "POST":
                return self._execute(user, seg[1], body)
            if seg == ["jobs"]:
                mine = [j["doc"] for j in s.jobs.values() if j["owner"] == user]
                return self._send(200, {"jobs": mine, "links": []})
            job = s.jobs.get(seg[1]) if seg[0] == "jobs" and len(seg) > 1 else None
            if job is None or job["owner"] != user:
                return self._refuse(404, f"no job {seg[1:2]}")
            return self._job(method, job, seg[2:], query)

    def _execute(self, user: str, pid: str, body: dict) -> None:
        s = self.server
        if pid not in TEMPLATED:
            return self._refuse(404, f"no process {pid}")
        inputs = body.get("inputs") or {}
        if pid == "echo" and not isinstance(inputs.get("n", 0), int):
            return self._refuse(400, "input 'n': 'x' is not of type 'integer'")
        job_id = f"job{len(s.jobs) + 1:04d}"
        doc = {"jobID": job_id, "processID": pid, "type": "process", "message": ""}
        job = {"owner": user, "doc": doc, "step": 0, "inputs": inputs}
        s.jobs[job_id] = job
        self._step(job, 0)
        self._send(201, doc, {"Location": f"/services/processing/jobs/{job_id}"})

    def _step(self, job: dict, to: int) -> None:
        pid = job["doc"]["processID"]
        if pid == "hang":
            to = min(to, 3)
        status, stage, progress = STEPS[min(to, len(STEPS) - 1)]
        if pid == "breaks" and stage == "processing":
            status, job["doc"]["message"] = "failed", "variable 'zz' is not in the item"
        job["step"] = to
        job["doc"].update(status=status, stage=stage, progress=progress)
        job["doc"].setdefault("stages", {})[stage] = {"started": f"t{to}", "progress": progress}

    def _job(self, method: str, job: dict, rest: list[str], query: dict) -> None:
        doc = job["doc"]
        if method == "DELETE":
            doc.update(status="dismissed", message="dismissed by its owner")
            return self._send(200, doc)
        if not rest:
            if doc["status"] in ("accepted", "running"):
                self._step(job, job["step"] + 1)
            return self._send(200, doc)
        if rest == ["logs"]:
            total = 2500 if doc["processID"] == "chatty" else 3
            after, limit = int(query["after"][0]), int(query["limit"][0])
            lines = [
                {"id": i, "at": f"t{i}", "stage": "processing", "level": "info", "source": "runner",
                 "text": f"line {i}"}
                for i in range(after + 1, min(total, after + limit) + 1)
            ]  # fmt: skip
            return self._send(200, {"lines": lines})
        if rest == ["results"]:
            if doc["status"] != "successful":
                return self._refuse(404, "result not ready")
            if doc["processID"] == "echo":
                return self._send(200, dict(job["inputs"]))
            if doc["processID"] == "single":
                return self._send(200, {"value": 7, "item": self.server.files["item"]})
            return self._send(200, self.server.files)
        return self._refuse(404, "no such route")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


@pytest.fixture(scope="module")
def output_files(tmp_path_factory) -> dict[str, Any]:
    """A results document whose file outputs are real local files of each kind."""
    d = tmp_path_factory.mktemp("outputs")
    ds = xr.Dataset(
        {"t": (("time", "cell"), np.arange(12.0).reshape(3, 4))},
        coords={"time": np.arange(3), "cell": np.arange(4)},
    )
    ds.to_zarr(d / "field.zarr", consolidated=False)
    ds.to_netcdf(d / "field.nc")
    pd.DataFrame({"time": [1, 2], "value": [0.5, 1.5]}).to_csv(d / "series.csv", index=False)
    (d / "series.json").write_text(json.dumps({"values": [1, 2]}))
    return {
        "field": {"href": str(d / "field.zarr"), "type": "application/vnd+zarr"},
        "field_nc": {"href": str(d / "field.nc"), "type": "application/netcdf"},
        "series": {"href": str(d / "series.csv"), "type": "text/csv"},
        "series_json": {"href": str(d / "series.json"), "type": "application/json"},
        "count": {"value": 4, "mediaType": "application/json"},
        "other": {"href": "s3://home-alice/x.bin", "type": "application/octet-stream"},
        "item": {"href": "http://h/services/stac/collections/user-alice/items/job1"},
    }


@pytest.fixture()
def svc(output_files) -> Iterator[FakeProcessing]:
    server = FakeProcessing(output_files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture()
def alice(svc, monkeypatch) -> tp.Client:
    """The module's functions as alice's server would run them (env as the hub sets it)."""
    monkeypatch.setenv(ENV_SERVICES, json.dumps({"processing": svc.root}))
    monkeypatch.setenv(ENV_HUB_TOKEN, "alice-token")
    monkeypatch.setattr(client_mod, "_default", None)
    return client_mod.default_client()


def _seen(svc: FakeProcessing, method: str, path: str) -> list[tuple]:
    return [r for r in svc.requests if r[0] == method and r[1] == path]


# -- processes ---------------------------------------------------------------------------------
def test_processes_are_asked_with_the_servers_token(svc, alice) -> None:
    ids = [p["id"] for p in tp.processes()]
    assert ids[:2] == ["echo", "files"]
    _, _, query, headers, _ = _seen(svc, "GET", "processes")[-1]
    assert headers["Authorization"] == "token alice-token"
    assert headers["Accept"] == "application/json" and query["limit"] == ["1000"]
    assert query["offset"] == ["0"] and len(_seen(svc, "GET", "processes")) == 1
    assert tp.describe("echo")["inputs"]["n"]["schema"] == {"type": "integer"}


def test_processes_page_through_a_long_list(svc, alice, monkeypatch) -> None:
    monkeypatch.setattr(client_mod, "PAGE", 2)
    assert [p["id"] for p in tp.processes()] == list(TEMPLATED)
    offsets = [r[2]["offset"] for r in _seen(svc, "GET", "processes")]
    # 6 processes, 2 a page: three full pages, then an empty one ends the list
    assert offsets == [["0"], ["2"], ["4"], ["6"]]


def test_a_refusal_is_a_processing_error_with_the_services_description(svc, alice) -> None:
    with pytest.raises(tp.ProcessingError, match="no process nope") as e:
        tp.describe("nope")
    assert e.value.status == 404 and isinstance(e.value, ValueError)
    with pytest.raises(tp.ProcessingError, match="input 'n': 'x' is not of type") as e:
        tp.execute("echo", {"n": "x"})
    assert e.value.status == 400
    with pytest.raises(tp.ProcessingError, match="a token is needed") as e:
        tp.Client(svc.root, token="").processes()
    assert e.value.status == 401


def test_unreachable_service_and_redirects_are_errors_not_followed(svc, alice) -> None:
    with pytest.raises(tp.ProcessingError, match="not reachable") as e:
        tp.Client("http://127.0.0.1:9/services/processing/", token="t", timeout=5).processes()
    assert e.value.status == 0
    with pytest.raises(tp.ProcessingError) as e:
        alice.request("GET", "moved")
    assert e.value.status == 302  # the token never went to the Location


def test_service_url_from_the_environment(monkeypatch) -> None:
    for name in (ENV_SERVICES, client_mod.ENV_PROCESSING_URL, ENV_HUB_API_URL):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(tp.ProcessingError, match="no processing service"):
        client_mod.service_url()
    monkeypatch.setenv(ENV_HUB_API_URL, "http://127.0.0.1:8000/hub/api")
    assert client_mod.service_url() == "http://127.0.0.1:8000/services/processing/"
    monkeypatch.setenv(client_mod.ENV_PROCESSING_URL, "http://127.0.0.1:5555/services/processing")
    assert client_mod.service_url() == "http://127.0.0.1:5555/services/processing/"
    monkeypatch.setenv(ENV_SERVICES, json.dumps({"processing": "https://h/services/processing/"}))
    assert client_mod.service_url() == "https://h/services/processing/"


# -- jobs ----------------------------------------------------------------------------------------
def test_execute_submits_async_and_the_job_moves_through_its_stages(svc, alice) -> None:
    job = tp.execute("echo", {"text": "hi", "n": 3}, project="farm")
    _, _, _, headers, body = _seen(svc, "POST", "processes/echo/execution")[-1]
    assert headers["Prefer"] == "respond-async"
    assert body == {"inputs": {"text": "hi", "n": 3}, "project": "farm"}
    assert job.id == "job0001" and repr(job).startswith("<Job job0001 echo: accepted")
    # each look at the status reads the service afresh; stage and progress come with it
    seen = [(job.status, job.stage, job.progress) for _ in range(5)]
    assert seen == STEPS[1:]
    assert job.done and job.message == ""
    looks = len(_seen(svc, "GET", "jobs/job0001"))
    assert job.status == "successful" and job.stage == "finished"
    assert len(_seen(svc, "GET", "jobs/job0001")) == looks  # ended: no more requests
    assert job.result() == {"text": "hi", "n": 3}


def test_execute_wait_and_single_output(svc, alice) -> None:
    job = tp.execute("echo", {"text": "only"}, wait=True)
    assert job.status == "successful"
    assert job.result() == {"text": "only"}  # echo declares several outputs: a dict
    assert job.item is None  # echo ingests nothing
    assert tp.execute("single", wait=True).result() == 7  # one output (and its item)


def test_wait_times_out_on_a_job_that_does_not_end(svc, alice) -> None:
    job = tp.execute("hang")
    with pytest.raises(TimeoutError, match="still running"):
        job.wait(timeout=1.0)


def test_failed_and_dismissed_jobs_raise_their_reason_on_result(svc, alice) -> None:
    failed = tp.execute("breaks").wait(timeout=30)
    assert failed.status == "failed"
    with pytest.raises(tp.ProcessingError, match="failed: variable 'zz' is not in the item"):
        failed.result()
    running = tp.execute("hang")
    assert running.dismiss() is running
    assert running.status == "dismissed"
    assert _seen(svc, "DELETE", f"jobs/{running.id}")
    with pytest.raises(tp.ProcessingError, match="dismissed: dismissed by its owner"):
        running.result()


def test_watch_draws_a_progress_line_per_look_in_a_terminal(svc, alice, capsys) -> None:
    tp.execute("echo", {"text": "w"}).watch(timeout=30)
    err = capsys.readouterr().err
    frames = err.split("\r")[1:]
    assert len(frames) == 5 and err.endswith("\n")
    assert "[" + "-" * 24 + "]" not in frames[-1]
    assert "100 % successful finished" in frames[-1]
    assert "60 % running processing" in frames[2] and "[##############----------]" in frames[2]


def test_watch_in_a_notebook_updates_a_widget_bar(svc, alice, monkeypatch, capsys) -> None:
    """In a kernel (taken as one here: no kernel runs in a unit test) the bar is an
    ipywidgets IntProgress, updated at each look until the job ends."""
    import IPython.display

    shown: list[Any] = []
    monkeypatch.setattr(job_mod, "_in_kernel", lambda: True)
    monkeypatch.setattr(IPython.display, "display", shown.append)
    values: list[int] = []
    job = tp.execute("echo", {"text": "w"})
    real_follow = job._follow

    def follow(timeout):
        for doc in real_follow(timeout):
            yield doc
            values.append(shown[0].children[0].value)  # the bar after this look

    monkeypatch.setattr(job, "_follow", follow)
    job.watch(timeout=30)
    (box,) = shown
    bar, label = box.children
    assert values == [5, 20, 60, 95, 100]
    assert bar.bar_style == "success" and "successful · finished · 100 %" in label.value
    assert capsys.readouterr().err == ""  # no terminal line in a notebook


def test_repr_html_shows_stage_progress_and_stages(svc, alice) -> None:
    job = tp.execute("echo", {"text": "<b>"})
    page = job._repr_html_()
    assert "<progress value='5' max='100'>" in page and "scheduling" in page
    assert "<td>queued</td>" in page and "<td>scheduling</td>" in page


def test_logs_page_through_the_whole_log(svc, alice) -> None:
    job = tp.execute("chatty")
    text = job.logs()
    lines = text.splitlines()
    assert len(lines) == 2500 and lines[0].endswith("line 1") and lines[-1].endswith("line 2500")
    asked = [r[2]["after"] for r in _seen(svc, "GET", f"jobs/{job.id}/logs")]
    assert asked == [["0"], ["1000"], ["2000"]]
    assert job.logs(after=2498).splitlines()[-1].endswith("line 2500")


def test_file_outputs_open_lazily_by_kind(svc, alice) -> None:
    out = tp.execute("files").result(timeout=30)
    assert set(out) == {"field", "field_nc", "series", "series_json", "count", "other"}
    assert isinstance(out["field"], xr.Dataset)
    assert out["field"]["t"].chunks is not None  # lazy (Dask), not read yet
    assert float(out["field"]["t"].sum()) == 66.0
    assert float(out["field_nc"]["t"].sum()) == 66.0
    assert out["series"]["value"].tolist() == [0.5, 1.5]
    assert out["series_json"] == {"values": [1, 2]}
    assert out["count"] == 4  # an OGC qualified value, unwrapped
    assert out["other"]["href"] == "s3://home-alice/x.bin"  # unknown kind: the link


def test_item_path_of_a_stac_item_url() -> None:
    href = "http://h/services/stac/collections/user-alice/items/job1"
    assert job_mod._item_path(href, "j") == ("user-alice", "job1")
    assert job_mod._item_path("http://h/odd", "j") == ("", "j")


def test_another_users_job_is_not_found_and_jobs_lists_ones_own(svc, alice) -> None:
    mine = tp.execute("echo", {"text": "a"})
    bob = tp.Client(svc.root, token="bob-token")
    with pytest.raises(tp.ProcessingError, match="no job") as e:
        tp.job(mine.id, client=bob)
    assert e.value.status == 404
    with pytest.raises(tp.ProcessingError):
        tp.Job(mine.id, bob).dismiss()
    assert tp.job(mine.id).status in ("running", "accepted")
    assert [j.id for j in tp.jobs()] == [mine.id]
    assert tp.jobs(client=bob) == []
    tp.jobs(status=["running", "accepted"], process="echo")
    _, _, query, _, _ = _seen(svc, "GET", "jobs")[-1]
    assert query["status"] == ["running,accepted"] and query["processID"] == ["echo"]


# -- registration ------------------------------------------------------------------------------
def scale(values: list[float], factor: float = 2.0, label: str | None = None) -> dict:
    """Scale values.

    Multiplies each value by the factor."""
    return {"scaled": [v * factor for v in values], "label": label}


def test_register_describes_the_function_and_pickles_it(svc, alice) -> None:
    desc = tp.register(scale, outputs={"scaled": list[float], "label": str})
    _, _, _, _, body = _seen(svc, "POST", "processes")[-1]
    assert body["id"] == desc["id"] == "scale"
    assert body["title"] == "Scale values." and "Multiplies" in body["description"]
    assert body["visibility"] == "private"
    assert body["inputs"] == {
        "values": {"title": "values", "minOccurs": 1,
                   "schema": {"type": "array", "items": {"type": "number"}}},
        "factor": {"title": "factor", "minOccurs": 0, "schema": {"type": "number", "default": 2.0}},
        "label": {"title": "label", "minOccurs": 0,
                  "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}},
    }  # fmt: skip
    assert body["outputs"]["scaled"]["schema"] == {"type": "array", "items": {"type": "number"}}
    assert body["python"] == ".".join(map(str, sys.version_info[:3]))
    assert "def scale(" in body["source"]
    fn = cloudpickle.loads(base64.b64decode(body["code"]))
    assert fn([1.0, 2.0], factor=3)["scaled"] == [3.0, 6.0]
    assert [p["id"] for p in tp.processes()][-1] == "scale"
    tp.unregister("scale")
    assert _seen(svc, "DELETE", "processes/scale")
    with pytest.raises(tp.ProcessingError, match="no process scale"):
        tp.describe("scale")


def test_register_declared_inputs_project_and_id(svc, alice) -> None:
    def area_sum(ctx, item: str, **extra):
        return {"result": 1}

    tp.register(area_sum, inputs={"item": {"type": "string", "minLength": 3}, "k": int},
                id="my-sum", project="farm")  # fmt: skip
    _, _, _, _, body = _seen(svc, "POST", "processes")[-1]
    assert body["id"] == "my-sum" and body["visibility"] == "project:farm"
    assert body["inputs"]["item"]["schema"] == {"type": "string", "minLength": 3}
    assert body["inputs"]["k"] == {"title": "k", "schema": {"type": "integer"}, "minOccurs": 1}
    assert "ctx" not in body["inputs"]  # the runner's context, not an input
    assert body["outputs"] == {"result": {"title": "result", "schema": {}}}
    assert "cluster" not in body  # the default: a cluster, as the service assumes
    tp.register(area_sum, inputs={"item": str}, id="quick", cluster=False)
    assert _seen(svc, "POST", "processes")[-1][4]["cluster"] is False


def test_register_refuses_bad_declarations_before_sending(svc, alice) -> None:
    before = len(svc.requests)
    with pytest.raises(tp.ProcessingError, match="process id 'X_1'"):
        tp.register(scale, id="X_1")
    with pytest.raises(tp.ProcessingError, match="not a parameter of scale"):
        tp.register(scale, inputs={"nope": int})
    with pytest.raises(tp.ProcessingError, match="cannot declare"):
        tp.register(scale, inputs={"values": set})
    with pytest.raises(tp.ProcessingError, match="needs a function"):
        tp.register("scale")
    with pytest.raises(tp.ProcessingError, match="at least one output"):
        tp.register(scale, outputs={})
    assert len(svc.requests) == before
    with pytest.raises(tp.ProcessingError, match="process echo exists") as e:
        tp.register(scale, id="echo")
    assert e.value.status == 409


def test_a_module_beside_the_notebook_travels_by_value(tmp_path, monkeypatch, svc, alice) -> None:
    """The runner's Python cannot import a module that sits beside the notebook: the
    function's module is pickled by value, so the code loads where that module is absent."""
    (tmp_path / "mytools.py").write_text(
        textwrap.dedent(
            """
            OFFSET = 10

            def helper(x):
                return x + OFFSET

            def shifted(x: int) -> dict:
                return {"result": helper(x)}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import mytools

    tp.register(mytools.shifted)
    _, _, _, _, body = _seen(svc, "POST", "processes")[-1]
    run = subprocess.run(
        [sys.executable, "-c",
         "import base64, sys, cloudpickle\n"
         "fn = cloudpickle.loads(base64.b64decode(sys.stdin.read()))\n"
         "print(fn(5)['result'])"],
        input=body["code"], capture_output=True, text=True, cwd="/", timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "15"
    # an installed module's function stays a reference (by name), not a copy of its code
    assert client_mod._installed(json) and not client_mod._installed(mytools)


def test_schema_of_python_types() -> None:
    assert client_mod.schema_of(int) == {"type": "integer"}
    assert client_mod.schema_of(bool) == {"type": "boolean"}
    assert client_mod.schema_of(dict[str, float]) == {
        "type": "object",
        "additionalProperties": {"type": "number"},
    }
    assert client_mod.schema_of(list) == {"type": "array"}
    assert client_mod.schema_of(int | str) == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert client_mod.schema_of({"type": "string"}) == {"type": "string"}
    assert client_mod.schema_of(Any) == {}


def test_import_loads_no_numerical_stack() -> None:
    code = (
        "import sys, twinlab.processing as tp\n"
        "assert callable(tp.job) and callable(tp.execute)\n"
        "print(sorted(m for m in ('xarray', 'dask', 'pandas', 'numpy', 'cloudpickle')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    assert Path(tp.__file__).parent.name == "processing"
