"""The job runner (``python -m twinlab.processing.runner``) against a fake processing
service and a fake STAC API.

The fakes are one real HTTP server (FastAPI on uvicorn, in a thread): the runner's
internal endpoints of the processing service (spec, events) and the parts of a STAC API
the runner uses (landing page, POST /search, collections, items). The job's cluster is
an in-process ``dask.distributed`` cluster handed in as the cluster factory (the Dask
Gateway cannot run in a unit test); the outputs go to a local folder.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import httpx
import numpy as np
import pytest
import uvicorn
import xarray as xr
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from twinlab.grids import HEALPix, grid_attrs
from twinlab.processing import runner
from twinlab.processing.context import Reporter
from twinlab.processing.schemas import TEMPLATED, describe_user_process, validate_inputs

healpy = pytest.importorskip("healpy")
distributed = pytest.importorskip("distributed")

SECRET = "s3cret"
TOKEN = "tok-alice"
STAGES = ["scheduling", "fetching", "processing", "ingesting"]


class FakeService:
    """State of the fake processing service + STAC API (reset for each test)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.specs: dict[str, dict] = {}
        self.events: list[dict] = []
        self.posts = 0
        self.fail_posts = 0  # answer this many event reports 503 (a restarting service)
        self.refuse_all = False  # answer every report 503 (a service that stays away)
        self.stop_when: str | None = None  # answer stop: true once this stage started
        self.refuse_done = False  # answer a report with a done event 400 (a bad event)
        self.items: list[dict] = []  # lake items /search answers
        self.collections: dict[str, dict] = {}
        self.stac_items: dict[str, dict] = {}
        self.stac_calls: list[tuple[str, str, str | None]] = []


FAKE = FakeService()
app = FastAPI()


@app.get("/services/processing/internal/jobs/{job_id}")
async def spec(job_id: str, request: Request) -> Any:
    if request.headers.get("X-Twinhub-Job-Secret") != SECRET:
        return JSONResponse({"code": 401, "description": "bad secret"}, 401)
    if job_id not in FAKE.specs:
        return JSONResponse({"code": 404, "description": "no such job"}, 404)
    return FAKE.specs[job_id]


@app.post("/services/processing/internal/jobs/{job_id}/events")
async def events(job_id: str, request: Request) -> Any:
    if request.headers.get("X-Twinhub-Job-Secret") != SECRET:
        return JSONResponse({"code": 401, "description": "bad secret"}, 401)
    FAKE.posts += 1
    if FAKE.refuse_all or FAKE.fail_posts > 0:
        FAKE.fail_posts -= 1
        return JSONResponse({"code": 503, "description": "restarting"}, 503)
    body = await request.json()
    assert len(body["events"]) <= 200
    if FAKE.refuse_done and any(e["type"] == "done" for e in body["events"]):
        return JSONResponse({"code": 400, "description": "event 3: results too odd"}, 400)
    FAKE.events.extend(body["events"])
    stages = [e["stage"] for e in FAKE.events if e["type"] == "stage"]
    stop = FAKE.stop_when is not None and FAKE.stop_when in stages
    return {"status": "dismissed" if stop else "running", "stop": stop}


def _stac_root(request: Request) -> str:
    return f"http://{request.headers['host']}/stac/"


@app.get("/stac/")
async def landing(request: Request) -> Any:
    root = _stac_root(request)
    return {
        "type": "Catalog",
        "id": "fake",
        "description": "fake",
        "stac_version": "1.0.0",
        "conformsTo": [
            "https://api.stacspec.org/v1.0.0/core",
            "https://api.stacspec.org/v1.0.0/item-search",
            "https://api.stacspec.org/v1.0.0/collections",
        ],
        "links": [
            {"rel": "self", "href": root},
            {"rel": "root", "href": root},
            {
                "rel": "search",
                "href": root + "search",
                "type": "application/geo+json",
                "method": "POST",
            },
        ],
    }


@app.post("/stac/search")
async def search(request: Request) -> Any:
    body = await request.json()
    FAKE.stac_calls.append(("POST", "search", request.headers.get("authorization")))
    found = [
        i
        for i in FAKE.items
        if i["id"] in body.get("ids", [i["id"]])
        and i["collection"] in body.get("collections", [i["collection"]])
    ]
    return {"type": "FeatureCollection", "features": found, "links": []}


