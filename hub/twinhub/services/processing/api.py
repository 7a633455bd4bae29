"""OGC API - Processes - Part 1: Core (1.0) at ``/services/processing/``, JSON and HTML.

====================================  =============================================================
``GET  ""``                           landing page (links: API definition, conformance, processes,
                                      jobs)
``GET  conformance``                  the conformance classes
``GET  api``                          the OpenAPI 3.0 document (``f=html``: a rendering of it)
``GET  processes[?limit=&offset=]``   the processes the caller may run (summaries)
``POST processes``                    register a user process (twinhub; a header token only) -> 201
``GET  processes/{id}``               a description (404 ``no-such-process``: unknown or unseen)
``DELETE processes/{id}``             remove a user process (owner, admin) -> 204
``POST processes/{id}/execution``     execute: ``Prefer: respond-async`` -> 201 + Location; else
                                      synchronous (200 results; 201 if still running after
                                      ``sync_wait``; 500 if it failed); body <= max_input_bytes
                                      (413); another user's process: a token header (403)
``GET  jobs[?limit=&offset=&status=&processID=&type=]``  own jobs (admins: all), newest first
``GET  jobs/{id}``                    status (twinhub adds stage, stages, owner, project, attempt)
``DELETE jobs/{id}``                  dismiss: the work stops, partial outputs go -> 200 status
``GET  jobs/{id}/results``            results (404 ``no-such-job`` / ``result-not-ready``; a failed
                                      job: 500 with its reason; a dismissed one: 410)
``GET  jobs/{id}/logs[?after=&limit=&f=text]``  twinhub: the job's log lines
====================================  =============================================================

JSON unless ``f=html`` or an ``Accept`` preferring ``text/html``. Errors are JSON with both the
platform's ``code``/``description`` and OGC's ``type``/``title``/``status``/``detail``.
Who the caller is (:func:`caller`): the token's user with the hub's admin flag and groups
(asked with the service's token, reused 30 s) and their projects (the projects catalogue).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from ..asgi import BadRequest, service_url
from ..base import platform_name
from ..datalake import input_limits
from ..hubauth import acts_as_admin, hub_user_model
from ..projects.catalog import ProjectCatalog
from . import catalogue, openapi, pages
from .catalogue import ProcessError
from .context import ProcessingContext
from .jobs import JobManager
from .model import OGC_EXCEPTIONS, STATUSES, Caller

log = logging.getLogger("twinhub.processing.api")

REL = "http://www.opengis.net/def/rel/ogc/1.0/"
CONF = openapi.OGC_PROCESSES
CONFORMANCE = tuple(
    CONF + c
    for c in ("core", "ogc-process-description", "json", "html", "oas30", "job-list", "dismiss")
)
NO_SUCH_JOB = OGC_EXCEPTIONS + "no-such-job"
JOB_FAILED = OGC_EXCEPTIONS + "job-results-failed"
JSON_MEDIA = "application/json"
HTML_MEDIA = "text/html"
#: Seconds the hub's answers (a user's admin flag and groups, the projects) are reused.
HUB_TTL = 30.0
CACHE_MAX = 4096
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
MAX_LOG_LIMIT = 1000
EXECUTE_KEYS = frozenset({"inputs", "outputs", "response", "project", "mode"})
_EXTRAS = "api.cache"


# -- the caller -------------------------------------------------------------------------------
async def _cached(ctx: ProcessingContext, key: str, fetch: Any) -> Any:
    cache: dict[str, tuple[float, Any]] = ctx.extras.setdefault(_EXTRAS, {})
    hit = cache.get(key)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    value = await fetch()
    cache.pop(key, None)
    while len(cache) >= CACHE_MAX:
        cache.pop(next(iter(cache)))
    cache[key] = (time.monotonic() + HUB_TTL, value)
    return value


async def project_names(ctx: ProcessingContext) -> frozenset[str]:
    """The projects of the projects catalogue (none if its configuration is broken)."""

    async def names() -> frozenset[str]:
        try:
            catalog = await asyncio.to_thread(ProjectCatalog.from_runtime, ctx.rt)
            return frozenset(await asyncio.to_thread(catalog.allocations))
        except Exception as e:  # the hub's own start says what is wrong with it
            log.error("cannot read the projects catalogue: %s", e)
            return frozenset()

    return await _cached(ctx, "projects", names)


async def caller(ctx: ProcessingContext, request: Request) -> Caller:
    """The user calling: jobs are users' (a service's token: 403)."""
    who = getattr(request.state, "hub_user", None)
    if who is None:
        raise BadRequest("log in, or send 'Authorization: token <JupyterHub API token>'", 401)
    if who.get("kind", "user") != "user":
        raise BadRequest(f"{who.get('name')!r} is not a user: processes run as users", 403)
    if ctx.hub is None:
        raise BadRequest("the service is starting", 503)
    name = who["name"]
    model = await _cached(ctx, "user:" + name, lambda: hub_user_model(ctx.hub, ctx.hub_api, name))
    if model is None:
        raise BadRequest(f"user {name!r} no longer exists", 403)
    groups = frozenset(model.get("groups") or ())
    # Admin power: the hub's flag and the token's admin scope (a browser's sign-on token
    # carries only the service's access scope, so pages act as the plain user).
    admin = acts_as_admin({**who, "admin": bool(model.get("admin"))})
    projects = tuple(sorted(groups & await project_names(ctx)))
    return Caller(name=name, admin=admin, groups=groups, projects=projects)


# -- answers ----------------------------------------------------------------------------------


def link(href: str, rel: str, media: str = JSON_MEDIA, title: str = "") -> dict[str, str]:
    doc = {"href": href, "rel": rel, "type": media}
    if title:
        doc["title"] = title
    return doc


def ogc_body(status: int, message: str, type_uri: str, title: str) -> dict[str, Any]:
    """An OGC exception that is also the platform's error (``code``, ``description``)."""
    return {
        "code": status,
        "description": message,
        "type": type_uri,
        "title": title,
        "status": status,
        "detail": message,
    }


