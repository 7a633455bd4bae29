"""OGC API - Processes 1.0 conformance, as its official test suite (ets-ogcapi-processes10)
checks it: the documents' schemas, the values the suite generates for echo's inputs, and the
HTTP calls of the ported abstract tests (tests/integration/test_processing_ets*.py).

The suite validates against the schemas it fetches from schemas.opengis.net (no network
here): they are written below as small JSON Schemas of what the standard requires of each
document. Everything else talks to the real service (tests.helpers.processing).
"""

from __future__ import annotations

import copy
import re
from urllib.parse import urljoin

import jsonschema
import requests

from tests.helpers.processing import SERVICE, call, wait_job

#: The user every ported test runs as (the suite itself sends no credentials).
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


# -- the service, as the suite's user ---------------------------------------------------------
def ets_platform(p):
    """``p`` with the suite's user, once the service answers."""
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


def landing_page(p) -> dict:
    r = get(p, "")
    assert r.status_code == 200, r.text
    return r.json()


def api_definition(p, landing: dict) -> dict:
    link = next(x for x in landing["links"] if x.get("rel") == "service-desc")
    r = get_url(p, link["href"], accept=link.get("type") or OAS30)
    assert r.status_code == 200, r.text
    return r.json()


def describe(p, process: str = ECHO) -> dict:
    r = get(p, f"processes/{process}")
    assert r.status_code == 200, r.text
    return r.json()


def job_count(p) -> int:
    return len(get(p, "jobs", params={"limit": 1000}).json()["jobs"])


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


# -- the OpenAPI document -----------------------------------------------------------------------
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


def norm_path(path: str) -> str:
    """A path with its parameters unnamed (``/jobs/{}``): names differ between APIs."""
    return re.sub(r"\{[^}]+\}", "{}", path.rstrip("/") or "/")
