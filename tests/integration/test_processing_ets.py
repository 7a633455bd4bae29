"""OGC's official suite for OGC API - Processes 1.0 (ets-ogcapi-processes10), ported to pytest.

The suite's Java runner (TestNG + TEAM Engine) cannot be installed here, so its abstract
tests for the classes Core, OGC Process Description, JSON, Job list and OpenAPI 3.0 run
against the live ``processing`` service of the real multi-user platform, through the proxy,
with a user's token (the service is behind the hub's authorization; the suite's own runs
send no credentials). Each test is named after the abstract test it ports
(``/conf/core/process-list`` -> ``test_conf_core_process_list``), and like the suite it
drives the ``echo`` process with values generated from echo's own description.

The response schemas the suite fetches from schemas.opengis.net (no network here) are
written below as small JSON Schemas of what the standard requires of each document.
"""

from __future__ import annotations

import copy
import re
import time
import uuid
from urllib.parse import urljoin

import jsonschema
import pytest
import requests

from tests.helpers.processing import OGC_EXC, SERVICE, TERMINAL, call, wait_job

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

USER = "p6ets"
ECHO = "echo"
CONF = "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/"
REL = "http://www.opengis.net/def/rel/ogc/1.0/"
OAS30 = "application/vnd.oai.openapi+json;version=3.0"
TEST_STRING = "teststring"  # what the suite sends for every plain string input

# -- the documents' schemas (what the standard's schemas require, written for this port) -----
LINK = {
    "type": "object",
    "required": ["href"],
    "properties": {
        "href": {"type": "string", "minLength": 1},
        "rel": {"type": "string"},
        "type": {"type": "string"},
        "hreflang": {"type": "string"},
        "title": {"type": "string"},
    },
}
LINKS = {"type": "array", "items": LINK}
LANDING = {
    "type": "object",
    "required": ["links"],
    "properties": {"title": {"type": "string"}, "description": {"type": "string"}, "links": LINKS},
}
CONF_CLASSES = {
    "type": "object",
    "required": ["conformsTo"],
    "properties": {"conformsTo": {"type": "array", "items": {"type": "string"}}},
}
JOB_CONTROL = {"type": "string", "enum": ["sync-execute", "async-execute", "dismiss"]}
TRANSMISSION = {"type": "string", "enum": ["value", "reference"]}
PROCESS_SUMMARY = {
    "type": "object",
    "required": ["id", "version"],
    "properties": {
        "id": {"type": "string"},
        "version": {"type": "string"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "keywords": {"type": "array", "items": {"type": "string"}},
        "jobControlOptions": {"type": "array", "items": JOB_CONTROL},
        "outputTransmission": {"type": "array", "items": TRANSMISSION},
        "links": LINKS,
    },
}
PROCESS_LIST = {
    "type": "object",
    "required": ["processes", "links"],
    "properties": {"processes": {"type": "array", "items": PROCESS_SUMMARY}, "links": LINKS},
}
INPUT_DESCRIPTION = {
    "type": "object",
    "required": ["schema"],
    "properties": {
        "title": {"type": "string"},
        "description": {"type": "string"},
        "schema": {"type": "object"},
        "minOccurs": {"type": "integer", "minimum": 0},
        "maxOccurs": {"oneOf": [{"type": "integer", "minimum": 0}, {"const": "unbounded"}]},
    },
}
OUTPUT_DESCRIPTION = {
    "type": "object",
    "required": ["schema"],
    "properties": {
        "title": {"type": "string"},
        "description": {"type": "string"},
        "schema": {"type": "object"},
    },
}
PROCESS = copy.deepcopy(PROCESS_SUMMARY)
PROCESS["properties"]["inputs"] = {"type": "object", "additionalProperties": INPUT_DESCRIPTION}
PROCESS["properties"]["outputs"] = {"type": "object", "additionalProperties": OUTPUT_DESCRIPTION}
STATUS_INFO = {
    "type": "object",
    "required": ["jobID", "status", "type"],
    "properties": {
        "processID": {"type": "string"},
        "type": {"enum": ["process"]},
        "jobID": {"type": "string"},
        "status": {"enum": ["accepted", "running", "successful", "failed", "dismissed"]},
        "message": {"type": "string"},
        "created": {"type": "string", "format": "date-time"},
        "started": {"type": "string", "format": "date-time"},
        "finished": {"type": "string", "format": "date-time"},
        "updated": {"type": "string", "format": "date-time"},
        "progress": {"type": "integer", "minimum": 0, "maximum": 100},
        "links": LINKS,
    },
}
JOB_LIST = {
    "type": "object",
    "required": ["jobs", "links"],
    "properties": {"jobs": {"type": "array", "items": STATUS_INFO}, "links": LINKS},
}
EXCEPTION = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}