@app.get("/stac/collections/{cid}")
async def get_collection(cid: str) -> Any:
    if cid not in FAKE.collections:
        return JSONResponse({"code": 404, "description": "no collection"}, 404)
    return FAKE.collections[cid]


@app.post("/stac/collections")
async def post_collection(request: Request) -> Any:
    body = await request.json()
    FAKE.stac_calls.append(("POST", "collections", request.headers.get("authorization")))
    body["twinhub:owner"] = "alice"  # as the real guard does: the caller (the job's user) owns it
    FAKE.collections[body["id"]] = body
    return JSONResponse(body, 201)


@app.post("/stac/collections/{cid}/items")
async def post_item(cid: str, request: Request) -> Any:
    body = await request.json()
    FAKE.stac_calls.append(("POST", f"{cid}/items", request.headers.get("authorization")))
    if body["id"] in FAKE.stac_items:
        return JSONResponse({"code": 409, "description": "exists"}, 409)
    FAKE.stac_items[body["id"]] = body
    return JSONResponse(body, 201)


@app.put("/stac/collections/{cid}/items/{iid}")
async def put_item(cid: str, iid: str, request: Request) -> Any:
    FAKE.stac_calls.append(("PUT", f"{cid}/items/{iid}", request.headers.get("authorization")))
    FAKE.stac_items[iid] = await request.json()
    return FAKE.stac_items[iid]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "the fake service did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(5)


@pytest.fixture
def fake(server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeService]:
    FAKE.reset()
    monkeypatch.setenv("TWINHUB_STAC_URL", f"{server}/stac/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", TOKEN)
    FAKE.url = f"{server}/services/processing/"  # type: ignore[attr-defined]
    yield FAKE


def make_spec(tmp_path: Path, process: dict, inputs: dict, **limits: Any) -> dict:
    job_id = f"job{len(FAKE.specs) + 1}"
    spec = {
        "id": job_id,
        "process": process,
        "inputs": validate_inputs(process, inputs),
        "owner": "alice",
        "project": "alice",
        "attempt": 1,
        "output_prefix": f"{tmp_path}/home-alice/processing/{job_id}/",
        "collection": "user-alice",
        "limits": {"wall_time": 600, "max_output_bytes": 10**9, "max_time_steps": 100}
        | {"report_timeout": 30.0}
        | limits,
        "cluster": {"workers": 1, "worker_cores": 1, "worker_memory": 1, "project": "alice"},
        "code": None,
    }
    FAKE.specs[job_id] = spec
    return spec


class LocalCluster:
    """Stands in for the Dask Gateway cluster: an in-process distributed cluster."""

    def __init__(self) -> None:
        self.client = distributed.Client(processes=False, n_workers=1, threads_per_worker=2)
        self.closed = False

    def shutdown(self) -> None:
        self.closed = True
        self.client.close()


def run(spec: dict, **kw: Any) -> tuple[int, LocalCluster | None]:
    made: list[LocalCluster] = []

    def factory(ctx: Any) -> tuple[Any, Any]:
        made.append(LocalCluster())
        ctx.reporter.emit("cluster", name="local")
        return made[0], made[0].client

    reporter = Reporter(
        FAKE.url,  # type: ignore[attr-defined]
        spec["id"],
        SECRET,
        report_timeout=float(spec["limits"]["report_timeout"]),
        interval=0.1,
        heartbeat=0.3,
        retry=0.1,
    ).start()
    status = runner.run_job(spec, reporter, cluster_factory=factory, **kw)
    return status, (made[0] if made else None)


def kinds(evts: list[dict]) -> list[str]:
    """The event types in order, stages spelled out, runs of the same type merged."""
    out: list[str] = []
    for e in evts:
        k = f"stage:{e['stage']}" if e["type"] == "stage" else e["type"]
        if not out or out[-1] != k:
            out.append(k)
    return out


