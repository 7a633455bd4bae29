"""OGC's official suite for OGC API - Processes 1.0 (ets-ogcapi-processes10), ported to
pytest: the abstract tests of the **Core** class (the other classes:
test_processing_ets_classes.py).

The suite's Java runner (TestNG + TEAM Engine) cannot be installed here, so its abstract
tests run against the live ``processing`` service of the real multi-user platform, through
the proxy, with a user's token (the service is behind the hub's authorization). Each test is
named after the abstract test it ports (``/conf/core/process-list`` ->
``test_conf_core_process_list``), and like the suite it drives ``echo`` with values generated
from echo's own description (tests/helpers/ogc_processes.py).
"""

from __future__ import annotations

import uuid

import pytest

from tests.helpers.ogc_processes import (
    CONF,
    CONF_CLASSES,
    ECHO,
    EXCEPTION,
    LANDING,
    OAS30,
    PROCESS,
    PROCESS_LIST,
    REL,
    STATUS_INFO,
    TEST_STRING,
    api_definition,
    describe,
    echo_inputs,
    ets_platform,
    execute_body,
    get,
    get_url,
    job_count,
    landing_page,
    norm_path,
    post_execute,
    resolve,
    results_match_inputs,
    sample,
    valid,
    wait_async,
)
from tests.helpers.processing import OGC_EXC

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


# == Core ======================================================================================
def test_conf_core_http(ets):
    """/conf/core/http: the API answers over HTTP/1.1."""
    r = get(ets, "")
    assert r.raw.version == 11


def test_conf_core_landingpage_op(ets):
    """/conf/core/landingpage-op: GET {root}/ returns 200 and a landing page."""
    r = get(ets, "")
    assert r.status_code == 200
    valid(r.json(), LANDING, "landing page")


def test_conf_core_landingpage_success(landing):
    """/conf/core/landingpage-success: service-desc or service-doc, conformance, processes."""
    rels = {x.get("rel") for x in landing["links"]}
    assert {"service-desc", "service-doc"} & rels, rels
    assert REL + "conformance" in rels or "conformance" in rels, rels
    assert REL + "processes" in rels or "processes" in rels, rels
    valid(landing, LANDING, "landing page")


def test_conf_core_api_definition_op(ets, landing):
    """/conf/core/api-definition-op: the service-desc link answers 200."""
    link = next(x for x in landing["links"] if x.get("rel") == "service-desc")
    r = get_url(ets, link["href"], accept=link.get("type") or OAS30)
    assert r.status_code == 200


def test_conf_core_api_definition_success(ets, landing, openapi):
    """/conf/core/api-definition-success: the document is an API definition of this API."""
    assert str(openapi.get("openapi", "")).startswith("3."), openapi.get("openapi")
    paths = {norm_path(path) for path in openapi["paths"]}
    assert {"/processes", "/processes/{}", "/processes/{}/execution", "/jobs", "/jobs/{}",
            "/jobs/{}/results"} <= paths, sorted(paths)  # fmt: skip


def test_conf_core_conformance_op(ets):
    """/conf/core/conformance-op: GET {root}/conformance returns 200."""
    r = get(ets, "conformance")
    assert r.status_code == 200


def test_conf_core_conformance_success(ets):
    """/conf/core/conformance-success: a list of URIs that includes Core's."""
    doc = get(ets, "conformance").json()
    valid(doc, CONF_CLASSES, "conformance")
    for cls in ("core", "ogc-process-description", "json", "job-list", "oas30"):
        assert CONF + cls in doc["conformsTo"], (cls, doc["conformsTo"])


def test_conf_core_process_list(ets):
    """/conf/core/process-list: GET {root}/processes lists at least one process."""
    r = get(ets, "processes")
    assert r.status_code == 200
    assert len(r.json()["processes"]) > 0


def test_conf_core_process_list_success(ets):
    """/conf/core/process-list-success: the list's structure; every templated process."""
    doc = get(ets, "processes").json()
    valid(doc, PROCESS_LIST, "process list")
    ids = {x["id"] for x in doc["processes"]}
    assert {"echo", "regrid", "zonal-mean", "area-mean", "climatology", "point-series"} <= ids
    for summary in doc["processes"]:
        rels = {x.get("rel") for x in summary.get("links", [])}
        assert "self" in rels or REL + "process" in rels or "process" in rels, summary


