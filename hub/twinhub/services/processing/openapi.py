"""The service's OpenAPI 3.0 document (``GET api``), written by hand: FastAPI's own would
describe the framework's view of the routes, not the OGC API - Processes resources they
answer with. :func:`document` builds it for the server URL a client reached.
"""

from __future__ import annotations

from typing import Any

from ... import __version__

OPENAPI_MEDIA = "application/vnd.oai.openapi+json;version=3.0"
OGC_PROCESSES = "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _json_html(schema: dict[str, Any], description: str) -> dict[str, Any]:
    doc = _json(schema, description)
    doc["content"]["text/html"] = {"schema": {"type": "string"}}
    return doc


def _param(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


def _resp(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


SCHEMAS: dict[str, Any] = {
    "link": {
        "type": "object",
        "required": ["href"],
        "properties": {
            "href": {"type": "string"},
            "rel": {"type": "string"},
            "type": {"type": "string"},
            "hreflang": {"type": "string"},
            "title": {"type": "string"},
        },
    },
    "links": {"type": "array", "items": _ref("link")},
    "landingPage": {
        "type": "object",
        "required": ["links"],
        "properties": {
            "title": {"type": "string"},
            "description": {"type": "string"},
            "links": _ref("links"),
        },
    },
    "confClasses": {
        "type": "object",
        "required": ["conformsTo"],
        "properties": {"conformsTo": {"type": "array", "items": {"type": "string"}}},
    },
    "exception": {
        "type": "object",
        "description": "An OGC exception; twinhub adds code and description (the platform's "
        "error shape).",
        "required": ["type"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "code": {"type": "integer"},
            "description": {"type": "string"},
        },
    },
    "processSummary": {
        "type": "object",
        "required": ["id", "version"],
        "properties": {
            "id": {"type": "string"},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "version": {"type": "string"},
            "keywords": {"type": "array", "items": {"type": "string"}},
            "jobControlOptions": {
                "type": "array",
                "items": {"type": "string", "enum": ["sync-execute", "async-execute", "dismiss"]},
            },
            "outputTransmission": {
                "type": "array",
                "items": {"type": "string", "enum": ["value", "reference"]},
            },
            "links": _ref("links"),
        },
    },
    "processList": {
        "type": "object",
        "required": ["processes", "links"],
        "properties": {
            "processes": {"type": "array", "items": _ref("processSummary")},
            "links": _ref("links"),
        },
    },
    "inputDescription": {
        "type": "object",
        "required": ["schema"],
        "properties": {
            "title": {"type": "string"},
            "description": {"type": "string"},
            "minOccurs": {"type": "integer"},
            "maxOccurs": {
                "oneOf": [{"type": "integer"}, {"type": "string", "enum": ["unbounded"]}]
            },
            "schema": {"type": "object", "description": "A JSON Schema of the input's values."},
        },
    },
    "outputDescription": {
        "type": "object",
        "required": ["schema"],
        "properties": {
            "title": {"type": "string"},
            "description": {"type": "string"},
            "schema": {"type": "object"},
        },
    },
    "process": {
        "allOf": [
            _ref("processSummary"),
            {
                "type": "object",
                "properties": {
                    "inputs": {
                        "type": "object",
                        "additionalProperties": _ref("inputDescription"),
                    },
                    "outputs": {
                        "type": "object",
                        "additionalProperties": _ref("outputDescription"),
                    },
                },
            },
        ]
    },
    "execute": {
        "type": "object",
        "properties": {
            "inputs": {"type": "object", "additionalProperties": True},
            "outputs": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "transmissionMode": {"type": "string", "enum": ["value", "reference"]},
                        "format": {"type": "object"},
                    },
                },
            },
            "response": {"type": "string", "enum": ["document", "raw"], "default": "document"},
            "project": {
                "type": "string",
                "description": "twinhub: the project (hub group) the job's cluster is charged "
                "to; default: the caller's first project.",
            },
        },
    },
    "statusInfo": {
        "type": "object",
        "required": ["jobID", "status", "type"],
        "properties": {
            "processID": {"type": "string"},
            "type": {"type": "string", "enum": ["process"]},
            "jobID": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["accepted", "running", "successful", "failed", "dismissed"],
            },
            "message": {"type": "string"},
            "created": {"type": "string", "format": "date-time"},
            "started": {"type": "string", "format": "date-time"},
            "finished": {"type": "string", "format": "date-time"},
            "updated": {"type": "string", "format": "date-time"},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "links": _ref("links"),
            "stage": {
                "type": "string",
                "description": "twinhub: queued, scheduling, fetching, processing, ingesting, "
                "finished",
            },
            "stages": {"type": "object", "description": "twinhub: each stage's times and progress"},
            "owner": {"type": "string"},
            "project": {"type": "string"},
            "attempt": {"type": "integer"},
        },
    },
    "jobList": {
        "type": "object",
        "required": ["jobs", "links"],
        "properties": {
            "jobs": {"type": "array", "items": _ref("statusInfo")},
            "links": _ref("links"),
        },
    },
    "results": {
        "type": "object",
        "description": "Output id -> an inline value, or {href, type} for a file.",
        "additionalProperties": True,
    },
    "logs": {
        "type": "object",
        "required": ["lines"],
        "properties": {
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "at": {"type": "string", "format": "date-time"},
                        "stage": {"type": "string"},
                        "level": {"type": "string"},
                        "source": {"type": "string"},
                        "text": {"type": "string"},
                    },
                },
            }
        },
    },
    "deploy": {
        "type": "object",
        "required": ["id", "outputs", "code"],
        "properties": {
            "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{1,62}$"},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "inputs": {"type": "object", "additionalProperties": _ref("inputDescription")},
            "outputs": {"type": "object", "additionalProperties": _ref("outputDescription")},
            "visibility": {"type": "string", "description": "private or project:<name>"},
            "code": {"type": "string", "description": "cloudpickle of the function, base64"},
            "source": {"type": "string"},
            "python": {"type": "string"},
            "cluster": {
                "type": "boolean",
                "default": True,
                "description": "false: runs without a Dask cluster (a faster start)",
            },
        },
    },
}