# -- tests ------------------------------------------------------------------------------------
def test_echo_goes_through_the_stages_in_order(fake: FakeService, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, TEMPLATED["echo"], {"stringInput": "teststring", "doubleInput": 2.5})
    status, cluster = run(spec)
    assert status == runner.EXIT_DONE
    assert cluster is None  # echo needs no cluster
    assert [e["stage"] for e in fake.events if e["type"] == "stage"] == STAGES
    assert fake.events[-1]["type"] == "done"
    done = fake.events[-1]
    assert done["results"] == {"stringInput": "teststring", "doubleInput": 2.5}
    assert done["output_bytes"] == 0 and done["stac_item"] is None
    assert all(e["at"].endswith("Z") for e in fake.events)
    assert fake.stac_calls == []  # echo ingests nothing


def test_zonal_mean_job_reads_the_lake_and_ingests(fake: FakeService, tmp_path: Path) -> None:
    nside = 4
    grid = HEALPix(nside)
    times = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-02T00"], dtype="datetime64[ns]")
    values = np.random.default_rng(0).normal(280, 5, (3, grid.size))
    src = xr.Dataset(
        {"2t": (("time", "cell"), values, grid_attrs(grid))},
        coords={"time": times},
        attrs=grid_attrs(grid),
    )
    store = tmp_path / "lake" / "2t.zarr"
    self_href = f"{os.environ['TWINHUB_STAC_URL']}collections/climate-dt/items/hp4-2t"
    src.to_zarr(store, zarr_format=3, consolidated=False)
    fake.items = [
        {
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": "hp4-2t",
            "collection": "climate-dt",
            "geometry": {"type": "Point", "coordinates": [0, 0]},
            "bbox": [0, 0, 0, 0],
            "properties": {
                "datetime": None,
                "start_datetime": "2020-01-01T00:00:00Z",
                "end_datetime": "2020-01-02T00:00:00Z",
                "param": "2t",
            },
            # file://: an absolute path would be resolved against the item's http self link
            "assets": {"zarr": {"href": f"file://{store}", "type": "application/vnd+zarr"}},
            "links": [{"rel": "self", "href": self_href}],
        }
    ]
    inputs = {"item": "hp4-2t", "variable": "2t", "datetime": "2020-01-01"}
    spec = make_spec(tmp_path, TEMPLATED["zonal-mean"], inputs)
    status, cluster = run(spec)
    assert status == runner.EXIT_DONE, [e.get("reason") or e.get("text") for e in fake.events][-4:]
    assert cluster is not None and cluster.closed  # the job's cluster is stopped at the end
    got = kinds(fake.events)
    assert [k for k in got if k.startswith("stage:")] == [f"stage:{s}" for s in STAGES]
    assert got.index("cluster") < got.index("stage:fetching") < got.index("sources")
    sources = next(e for e in fake.events if e["type"] == "sources")
    assert sources["items"] == [self_href]
    # progress within each stage never goes back
    stage, last = None, -1.0
    for e in fake.events:
        if e["type"] == "stage":
            stage, last = e["stage"], -1.0
        elif e["type"] == "progress":
            assert 0 <= e["progress"] <= 100 and e["progress"] >= last, (stage, e)
            last = e["progress"]

    done = fake.events[-1]
    assert done["type"] == "done"
    zm = done["results"]["zonal_mean"]
    # the day's two steps only, one mean per HEALPix ring, north -> south
    assert zm["time"] == ["2020-01-01T00:00:00Z", "2020-01-01T06:00:00Z"]
    theta, _ = healpy.pix2ang(nside, np.arange(grid.size), nest=True)
    rings = np.unique(np.round(theta, 12))
    ring_of = np.searchsorted(rings, np.round(theta, 12))
    expect = [[v[ring_of == r].mean() for r in range(rings.size)] for v in values[:2]]
    np.testing.assert_allclose(zm["values"], expect, rtol=1e-12)
    prefix = spec["output_prefix"]
    assert done["results"]["netcdf"] == {
        "href": prefix + "zonal_mean.nc",
        "type": "application/x-netcdf",
    }
    assert done["results"]["json"]["href"] == prefix + "zonal_mean.json"
    item_url = f"{os.environ['TWINHUB_STAC_URL']}collections/user-alice/items/{spec['id']}"
    assert done["stac_item"] == item_url
    assert done["results"]["item"] == {"href": item_url, "type": "application/geo+json"}
    assert done["output_bytes"] == sum(f.stat().st_size for f in Path(prefix).iterdir()) > 0
    # ingested with the user's token: the collection made first, then the item
    assert [c[:2] for c in fake.stac_calls if c[1] != "search"] == [
        ("POST", "collections"),
        ("POST", "user-alice/items"),
    ]
    assert {c[2] for c in fake.stac_calls} == {f"token {TOKEN}"}
    item = fake.stac_items[spec["id"]]
    assert item["collection"] == "user-alice"
    assert item["properties"]["twinhub:provenance"]["source_items"] == sources["items"]
    assert item["properties"]["start_datetime"] == "2020-01-01T00:00:00Z"
    assert item["properties"]["end_datetime"] == "2020-01-01T06:00:00Z"