def exception_response(e: BadRequest) -> JSONResponse:
    """A refusal as JSON: the OGC type the exception names (ours: ``type_uri``; the job
    manager's: ``ogc_type``), else a generic one by status."""
    type_uri = getattr(e, "type_uri", None) or getattr(e, "ogc_type", None)
    title = getattr(e, "title", None) or ("Not found" if e.status == 404 else "Refused")
    body = ogc_body(e.status, e.message, type_uri or OGC_EXCEPTIONS + f"http-{e.status}", title)
    return JSONResponse(body, status_code=e.status, headers=dict(e.headers))


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 9 or not lo <= int(raw) <= hi:
        raise BadRequest(f"{name} must be an integer {lo}..{hi}, not {raw[:32]!r}")
    return int(raw)


def _list_param(request: Request, name: str) -> list[str]:
    """A list query parameter: repeated, comma-separated, or both."""
    return [v for raw in request.query_params.getlist(name) for v in raw.split(",") if v]


def _page_links(base: str, path: str, params: dict, offset: int, limit: int, total: int) -> list:
    def href(**more: Any) -> str:
        query = urlencode({**params, **more}, doseq=True)
        return f"{base}{path}?{query}" if query else f"{base}{path}"

    links = [
        link(href(limit=limit, offset=offset), "self"),
        link(href(limit=limit, offset=offset, f="html"), "alternate", HTML_MEDIA),
    ]
    if offset + limit < total:
        links.append(link(href(limit=limit, offset=offset + limit), "next"))
    if offset > 0:
        links.append(link(href(limit=limit, offset=max(0, offset - limit)), "prev"))
    return links


