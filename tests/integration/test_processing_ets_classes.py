"""OGC's official suite for OGC API - Processes 1.0 (ets-ogcapi-processes10), ported to
pytest: the abstract tests of the classes **OGC Process Description**, **JSON**, **Job list**
and **OpenAPI 3.0** (Core: test_processing_ets.py), against the live service, each named
after the abstract test it ports.
"""

from __future__ import annotations

import time

import jsonschema
import pytest
import requests

from tests.helpers.ogc_processes import (
    CONF_CLASSES,
    ECHO,
    INPUT_DESCRIPTION,
    JOB_LIST,
    LANDING,
    OAS30,
    OUTPUT_DESCRIPTION,
    PROCESS,
    PROCESS_LIST,
    api_definition,
    describe,
    echo_inputs,
    ets_platform,
    execute_body,
    get,
    get_url,
    landing_page,
    norm_path,
    post_execute,
    resolve,
    valid,
    wait_async,
)
from tests.helpers.processing import SERVICE, TERMINAL

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]


@pytest.fixture(scope="module")
def ets(multiuser_platform):
    return ets_platform(multiuser_platform)


@pytest.fixture(scope="module")
def landing(ets) -> dict:
    return landing_page(ets)


@pytest.fixture(scope="module")
def openapi(ets, landing) -> dict:
    return api_definition(ets, landing)


@pytest.fixture(scope="module")
def echo(ets) -> dict:
    return describe(ets)


# == OGC Process Description ===================================================================
@pytest.fixture(scope="module")
def descriptions(ets) -> list[dict]:
    ids = [x["id"] for x in get(ets, "processes").json()["processes"]]
    out = []
    for pid in ids:
        r = get(ets, f"processes/{pid}")
        assert r.status_code == 200, (pid, r.text)
        out.append(r.json())
    return out


def test_conf_ogc_process_description_json_encoding(descriptions):
    """/conf/ogc-process-description/json-encoding: every description validates."""
    for d in descriptions:
        valid(d, PROCESS, f"description of {d.get('id')}")


def test_conf_ogc_process_description_inputs_def(descriptions):
    """/conf/ogc-process-description/inputs-def: every input has a (valid) JSON Schema."""
    for d in descriptions:
        assert "inputs" in d, d["id"]
        for name, spec in d["inputs"].items():
            valid(spec, INPUT_DESCRIPTION, f"{d['id']} input {name}")
            jsonschema.Draft202012Validator.check_schema(spec["schema"])


def test_conf_ogc_process_description_input_mixed_type(descriptions):
    """/conf/ogc-process-description/input-mixed-type: each oneOf branch is a schema."""
    found = 0
    for d in descriptions:
        for spec in d["inputs"].values():
            for branch in spec["schema"].get("oneOf", []):
                jsonschema.Draft202012Validator.check_schema(branch)
                found += 1
    if not found:
        pytest.skip("no input of mixed type")


def test_conf_ogc_process_description_outputs_def(descriptions):
    """/conf/ogc-process-description/outputs-def: every output has a (valid) JSON Schema."""
    for d in descriptions:
        assert d.get("outputs"), d["id"]
        for name, spec in d["outputs"].items():
            valid(spec, OUTPUT_DESCRIPTION, f"{d['id']} output {name}")
            jsonschema.Draft202012Validator.check_schema(spec["schema"])


def test_conf_ogc_process_description_output_mixed_type(descriptions):
    """/conf/ogc-process-description/output-mixed-type: each oneOf branch is a schema."""
    found = 0
    for d in descriptions:
        for spec in d["outputs"].values():
            for branch in spec["schema"].get("oneOf", []):
                jsonschema.Draft202012Validator.check_schema(branch)
                found += 1
    if not found:
        pytest.skip("no output of mixed type")


# == JSON ======================================================================================
def test_conf_json_definition(ets, echo):
    """/conf/json/definition: every resource answers application/json when asked to."""
    r = post_execute(ets, execute_body(echo), prefer="respond-async")
    job = wait_async(ets, r)["jobID"]
    for path in ("", "conformance", "processes", f"processes/{ECHO}", "jobs", f"jobs/{job}",
                 f"jobs/{job}/results"):  # fmt: skip
        res = get(ets, path)
        assert res.status_code == 200, (path, res.text)
        assert res.headers["content-type"].split(";")[0] == "application/json", (path, res.headers)
        res.json()


