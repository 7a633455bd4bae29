"""The ``accounting`` service: the meter loop, the usage API, Prometheus metrics (FastAPI).

``uvicorn --factory twinhub.services.accounting.app:create_app`` (the supervisor's
``accounting`` component, as root: the meter reads every user's cgroups and processes).
Its lifespan runs, every ``TwinhubAccounting.interval`` seconds, in a worker thread: the
meter's tick (:class:`.meter.Meter`: readings -> :class:`.store.UsageStore`), then the
budget checks (:func:`.enforce.evaluate`), and once a day the pruning of old raw records.
A failed step is logged and counted (``metrics``); the next tick tries again.

==============================  ===================================================================
``GET api/v1/usage``            usage (JSON, or ``format=csv``): ``user``, ``project``, ``start``,
                                ``end`` (ISO 8601), ``step`` (hour, day, month or seconds), ``by``
                                (``member``); default: the caller, from the first record to now.
                                Who may read what: :mod:`.access`
``GET metrics``                 Prometheus text: tokens with JupyterHub's ``read:metrics`` scope
                                (admins have it; a Prometheus token may hold only that)
``GET health``                  no credentials: up, and when the meter last ticked
==============================  ===================================================================

Every request but ``health`` and ``metrics`` passes :class:`~twinhub.services.hubauth.
HubAuthMiddleware` (token or browser SSO, the service's access scope); ``metrics`` checks its
token itself, as it needs ``read:metrics`` rather than the access scope. Errors are JSON
``{"code": status, "description": message}``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from jupyterhub.services.auth import HubAuth

from twinlab.contract import ENV_HUB_API_URL, ENV_HUB_TOKEN

from ... import __version__
from ...process.runtime import Runtime
from ..asgi import BadRequest, RequestLimitsMiddleware, error_body
from ..hubauth import HubAuthMiddleware, hub_user_model, metrics_caller
from ..projects.catalog import ProjectCatalog
from . import SERVICE_PREFIX, access, enforce, metrics, query
from .config import TwinhubAccounting
from .energy import EnergyModel
from .meter import Meter
from .store import UsageStore

log = logging.getLogger("twinhub.accounting")

PUBLIC_PATHS = ("health", "metrics")  # metrics: its own token check (read:metrics)
#: Nothing here takes a body.
MAX_BODY_BYTES = 1024
#: Raw records older than raw_retention_days are pruned this often.
PRUNE_EVERY = timedelta(days=1)
#: How long the hub's model of a user (admin flag, groups) is reused: a request costs no hub
#: round trip; a change of groups or admin flag applies within this time.
USER_MODEL_TTL = 30.0
#: Users' models kept at most (the oldest goes first).
USER_MODEL_MAX = 4096
#: A CSV cell starting with one of these is a formula to spreadsheets: written with a "'".
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


async def run_ticks(app: FastAPI, rt: Runtime, settings: TwinhubAccounting) -> None:
    """Meter, budgets, pruning, every ``settings.interval`` seconds, until cancelled."""
    stats: metrics.TickStats = app.state.ticks
    catalog: ProjectCatalog = app.state.catalog
    store = UsageStore(
        rt.db_url,
        EnergyModel.from_settings(settings),
        settings.interval,
        raw_retention_days=settings.raw_retention_days,
    )
    meter: Meter | None = None
    last_prune: datetime | None = None
    try:
        while True:
            began = time.monotonic()
            now = datetime.now(UTC)
            try:
                # Built in the loop: a backend that cannot start yet (Prometheus not up)
                # is tried again next tick, and budgets are still checked meanwhile.
                meter = meter or Meter(rt, settings, store)
                stats.records += await asyncio.to_thread(meter.tick, now)
            except Exception as e:  # a damaged charge file, the database restarting...
                log.exception("meter tick failed")
                stats.failed("meter", e)
            try:
                await asyncio.to_thread(enforce.evaluate, rt.db_url, catalog, settings, now)
            except Exception as e:
                log.exception("budget check failed")
                stats.failed("budgets", e)
            if last_prune is None or now - last_prune >= PRUNE_EVERY:
                try:
                    pruned = await asyncio.to_thread(store.prune, now)
                    last_prune = now
                    if pruned:
                        log.info("pruned %d raw usage records", pruned)
                except Exception as e:
                    log.exception("pruning failed")
                    stats.failed("prune", e)
            took = time.monotonic() - began
            stats.ticked(time.time(), took)
            await asyncio.sleep(max(0.0, settings.interval - took))
    finally:
        for backend in meter.backends if meter else ():
            close = getattr(backend, "close", None)  # Prometheus' client, NVML
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing backend %s", getattr(backend, "name", backend))


def create_app(
    rt: Runtime | None = None,
    catalog: ProjectCatalog | None = None,
    *,
    meter: bool = True,
) -> FastAPI:
    """The service app; ``rt`` defaults to the running platform's ($TWINHUB_STATE).
    ``meter=False``: the API alone (tests of the API on their own data)."""
    rt = rt or Runtime.load()
    catalog = catalog or ProjectCatalog.from_runtime(rt)
    settings = TwinhubAccounting(config=rt.config)
    hub_api = os.environ.get(ENV_HUB_API_URL, rt.hub_api_url).rstrip("/")
    token = os.environ.get(ENV_HUB_TOKEN, "")
    p = SERVICE_PREFIX
    # The metrics endpoint's own token check (cached like the middleware's).
    metrics_auth = HubAuth(api_token=token, api_url=hub_api, cache_max_age=60)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ticks = asyncio.create_task(run_ticks(app, rt, settings)) if meter else None
        try:
            async with httpx.AsyncClient(
                headers={"Authorization": f"token {token}"}, timeout=30
            ) as client:
                app.state.hub = client
                yield
        finally:
            if ticks:
                ticks.cancel()

    app = FastAPI(
        title="twinhub accounting",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.catalog = catalog
    app.state.ticks = metrics.TickStats()

    @app.exception_handler(BadRequest)
    async def _refused(_request: Request, e: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(e.status, e.message), status_code=e.status)

    models = UserModels(USER_MODEL_TTL, USER_MODEL_MAX)
    app.state.user_models = models

    async def hub_user(request: Request, name: str) -> dict[str, Any] | None:
        """The hub's model of user ``name`` (admin flag, groups); None if there is none.
        Reused for :data:`USER_MODEL_TTL` seconds."""
        hit, model = models.get(name)
        if hit:
            return model
        model = await hub_user_model(request.app.state.hub, hub_api, name)
        models.put(name, model)
        return model

    async def caller(request: Request) -> access.Caller:
        who = request.state.hub_user
        model = None
        if who.get("kind", "user") == "user":
            model = await hub_user(request, who["name"])
            if model is None:
                raise BadRequest(f"user {who['name']!r} no longer exists", 403)
        return access.caller_from(who, model)

    # -- routes ------------------------------------------------------------------------------
    @app.get(p + "health")
    async def health(request: Request) -> dict[str, Any]:
        t: metrics.TickStats = request.app.state.ticks
        return {"status": "ok", "meter": t.summary() if meter else None}

    @app.get(p + "api/v1/usage")
    async def usage(request: Request) -> Response:
        req = access.parse_request(list(request.query_params.multi_items()))
        me = await caller(request)
        req = access.authorize(me, req)
        allocs = await asyncio.to_thread(catalog.allocations)
        if req.user is not None and req.user != me.name:  # an admin reading someone
            model = await hub_user(request, req.user)
            groups = frozenset((model or {}).get("groups") or ())
        else:
            groups = me.groups
        projects = access.budget_projects(req, groups, allocs)
        try:
            doc = await asyncio.to_thread(
                query.usage,
                rt.db_url,
                user=req.user,
                project=req.project,
                start=req.start,
                end=req.end,
                step=req.step,
                by_member=req.by_member,
            )
        except (ValueError, OverflowError) as e:  # a bad step, range...: named by the query
            raise BadRequest(str(e) or "start, end or step out of range", 400) from None
        doc["budgets"] = await asyncio.to_thread(query.budgets, rt.db_url, allocs, projects)
        if req.user is not None and req.project is None:
            # Budgets of theirs at 80 % or more, and their servers stopped for one (a day).
            doc["notices"] = await asyncio.to_thread(
                enforce.user_notices, rt.db_url, req.user, projects, grace=settings.grace
            )
        # Serialised off the event loop: a long series must not hold up other requests.
        if req.format == "csv":
            return Response(
                await asyncio.to_thread(to_csv, doc),
                media_type="text/csv; charset=utf-8",
                headers={"content-disposition": f'attachment; filename="{csv_name(req)}"'},
            )
        body = await asyncio.to_thread(dumps, doc)
        return Response(body, media_type="application/json")

    @app.get(p + "metrics")
    async def metrics_page(request: Request) -> Response:
        await metrics_caller(metrics_auth, request)
        allocs = await asyncio.to_thread(catalog.allocations)
        body, ctype = await asyncio.to_thread(
            metrics.render, rt.db_url, allocs, request.app.state.ticks
        )
        return Response(body, media_type=ctype)

    # The hub decides who may call; health (and metrics, checked above) answer without the
    # middleware. Starlette: the last added runs first, so the request limits come first.
    app.add_middleware(HubAuthMiddleware, prefix=p, public_paths=PUBLIC_PATHS)
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=MAX_BODY_BYTES)
    return app


# -- CSV -------------------------------------------------------------------------------------
def to_csv(doc: dict[str, Any]) -> str:
    """The answer as CSV: one row per step of ``series`` (a breakdown: one row per member,
    over the whole range), the columns in the order the JSON has them; figures as Python
    writes floats (unrounded)."""
    if "members" in doc:
        span = {"start": doc.get("start"), "end": doc.get("end")}
        rows = [{"user": u, **span, **figs} for u, figs in doc["members"].items()]
    else:
        rows = list(doc.get("series") or [])
    cols: list[str] = []
    for row in rows:
        cols.extend(k for k in row if k not in cols)
    if not cols:
        cols = ["start", "end", *doc.get("totals", {})]
    out = io.StringIO()
    # RFC 4180's CRLF: the writer then quotes a cell holding a lone CR too (with "\n" alone
    # such a cell would split its row in a reader).
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(cols)
    for row in rows:
        w.writerow([_cell(row.get(c)) for c in cols])
    return out.getvalue()


def dumps(doc: dict[str, Any]) -> str:
    """JSON as Starlette's JSONResponse writes it (NaN refused, compact)."""
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        v = json.dumps(v, sort_keys=True)
    if isinstance(v, str) and v.startswith(FORMULA_START):
        return "'" + v  # a user name like "=HYPERLINK(...)" stays text in a spreadsheet
    return v


class UserModels:
    """The hub's user models by name, each reused for ``ttl`` seconds (None, "no such user",
    too), at most ``size`` of them."""

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl, self.size = ttl, size
        self._items: dict[str, tuple[float, dict[str, Any] | None]] = {}

    def get(self, name: str) -> tuple[bool, dict[str, Any] | None]:
        item = self._items.get(name)
        if item is None or item[0] <= time.monotonic():
            return False, None
        return True, item[1]

    def put(self, name: str, model: dict[str, Any] | None) -> None:
        self._items.pop(name, None)
        while len(self._items) >= self.size:  # dicts keep insertion order: the oldest first
            self._items.pop(next(iter(self._items)))
        self._items[name] = (time.monotonic() + self.ttl, model)


def csv_name(req: access.UsageRequest) -> str:
    who = "-".join(x for x in (req.project, req.user) if x) or "usage"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in who)
    return f"usage-{safe}.csv"
