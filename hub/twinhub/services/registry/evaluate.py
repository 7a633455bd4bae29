"""The automated evaluation of submitted requests (the platform's step of the workflow).

Every ``evaluation_interval`` seconds, each ``submitted`` request is checked: each endpoint
answers (fetched through the outbound guard, never on a private address), its description
(``description_url``: OpenAPI, or an OGC API landing page) parses and says what such a
document must, and the resources asked for fit an allocation of a project the provider is
a member of. Findings (``[{"check", "ok", "message"}]``) are recorded and the request moves
to ``evaluated`` whatever they say: the guard's refusals and failed checks inform the
reviewers, they never block. Several replicas may run this loop: the move is a
compare-and-set, so a request is evaluated once.

Bounds (a provider's endpoints may answer slowly on purpose): one request's fetches share
``evaluation_budget`` seconds (what is left unfetched then is a finding), and up to
:data:`CONCURRENCY` requests are evaluated at once, one per provider, so one provider's
requests never hold up the others'. Findings name no address or resolver text (the
provider would learn the platform's internal names): that goes to the service's log.

A request never stays ``submitted`` for good: descriptions are parsed in a thread (JSON
first; YAML, slower, only up to :data:`YAML_MAX_BYTES`), a document that is too deep or
odd is a finding, a check that raises is a finding (``check failed: <type>``), and a
request whose evaluation raised anyway moves on with an "evaluation error" finding.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import yaml

from ...outbound import OutboundRefused, check_url, fetch
from ...spawn.resource_limits import Limits
from ..hubauth import hub_user_model
from ..projects import allocations
from ..projects.catalog import ProjectCatalog
from ..projects.catalog import is_enabled as projects_enabled
from . import metrics, store
from .context import RegistryContext

log = logging.getLogger("twinhub.registry.evaluate")

Finding = dict[str, Any]
#: Requests looked at per round (the rest wait for the next one).
BATCH = 50
#: Requests evaluated at once (at most one per provider).
CONCURRENCY = 4
#: An OGC API landing page links these (by relation name, or its OGC URI's last part).
OGC_RELS = ("conformance", "service-desc", "service-doc")
#: Bytes of a description still tried as YAML when it is not JSON: YAML parses far slower
#: (an OpenAPI document in YAML is rarely larger); a larger one is a finding.
YAML_MAX_BYTES = 256 * 1024
#: libyaml's loader when PyYAML was built with it (several times faster), else PyYAML's own.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def finding(check: str, ok: bool, message: str) -> Finding:
    return {"check": check, "ok": ok, "message": message}


#: What a provider reads for each refusal of the outbound guard (no addresses, no resolver
#: text: the guard's own message goes to the log).
REFUSED = {
    "address": "resolves to a non-public address",
    "dns": "does not resolve",
    "scheme": "is not an http(s) URL",
    "redirect": "redirects to another host",
    "size": "is too large",
    "time": "did not answer in time",
    "connect": "could not be reached",
}


class Budget:
    """One request's fetch time in all (``evaluation_budget``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class BudgetSpent(Exception):
    """The request's evaluation budget is spent: the URL is not fetched."""


def _refused(check: str, what: str, e: OutboundRefused) -> Finding:
    metrics.OUTBOUND_REFUSED.labels(reason=e.reason).inc()
    log.info("evaluation: %s not fetched: %s", what, e.message)
    hint = REFUSED.get(e.reason, "could not be reached")
    return finding(check, False, f"{what} {hint}: not fetched")


def _unfetched(check: str, what: str, budget: Budget) -> Finding:
    return finding(
        check,
        False,
        f"{what}: not fetched, the evaluation's time budget ({budget.seconds:g} s in all) "
        "was spent",
    )


# -- descriptions ----------------------------------------------------------------------------
def parse_document(body: bytes) -> Any:
    """JSON, else YAML (safe loader, up to :data:`YAML_MAX_BYTES`); ValueError if neither.
    CPU-bound: async callers run it in a thread (:func:`judge`)."""
    try:
        return json.loads(body)
    except RecursionError:  # "[[[[..." : YAML would recurse as deep
        raise ValueError("too deeply nested") from None
    except (ValueError, UnicodeDecodeError):
        pass
    if len(body) > YAML_MAX_BYTES:
        raise ValueError(
            f"not JSON, and at {len(body) // 1024} KiB too large to be read as YAML "
            f"(at most {YAML_MAX_BYTES // 1024} KiB; JSON may be larger)"
        )
    try:
        return yaml.load(body, Loader=YAML_LOADER)  # noqa: S506 (a safe loader)
    except RecursionError:
        raise ValueError("too deeply nested") from None
    except yaml.YAMLError as e:
        raise ValueError(f"neither JSON nor YAML ({str(e).splitlines()[0]})") from None