def test_a_job_run_again_replaces_its_item(fake: FakeService, tmp_path: Path) -> None:
    def fn(n: int) -> dict:
        return {"field": xr.Dataset({"x": ("i", np.arange(n))})}

    process = describe_user_process(
        "arange", "A", "", {"n": int}, {"field": {}}, "1", cluster=False
    )
    spec = make_spec(tmp_path, process, {"n": 3})
    spec["code"] = base64.b64encode(cloudpickle.dumps(fn)).decode()
    assert run(spec)[0] == runner.EXIT_DONE
    fake.events.clear()
    spec["attempt"] = 2
    assert run(spec)[0] == runner.EXIT_DONE
    assert ("PUT", f"user-alice/items/{spec['id']}", f"token {TOKEN}") in fake.stac_calls
    zarr = fake.events[-1]["results"]["field"]
    assert zarr == {"href": spec["output_prefix"] + "field.zarr", "type": "application/vnd+zarr"}
    np.testing.assert_array_equal(xr.open_zarr(zarr["href"])["x"].values, [0, 1, 2])


def test_user_process_with_ctx_and_inline_outputs(fake: FakeService, tmp_path: Path) -> None:
    def mean(ctx: Any, xs: list, scale: float = 1.0) -> dict:
        import dask.array as da

        ctx.progress(50, "half way")
        ctx.log("computing on the job's cluster")
        arr = da.from_array(np.asarray(xs, dtype=float), chunks=1) * scale
        return {"mean": float(ctx.compute(arr.mean())), "n": len(xs)}

    process = describe_user_process(
        "mean",
        "Mean",
        "",
        {"xs": list, "scale": {"type": "number", "default": 1.0}},
        {"mean": float, "n": int},
        "1",
    )
    spec = make_spec(tmp_path, process, {"xs": [1, 2, 3], "scale": 2})
    spec["code"] = base64.b64encode(cloudpickle.dumps(mean)).decode()
    status, cluster = run(spec)
    assert status == runner.EXIT_DONE
    assert cluster is not None and cluster.closed
    assert fake.events[-1]["results"] == {"mean": 4.0, "n": 3}
    logs = [(e["level"], e["text"]) for e in fake.events if e["type"] == "log"]
    assert ("info", "computing on the job's cluster") in logs
    assert any(e.get("message") == "half way" for e in fake.events)
    assert fake.stac_calls == []  # nothing written: nothing to ingest


def test_an_exception_fails_the_job_with_a_one_line_reason(
    fake: FakeService, tmp_path: Path
) -> None:
    def broken(x: int) -> dict:
        raise ValueError(f"cannot use\n{x}")

    process = describe_user_process("broken", "B", "", {"x": int}, {"y": int}, "1", cluster=False)
    spec = make_spec(tmp_path, process, {"x": 7})
    spec["code"] = base64.b64encode(cloudpickle.dumps(broken)).decode()
    status, _ = run(spec)
    assert status == runner.EXIT_FAILED
    failed = fake.events[-1]
    assert failed == {**failed, "type": "failed", "reason": "processing: cannot use 7"}
    errors = [e["text"] for e in fake.events if e["type"] == "log" and e["level"] == "error"]
    assert errors[0].startswith("Traceback") and any("ValueError" in t for t in errors)
    assert not any(e["type"] == "done" for e in fake.events)


