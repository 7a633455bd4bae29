"""The OpenAPI 3.0 document (openapi.py): its structure (openapi-spec-validator is not
installed here, so the checks are ours: every $ref resolves, operations are complete), and
that it documents exactly the routes the app serves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route
from traitlets.config import Config

from twinhub.process.runtime import Runtime
from twinhub.services.processing import openapi
from twinhub.services.processing.api import api_router
from twinhub.services.processing.config import TwinhubProcessing
from twinhub.services.processing.context import ProcessingContext
from twinhub.services.processing.jobs import JobManager
from twinhub.services.processing.openapi import OPENAPI_MEDIA

from . import test_api as api

# The app fixture is test_api.py's (one definition of the fakes).
service = api.service
processing_settings = api.processing_settings
anyio_backend = api.anyio_backend

DOC = openapi.document("http://twin.test/services/processing/")
#: Routes of the API's router that are not part of the API: the pages' files.
UNDOCUMENTED = ("static/",)


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        for v in node.values():
            out += refs(v)
        return out
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def resolve(doc: dict, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_top_level_shape():
    assert DOC["openapi"] == "3.0.3"
    assert DOC["info"]["title"] and DOC["info"]["version"]
    assert DOC["servers"] == [{"url": "http://twin.test/services/processing"}]
    json.dumps(DOC)  # JSON as served
    for name in ("statusInfo", "processSummary", "process", "execute", "results", "exception"):
        assert name in DOC["components"]["schemas"]


def test_every_ref_resolves():
    found = refs(DOC)
    assert len(found) > 20
    for ref in found:
        assert resolve(DOC, ref) is not None, ref


def test_operations_are_complete():
    ids = []
    for path, item in DOC["paths"].items():
        declared = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            assert method in ("get", "post", "put", "delete", "patch"), method
            ids.append(op["operationId"])
            assert op["summary"] and op["responses"]
            assert all(re.fullmatch(r"[1-5][0-9][0-9]", s) for s in op["responses"])
            params = [resolve(DOC, p["$ref"]) for p in op.get("parameters", [])]
            path_params = {p["name"] for p in params if p["in"] == "path"}
            assert path_params == declared, (path, method)
            for p in params:
                assert p["in"] in ("query", "path", "header", "cookie")
                assert "schema" in p
                if p["in"] == "path":
                    assert p["required"] is True
            ok = [s for s in op["responses"] if s.startswith("2")]
            assert ok, (path, method)
    assert len(ids) == len(set(ids))


def test_ogc_core_paths_are_described():
    for path in (
        "/",
        "/conformance",
        "/processes",
        "/processes/{processID}",
        "/processes/{processID}/execution",
        "/jobs",
        "/jobs/{jobID}",
        "/jobs/{jobID}/results",
    ):
        assert path in DOC["paths"], path
    execute = DOC["paths"]["/processes/{processID}/execution"]["post"]
    assert {"200", "201"} <= set(execute["responses"])
    assert "Location" in execute["responses"]["201"]["headers"]
    assert "delete" in DOC["paths"]["/jobs/{jobID}"]


@pytest.fixture
def app_paths(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, path relative to the prefix) of every route of the API's router."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    rt = Runtime(
        state_dir=tmp_path, config=Config({"Twinhub": {"db_url": url}}), ports={"public": 9}
    )
    ctx = ProcessingContext(
        rt=rt,
        settings=TwinhubProcessing(config=rt.config),
        db_url=url,
        hub_api="http://hub.test/hub/api",
        token="t",
        prefix="/services/processing/",
    )
    out = set()
    for r in api_router(ctx, JobManager(ctx)).routes:
        assert isinstance(r, Route)
        for m in r.methods or ():
            if m != "HEAD":
                out.add((m.lower(), r.path))
    return out


def test_document_matches_the_routes(app_paths):
    served = {
        (m, re.sub(r"{\w+}", "{}", p))
        for m, p in app_paths
        if not p.lstrip("/").startswith(UNDOCUMENTED)
    }
    documented = {(m, re.sub(r"{\w+}", "{}", p)) for p, item in DOC["paths"].items() for m in item}
    assert served == documented


def test_operations_for_the_html_rendering():
    ops = openapi.operations(DOC)
    assert ("POST", "/processes/{processID}/execution") in {(o["method"], o["path"]) for o in ops}
    execute = next(o for o in ops if o["id"] == "execute")
    assert [p["name"] for p in execute["parameters"]] == ["processID", "Prefer"]


def test_answers_the_service_gives_are_documented():
    # (the statuses test_api.py sees the service answer)
    def statuses(path: str, method: str) -> set[str]:
        return set(DOC["paths"][path][method]["responses"])

    assert {"200", "201", "400", "401", "403", "409", "413"} <= statuses("/processes", "post")
    assert {"200", "201", "404", "429", "500"} <= statuses(
        "/processes/{processID}/execution", "post"
    )
    assert {"200", "404", "410", "500"} <= statuses("/jobs/{jobID}/results", "get")
    assert {"204", "403", "404"} <= statuses("/processes/{processID}", "delete")
    for item in DOC["paths"].values():
        for op in item.values():
            assert {"400", "401", "403", "502"} <= set(op["responses"])


@pytest.mark.anyio
async def test_openapi_document_served(service):
    r = await service.call("GET", "api")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(OPENAPI_MEDIA)
    doc = r.json()
    assert doc["openapi"].startswith("3.0")
    assert doc["servers"][0]["url"] == "http://twin.test/services/processing"
    r = await service.call("GET", "api?f=html")
    assert r.headers["content-type"].startswith("text/html")
    assert "/processes/{processID}/execution" in r.text