PARAMETERS: dict[str, Any] = {
    "f": {
        "name": "f",
        "in": "query",
        "required": False,
        "description": "The representation: json (the default) or html.",
        "schema": {"type": "string", "enum": ["json", "html"]},
    },
    "processID": {
        "name": "processID",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    },
    "jobID": {"name": "jobID", "in": "path", "required": True, "schema": {"type": "string"}},
    "limit": {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
    "offset": {
        "name": "offset",
        "in": "query",
        "required": False,
        "description": "twinhub: the first job to list (paging; the next link carries it).",
        "schema": {"type": "integer", "minimum": 0, "default": 0},
    },
    "status": {
        "name": "status",
        "in": "query",
        "required": False,
        "style": "form",
        "explode": False,
        "schema": {
            "type": "array",
            "items": {
                "type": "string",
                "enum": ["accepted", "running", "successful", "failed", "dismissed"],
            },
        },
    },
    "processIDQuery": {
        "name": "processID",
        "in": "query",
        "required": False,
        "style": "form",
        "explode": False,
        "schema": {"type": "array", "items": {"type": "string"}},
    },
    "type": {
        "name": "type",
        "in": "query",
        "required": False,
        "schema": {"type": "array", "items": {"type": "string", "enum": ["process"]}},
    },
    "Prefer": {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "description": "respond-async: answer 201 with the job's status at once.",
        "schema": {"type": "string"},
    },
}

RESPONSES: dict[str, Any] = {
    "error": _json(_ref("exception"), "A refusal or a failure (an OGC exception)."),
    "notFound": _json(_ref("exception"), "No such process or job (or not the caller's)."),
}


def _op(
    op_id: str, summary: str, ok: dict[str, Any], *, params=(), ok_status: str = "200", **more
) -> dict[str, Any]:
    # Every operation may refuse: bad input, no or a bad token, a token that is not a
    # user's or lacks the service's scope, the hub out of reach (the token check).
    responses = {
        ok_status: ok,
        "400": _resp("error"),
        "401": _resp("error"),
        "403": _resp("error"),
        "502": _resp("error"),
    }
    responses.update(more.pop("responses", {}))
    return {
        "operationId": op_id,
        "summary": summary,
        "parameters": [_param(p) for p in params],
        "responses": responses,
        **more,
    }


def paths() -> dict[str, Any]:
    status_doc = _json_html(_ref("statusInfo"), "The job's status.")
    created = {
        **_json(_ref("statusInfo"), "The job was accepted; its status is at Location."),
        "headers": {"Location": {"schema": {"type": "string"}}},
    }
    return {
        "/": {
            "get": _op(
                "getLandingPage",
                "The landing page",
                _json_html(_ref("landingPage"), "Links to the API's resources."),
                params=("f",),
            )
        },
        "/conformance": {
            "get": _op(
                "getConformanceClasses",
                "The conformance classes the service implements",
                _json_html(_ref("confClasses"), "The conformance classes."),
                params=("f",),
            )
        },
        "/api": {
            "get": _op(
                "getAPI",
                "This document",
                {
                    "description": "The OpenAPI 3.0 document.",
                    "content": {
                        OPENAPI_MEDIA: {"schema": {"type": "object"}},
                        "text/html": {"schema": {"type": "string"}},
                    },
                },
                params=("f",),
            )
        },
        "/processes": {
            "get": _op(
                "getProcesses",
                "The processes the caller may run",
                _json_html(_ref("processList"), "Process summaries."),
                params=("limit", "f"),
            ),
            "post": _op(
                "deployProcess",
                "Register a user process (twinhub: a pickled Python function)",
                {
                    **_json(_ref("process"), "Registered; its description is at Location."),
                    "headers": {"Location": {"schema": {"type": "string"}}},
                },
                ok_status="201",
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("deploy")}},
                },
                responses={
                    "200": _json(_ref("process"), "A new version of the caller's process."),
                    "409": _resp("error"),
                    "413": _resp("error"),
                },
            ),
        },
        "/processes/{processID}": {
            "get": _op(
                "getProcessDescription",
                "A process's description",
                _json_html(_ref("process"), "The description."),
                params=("processID", "f"),
                responses={"404": _resp("notFound")},
            ),
            "delete": _op(
                "undeployProcess",
                "Remove a user process (its owner or an admin)",
                {"description": "Removed."},
                params=("processID",),
                ok_status="204",
                responses={"404": _resp("notFound")},
            ),
        },
        "/processes/{processID}/execution": {
            "post": _op(
                "execute",
                "Execute a process (synchronously, or with Prefer: respond-async)",
                {
                    "description": "The results (synchronous execution); with response "
                    "raw, the one output's value (a string as text/plain).",
                    "content": {
                        "application/json": {"schema": _ref("results")},
                        "text/plain": {"schema": {"type": "string"}},
                    },
                    "headers": {"Link": {"schema": {"type": "string"}}},
                },
                params=("processID", "Prefer"),
                description="A body over TwinhubProcessing.max_input_bytes (1 MiB by default) "
                "is refused (413). Another user's process (shared with a project) runs their "
                "code as the caller: it needs an Authorization token header, not a browser "
                "session (403).",
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("execute")}},
                },
                responses={
                    "201": created,
                    "404": _resp("notFound"),
                    "413": _resp("error"),
                    "429": _resp("error"),
                    "500": _resp("error"),
                },
            )
        },
        "/jobs": {
            "get": _op(
                "getJobs",
                "The caller's jobs (admins: everyone's)",
                _json_html(_ref("jobList"), "Jobs, newest first."),
                params=("limit", "offset", "status", "processIDQuery", "type", "f"),
            )
        },
        "/jobs/{jobID}": {
            "get": _op(
                "getStatus",
                "A job's status",
                status_doc,
                params=("jobID", "f"),
                responses={"404": _resp("notFound")},
            ),
            "delete": _op(
                "dismiss",
                "Dismiss a job: its work stops, its partial outputs are removed",
                _json(_ref("statusInfo"), "The job's status afterwards."),
                params=("jobID",),
                responses={"404": _resp("notFound")},
            ),
        },
        "/jobs/{jobID}/results": {
            "get": _op(
                "getResult",
                "A successful job's results",
                _json_html(_ref("results"), "The results document."),
                params=("jobID", "f"),
                responses={
                    "404": _resp("notFound"),
                    "410": _json(_ref("exception"), "The job was dismissed."),
                    "500": _json(_ref("exception"), "The job failed (its reason)."),
                },
            )
        },
        "/jobs/{jobID}/logs": {
            "get": _op(
                "getLogs",
                "twinhub: a job's log lines",
                {
                    **_json(_ref("logs"), "Log lines, oldest first."),
                    "content": {
                        "application/json": {"schema": _ref("logs")},
                        "text/plain": {"schema": {"type": "string"}},
                    },
                },
                params=("jobID",),
                responses={"404": _resp("notFound")},
            )
        },
    }