def test_unknown_item_fails_in_fetching(fake: FakeService, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, TEMPLATED["zonal-mean"], {"item": "nope", "variable": "2t"})
    status, cluster = run(spec)
    assert status == runner.EXIT_FAILED
    assert cluster is not None and cluster.closed
    assert fake.events[-1]["reason"] == "fetching: no STAC item 'nope' in the data lake"


def test_output_size_limit_fails_and_removes_outputs(fake: FakeService, tmp_path: Path) -> None:
    def big() -> dict:
        return {"field": xr.Dataset({"x": ("i", np.zeros(10_000))})}

    process = describe_user_process("big", "B", "", {}, {"field": {}}, "1", cluster=False)
    spec = make_spec(tmp_path, process, {}, max_output_bytes=1024)
    spec["code"] = base64.b64encode(cloudpickle.dumps(big)).decode()
    status, _ = run(spec)
    assert status == runner.EXIT_FAILED
    reason = fake.events[-1]["reason"]
    assert reason.startswith("output size limit of 1024 bytes exceeded (") and reason.endswith(
        " written)"
    )
    assert not Path(spec["output_prefix"]).exists()
    assert fake.stac_items == {}


def test_reports_are_retried_while_the_service_restarts(fake: FakeService, tmp_path: Path) -> None:
    fake.fail_posts = 5  # five 503s in a row, about half a second
    spec = make_spec(tmp_path, TEMPLATED["echo"], {"stringInput": "x", "pause": 1})
    status, _ = run(spec)
    assert status == runner.EXIT_DONE
    assert fake.posts > 5
    # every event arrived once, in order
    assert [e["stage"] for e in fake.events if e["type"] == "stage"] == STAGES
    assert [e["type"] for e in fake.events].count("done") == 1
    ats = [e["at"] for e in fake.events]
    assert ats == sorted(ats)


def test_a_service_gone_for_longer_than_report_timeout_stops_the_job(
    fake: FakeService, tmp_path: Path
) -> None:
    fake.refuse_all = True

    def slow(ctx: Any) -> dict:
        for _ in range(100):
            ctx.progress(1, "working")  # raises once the service is given up
            time.sleep(0.1)
        return {"y": 1}

    process = describe_user_process("slow", "S", "", {}, {"y": int}, "1")
    spec = make_spec(tmp_path, process, {}, report_timeout=1.0)
    spec["code"] = base64.b64encode(cloudpickle.dumps(slow)).decode()
    t0 = time.monotonic()
    status, cluster = run(spec)
    assert status == runner.EXIT_LOST
    assert time.monotonic() - t0 < 8
    assert cluster is not None and cluster.closed
    assert fake.events == []


def test_stop_in_a_report_answer_stops_the_cluster_and_removes_outputs(
    fake: FakeService, tmp_path: Path
) -> None:
    def writes_then_works(ctx: Any) -> dict:
        ctx.write_json("partial", {"a": 1})
        for _ in range(200):
            ctx.progress(1, "working")
            time.sleep(0.05)
        return {"y": 1}

    fake.stop_when = "processing"
    process = describe_user_process("w", "W", "", {}, {"y": int}, "1")
    spec = make_spec(tmp_path, process, {})
    spec["code"] = base64.b64encode(cloudpickle.dumps(writes_then_works)).decode()
    t0 = time.monotonic()
    status, cluster = run(spec)
    assert status == runner.EXIT_DONE
    assert time.monotonic() - t0 < 8
    assert cluster is not None and cluster.closed
    assert not any(e["type"] in ("done", "failed") for e in fake.events)
    assert not Path(spec["output_prefix"]).exists()