def process_links(base: str, process_id: str) -> list[dict[str, str]]:
    href = f"{base}processes/{process_id}"
    return [
        link(href, "self", title="process description"),
        link(href + "?f=html", "alternate", HTML_MEDIA),
        link(href + "/execution", REL + "execute", title="execute the process"),
    ]


async def json_body(request: Request, limit: int | None = None) -> Any:
    """The body as JSON; over ``limit`` bytes: 413 naming the limit (read no further)."""
    if limit is not None:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise BadRequest(_too_big(int(length), limit), 413)
    raw = await request.body()
    if limit is not None and len(raw) > limit:
        raise BadRequest(_too_big(len(raw), limit), 413)
    # Strictly (finite numbers, no NUL or lone surrogates, bounded depth): stored as a job's
    # inputs, anything else would break every later answer about the job.
    return input_limits.loads(raw or b"null", "the body")


def _too_big(size: int, limit: int) -> str:
    return (
        f"the execute request has {size} bytes: at most {limit} "
        "(TwinhubProcessing.max_input_bytes); pass data as lake items, not inline"
    )


def browser_refusal(auth_source: str | None, me: Caller, process: dict[str, Any]) -> None:
    """Another user's process runs their code as the caller: any page on the origin can
    drive a browser session (cookie + the page's XSRF value), so it takes a token."""
    owner = process.get("twinhub:owner")
    if auth_source == "cookie" and process.get("twinhub:user_process") and owner != me.name:
        raise BadRequest(
            f"process {process.get('id')!r} is {owner}'s: run another user's process with a "
            "token (twinlab.processing or the API), not from a browser session",
            403,
        )


def parse_execute(doc: Any, process: dict[str, Any]) -> dict[str, Any]:
    """An execute request checked: ``{"inputs", "outputs", "response", "project", "async"}``
    (the inputs themselves are the job manager's to validate)."""
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object (an OGC execute request)")
    unknown = sorted(str(k)[:64] for k in doc if k not in EXECUTE_KEYS)
    if unknown:
        raise BadRequest(f"unknown key(s) {unknown}; allowed: {sorted(EXECUTE_KEYS)}")
    inputs = doc.get("inputs") or {}
    if not isinstance(inputs, dict):
        raise BadRequest("'inputs' must be an object of input id -> value")
    outputs = doc.get("outputs") or {}
    if not isinstance(outputs, dict):
        raise BadRequest("'outputs' must be an object of output id -> options")
    known = process.get("outputs") or {}
    for name, opts in outputs.items():
        if name not in known:
            raise BadRequest(
                f"'outputs': {str(name)[:64]!r} is not an output of {process['id']!r} "
                f"(its outputs: {', '.join(known) or 'none'})"
            )
        if not isinstance(opts, dict):
            raise BadRequest(f"'outputs.{name}' must be an object")
        mode = opts.get("transmissionMode", "value")
        if mode not in ("value", "reference"):
            raise BadRequest(f"'outputs.{name}.transmissionMode' must be value or reference")
    response = doc.get("response", "document")
    if response not in ("document", "raw"):
        raise BadRequest("'response' must be 'document' or 'raw'")
    if response == "raw" and len(outputs or known) != 1:
        raise BadRequest(
            "'response': 'raw' answers one output: name exactly one in 'outputs' "
            "(multipart answers are not supported)"
        )
    project = doc.get("project")
    if project is not None and (not isinstance(project, str) or not 0 < len(project) <= 255):
        raise BadRequest("'project' must be the name of one of your projects")
    mode = doc.get("mode", "auto")
    if mode not in ("auto", "sync", "async"):
        raise BadRequest("'mode' must be auto, sync or async")
    return {
        "inputs": inputs,
        "outputs": outputs,
        "response": response,
        "project": project,
        "async": mode == "async",
    }


def wants_async(request: Request, process: dict[str, Any], mode_async: bool) -> bool:
    """Asynchronous when asked (``Prefer: respond-async``, or OGC's older ``mode``) or when
    the process cannot run synchronously."""
    prefer = {
        p.strip().lower() for v in request.headers.getlist("prefer") for p in re.split(r"[,;]", v)
    }
    options = process.get("jobControlOptions") or ["sync-execute", "async-execute"]
    return "respond-async" in prefer or mode_async or "sync-execute" not in options