def _rel(rel: Any) -> str:
    return str(rel).rstrip("/").rsplit("/", 1)[-1]


def check_openapi(doc: Any) -> str | None:
    """None if ``doc`` looks like an OpenAPI (or Swagger) description, else why not."""
    if not isinstance(doc, dict):
        return "not an object"
    if not any(isinstance(doc.get(k), str | int | float) for k in ("openapi", "swagger")):
        return "no 'openapi' (or 'swagger') version field"
    if not isinstance(doc.get("paths"), dict):
        return "no 'paths' object"
    return None


def check_ogc_landing(doc: Any) -> str | None:
    """None if ``doc`` is an OGC API landing page (links to conformance / service-desc)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("links"), list):
        return "no 'links' list"
    rels = {_rel(link.get("rel", "")) for link in doc["links"] if isinstance(link, dict)}
    if not rels & set(OGC_RELS):
        return f"no link with rel {' or '.join(OGC_RELS)}"
    return None


async def _get(ctx: RegistryContext, url: str, budget: Budget):
    s = ctx.settings
    left = budget.left()
    if left <= 0.05:  # not worth starting
        raise BudgetSpent()
    try:
        return await fetch(
            url,
            allow_private=False,
            timeout=min(s.fetch_timeout, left),
            max_bytes=s.fetch_max_bytes,
        )
    except OutboundRefused as e:
        if e.reason == "time" and budget.left() <= 0.05 and left < s.fetch_timeout:
            raise BudgetSpent() from None  # cut short by the budget, not its own deadline
        raise


async def check_endpoint(
    ctx: RegistryContext, i: int, ep: dict[str, Any], budget: Budget | None = None
) -> list[Finding]:
    """The endpoint answers; its description parses and is what its type says."""
    budget = budget or Budget(ctx.settings.evaluation_budget)
    out: list[Finding] = []
    url, etype = ep.get("url", ""), ep.get("type", "other")
    where = f"endpoint {i + 1}"
    landing = None
    try:
        check_url(url)
        r = await _get(ctx, url, budget)
        if r.status < 400:
            out.append(finding("health", True, f"{where} answered {r.status} in {r.elapsed_s * 1000:.0f} ms"))  # fmt: skip
            landing = r.body
        else:
            out.append(finding("health", False, f"{where} answered {r.status}"))
    except OutboundRefused as e:
        out.append(_refused("health", where, e))
    except BudgetSpent:
        out.append(_unfetched("health", where, budget))

    desc_url = ep.get("description_url") or ""
    if not desc_url:
        if etype == "openapi":
            out.append(finding("description", False, f"{where}: no description_url (OpenAPI document) given"))  # fmt: skip
        elif etype == "ogcapi" and landing is not None:
            out.append(await judge(landing, etype, f"{where}'s landing page"))
        return out
    try:
        check_url(desc_url)
        r = await _get(ctx, desc_url, budget)
    except OutboundRefused as e:
        out.append(_refused("description", f"{where}'s description", e))
        return out
    except BudgetSpent:
        out.append(_unfetched("description", f"{where}'s description", budget))
        return out
    if r.status >= 400:
        out.append(finding("description", False, f"{where}'s description answered {r.status}"))
        return out
    out.append(await judge(r.body, etype, f"{where}'s description"))
    return out


async def judge(body: bytes, etype: str, what: str) -> Finding:
    """:func:`_judge` in a thread: parsing up to ``fetch_max_bytes`` must not stall the
    event loop (the catalogue, pages and every gateway route share it)."""
    return await asyncio.to_thread(_judge, body, etype, what)


def _judge(body: bytes, etype: str, what: str) -> Finding:
    """The description's finding; never raises (an odd document is the provider's problem
    to fix, not a reason to leave the request unevaluated)."""
    try:
        return _judge_parsed(body, etype, what)
    except RecursionError:
        return finding("description", False, f"{what} does not parse: too deeply nested")
    except Exception as e:
        log.warning("evaluation: judging %s failed", what, exc_info=True)
        return finding("description", False, f"{what} does not parse: {type(e).__name__}")


def _judge_parsed(body: bytes, etype: str, what: str) -> Finding:
    try:
        doc = parse_document(body)
    except ValueError as e:
        return finding("description", False, f"{what} does not parse: {e}")
    if etype == "openapi":
        why = check_openapi(doc)
        kind = "an OpenAPI description"
    elif etype == "ogcapi":
        why = check_ogc_landing(doc)
        kind = "an OGC API landing page"
    else:  # "other": either will do
        why = check_openapi(doc) and check_ogc_landing(doc)
        kind = "an OpenAPI description or an OGC API landing page"
    if why:
        return finding("description", False, f"{what} is not {kind}: {why}")
    return finding("description", True, f"{what} is {kind}")


# -- resources -------------------------------------------------------------------------------
def _profile_max(catalog: ProjectCatalog, alloc: dict[str, Any]) -> Limits | None:
    """The largest limits among the allocation's profiles (None per field: unlimited)."""
    slugs = set(allocations.allowed_profiles(alloc, catalog.profiles))
    limits = [Limits.from_profile(p.get("limits")) for p in catalog.profiles if p["slug"] in slugs]
    if not limits:
        return None
    cpus = [x.cpu for x in limits]
    mems = [x.memory for x in limits]
    return Limits(
        cpu=None if None in cpus else max(cpus),  # type: ignore[type-var]
        memory=None if None in mems else max(mems),  # type: ignore[type-var]
        gpu=max(x.gpu for x in limits),
    )