def test_the_runner_module_runs_a_job_from_its_environment(
    fake: FakeService, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, TEMPLATED["echo"], {"stringInput": "from a process"})
    env = {
        **os.environ,
        "TWINHUB_JOB_ID": spec["id"],
        "TWINHUB_JOB_SECRET": SECRET,
        "TWINHUB_PROCESSING_URL": fake.url,  # type: ignore[attr-defined]
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [sys.executable, "-m", "twinlab.processing.runner"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert fake.events[-1]["type"] == "done"
    assert fake.events[-1]["results"] == {"stringInput": "from a process"}
    # a wrong secret: the service refuses the spec, nothing runs
    bad = subprocess.run(
        cmd, env={**env, "TWINHUB_JOB_SECRET": "wrong"}, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == runner.EXIT_NO_JOB
    assert "refused" in bad.stderr


def test_the_runner_needs_its_job_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWINHUB_JOB_ID", raising=False)
    monkeypatch.setenv("TWINHUB_JOB_SECRET", SECRET)
    monkeypatch.setenv("TWINHUB_PROCESSING_URL", "http://127.0.0.1:9/services/processing/")
    assert runner.main() == runner.EXIT_NO_JOB


def test_a_refused_result_report_fails_the_job_instead(fake: FakeService, tmp_path: Path) -> None:
    fake.refuse_done = True
    spec = make_spec(tmp_path, TEMPLATED["echo"], {"stringInput": "x"})
    status, _ = run(spec)
    assert status == runner.EXIT_DONE  # the runner did its part; the service has the failure
    assert fake.events[-1]["type"] == "failed"
    assert fake.events[-1]["reason"] == "report refused: event 3: results too odd"
    assert not any(e["type"] == "done" for e in fake.events)


# -- the scheduling stage against a real Dask Gateway -------------------------------------------
GATEWAY_CONFIG = """
from dask_gateway_server.options import Options, Float, Integer, String
c.DaskGateway.address = "127.0.0.1:{api}"
c.Proxy.address = "127.0.0.1:{proxy}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.ClusterConfig.scheduler_cmd = ["{bin}/dask", "scheduler"]
c.ClusterConfig.worker_cmd = ["{bin}/dask", "worker", "--no-nanny"]
c.ClusterConfig.idle_timeout = 120
c.LocalBackend.clusters_directory = "{tmp}/clusters"

def handler(options):
    if options.project == "refused":
        raise ValueError("job j is not a running job of alice")
    return {{"worker_cores": options.worker_cores, "worker_memory": int(options.worker_memory * 2**30)}}

c.Backend.cluster_options = Options(
    String("job", default=""),
    String("project", default=""),
    Integer("worker_cores", default=1, min=1, max=2),
    Float("worker_memory", default=1, min=0.25, max=4),
    handler=handler,
)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A dask-gateway-server (local backend: schedulers and workers as processes here)."""
    binary = Path(sys.executable).parent
    if not (binary / "dask-gateway-server").exists():
        pytest.skip("dask-gateway-server is not installed")
    tmp = tmp_path_factory.mktemp("gateway")
    api, proxy = _free_port(), _free_port()
    config = tmp / "config.py"
    config.write_text(GATEWAY_CONFIG.format(api=api, proxy=proxy, bin=binary, tmp=tmp))
    env = {**os.environ, "PATH": f"{binary}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [str(binary / "dask-gateway-server"), "-f", str(config)],
        cwd=tmp,
        env=env,
        stdout=open(tmp / "gateway.log", "wb"),  # noqa: SIM115 - the server's whole life
        stderr=subprocess.STDOUT,
    )
    address = f"http://127.0.0.1:{proxy}"
    deadline = time.monotonic() + 30
    while True:  # up when its API answers through the proxy
        try:
            if httpx.get(f"{address}/api/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (
            tmp / "gateway.log"
        ).read_text()
        time.sleep(0.2)
    yield address
    proc.terminate()
    proc.wait(20)


@pytest.fixture
def gateway_client_config(gateway: str) -> Iterator[Any]:
    import dask
    from dask_gateway import Gateway

    cfg = {
        "gateway.address": gateway,
        "gateway.auth.type": "basic",
        "gateway.auth.kwargs": {"username": "alice"},
    }
    with dask.config.set(cfg):
        g = Gateway()
        yield g
        for report in g.list_clusters():
            g.stop_cluster(report.name)
        g.close()


def _running(g: Any) -> list[str]:
    return [r.name for r in g.list_clusters()]


def test_scheduling_makes_a_gateway_cluster_of_the_job(
    fake: FakeService, tmp_path: Path, gateway_client_config: Any
) -> None:
    def on_workers(ctx: Any) -> dict:
        import os as _os

        pids = ctx.client.run(_os.getpid)
        return {"workers": len(pids), "remote": _os.getpid() not in pids.values()}

    process = describe_user_process("w", "W", "", {}, {"workers": int, "remote": bool}, "1")
    spec = make_spec(tmp_path, process, {})
    spec["code"] = base64.b64encode(cloudpickle.dumps(on_workers)).decode()
    spec["cluster"] = {"workers": 2, "worker_cores": 1, "worker_memory": 0.5, "project": "p1"}
    spec["cluster"]["job"] = spec["id"]
    reporter = Reporter(fake.url, spec["id"], SECRET, interval=0.1, heartbeat=0.3)  # type: ignore[attr-defined]
    status = runner.run_job(spec, reporter.start())
    assert status == runner.EXIT_DONE, [e.get("reason") or e.get("text") for e in fake.events]
    assert fake.events[-1]["results"] == {"workers": 2, "remote": True}
    cluster = next(e for e in fake.events if e["type"] == "cluster")["name"]
    assert cluster  # the gateway's cluster name
    scheduling = []
    for e in fake.events:
        if e["type"] == "stage" and e["stage"] != "scheduling":
            break
        if e["type"] == "progress":
            scheduling.append(e["message"])
    assert "2/2 workers up" in scheduling
    deadline = time.monotonic() + 15
    while cluster in _running(gateway_client_config):  # stopped with the job
        assert time.monotonic() < deadline, "the job's cluster outlived the job"
        time.sleep(0.5)


def test_a_cluster_refused_by_the_gateway_fails_the_job_in_scheduling(
    fake: FakeService, tmp_path: Path, gateway_client_config: Any
) -> None:
    process = describe_user_process("w", "W", "", {}, {"y": int}, "1")
    spec = make_spec(tmp_path, process, {})
    spec["code"] = base64.b64encode(cloudpickle.dumps(lambda: {"y": 1})).decode()
    spec["cluster"] = {"workers": 1, "worker_cores": 1, "worker_memory": 0.5, "project": "refused"}
    reporter = Reporter(fake.url, spec["id"], SECRET, interval=0.1, heartbeat=0.3)  # type: ignore[attr-defined]
    status = runner.run_job(spec, reporter.start())
    assert status == runner.EXIT_FAILED
    reason = fake.events[-1]["reason"]
    assert reason.startswith("scheduling: ") and "job j is not a running job of alice" in reason


def test_sigterm_stops_the_runner_and_its_cluster(
    fake: FakeService, tmp_path: Path, gateway: str, gateway_client_config: Any
) -> None:
    def forever(ctx: Any) -> dict:
        while True:
            ctx.progress(1, "working")
            time.sleep(0.2)

    process = describe_user_process("f", "F", "", {}, {"y": int}, "1")
    spec = make_spec(tmp_path, process, {})
    spec["code"] = base64.b64encode(cloudpickle.dumps(forever)).decode()
    spec["cluster"] = {"workers": 1, "worker_cores": 1, "worker_memory": 0.5, "project": "p"}
    env = {
        **os.environ,
        "TWINHUB_JOB_ID": spec["id"],
        "TWINHUB_JOB_SECRET": SECRET,
        "TWINHUB_PROCESSING_URL": fake.url,  # type: ignore[attr-defined]
        "DASK_GATEWAY__ADDRESS": gateway,
        "DASK_GATEWAY__AUTH__TYPE": "basic",
        "DASK_GATEWAY__AUTH__KWARGS": '{"username": "alice"}',
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "twinlab.processing.runner"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(e.get("stage") == "processing" for e in fake.events):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the job never reached processing"
            time.sleep(0.2)
        cluster = next(e for e in fake.events if e["type"] == "cluster")["name"]
        assert cluster in _running(gateway_client_config)
        t0 = time.monotonic()
        proc.terminate()  # what the service's backend does first on a dismissal
        assert proc.wait(15) == runner.EXIT_DONE
        while cluster in _running(gateway_client_config):
            assert time.monotonic() - t0 < 10, "the cluster outlived its runner"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not any(e["type"] in ("done", "failed") for e in fake.events)