def select_outputs(results: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """The outputs the request named (all when it named none); ``item`` (the ingested STAC
    item) stays whenever the job made one."""
    if not wanted:
        return results
    return {k: v for k, v in results.items() if k in wanted or k == "item"}


# -- the routes -------------------------------------------------------------------------------
def api_router(ctx: ProcessingContext, manager: JobManager) -> APIRouter:
    """Every OGC route (paths relative to the prefix); pages through :mod:`.pages`."""
    router = APIRouter()
    prefix = ctx.prefix

    def page(request: Request, me: Caller, template: str, **kw: Any) -> Response:
        return pages.render(
            template,
            request,
            prefix=prefix,
            platform=platform_name(ctx.rt),
            user=me.name,
            **kw,
        )

    async def job_call(fn: Any, *args: Any, **kw: Any) -> Any:
        """A job manager's synchronous call (database) off the loop; its 404s as OGC's."""
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except BadRequest as e:
            if e.status == 404 and not getattr(e, "ogc_type", None):
                raise ProcessError(e.message, 404, NO_SUCH_JOB, "No such job") from None
            raise

    def here(request: Request) -> str:
        return service_url(request, prefix)

    async def describe(me: Caller, process_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(catalogue.describe, ctx.db_url, me, process_id)

    @router.get("/")
    async def landing(request: Request) -> Response:
        me = await caller(ctx, request)
        form = pages.representation(request)
        base = service_url(request, prefix)
        doc = {
            "title": f"{platform_name(ctx.rt)} processing",
            "description": "OGC API - Processes: templated processes over the data lake and "
            "your own, run as you on a Dask cluster of the job's own.",
            "links": [
                link(base, "self", title="this document"),
                link(base + "?f=html", "alternate", HTML_MEDIA, "this document as HTML"),
                link(base + "api", "service-desc", openapi.OPENAPI_MEDIA, "the API definition"),
                link(base + "api?f=html", "service-doc", HTML_MEDIA, "the API documentation"),
                link(base + "conformance", REL + "conformance", title="conformance classes"),
                link(base + "processes", REL + "processes", title="the processes"),
                link(base + "jobs", REL + "job-list", title="your jobs"),
            ],
        }
        if form == "html":
            return page(request, me, "landing.html", doc=doc)
        return JSONResponse(doc)

    @router.get("/conformance")
    async def conformance(request: Request) -> Response:
        me = await caller(ctx, request)
        doc = {"conformsTo": list(CONFORMANCE)}
        if pages.representation(request) == "html":
            return page(request, me, "conformance.html", doc=doc)
        return JSONResponse(doc)

    @router.get("/api")
    async def api_document(request: Request) -> Response:
        me = await caller(ctx, request)
        doc = openapi.document(service_url(request, prefix), f"{platform_name(ctx.rt)} processing")
        if pages.representation(request) == "html":
            return page(request, me, "openapi.html", doc=doc, ops=openapi.operations(doc))
        return JSONResponse(doc, media_type=openapi.OPENAPI_MEDIA)

    @router.get("/processes")
    async def process_list(request: Request) -> Response:
        me = await caller(ctx, request)
        form = pages.representation(request)
        limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = _int_param(request, "offset", 0, 0, 10**9)
        base = service_url(request, prefix)
        every = await asyncio.to_thread(catalogue.processes, ctx.db_url, me)
        shown = [
            {**catalogue.summary(d), "links": process_links(base, d["id"])}
            for d in every[offset : offset + limit]
        ]
        doc = {
            "processes": shown,
            "links": _page_links(base, "processes", {}, offset, limit, len(every)),
        }
        if form == "html":
            return page(request, me, "processes.html", doc=doc)
        return JSONResponse(doc)

    @router.post("/processes")
    async def deploy(request: Request) -> Response:
        me = await caller(ctx, request)
        # Registered code runs as whoever executes it (the project's members too): no page
        # on the origin may do this through a browser session.
        if (request.scope.get("state") or {}).get("auth_source") == "cookie":
            raise BadRequest(
                "registering a process needs an 'Authorization: token ...' header "
                "(twinlab.processing.register), not a browser session",
                403,
            )
        doc = await json_body(request)
        desc, new = await asyncio.to_thread(catalogue.register, ctx.db_url, me, doc, ctx.settings)
        base = service_url(request, prefix)
        desc["links"] = process_links(base, desc["id"])
        return JSONResponse(
            desc,
            status_code=201 if new else 200,
            headers={"Location": f"{prefix}processes/{desc['id']}"},
        )

    @router.get("/processes/{process_id}")
    async def process_description(request: Request, process_id: str) -> Response:
        me = await caller(ctx, request)
        form = pages.representation(request)
        desc = await describe(me, process_id)
        desc["links"] = process_links(service_url(request, prefix), process_id)
        if form == "html":
            return page(
                request,
                me,
                "process.html",
                doc=desc,
                example=pages.example_inputs(desc),
                projects=me.projects,
            )
        return JSONResponse(desc)

    @router.delete("/processes/{process_id}")
    async def undeploy(request: Request, process_id: str) -> Response:
        me = await caller(ctx, request)
        await asyncio.to_thread(catalogue.unregister, ctx.db_url, me, process_id)
        return Response(status_code=204)

    @router.post("/processes/{process_id}/execution")
    async def execute(request: Request, process_id: str) -> Response:
        me = await caller(ctx, request)
        process = await describe(me, process_id)
        browser_refusal((request.scope.get("state") or {}).get("auth_source"), me, process)
        body = await json_body(request, ctx.settings.max_input_bytes)
        ex = parse_execute(body, process)
        doc = await manager.submit(
            me,
            process,
            ex["inputs"],
            request={"outputs": ex["outputs"], "response": ex["response"]},
            project=ex["project"],
            base_url=here(request),
        )
        job_id = doc["jobID"]
        location = {"Location": f"{prefix}jobs/{job_id}"}
        if wants_async(request, process, ex["async"]):
            return JSONResponse(
                doc, status_code=201, headers={**location, "Preference-Applied": "respond-async"}
            )
        doc = await manager.wait(job_id, ctx.settings.sync_wait, base_url=here(request))
        if doc["status"] in ("accepted", "running"):  # past sync_wait: answered as async
            return JSONResponse(doc, status_code=201, headers=location)
        if doc["status"] != "successful":
            body = ogc_body(
                500,
                f"job {job_id} {doc['status']}: {doc.get('message') or 'no reason given'}",
                JOB_FAILED,
                "The job did not succeed",
            )
            body["links"] = [link(f"{service_url(request, prefix)}jobs/{job_id}", "monitor")]
            return JSONResponse(body, status_code=500, headers=location)
        results = select_outputs(await job_call(manager.results, me, job_id), ex["outputs"])
        headers = {"Link": f'<{here(request)}jobs/{job_id}>; rel="monitor"'}
        if ex["response"] == "raw":
            name = next(iter(ex["outputs"] or process.get("outputs") or {}))
            value = results.get(name)
            if isinstance(value, dict) and set(value) == {"value"}:
                value = value["value"]
            if isinstance(value, str):  # a string's raw value is its text
                return PlainTextResponse(value, headers=headers)
            return JSONResponse(value, headers=headers)
        return JSONResponse(results, headers=headers)

    @router.get("/jobs")
    async def job_list(request: Request) -> Response:
        me = await caller(ctx, request)
        form = pages.representation(request)
        limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = _int_param(request, "offset", 0, 0, 10**9)
        statuses = _list_param(request, "status")
        bad = [s for s in statuses if s not in STATUSES]
        if bad:
            raise BadRequest(f"unknown status {bad[0][:32]!r}; known: {', '.join(STATUSES)}")
        process_ids = [p[:64] for p in _list_param(request, "processID")]
        types = _list_param(request, "type")
        params: dict[str, Any] = {}
        if statuses:
            params["status"] = ",".join(statuses)
        if process_ids:
            params["processID"] = ",".join(process_ids)
        if types and "process" not in types:  # only processes' jobs here
            jobs, total = [], 0
        else:
            jobs, total = await asyncio.to_thread(
                manager.list,
                me,
                status=statuses,
                process_ids=process_ids,
                limit=limit,
                offset=offset,
                base_url=here(request),
            )
        base = service_url(request, prefix)
        doc = {"jobs": jobs, "links": _page_links(base, "jobs", params, offset, limit, total)}
        if form == "html":
            return page(
                request, me, "jobs.html", doc=doc, total=total, statuses=STATUSES, chosen=statuses
            )
        return JSONResponse(doc)

    @router.get("/jobs/{job_id}")
    async def job_status(request: Request, job_id: str) -> Response:
        me = await caller(ctx, request)
        form = pages.representation(request)
        doc = await job_call(manager.status, me, job_id, base_url=here(request))
        if form == "html":
            lines = await log_tail(me, job_id)
            return page(
                request,
                me,
                "job.html",
                doc=doc,
                stages=pages.stage_rows(doc),
                running=pages.running(doc),
                lines=lines,
                last_line=lines[-1]["id"] if lines else 0,
            )
        return JSONResponse(doc)

    async def log_tail(me: Caller, job_id: str) -> list[dict[str, Any]]:
        """The last :data:`pages.LOG_TAIL` lines (the log is read page by page)."""
        tail: list[dict[str, Any]] = []
        after = 0
        while True:
            batch = await job_call(manager.logs, me, job_id, after=after, limit=MAX_LOG_LIMIT)
            tail = (tail + batch)[-pages.LOG_TAIL :]
            if len(batch) < MAX_LOG_LIMIT:
                return tail
            after = batch[-1]["id"]

    @router.delete("/jobs/{job_id}")
    async def dismiss(request: Request, job_id: str) -> Response:
        me = await caller(ctx, request)
        doc = await manager.dismiss(me, job_id, base_url=here(request))
        return JSONResponse(doc)

    @router.get("/jobs/{job_id}/results")
    async def job_results(request: Request, job_id: str) -> Response:
        me = await caller(ctx, request)
        form = pages.representation(request)
        # the job manager refuses with OGC's types: not ready (404), failed (500),
        # dismissed (410), not the caller's (404)
        results = await job_call(manager.results, me, job_id)
        if form == "html":
            status = await job_call(manager.status, me, job_id, base_url=here(request))
            return page(request, me, "results.html", doc=results, job=status)
        return JSONResponse(results)

    @router.get("/jobs/{job_id}/logs")
    async def job_logs(request: Request, job_id: str) -> Response:
        me = await caller(ctx, request)
        form = pages.representation(request, ("json", "text", "html"))
        after = _int_param(request, "after", 0, 0, 2**62)
        limit = _int_param(request, "limit", MAX_LOG_LIMIT, 1, MAX_LOG_LIMIT)
        if form == "html":  # the job's page shows its log
            return RedirectResponse(f"{prefix}jobs/{job_id}?f=html#log", status_code=303)
        lines = await job_call(manager.logs, me, job_id, after=after, limit=limit)
        if form == "text":
            text = "".join(
                f"{ln['at']} {ln['stage']} {ln['level']} [{ln['source']}] {ln['text']}\n"
                for ln in lines
            )
            return PlainTextResponse(text)
        return JSONResponse({"lines": lines})

    @router.get("/static/{name:path}", include_in_schema=False)
    async def static(name: str) -> Response:
        return pages.static_file(name)

    return router