def test_conf_core_pl_limit_definition(openapi):
    """/conf/core/pl-limit-definition: ``limit`` is an integer parameter of GET /processes
    (minimum 1, maximum at most 10000, default at most the maximum)."""
    params = openapi["paths"]["/processes"]["get"].get("parameters", [])
    params = [resolve(openapi, x) for x in params]
    limit = next((x for x in params if x.get("name") == "limit"), None)
    assert limit is not None, params
    assert limit["in"] == "query" and not limit.get("required", False)
    schema = resolve(openapi, limit["schema"])
    assert schema["type"] == "integer" and schema.get("minimum") == 1, schema
    assert schema.get("maximum", 10000) <= 10000
    assert schema.get("default", 1) <= schema.get("maximum", 10000)


def test_conf_core_pl_limit_response(ets):
    """/conf/core/pl-limit-response: no more processes than ``limit``."""
    r = get(ets, "processes", params={"limit": 1})
    assert r.status_code == 200 and len(r.json()["processes"]) == 1


def test_conf_core_pl_links(ets):
    """/conf/core/pl-links: the list has links (self; next when limited)."""
    doc = get(ets, "processes", params={"limit": 1}).json()
    rels = [x.get("rel") for x in doc["links"]]
    assert "self" in rels, rels
    assert "next" in rels, "a list cut by limit links to its next page"
    nxt = next(x for x in doc["links"] if x["rel"] == "next")
    second = get_url(ets, nxt["href"]).json()["processes"]
    assert second and second[0]["id"] != doc["processes"][0]["id"]


def test_conf_core_process(ets):
    """/conf/core/process: GET {root}/processes/{processID} returns 200."""
    r = get(ets, f"processes/{ECHO}")
    assert r.status_code == 200


def test_conf_core_process_success(echo):
    """/conf/core/process-success: the description validates (OGC process description)."""
    valid(echo, PROCESS, "echo's description")
    assert echo["id"] == ECHO
    assert {"sync-execute", "async-execute"} <= set(echo["jobControlOptions"])


def test_conf_core_process_exception_no_such_process(ets):
    """/conf/core/process-exception-no-such-process: 404 with the exception type."""
    r = get(ets, f"processes/invalid-process-{uuid.uuid4()}")
    assert r.status_code == 404
    valid(r.json(), EXCEPTION, "exception")
    assert r.json()["type"] == OGC_EXC + "no-such-process"


def test_conf_core_job_creation_op(ets, echo):
    """/conf/core/job-creation-op: an async execute creates a job whose Location answers
    with a status document."""
    r = post_execute(ets, execute_body(echo), prefer="respond-async")
    assert r.status_code == 201, r.text
    status = get_url(ets, r.headers["Location"])
    assert status.status_code == 200
    valid(status.json(), STATUS_INFO, "status info")
    wait_async(ets, r)


def test_conf_core_job_creation_auto_execution_mode(ets, echo):
    """/conf/core/job-creation-auto-execution-mode: ``Prefer: respond-async`` on a process
    that does both is honoured (201), and says so."""
    r = post_execute(ets, execute_body(echo), prefer="respond-async")
    assert r.status_code == 201, r.text
    assert "respond-async" in r.headers.get("Preference-Applied", "")
    wait_async(ets, r)


def test_conf_core_job_creation_default_execution_mode(ets, echo):
    """/conf/core/job-creation-default-execution-mode: no Prefer -> executed synchronously."""
    r = post_execute(ets, execute_body(echo))
    assert r.status_code == 200, r.text


def test_conf_core_job_creation_default_outputs(ets, echo):
    """/conf/core/job-creation-default-outputs: no ``outputs`` -> every output returned."""
    inputs = echo_inputs(echo)
    r = post_execute(ets, {"inputs": inputs})
    assert r.status_code == 200, r.text
    assert set(echo["outputs"]) <= set(r.json()), (sorted(echo["outputs"]), r.json())
    results_match_inputs(r.json(), inputs)


def test_conf_core_job_creation_request(ets, echo):
    """/conf/core/job-creation-request: an execute request of the standard's shape (inputs,
    outputs with transmissionMode, response) is accepted and yields a valid status."""
    r = post_execute(ets, execute_body(echo, response="document"), prefer="respond-async")
    assert r.status_code == 201, r.text
    valid(r.json(), STATUS_INFO, "status info")
    assert wait_async(ets, r)["status"] == "successful"


