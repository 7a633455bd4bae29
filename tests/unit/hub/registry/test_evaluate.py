"""The automated evaluation: description checks, resource fit, and the outbound guard's
refusals as findings (the real guard; loopback servers count what reaches them)."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from traitlets.config import Config

from twinhub import db, outbound
from twinhub.process.runtime import Runtime
from twinhub.services.projects.catalog import ProjectCatalog
from twinhub.services.registry import evaluate, metrics
from twinhub.services.registry.config import TwinhubRegistry
from twinhub.services.registry.context import RegistryContext
from twinhub.services.registry.evaluate import (
    check_endpoint,
    check_ogc_landing,
    check_openapi,
    fit_resources,
    parse_document,
)


def test_parse_json_and_yaml():
    assert parse_document(b'{"openapi": "3.1.0"}') == {"openapi": "3.1.0"}
    assert parse_document(b"openapi: 3.0.3\npaths: {}\n") == {"openapi": "3.0.3", "paths": {}}
    with pytest.raises(ValueError, match="neither JSON nor YAML"):
        parse_document(b"{: [")


def test_openapi_and_ogc_checks():
    assert check_openapi({"openapi": "3.0.0", "paths": {}}) is None
    assert check_openapi({"swagger": "2.0", "paths": {"/": {}}}) is None
    assert "no 'openapi'" in check_openapi({"paths": {}})
    assert "no 'paths'" in check_openapi({"openapi": "3.0.0"})
    assert check_openapi([1]) == "not an object"
    landing = {"links": [{"rel": "http://www.opengis.net/def/rel/ogc/1.0/conformance"}]}
    assert check_ogc_landing(landing) is None
    assert check_ogc_landing({"links": [{"rel": "service-desc", "href": "x"}]}) is None
    assert "no link with rel" in check_ogc_landing({"links": [{"rel": "self"}]})
    assert "no 'links'" in check_ogc_landing({"title": "x"})


@pytest.fixture
def ctx(tmp_path: Path) -> RegistryContext:
    rt = Runtime(state_dir=tmp_path, mode="multi-user")
    return RegistryContext(
        rt=rt,
        settings=TwinhubRegistry(fetch_timeout=2.0, fetch_max_bytes=1000),
        db_url=f"sqlite:///{tmp_path / 'x.sqlite'}",
        hub_api="http://hub.fake/hub/api",
        token="t",
        prefix="/services/registry/",
    )


@pytest.fixture
def counting_server():
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a):
            pass

    # 127.0.0.2: loopback too, and nothing else of the test listens there.
    srv = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.2:{srv.server_address[1]}", hits
    srv.shutdown()


def refused_count(reason: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "twinhub_registry_outbound_refused_total", {"reason": reason}
        )
        or 0.0
    )


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://127.0.0.2:{port}/", "address"),
        ("http://169.254.169.254/latest/meta-data/", "address"),
        ("http://[::1]:{port}/", "address"),
        ("file:///etc/passwd", "scheme"),
    ],
)
def test_private_and_odd_urls_are_findings_never_fetched(ctx, counting_server, url, reason):
    base, hits = counting_server
    url = url.format(port=base.rsplit(":", 1)[1].rstrip("/"))
    before = refused_count(reason)
    out = asyncio.run(
        check_endpoint(ctx, 0, {"url": url, "type": "openapi", "description_url": url + "d"})
    )
    assert [f["check"] for f in out] == ["health", "description"]
    assert all(not f["ok"] for f in out)
    assert "not fetched" in out[0]["message"]
    if reason == "address":
        assert "private address" in out[0]["message"]
    assert hits == []
    assert refused_count(reason) == before + 2


def response(status: int, body: bytes) -> outbound.OutboundResponse:
    return outbound.OutboundResponse(
        url="https://x.example/", status=status, headers=httpx.Headers(), body=body, elapsed_s=0.01
    )


def test_public_endpoints_through_a_fake_internet(ctx, monkeypatch):
    """The fetch itself is replaced (a fake: this machine reaches no public address); what
    the evaluation makes of the answers is real."""
    pages = {
        "https://ok.example/": response(200, b"<html>"),
        "https://ok.example/openapi.yaml": response(200, b"openapi: 3.0.0\npaths: {}\n"),
        "https://ogc.example/": response(200, b'{"links": [{"rel": "conformance"}]}'),
        "https://bad.example/": response(503, b""),
        "https://bad.example/d": response(200, b'{"title": "no"}'),
    }

    async def fake_fetch(url, **kw):
        assert kw["allow_private"] is False and kw["timeout"] == 2.0 and kw["max_bytes"] == 1000
        return pages[url]

    monkeypatch.setattr(evaluate, "fetch", fake_fetch)
    ok = asyncio.run(check_endpoint(ctx, 0, {"url": "https://ok.example/", "type": "openapi",
                                             "description_url": "https://ok.example/openapi.yaml"}))  # fmt: skip
    assert [f["ok"] for f in ok] == [True, True]
    assert "is an OpenAPI description" in ok[1]["message"]
    ogc = asyncio.run(check_endpoint(ctx, 1, {"url": "https://ogc.example/", "type": "ogcapi"}))
    assert [f["ok"] for f in ogc] == [True, True] and "landing page" in ogc[1]["message"]
    bad = asyncio.run(check_endpoint(ctx, 2, {"url": "https://bad.example/", "type": "ogcapi",
                                              "description_url": "https://bad.example/d"}))  # fmt: skip
    assert [f["ok"] for f in bad] == [False, False]
    assert "answered 503" in bad[0]["message"] and "no 'links'" in bad[1]["message"]
    missing = asyncio.run(check_endpoint(ctx, 0, {"url": "https://ok.example/", "type": "openapi"}))
    assert "no description_url" in missing[1]["message"]


def catalog(tmp_path: Path, projects: dict) -> ProjectCatalog:
    cfg = Config()
    cfg.Twinhub.db_url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    cfg.TwinhubProjects.projects = projects
    db.upgrade(cfg.Twinhub.db_url)
    return ProjectCatalog.from_runtime(Runtime(state_dir=tmp_path, config=cfg, mode="multi-user"))


def test_resources_fit_an_allocation(tmp_path):
    cat = catalog(
        tmp_path,
        {"climate": {"max_servers_per_user": 2, "storage_gb": 100}, "gpu-lab": {"gpu": True}},
    )

    def one(resources, groups=("climate",)):
        (f,) = fit_resources(resources, list(groups), cat)
        return f["ok"], f["message"]

    assert one({"project": "climate", "servers": 2, "storage_gb": 100}) == (
        True,
        "fits project 'climate''s allocation",
    )
    ok, msg = one({"project": "climate", "servers": 3, "storage_gb": 500, "gpu": 1})
    assert not ok and "servers 3 > 2" in msg and "storage_gb 500 > 100" in msg
    assert "no GPU allocation" in msg
    assert one({"project": "gpu-lab"})[1] == "the provider is not a member of project 'gpu-lab'"
    assert one({"project": "nowhere"})[1] == "'nowhere' is not a project of this platform"
    assert "no project named" in one({})[1]
    (f,) = fit_resources({"project": "climate"}, ["climate"], None)
    assert not f["ok"] and "no projects are configured" in f["message"]