def document(server_url: str, title: str = "twinhub processing") -> dict[str, Any]:
    """The OpenAPI 3.0.3 document; ``server_url``: the service's URL as the client reached it."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": title,
            "version": __version__,
            "description": "OGC API - Processes - Part 1: Core (1.0) with staged jobs that run "
            "as their user, plus twinhub's extensions (stages, logs, projects, user processes).",
            "license": {"name": "see the platform's terms"},
        },
        "servers": [{"url": server_url.rstrip("/")}],
        "security": [{"hubToken": []}, {"hubCookie": []}],
        "paths": paths(),
        "components": {
            "schemas": SCHEMAS,
            "parameters": PARAMETERS,
            "responses": RESPONSES,
            "securitySchemes": {
                "hubToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "'token <JupyterHub API token>'",
                },
                "hubCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "twinhub-services-processing-token",
                    "description": "The browser's sign-on (through the hub's OAuth).",
                },
            },
        },
    }


def operations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The document's operations in order, flattened for the HTML rendering."""
    out = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            params = [
                doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
                for p in op.get("parameters", ())
            ]
            out.append(
                {
                    "path": path,
                    "method": method.upper(),
                    "id": op["operationId"],
                    "summary": op["summary"],
                    "parameters": params,
                    "responses": sorted(op["responses"]),
                }
            )
    return out