def test_conf_core_job_creation_inputs(ets, echo):
    """/conf/core/job-creation-inputs: inline values accepted (a reference to a value is
    refused with a 400 naming the input: this service takes values inline only)."""
    r = post_execute(ets, execute_body(echo))
    assert r.status_code == 200, r.text
    first = next(iter(echo["inputs"]))
    body = execute_body(echo)
    body["inputs"][first] = {"href": "http://example.org/value.txt"}
    r = post_execute(ets, body)
    assert r.status_code == 400 and first in r.json()["description"], r.text


def test_conf_core_job_creation_input_inline(ets, echo):
    """/conf/core/job-creation-input-inline: inline values validated against the schema
    and echoed back unchanged."""
    inputs = echo_inputs(echo)
    r = post_execute(ets, {"inputs": inputs})
    assert r.status_code == 200, r.text
    results_match_inputs(r.json(), inputs)


def test_conf_core_job_creation_input_inline_object(ets, echo):
    """/conf/core/job-creation-input-inline-object: an object input comes back as is."""
    name = next((n for n, s in echo["inputs"].items() if s["schema"].get("type") == "object"), None)
    if name is None:
        pytest.skip("echo has no object input")
    inputs = {**echo_inputs(echo), name: {"nested": {"a": [1, 2, 3]}, "b": "x"}}
    r = post_execute(ets, {"inputs": inputs})
    assert r.status_code == 200, r.text
    results_match_inputs(r.json(), inputs)


def test_conf_core_job_creation_input_array(ets, echo):
    """/conf/core/job-creation-input-array: an array value (one occurrence) comes back."""
    name = next((n for n, s in echo["inputs"].items() if s["schema"].get("type") == "array"), None)
    if name is None:
        pytest.skip("echo has no array input")
    inputs = {**echo_inputs(echo), name: [sample(echo["inputs"][name]["schema"]["items"])] * 3}
    r = post_execute(ets, {"inputs": inputs})
    assert r.status_code == 200, r.text
    results_match_inputs(r.json(), inputs)


def test_conf_core_job_creation_input_inline_mixed(ets, echo):
    """/conf/core/job-creation-input-inline-mixed: a qualified value ({"value", "mediaType"})
    is taken as its value."""
    name = next(n for n, s in echo["inputs"].items() if s["schema"].get("type") == "string")
    inputs = echo_inputs(echo)
    body = {"inputs": {**inputs, name: {"value": "qualified", "mediaType": "text/plain"}}}
    r = post_execute(ets, body)
    assert r.status_code == 200, r.text
    got = r.json()[name]
    assert got == "qualified" or got.get("value") == "qualified", got


def test_conf_core_job_creation_input_validation(ets, echo):
    """/conf/core/job-creation-input-validation: a value outside its schema -> 400 naming
    the input, and no job is made."""
    name = next(n for n, s in echo["inputs"].items() if s["schema"].get("type") == "string")
    before = job_count(ets)
    for bad in ({**echo_inputs(echo), name: 12345}, {**echo_inputs(echo), "nosuch": 1}):
        r = post_execute(ets, {"inputs": bad}, prefer="respond-async")
        assert r.status_code == 400, r.text
        doc = r.json()
        assert doc["code"] == 400 and doc["description"], doc
    assert job_count(ets) == before


def test_conf_core_job_creation_success_async(ets, echo):
    """/conf/core/job-creation-success-async: 201, Location, a status document."""
    r = post_execute(ets, execute_body(echo), prefer="respond-async")
    assert r.status_code == 201, r.text
    assert "/services/processing/jobs/" in r.headers["Location"]
    valid(r.json(), STATUS_INFO, "status info")
    assert r.json()["status"] in ("accepted", "running", "successful")
    wait_async(ets, r)