def fit_resources(
    resources: dict[str, Any],
    groups: list[str],
    catalog: ProjectCatalog | None,
) -> list[Finding]:
    """Whether what is asked fits the allocation of ``resources["project"]`` (one of the
    provider's ``groups`` that is a project)."""
    asked = {k: v for k, v in resources.items() if k != "project"}
    project = resources.get("project")
    if catalog is None:
        return [finding("resources", False, "no projects are configured on this platform: resources cannot be checked")]  # fmt: skip
    projects = catalog.allocations()
    if not project:
        return [finding("resources", False, "no project named (resources.project): resources cannot be checked")]  # fmt: skip
    if project not in projects:
        return [finding("resources", False, f"{project!r} is not a project of this platform")]
    if project not in groups:
        return [finding("resources", False, f"the provider is not a member of project {project!r}")]  # fmt: skip
    alloc = projects[project]
    out: list[Finding] = []
    top = _profile_max(catalog, alloc)
    over: list[str] = []
    if asked.get("gpu") and not alloc.get("gpu"):
        over.append(f"gpu {asked['gpu']} (the project has no GPU allocation)")
    elif top is not None and asked.get("gpu", 0) > top.gpu and alloc.get("gpu"):
        over.append(f"gpu {asked['gpu']} > {top.gpu} per server")
    if top is not None and top.cpu is not None and asked.get("cpu", 0) > top.cpu:
        over.append(f"cpu {asked['cpu']} > {top.cpu:g} per server")
    if top is not None and top.memory is not None and asked.get("memory_gb", 0) * 1e9 > top.memory:
        over.append(f"memory_gb {asked['memory_gb']} > {top.memory / 1e9:g} per server")
    m = alloc.get("max_servers_per_user")
    if m is not None and asked.get("servers", 0) > m:
        over.append(f"servers {asked['servers']} > {m}")
    sg = alloc.get("storage_gb")
    if sg is not None and asked.get("storage_gb", 0) > sg:
        over.append(f"storage_gb {asked['storage_gb']} > {sg:g}")
    if over:
        out.append(finding("resources", False, f"exceeds project {project!r}'s allocation: " + "; ".join(over)))  # fmt: skip
    else:
        out.append(finding("resources", True, f"fits project {project!r}'s allocation"))
    return out


def load_catalog(ctx: RegistryContext) -> ProjectCatalog | None:
    if not projects_enabled(ctx.rt):
        return None
    catalog = ProjectCatalog.from_runtime(ctx.rt)
    return catalog if catalog.allocations() else None