def test_conf_json_content(ets):
    """/conf/json/content: the JSON documents validate against their schemas."""
    valid(get(ets, "").json(), LANDING, "landing page")
    valid(get(ets, "conformance").json(), CONF_CLASSES, "conformance")
    valid(get(ets, "processes").json(), PROCESS_LIST, "process list")
    valid(get(ets, "jobs").json(), JOB_LIST, "job list")


def test_json_is_the_default_representation(ets):
    """twinhub's contract: no Accept header and no f= -> JSON (scripts, curl)."""
    for path in ("", "conformance", "processes", f"processes/{ECHO}", "jobs"):
        r = get(ets, path, accept=None)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"].startswith("application/json"), (path, r.headers)


# == Job list ==================================================================================
@pytest.fixture(scope="module")
def finished_job(ets, echo) -> dict:
    return wait_async(ets, post_execute(ets, execute_body(echo), prefer="respond-async"))


def test_conf_job_list_job_list_op(ets, finished_job):
    """/conf/job-list/job-list-op: GET {root}/jobs lists jobs."""
    r = get(ets, "jobs")
    assert r.status_code == 200 and len(r.json()["jobs"]) > 0


def test_conf_job_list_job_list_success(ets, finished_job):
    """/conf/job-list/job-list-success: the list validates; it holds the job."""
    doc = get(ets, "jobs").json()
    valid(doc, JOB_LIST, "job list")
    assert finished_job["jobID"] in {j["jobID"] for j in doc["jobs"]}


def test_conf_job_list_limit_response(ets, finished_job, echo):
    """/conf/job-list/limit-response: no more jobs than ``limit``; a next link when cut."""
    wait_async(ets, post_execute(ets, execute_body(echo), prefer="respond-async"))
    doc = get(ets, "jobs", params={"limit": 1}).json()
    assert len(doc["jobs"]) == 1
    assert "next" in {x.get("rel") for x in doc["links"]}, doc["links"]


def test_conf_job_list_links(ets, finished_job):
    """/conf/job-list/links: the list links to itself; each job to its status."""
    doc = get(ets, "jobs").json()
    assert "self" in {x.get("rel") for x in doc["links"]}
    for job in doc["jobs"]:
        hrefs = [x["href"] for x in job["links"] if x.get("rel") in ("self", "status", "monitor")]
        assert any(h.rstrip("/").endswith(f"jobs/{job['jobID']}") for h in hrefs), job["links"]


def test_conf_job_list_status_response(ets, finished_job, echo):
    """/conf/job-list/status-response: only jobs with the asked statuses."""
    running = post_execute(ets, {"inputs": echo_inputs(echo, pause=4)}, prefer="respond-async")
    assert running.status_code == 201
    try:
        for wanted in (["successful"], ["accepted", "running"]):
            jobs = get(ets, "jobs", params={"status": ",".join(wanted)}).json()["jobs"]
            assert jobs and all(j["status"] in wanted for j in jobs), (wanted, jobs)
    finally:
        wait_async(ets, running)


def test_conf_job_list_processid_response(ets, finished_job):
    """/conf/job-list/processid-response: only jobs of the asked process."""
    jobs = get(ets, "jobs", params={"processID": ECHO}).json()["jobs"]
    assert jobs and all(j["processID"] == ECHO for j in jobs)
    # this module's user ran echo only
    assert get(ets, "jobs", params={"processID": "zonal-mean"}).json()["jobs"] == []


def test_conf_job_list_type_response(ets, finished_job):
    """/conf/job-list/type-response: ``type=process`` lists OGC API - Processes jobs."""
    jobs = get(ets, "jobs", params={"type": "process"}).json()["jobs"]
    assert jobs and all(j["type"] == "process" for j in jobs)


# == OpenAPI 3.0 ===============================================================================
def test_conf_oas30_oas_definition_1(ets, landing):
    """/conf/oas30/oas-definition-1: the definition as JSON (service-desc, the OAS 3.0 media
    type) and as HTML (service-doc, text/html)."""
    desc = next(x for x in landing["links"] if x.get("rel") == "service-desc")
    assert desc.get("type") == OAS30, desc
    r = get_url(ets, desc["href"], accept=OAS30)
    assert r.status_code == 200
    assert r.headers["content-type"].replace(" ", "").startswith(OAS30), r.headers
    doc = next(x for x in landing["links"] if x.get("rel") == "service-doc")
    r = get_url(ets, doc["href"], accept="text/html")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<html" in r.text.lower() and "/processes" in r.text


