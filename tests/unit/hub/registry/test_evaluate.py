"""The automated evaluation: description checks, resource fit, and the outbound guard's
refusals as findings (the real guard; loopback servers count what reaches them)."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from traitlets.config import Config

from twinhub import db, outbound
from twinhub.process.runtime import Runtime
from twinhub.services.projects.catalog import ProjectCatalog
from twinhub.services.registry import evaluate, metrics, store
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
        settings=TwinhubRegistry(fetch_timeout=2.0, fetch_max_bytes=1024),
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
        # Finding 10: the provider learns no address (nor the resolver's words).
        assert out[0]["message"] == "endpoint 1 resolves to a non-public address: not fetched"
        assert out[1]["message"] == (
            "endpoint 1's description resolves to a non-public address: not fetched"
        )
    assert not any(x in f["message"] for f in out for x in ("127.0.0", "169.254", "::1"))
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
        assert kw["allow_private"] is False and kw["timeout"] == 2.0 and kw["max_bytes"] == 1024
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


def test_names_resolving_inside_say_nothing_of_the_address(ctx):
    """``localhost`` resolves to loopback: the finding says so without the address."""
    (f,) = asyncio.run(check_endpoint(ctx, 0, {"url": "http://localhost:9/", "type": "other"}))
    assert f == {
        "check": "health",
        "ok": False,
        "message": "endpoint 1 resolves to a non-public address: not fetched",
    }


@pytest.mark.parametrize(
    "reason, words",
    [
        ("dns", "does not resolve"),
        ("redirect", "redirects to another host"),
        ("connect", "could not be reached"),
        ("size", "is too large"),
        ("time", "did not answer in time"),
    ],
)
def test_refusals_keep_the_guards_detail_out_of_findings(ctx, monkeypatch, reason, words):
    secret = "postgres.ns.svc.cluster.local resolves to 10.96.0.12 ([Errno -2] Name or service not known)"  # fmt: skip

    async def fake_fetch(url, **kw):  # a fake: the guard's refusal with internal detail
        raise outbound.OutboundRefused(reason, secret)

    monkeypatch.setattr(evaluate, "fetch", fake_fetch)
    (f,) = asyncio.run(check_endpoint(ctx, 0, {"url": "https://x.example/", "type": "other"}))
    assert f["message"] == f"endpoint 1 {words}: not fetched"


def db_ctx(tmp_path: Path, settings: TwinhubRegistry) -> RegistryContext:
    """A context with a real (SQLite) database; no hub (ctx.hub None: no groups read)."""
    cfg = Config()
    cfg.Twinhub.db_url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    db.upgrade(cfg.Twinhub.db_url)
    return RegistryContext(
        rt=Runtime(state_dir=tmp_path, config=cfg, mode="multi-user"), settings=settings,
        db_url=cfg.Twinhub.db_url, hub_api="http://hub.fake/hub/api", token="t",
        prefix="/services/registry/",
    )  # fmt: skip


def _slow_fetch(calls):
    """A fake fetch that uses its whole timeout and then gives up (a tarpit)."""

    async def fetch(url, **kw):
        calls.append((url, kw["timeout"]))
        await asyncio.sleep(kw["timeout"])
        raise outbound.OutboundRefused("time", f"{url} took more than {kw['timeout']} s")

    return fetch


def test_one_budget_for_all_fetches_of_a_request(tmp_path, monkeypatch):
    c = db_ctx(tmp_path, TwinhubRegistry(fetch_timeout=0.5, evaluation_budget=1.0))
    db_url = c.db_url
    calls: list = []
    monkeypatch.setattr(evaluate, "fetch", _slow_fetch(calls))
    eps = [{"url": f"https://t{i}.example/", "type": "openapi",
            "description_url": f"https://t{i}.example/d"} for i in range(10)]  # fmt: skip
    req = store.create_request(
        db_url, provider="pat", activity="",
        entry={"slug": "tarpit", "kind": "api", "endpoints": eps}, resources={},
    )  # fmt: skip
    t0 = time.monotonic()
    done = asyncio.run(evaluate.evaluate(c, req["id"]))
    took = time.monotonic() - t0
    assert done["state"] == "evaluated"
    assert took < 1.6, took  # 20 fetches of 0.5 s would take 10 s
    assert len(calls) <= 4 and all(t <= 0.5 for _, t in calls)
    spent = [f for f in done["findings"] if "time budget (1 s in all) was spent" in f["message"]]
    assert len(spent) >= 16 and not any(f["ok"] for f in spent)
    assert {"check": "description", "ok": False, "message": "endpoint 10's description: not "
            "fetched, the evaluation's time budget (1 s in all) was spent"} in spent  # fmt: skip


def test_requests_are_evaluated_four_at_once_one_per_provider(tmp_path, monkeypatch):
    c = db_ctx(tmp_path, TwinhubRegistry())
    db_url = c.db_url
    active: dict[str, int] = {}
    peak = {"all": 0, "per_provider": 0}

    async def fetch(url, **kw):  # a fake: each answer takes 0.1 s
        who = url.split("//")[1].split("-")[0]
        active[who] = active.get(who, 0) + 1
        peak["all"] = max(peak["all"], sum(active.values()))
        peak["per_provider"] = max(peak["per_provider"], active[who])
        await asyncio.sleep(0.1)
        active[who] -= 1
        return response(200, b"{}")

    monkeypatch.setattr(evaluate, "fetch", fetch)
    # Six requests of one provider first (the oldest), then one each of five others.
    providers = ["spam"] * 6 + ["ann", "bob", "cy", "dee", "eve"]
    for i, who in enumerate(providers):
        ep = {"url": f"https://{who}-{i}.example/", "type": "other"}
        store.create_request(db_url, provider=who, activity="", resources={},
                             entry={"slug": f"s{i}", "kind": "api", "endpoints": [ep]})  # fmt: skip
    t0 = time.monotonic()
    assert asyncio.run(evaluate.evaluate_pending(c)) == 11
    assert peak == {"all": 4, "per_provider": 1}
    # The five others did not wait behind the six of one provider: 6 rounds of 0.1 s, not 11.
    assert time.monotonic() - t0 < 1.0
    assert store.count_requests(db_url, state="evaluated") == 11


# -- odd documents never stall the evaluation (review findings 2 and 3) ----------------------
def test_deep_or_large_documents_are_parse_errors_not_crashes():
    with pytest.raises(ValueError, match="too deeply nested"):
        parse_document(b"[" * 100_000)
    for deep_yaml in (b"- " * 50_000 + b"x", b"{a: " * 50_000):
        with pytest.raises(ValueError):
            parse_document(deep_yaml)
    big_yaml = b"".join(b"k%d: {a: %d}\n" % (i, i) for i in range(30_000))
    assert len(big_yaml) > evaluate.YAML_MAX_BYTES
    with pytest.raises(ValueError, match="too large to be read as YAML"):
        parse_document(big_yaml)
    # JSON of that size is still read (it parses fast), and so is YAML under the cap.
    big_json = b'{"openapi": "3.0.0", "paths": {' + b",".join(b'"/p%d": {}' % i for i in range(30_000)) + b"}}"  # fmt: skip
    assert len(parse_document(big_json)["paths"]) == 30_000
    assert parse_document(b"openapi: 3.0.0\npaths: {}\n")["openapi"] == "3.0.0"
    if hasattr(yaml, "CSafeLoader"):
        assert evaluate.YAML_LOADER is yaml.CSafeLoader


@pytest.mark.parametrize("raised", [RecursionError("deep"), KeyError("x"), MemoryError()])
def test_judging_never_raises(monkeypatch, raised):
    def boom(doc):
        raise raised

    monkeypatch.setattr(evaluate, "check_openapi", boom)
    f = evaluate._judge(b'{"openapi": "3.0.0", "paths": {}}', "openapi", "endpoint 1's description")
    assert f["check"] == "description" and f["ok"] is False
    assert f["message"].startswith("endpoint 1's description does not parse: ")


def test_documents_are_judged_off_the_event_loop(monkeypatch):
    """While a description is parsed, the event loop (the catalogue, pages, gateway) runs:
    the parse blocks until a coroutine on the loop releases it."""
    released = threading.Event()
    seen: dict = {}

    def blocking_judge(body, etype, what):
        seen["thread"] = threading.current_thread()
        seen["released"] = released.wait(timeout=10)
        return evaluate.finding("description", True, what)

    monkeypatch.setattr(evaluate, "_judge", blocking_judge)

    async def main():
        job = asyncio.create_task(evaluate.judge(b"{}", "other", "d"))
        while "thread" not in seen:
            await asyncio.sleep(0.01)
        released.set()  # runs only because the loop is free
        return await job

    assert asyncio.run(main())["ok"] is True
    assert seen["released"] is True and seen["thread"] is not threading.main_thread()


def _submit(db_url, slug, provider, description_url=None):
    ep = {"url": f"https://{slug}.example/", "type": "openapi"}
    if description_url:
        ep["description_url"] = description_url
    return store.create_request(db_url, provider=provider, activity="", resources={},
                                entry={"slug": slug, "kind": "api", "endpoints": [ep]})  # fmt: skip


def test_a_poison_description_is_evaluated_flagged_and_others_go_on(tmp_path, monkeypatch):
    c = db_ctx(tmp_path, TwinhubRegistry())
    pages = {
        "https://poison.example/": response(200, b"{}"),
        "https://poison.example/d": response(200, b"[" * 100_000),
        "https://deep.example/": response(200, b"{}"),
        "https://deep.example/d": response(200, b"- " * 50_000 + b"x"),
        "https://later.example/": response(200, b"{}"),
    }

    async def fake_fetch(url, **kw):  # a fake: this machine reaches no public address
        return pages[url]

    monkeypatch.setattr(evaluate, "fetch", fake_fetch)
    poison = _submit(c.db_url, "poison", "mallory", "https://poison.example/d")
    deep = _submit(c.db_url, "deep", "mallory", "https://deep.example/d")
    later = _submit(c.db_url, "later", "ann")
    assert asyncio.run(evaluate.evaluate_pending(c)) == 3
    got = {r["slug"]: r for r in (store.get_request(c.db_url, x["id"]) for x in (poison, deep, later))}  # fmt: skip
    assert {slug: r["state"] for slug, r in got.items()} == dict.fromkeys(got, "evaluated")
    assert {"check": "description", "ok": False,
            "message": "endpoint 1's description does not parse: too deeply nested"} in got["poison"]["findings"]  # fmt: skip
    assert any(f["check"] == "description" and not f["ok"] for f in got["deep"]["findings"])
    assert store.queue(c.db_url, "submitted") == []


def test_an_endpoint_whose_checks_fail_is_a_finding_and_the_rest_are_checked(tmp_path, monkeypatch):  # fmt: skip
    c = db_ctx(tmp_path, TwinhubRegistry())
    real = evaluate.check_endpoint

    async def check(ctx, i, ep, budget=None):
        if i == 0:
            raise TypeError("a bug in a check")
        return await real(ctx, i, ep, budget)

    async def fake_fetch(url, **kw):
        return response(200, b'{"openapi": "3.0.0", "paths": {}}')

    monkeypatch.setattr(evaluate, "check_endpoint", check)
    monkeypatch.setattr(evaluate, "fetch", fake_fetch)
    eps = [{"url": f"https://e{i}.example/", "type": "openapi", "description_url": f"https://e{i}.example/d"} for i in range(2)]  # fmt: skip
    req = store.create_request(c.db_url, provider="pat", activity="", resources={},
                               entry={"slug": "two", "kind": "api", "endpoints": eps})  # fmt: skip
    done = asyncio.run(evaluate.evaluate(c, req["id"]))
    assert done["state"] == "evaluated"
    assert done["findings"][0] == {"check": "evaluation", "ok": False, "message": "endpoint 1: check failed: TypeError"}  # fmt: skip
    assert [f["ok"] for f in done["findings"][1:3]] == [True, True]  # endpoint 2 checked


def test_a_request_whose_evaluation_raised_still_leaves_the_queue(tmp_path, monkeypatch):
    c = db_ctx(tmp_path, TwinhubRegistry())
    bad = _submit(c.db_url, "bad", "pat")
    good = _submit(c.db_url, "good", "ann")
    real = evaluate.evaluate

    async def evaluate_or_crash(ctx, rid):
        if rid == bad["id"]:
            raise RuntimeError("unexpected")
        return await real(ctx, rid)

    async def fake_fetch(url, **kw):
        return response(200, b"{}")

    monkeypatch.setattr(evaluate, "evaluate", evaluate_or_crash)
    monkeypatch.setattr(evaluate, "fetch", fake_fetch)
    assert asyncio.run(evaluate.evaluate_pending(c)) == 2
    after = store.get_request(c.db_url, bad["id"])
    assert after["state"] == "evaluated"
    assert after["findings"] == [{"check": "evaluation", "ok": False, "message": "evaluation error: RuntimeError; a reviewer should check the entry by hand"}]  # fmt: skip
    assert store.get_request(c.db_url, good["id"])["state"] == "evaluated"