def valid(doc, schema: dict, what: str) -> None:
    """Validate like the suite does (date-time formats checked)."""
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    errors = list(jsonschema.Draft202012Validator(schema, format_checker=checker).iter_errors(doc))
    assert not errors, f"{what}: " + "; ".join(
        f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]
    )


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ets(multiuser_platform):
    p = multiuser_platform
    if p.api("GET", f"/users/{USER}", user="admin").status_code == 404:
        p.add_user(USER)
    r = call(p, "GET", "", USER)
    assert r.status_code == 200, f"the processing service does not answer: {r.status_code}"
    return p


def get(p, path: str, accept: str | None = "application/json", **kw) -> requests.Response:
    headers = kw.pop("headers", {})
    if accept:
        headers["Accept"] = accept
    return call(p, "GET", path, USER, headers=headers, **kw)


def get_url(p, url: str, accept: str | None = "application/json") -> requests.Response:
    headers = {"Authorization": f"token {p.token(USER)}"}
    if accept:
        headers["Accept"] = accept
    return requests.get(urljoin(p.url + SERVICE, url), headers=headers, timeout=60)


def post_execute(p, body: dict, *, prefer: str | None = None, process: str = ECHO):
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if prefer:
        headers["Prefer"] = prefer
    return call(
        p, "POST", f"processes/{process}/execution", USER, json=body, headers=headers,
        timeout=400,
    )  # fmt: skip


@pytest.fixture(scope="module")
def landing(ets) -> dict:
    r = get(ets, "")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def openapi(ets, landing) -> dict:
    link = next(x for x in landing["links"] if x.get("rel") == "service-desc")
    r = get_url(ets, link["href"], accept=link.get("type") or OAS30)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def echo(ets) -> dict:
    r = get(ets, f"processes/{ECHO}")
    assert r.status_code == 200, r.text
    return r.json()


def sample(schema: dict):
    """A value valid against ``schema``, as the suite makes them (strings: "teststring")."""
    if "default" in schema:
        return copy.deepcopy(schema["default"])
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return sample(schema[key][0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "string":
        return {"date-time": "2030-01-01T00:00:00Z", "date": "2030-01-01"}.get(
            schema.get("format", ""), TEST_STRING
        )
    if kind == "number":
        return 3.5
    if kind == "integer":
        return int(schema.get("minimum", 7))
    if kind == "boolean":
        return True
    if kind == "array":
        return [sample(schema.get("items", {"type": "integer"}))] * max(
            1, schema.get("minItems", 1)
        )
    if kind == "object":
        props = schema.get("properties", {})
        return {
            k: sample(props.get(k, {"type": "string"})) for k in schema.get("required", [])
        } or {"a": 1}
    return TEST_STRING


def echo_inputs(echo: dict, *, pause: int | None = None) -> dict:
    inputs = {
        name: sample(spec["schema"]) for name, spec in echo["inputs"].items() if name != "pause"
    }
    if pause is not None:
        inputs["pause"] = pause
    return inputs


def execute_body(echo: dict, **extra) -> dict:
    outputs = {name: {"transmissionMode": "value"} for name in echo["outputs"]}
    return {"inputs": echo_inputs(echo), "outputs": outputs, **extra}


def results_match_inputs(results: dict, inputs: dict) -> None:
    """Echo: every output equals the input of the same name (bare or qualified)."""
    for name, value in inputs.items():
        if name == "pause":
            continue
        got = results.get(name)
        if isinstance(got, dict) and "value" in got and set(got) <= {"value", "mediaType"}:
            got = got["value"]
        assert got == value, f"output {name!r}: {got!r} != input {value!r}"


def wait_async(p, r: requests.Response) -> dict:
    assert r.status_code == 201, r.text
    job_id = r.json()["jobID"]
    doc, _ = wait_job(p, USER, job_id, timeout=180)
    return doc


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
    paths = {_norm(path) for path in openapi["paths"]}
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


def job_count(p) -> int:
    return len(get(p, "jobs", params={"limit": 1000}).json()["jobs"])


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
def resolve(doc: dict, obj):
    """Follow a local ``$ref`` (``#/components/...``)."""
    while isinstance(obj, dict) and "$ref" in obj:
        ref = obj["$ref"]
        assert ref.startswith("#/"), f"non-local $ref {ref}"
        node = doc
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        obj = node
    return obj


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
        candidates = [p for p in paths if _norm(p) == _norm(path)]
        assert candidates, f"{path} not in the OpenAPI document: {sorted(paths)}"
        if not _declares(openapi, candidates[0], method, code):
            missing.append(f"{method.upper()} {path}: {code}")
    assert not missing, missing


def _norm(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path.rstrip("/") or "/")


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