# -- the evaluation --------------------------------------------------------------------------
async def evaluate(ctx: RegistryContext, request_id: str) -> dict[str, Any] | None:
    """Evaluate one submitted request and move it to ``evaluated``; None if it is not
    (or no longer) submitted."""
    req = await asyncio.to_thread(store.get_request, ctx.db_url, request_id)
    if req is None or req["state"] != "submitted":
        return None
    findings: list[Finding] = []
    endpoints = req["entry"].get("endpoints") or []
    budget = Budget(ctx.settings.evaluation_budget)
    for i, ep in enumerate(endpoints):
        try:
            findings.extend(await check_endpoint(ctx, i, ep, budget))
        except Exception as e:  # a check's own bug must not leave the request unevaluated
            log.exception("evaluation of request %s: endpoint %d's checks failed", request_id, i + 1)  # fmt: skip
            findings.append(_check_failed(f"endpoint {i + 1}", e))
    if not endpoints:
        findings.append(finding("endpoints", True, "no endpoint to check"))
    groups: list[str] = []
    if ctx.hub is not None:
        try:
            model = await hub_user_model(ctx.hub, ctx.hub_api, req["provider"])
            groups = list((model or {}).get("groups") or [])
        except Exception as e:  # the hub restarting: say so rather than guess
            findings.append(finding("resources", False, f"cannot read the provider's groups: {e}"))  # fmt: skip
    if not any(f["check"] == "resources" for f in findings):
        try:
            catalog = await asyncio.to_thread(load_catalog, ctx)
            findings.extend(fit_resources(req["resources"] or {}, groups, catalog))
        except Exception as e:
            log.exception("evaluation of request %s: the resource check failed", request_id)
            findings.append(_check_failed("resources", e))
    return await _record(ctx, request_id, findings)


def _check_failed(what: str, e: BaseException) -> Finding:
    return finding("evaluation", False, f"{what}: check failed: {type(e).__name__}")


async def _record(
    ctx: RegistryContext, request_id: str, findings: list[Finding]
) -> dict[str, Any] | None:
    """Move the request to ``evaluated`` with ``findings``; None if it is no longer
    submitted (another replica, or the provider withdrew it meanwhile)."""
    try:
        done = await asyncio.to_thread(
            store.transition,
            ctx.db_url,
            request_id,
            expect="submitted",
            to="evaluated",
            actor="platform",
            comment="automated evaluation",
            findings=findings,
        )
    except store.Conflict:
        return None
    outcome = "clean" if all(f["ok"] for f in findings) else "flagged"
    metrics.EVALUATIONS.labels(outcome=outcome).inc()
    metrics.TRANSITIONS.labels(to="evaluated").inc()
    return done


async def _evaluate_one(ctx: RegistryContext, rid: str) -> int:
    try:
        return int(await evaluate(ctx, rid) is not None)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # one request's failure must not hold up the others
        log.exception("evaluating request %s failed", rid)
        # Left submitted, it would head the queue (oldest change first) every round, and
        # BATCH of them would starve everyone else: record the failure as the evaluation.
        try:
            done = await _record(ctx, rid, [finding("evaluation", False, f"evaluation error: {type(e).__name__}; a reviewer should check the entry by hand")])  # fmt: skip
        except Exception:  # the database itself is failing: the next round retries
            log.exception("recording the failed evaluation of request %s failed", rid)
            return 0
        return int(done is not None)


async def evaluate_pending(ctx: RegistryContext) -> int:
    """One round: every submitted request (up to :data:`BATCH`), oldest first, up to
    :data:`CONCURRENCY` at once and one per provider at a time; how many were evaluated."""
    waiting = await asyncio.to_thread(store.queue, ctx.db_url, "submitted", BATCH)
    running: dict[asyncio.Task, str] = {}
    n = 0
    try:
        while waiting or running:
            busy = set(running.values())
            while len(running) < CONCURRENCY:
                pick = next((w for w in waiting if w[1] not in busy), None)
                if pick is None:
                    break
                waiting.remove(pick)
                busy.add(pick[1])
                running[asyncio.create_task(_evaluate_one(ctx, pick[0]))] = pick[1]
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                running.pop(t)
                n += t.result()
    finally:  # cancelled (shutdown): stop what still runs
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    return n


async def evaluation_loop(ctx: RegistryContext) -> None:
    """Evaluate submitted requests every ``evaluation_interval`` seconds, forever."""
    while True:
        await evaluate_pending(ctx)
        await asyncio.sleep(ctx.settings.evaluation_interval)