def test_conf_core_job_creation_sync_document(ets, echo):
    """/conf/core/job-creation-sync-document: sync + response=document -> 200 results."""
    body = execute_body(echo, response="document")
    r = post_execute(ets, body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    results_match_inputs(r.json(), body["inputs"])


def test_conf_core_job_creation_sync_raw_value_one(ets, echo):
    """/conf/core/job-creation-sync-raw-value-one: one output, raw, by value -> the value
    itself as the body."""
    name = next(n for n, s in echo["inputs"].items() if s["schema"].get("type") == "string")
    body = {
        "inputs": echo_inputs(echo),
        "outputs": {name: {"transmissionMode": "value"}},
        "response": "raw",
    }
    r = post_execute(ets, body)
    assert r.status_code == 200, r.text
    assert TEST_STRING in r.text


def test_conf_core_job_exception_no_such_job(ets):
    """/conf/core/job-exception-no-such-job: 404 with the exception type."""
    r = get(ets, f"jobs/invalid-job-{uuid.uuid4()}")
    assert r.status_code == 404
    valid(r.json(), EXCEPTION, "exception")
    assert r.json()["type"] == OGC_EXC + "no-such-job"


def test_conf_core_job_op(ets, echo):
    """/conf/core/job-op: GET {root}/jobs/{jobID} returns the job's status."""
    r = post_execute(ets, execute_body(echo), prefer="respond-async")
    job = r.json()["jobID"]
    s = get(ets, f"jobs/{job}")
    assert s.status_code == 200 and s.json()["jobID"] == job
    wait_async(ets, r)


def test_conf_core_job_success(ets, echo):
    """/conf/core/job-success: the status info validates, before and after the end."""
    r = post_execute(ets, execute_body(echo), prefer="respond-async")
    valid(get_url(ets, r.headers["Location"]).json(), STATUS_INFO, "status info")
    done = wait_async(ets, r)
    valid(done, STATUS_INFO, "status info")
    assert done["status"] == "successful" and done["progress"] == 100, done
    assert done["processID"] == ECHO
    assert any(x.get("rel") == REL + "results" or x.get("rel") == "results" for x in done["links"])


def test_conf_core_job_results(ets, echo):
    """/conf/core/job-results: results of a successful job, from its results link."""
    body = execute_body(echo)
    r = post_execute(ets, body, prefer="respond-async")
    done = wait_async(ets, r)
    link = next(x for x in done["links"] if x.get("rel") in (REL + "results", "results"))
    res = get_url(ets, link["href"])
    assert res.status_code == 200, res.text
    results_match_inputs(res.json(), body["inputs"])


def test_conf_core_job_results_async_document(ets, echo):
    """/conf/core/job-results-async-document: async + response=document -> results doc."""
    body = execute_body(echo, response="document")
    r = post_execute(ets, body, prefer="respond-async")
    done = wait_async(ets, r)
    res = get(ets, f"jobs/{done['jobID']}/results")
    assert res.status_code == 200
    results_match_inputs(res.json(), body["inputs"])


def test_conf_core_job_results_exception_no_such_job(ets):
    """/conf/core/job-results-exception-no-such-job: 404 with the exception type."""
    r = get(ets, f"jobs/invalid-job-{uuid.uuid4()}/results")
    assert r.status_code == 404
    valid(r.json(), EXCEPTION, "exception")
    assert r.json()["type"] == OGC_EXC + "no-such-job"


def test_conf_core_job_results_exception_results_not_ready(ets, echo):
    """/conf/core/job-results-exception-results-not-ready: while echo pauses, its results
    are 404 result-not-ready."""
    if "pause" not in echo["inputs"]:
        pytest.skip("echo has no pause input")
    # as the suite: the first input, the pause, and the first input's output, raw
    first = next(iter(echo["inputs"]))
    body = {
        "inputs": {first: echo_inputs(echo)[first], "pause": 5},
        "outputs": {first: {"transmissionMode": "value"}},
        "response": "raw",
    }
    r = post_execute(ets, body, prefer="respond-async")
    assert r.status_code == 201, r.text
    res = get_url(ets, r.headers["Location"].rstrip("/") + "/results")
    assert res.status_code == 404, res.text
    valid(res.json(), EXCEPTION, "exception")
    assert res.json()["type"] == OGC_EXC + "result-not-ready"
    done = wait_async(ets, r)
    assert done["status"] == "successful"


def test_conf_core_job_results_failed(ets):
    """/conf/core/job-results-failed: an invalid execute request -> a 4xx exception."""
    r = post_execute(ets, {"invalid-execute-request": "true)"})
    assert r.status_code >= 400, r.text
    doc = r.json()
    assert doc["code"] == r.status_code and doc["description"], doc


def test_conf_core_job_results_sync(ets, echo):
    """/conf/core/job-results-sync: a sync execution that made a job says where (Link
    rel=monitor), and that job is successful."""
    r = post_execute(ets, execute_body(echo))
    assert r.status_code == 200, r.text
    monitor = [
        v for v in r.headers.get("Link", "").split(",") if "rel=monitor" in v.replace('"', "")
    ]
    if not monitor:
        pytest.skip("no Link rel=monitor: the standard does not require a job for sync runs")
    url = monitor[0].split(";")[0].strip().strip("<>")
    s = get_url(ets, url)
    assert s.status_code == 200 and s.json()["status"] == "successful", s.text