def test_conf_oas30_oas_definition_2(openapi):
    """/conf/oas30/oas-definition-2: a valid OpenAPI 3.0 document (checked with
    openapi-spec-validator when installed, else its required structure and every $ref)."""
    try:
        from openapi_spec_validator import validate
    except ImportError:
        validate = None
    if validate is not None:
        validate(openapi)
    assert openapi["openapi"].startswith("3.0."), openapi["openapi"]
    assert openapi["info"]["title"] and openapi["info"]["version"]
    assert openapi["paths"]

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                resolve(openapi, node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(openapi)
    for path, item in openapi["paths"].items():
        assert path.startswith("/"), path
        for method, op in item.items():
            if method in ("get", "post", "put", "delete", "patch"):
                assert op.get("responses"), (path, method)


def _declares(openapi: dict, path: str, method: str, code: int) -> bool:
    item = openapi["paths"][path]
    responses = item[method]["responses"]
    return str(code) in responses or f"{str(code)[0]}XX" in responses or "default" in responses


def test_conf_oas30_completeness(ets, openapi, echo):
    """/conf/oas30/completeness and /conf/oas30/exceptions-codes: every status code the
    API answered here is described for its operation."""
    job = wait_async(ets, post_execute(ets, execute_body(echo), prefer="respond-async"))["jobID"]
    seen = [
        ("/", "get", get(ets, "").status_code),
        ("/conformance", "get", get(ets, "conformance").status_code),
        ("/processes", "get", get(ets, "processes").status_code),
        ("/processes/{processID}", "get", get(ets, f"processes/{ECHO}").status_code),
        ("/processes/{processID}", "get", get(ets, "processes/nosuch").status_code),
        ("/processes/{processID}/execution", "post", post_execute(ets, {"inputs": {"x": 1}}).status_code),
        ("/processes/{processID}/execution", "post", post_execute(ets, execute_body(echo)).status_code),
        ("/jobs", "get", get(ets, "jobs").status_code),
        ("/jobs/{jobId}", "get", get(ets, f"jobs/{job}").status_code),
        ("/jobs/{jobId}", "get", get(ets, "jobs/nosuch").status_code),
        ("/jobs/{jobId}/results", "get", get(ets, f"jobs/{job}/results").status_code),
        ("/jobs/{jobId}/results", "get", get(ets, "jobs/nosuch/results").status_code),
    ]  # fmt: skip
    paths = set(openapi["paths"])
    missing = []
    for path, method, code in seen:
        candidates = [p for p in paths if norm_path(p) == norm_path(path)]
        assert candidates, f"{path} not in the OpenAPI document: {sorted(paths)}"
        if not _declares(openapi, candidates[0], method, code):
            missing.append(f"{method.upper()} {path}: {code}")
    assert not missing, missing


def test_conf_oas30_oas_impl(ets, openapi, finished_job):
    """/conf/oas30/oas-impl: every GET the definition describes is implemented (path
    parameters filled with echo and a finished job)."""
    fill = {"processID": ECHO, "processId": ECHO, "jobID": finished_job["jobID"],
            "jobId": finished_job["jobID"]}  # fmt: skip
    for path, item in openapi["paths"].items():
        if "get" not in item:
            continue
        url = path
        for name, value in fill.items():
            url = url.replace("{" + name + "}", value)
        assert "{" not in url, f"unknown path parameter in {path}"
        r = get(ets, url.lstrip("/"))
        assert r.status_code not in (404, 405) and r.status_code < 500, (path, r.status_code)


def test_conf_oas30_security(ets, openapi):
    """/conf/oas30/security: the API is access-controlled, and the definition says how."""
    schemes = openapi.get("components", {}).get("securitySchemes", {})
    assert schemes, "no securitySchemes in the OpenAPI document"
    r = requests.get(
        ets.url + SERVICE + "processes", headers={"Accept": "application/json"}, timeout=30
    )
    assert r.status_code in (401, 403), r.status_code


def test_every_ets_job_ended(ets):
    """No job of this module is left unfinished (the suite's jobs end by themselves)."""
    deadline = time.monotonic() + 120
    while True:
        jobs = get(ets, "jobs", params={"limit": 1000}).json()["jobs"]
        left = [j for j in jobs if j["status"] not in TERMINAL]
        if not left:
            return
        assert time.monotonic() < deadline, left
        time.sleep(1)
