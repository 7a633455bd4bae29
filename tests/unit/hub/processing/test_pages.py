"""The processing pages (pages.py, templates/, static/) through the real app, on a real
database: what each page shows its user, escaping, the XSRF value, headers, errors as
pages, the static files. The fakes are test_api.py's (the hub, its token check, the
backend); the browser's own behaviour is tests/e2e's."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest

from twinhub.services.hubauth import xsrf_token
from twinhub.services.processing import pages

from . import test_api as api
from .test_api import COOKIE, PREFIX, RUN_EVENTS, SERVICE_TOKEN, deploy_body, done

# The app fixture is test_api.py's (one definition of the fakes).
service = api.service
processing_settings = api.processing_settings
anyio_backend = api.anyio_backend

pytestmark = pytest.mark.anyio

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


async def page(service, path: str, token: str = "alice-token", **headers):
    r = await service.call("GET", path, token, headers={**BROWSER, **headers})
    assert r.headers["content-type"].startswith("text/html"), (path, r.status_code, r.text[:200])
    return r


def assert_page_headers(r) -> None:
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "private, no-store"
    assert r.headers["x-content-type-options"] == "nosniff"


def no_foreign_assets(text: str) -> None:
    for m in re.finditer(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', text):
        # (data:, is the empty icon: no favicon request leaves the page)
        assert m.group(1).startswith(PREFIX) or m.group(1) == "data:,", m.group(0)
    assert "<script>" not in text  # no inline script


async def test_landing_page(service):
    r = await page(service, "")
    assert r.status_code == 200
    assert_page_headers(r)
    no_foreign_assets(r.text)
    assert "Blue Twin" in r.text and ">alice<" in r.text
    assert f'href="{PREFIX}processes?f=html"' in r.text
    assert "service-desc" in r.text


async def test_process_list_and_escaping(service):
    evil = "<script>alert(1)</script>"
    r = await service.call("POST", "processes", json=deploy_body(title=evil, description=evil))
    assert r.status_code == 201
    r = await page(service, "processes")
    assert f'href="{PREFIX}processes/echo?f=html"' in r.text
    assert evil not in r.text and html.escape(evil) in r.text
    assert "user process of alice" in r.text
    r = await page(service, "processes/my-proc")
    assert evil not in r.text and html.escape(evil) in r.text


async def test_process_page_has_an_execute_form(service):
    r = await page(service, "processes/echo")
    assert r.status_code == 200
    assert_page_headers(r)
    assert 'id="execute"' in r.text and 'data-process="echo"' in r.text
    textarea = re.search(r'<textarea id="inputs"[^>]*>(.*?)</textarea>', r.text, re.S)
    example = json.loads(html.unescape(textarea.group(1)))
    assert example == {"stringInput": "", "pause": 0}  # required inputs + defaults
    assert '<option value="lab">lab</option>' in r.text
    r = await page(service, "processes/echo", token="bob-token")
    assert "your personal project" in r.text and 'value="lab"' not in r.text
    # zonal-mean's inputs are listed with their schemas
    r = await page(service, "processes/zonal-mean")
    for name in ("item", "variable", "datetime"):
        assert f"<code>{name}</code>" in r.text


async def test_job_pages_follow_the_job(service):
    job = await service.submit(inputs={"stringInput": "page"})
    jid = job["jobID"]
    r = await page(service, "jobs")
    assert f'href="{PREFIX}jobs/{jid}?f=html"' in r.text
    assert '<progress max="100" value="0">' in r.text and "status-accepted" in r.text
    r = await page(service, f"jobs/{jid}")
    assert_page_headers(r)
    assert 'data-running="1"' in r.text and 'id="dismiss"' in r.text
    for stage in pages.SHOWN_STAGES:
        assert f'id="stage-{stage}"' in r.text
    assert 'class="current"' in r.text  # queued
    await service.start_queued()
    await service.report(jid, [dict(e) for e in RUN_EVENTS])
    r = await page(service, f"jobs/{jid}")
    row = re.search(r'<tr id="stage-fetching"[^>]*>(.*?)</tr>', r.text, re.S).group(1)
    assert re.search(r'class="finished">\d{4}-\d\d-\d\dT', row)  # fetching ended
    assert "read 2 items" in r.text and 'data-last-line="' in r.text
    await service.report(jid, [done({"stringInput": "page"})])
    r = await page(service, f"jobs/{jid}")
    assert 'data-running="0"' in r.text and 'id="dismiss"' not in r.text
    assert f'href="{PREFIX}jobs/{jid}/results?f=html"' in r.text
    r = await page(service, f"jobs/{jid}/results")
    assert "<code>stringInput</code>" in r.text and "&#34;page&#34;" in r.text
    # the log as a page is the job's page
    r = await service.call("GET", f"jobs/{jid}/logs?f=html", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith(f"jobs/{jid}?f=html#log")


async def test_errors_stay_json_for_browsers(service):
    # the platform's errors are JSON everywhere (the request limits make them so)
    r = await service.call("GET", "processes/nope", headers=BROWSER)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
    assert r.json()["type"].endswith("/no-such-process")
    jid = (await service.submit(token="bob-token"))["jobID"]
    r = await service.call("GET", f"jobs/{jid}?f=html")
    assert r.status_code == 404 and r.json()["type"].endswith("/no-such-job")
    r = await service.call("GET", f"jobs/{jid}/results?f=html")
    assert r.status_code == 404


async def test_xsrf_value_only_for_browser_sessions(service):
    cookie = "alice-token"
    r = await service.client.get(
        PREFIX + "processes/echo?f=html",
        headers={"Cookie": f"{COOKIE}={cookie}", "Sec-Fetch-Mode": "navigate"},
    )
    assert r.status_code == 200
    value = re.search(r'<meta name="twinhub-xsrf" content="([^"]*)">', r.text).group(1)
    assert value == xsrf_token(SERVICE_TOKEN, cookie)
    # a script's fetch() of the page does not get it
    r = await service.client.get(
        PREFIX + "processes/echo?f=html",
        headers={"Cookie": f"{COOKIE}={cookie}", "Sec-Fetch-Mode": "cors"},
    )
    assert '<meta name="twinhub-xsrf" content="">' in r.text
    r = await page(service, "processes/echo")
    assert '<meta name="twinhub-xsrf" content="">' in r.text


async def test_conformance_and_api_pages(service):
    r = await page(service, "conformance")
    assert "ogcapi-processes-1/1.0/conf/core" in r.text
    r = await page(service, "api")
    assert 'id="execute"' in r.text and "statusInfo" in r.text
    no_foreign_assets(r.text)


async def test_static_files(service):
    for name, media in pages.STATIC_FILES.items():
        r = await service.call("GET", f"static/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == media
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.content == (pages.STATIC_DIR / name).read_bytes()
    for bad in ("nope.js", "../app.py", "%2e%2e/app.py", "templates/base.html"):
        r = await service.call("GET", f"static/{bad}")
        assert r.status_code == 404, bad
        assert r.json()["code"] == 404
    r = await service.call("GET", "static/processing.js", token=None)
    assert r.status_code == 401  # the pages are the logged-in users'


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_script_parses():
    subprocess.run(["node", "--check", str(pages.STATIC_DIR / "processing.js")], check=True)


@pytest.mark.parametrize(
    ("accept", "html_wanted"),
    [
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("text/html", True),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
        ("application/json;q=0.9, text/html;q=0.5", False),
        ("text/html;q=0", False),
        ("text/html;q=bad", False),
    ],
)
def test_prefers_html(accept, html_wanted):
    assert pages.prefers_html(accept) is html_wanted


def test_example_values():
    assert pages.example_value({"type": "integer", "default": 3}) == 3
    assert pages.example_value({"enum": ["a", "b"]}) == "a"
    assert pages.example_value({"oneOf": [{"type": "array"}, {"type": "string"}]}) == []
    assert pages.example_value({"type": ["number", "null"]}) == 0
    assert pages.example_value({}) is None
