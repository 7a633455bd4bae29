"""Budgets held while running: each project's budget against that project's own use.

- **service side**, each meter tick (:func:`evaluate`): every project's budgets from
  :func:`.query.budgets` (CPU and GPU hours all-time, storage the latest size) become rows of
  ``budget_states`` (level 0/80/95/100; ``over_since`` set when 100 is reached, cleared
  below), and each change of level an ``enforcement_events`` row. An admin's raise through
  the projects API counts at the next tick (the catalog is read each time).
- **hub side** (:func:`install`, wrapping the projects' spawner hooks): a spawn charged to a
  project whose CPU budget (and GPU budget, for a GPU profile) is at 100 % is refused with
  the figures; a running server charged to such a project is stopped once
  ``TwinhubAccounting.grace`` seconds have passed since it got there, the reason logged and
  recorded, with that user's Dask clusters charged to the project. Storage over its budget
  blocks no spawn: the object store refuses writes to the project's buckets instead.
- **both** (:func:`user_notices`): the warnings a user should see (the twinlab info key,
  the usage API).

The hub reads only ``budget_states``, never usage records: a check costs one small query.
Event actions: ``warning`` (80, 95), ``exhausted`` (100), ``lowered``/``cleared`` (back
down, e.g. after a raise) from the service; ``refused`` (a spawn) and ``stopped`` (a server
or a cluster) from the hub.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from ...db.models import BudgetState, EnforcementEvent
from ...db.schema import session
from ...gateway import ACCESS_SCOPE
from ...gateway import gateway_url as gateway_api_url
from ...gateway import settings as gateway_settings
from ...process.runtime import Runtime
from ...spawn import profiles as spawn_profiles
from ..projects.allocations import is_gpu_profile
from ..projects.enforce import charged_project, running_profile
from . import query
from .config import TwinhubAccounting

log = logging.getLogger("twinhub.accounting")

UNITS = {"cpu_hours": "CPU-hours", "gpu_hours": "GPU-hours", "storage_gb": "GB stored"}
#: Budgets whose exhaustion stops servers and clusters (storage only freezes writes).
RUNNING_BUDGETS = ("cpu_hours", "gpu_hours")
#: Seconds between two stops of the same user's clusters of one project (the gateway is
#: asked at most that often while the project stays over).
CLUSTER_STOP_EVERY = 30.0


# -- figures and messages -------------------------------------------------------------------
def _num(v: float | None) -> str:
    if v is None:
        return "?"
    return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3g}"


def _utc(t: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were written in UTC.
    if t is None or t.tzinfo is not None:
        return t
    return t.replace(tzinfo=UTC)


async def _call(hook: Any, *args: Any) -> Any:
    # Hooks may be sync or async, as the spawner's own calls allow.
    result = hook(*args)
    return await result if inspect.isawaitable(result) else result


def used_of(project: str, budget: str, used: float | None, limit: float | None) -> str:
    """'project x used 102.3 of 100 CPU-hours'."""
    return f"project {project} used {_num(used)} of {_num(limit)} {UNITS.get(budget, budget)}"


def refusal_message(state: BudgetState) -> str:
    return (
        f"{used_of(state.project, state.budget, state.used, state.limit)}; ask an admin to raise it"
    )


def _level_message(
    project: str, budget: str, fig: dict[str, Any], level: int, old: int, grace: float
) -> str:
    figures = used_of(project, budget, fig.get("used"), fig.get("limit"))
    if level >= 100:
        if budget == "storage_gb":
            return f"{figures}; writes to its buckets are refused (reads still work)"
        return (
            f"{figures}; servers and Dask clusters charged to it stop after {grace:g} s; "
            "ask an admin to raise it"
        )
    if level > old:
        return f"{figures} ({level} % warning)"
    return f"{figures}: back below {max(old, 80)} %"


# -- service side -----------------------------------------------------------------------------
def evaluate(
    db_url: str, catalog: Any, settings: TwinhubAccounting, now: datetime | None = None
) -> list[dict]:
    """Bring ``budget_states`` up to date with every project's use; return the events
    (one per level change, also stored in ``enforcement_events``)."""
    now = now or datetime.now(UTC)
    allocations = catalog.allocations()
    current = query.budgets(db_url, allocations, sorted(allocations))
    events: list[dict] = []
    with session(db_url) as s:
        rows = {(r.project, r.budget): r for r in s.scalars(select(BudgetState))}
        for project, budgets in current.items():
            for budget, fig in budgets.items():
                level = int(fig.get("level") or 0)
                row = rows.pop((project, budget), None)
                old = row.level if row is not None else 0
                if row is None:
                    row = BudgetState(project=project, budget=budget)
                    s.add(row)
                row.used, row.limit = fig.get("used"), fig.get("limit")
                row.fraction, row.level, row.updated_at = fig.get("fraction"), level, now
                if level < 100:
                    row.over_since = None
                elif old < 100 or row.over_since is None:
                    row.over_since = now
                if level != old:
                    if level >= 100:
                        action = "exhausted"
                    elif level > old:
                        action = "warning"
                    else:  # an admin raised it (or usage was corrected)
                        action = "lowered" if level else "cleared"
                    msg = _level_message(project, budget, fig, level, old, settings.grace)
                    events.append(_event(s, now, project, budget, action, msg, level=level))
        for (project, budget), row in rows.items():
            # The budget was unset or the project removed: nothing is held any more.
            if row.level:
                msg = f"project {project}: {UNITS.get(budget, budget)} no longer limited"
                events.append(_event(s, now, project, budget, "cleared", msg, level=0))
            s.delete(row)
    for e in events:
        log.info("budget %s: %s", e["action"], e["message"])
    return events


def _event(
    s: Any, at: datetime, project: str, budget: str, action: str, message: str, **extra: Any
) -> dict:
    fields = {k: extra.pop(k, None) for k in ("user", "server", "cluster")}
    s.add(
        EnforcementEvent(
            at=at, project=project, budget=budget, action=action, message=message, **fields
        )
    )
    return {
        "at": at.isoformat(),
        "project": project,
        "budget": budget,
        "action": action,
        "message": message,
        **fields,
        **extra,
    }


def record_event(
    db_url: str, project: str, budget: str, action: str, message: str, **who: Any
) -> None:
    """Store one event (a refusal, a stop) from the hub or the gateway."""
    with session(db_url) as s:
        _event(s, datetime.now(UTC), project, budget, action, message, **who)


# -- reads shared by the hub, the gateway and the service -----------------------------------
def states(db_url: str, projects: Iterable[str]) -> list[BudgetState]:
    names = sorted(set(projects))
    if not names:
        return []
    with session(db_url) as s:
        rows = list(s.scalars(select(BudgetState).where(BudgetState.project.in_(names))))
    for r in rows:
        r.over_since = _utc(r.over_since)
    return sorted(rows, key=lambda r: (r.project, r.budget))


def exhausted(db_url: str, project: str, needs: Iterable[str]) -> BudgetState | None:
    """The first budget of ``needs`` that ``project`` has used up (level 100), or None."""
    wanted = set(needs)
    return next(
        (st for st in states(db_url, [project]) if st.budget in wanted and st.level >= 100), None
    )


def spawn_refusal(db_url: str, project: str, needs: Iterable[str]) -> str | None:
    """Why nothing new may be charged to ``project`` (a budget of ``needs`` at 100 %)."""
    st = exhausted(db_url, project, needs)
    return None if st is None else refusal_message(st)


def needed_budgets(profile: dict | None) -> tuple[str, ...]:
    """The budgets a server of ``profile`` draws on: CPU always, GPU for GPU profiles."""
    return ("cpu_hours", "gpu_hours") if profile and is_gpu_profile(profile) else ("cpu_hours",)


def user_notices(
    db_url: str,
    user: str,
    projects: Iterable[str],
    *,
    grace: float | None = None,
    now: datetime | None = None,
) -> list[dict]:
    """What ``user`` (a member of ``projects``) should be told: each budget of theirs at 80 %
    or more (``kind`` "budget": level, project, budget, used, limit, message, stop_at: when
    servers charged to it stop, ISO UTC, None for storage or below 100), then the stops of
    their servers in the last day (``kind`` "stopped")."""
    grace = TwinhubAccounting().grace if grace is None else grace
    now = now or datetime.now(UTC)
    out: list[dict] = []
    for st in states(db_url, projects):
        if st.level < 80:
            continue
        stop_at = None
        if st.level >= 100 and st.budget in RUNNING_BUDGETS and st.over_since is not None:
            stop_at = (st.over_since + timedelta(seconds=grace)).isoformat()
        fig = {"used": st.used, "limit": st.limit}
        out.append(
            {
                "kind": "budget",
                "level": st.level,
                "project": st.project,
                "budget": st.budget,
                "used": st.used,
                "limit": st.limit,
                "fraction": st.fraction,
                "message": _level_message(st.project, st.budget, fig, st.level, 0, grace),
                "stop_at": stop_at,
            }
        )
    with session(db_url) as s:
        stops = s.scalars(
            select(EnforcementEvent)
            .where(EnforcementEvent.user == user, EnforcementEvent.action == "stopped")
            .where(EnforcementEvent.at >= now - timedelta(days=1))
            .order_by(EnforcementEvent.at.desc())
            .limit(20)
        )
        for e in stops:
            out.append(
                {
                    "kind": "stopped",
                    "level": 100,
                    "project": e.project,
                    "budget": e.budget,
                    "server": e.server,
                    "at": _utc(e.at).isoformat(),  # type: ignore[union-attr]
                    "message": e.message,
                    "stop_at": None,
                }
            )
    return out


# -- hub side ---------------------------------------------------------------------------------
class BudgetEnforcer:
    """The spawner hooks around the projects' ones (which run first and win)."""

    def __init__(
        self,
        db_url: str,
        grace: float,
        inner_spawn_check: Any = None,
        inner_running_check: Any = None,
        gateway: str | None = None,
        gateway_scope: str = ACCESS_SCOPE,
    ) -> None:
        self.db_url = db_url
        self.grace = grace
        self.inner_spawn_check = inner_spawn_check
        self.inner_running_check = inner_running_check
        self.gateway = gateway
        self.gateway_scope = gateway_scope
        self._cluster_stops: dict[tuple[str, str], float] = {}

    async def spawn_check(self, spawner: Any, slug: str) -> str | None:
        if self.inner_spawn_check is not None:
            why = await _call(self.inner_spawn_check, spawner, slug)
            if why:
                return why
        # _apply_profile set the chosen project before this check.
        project = charged_project(spawner) or spawner.personal_project
        # _apply_profile passes the slug that will start (the default resolved).
        needs = needed_budgets(await _profile(spawner, slug))
        st = await asyncio.to_thread(exhausted, self.db_url, project, needs)
        if st is None:
            return None
        why = refusal_message(st)
        spawner.log.warning("Spawn of %s refused: %s", spawner._log_name, why)
        await asyncio.to_thread(
            record_event,
            self.db_url,
            project,
            st.budget,
            "refused",
            why,
            user=spawner.user.name,
            server=spawner.name,
        )
        return why

    async def running_check(self, spawner: Any) -> str | None:
        if self.inner_running_check is not None:
            why = await _call(self.inner_running_check, spawner)
            if why:
                return why
        project = charged_project(spawner)
        if not project:  # the hub restarted since a spawn with the default: it still is
            project = (await spawner.projects_for_user() or [spawner.personal_project])[0]
        groups = [g.name for g in getattr(spawner.user, "groups", [])]
        rows = await asyncio.to_thread(states, self.db_url, {project, *groups})
        now = datetime.now(UTC)
        due = {
            (r.project, r.budget): r
            for r in rows
            if r.budget in RUNNING_BUDGETS
            and r.level >= 100
            and r.over_since is not None
            and r.over_since + timedelta(seconds=self.grace) <= now
        }
        # This user's clusters charged to a project past its grace go, whatever the server.
        for p in sorted({p for p, _ in due}):
            self._stop_clusters_soon(spawner, p)
        # After a hub restart spawner.profile is empty: user_options or the charge file say.
        needs = needed_budgets(running_profile(spawner) or await _profile(spawner, ""))
        over = [due[(project, b)] for b in needs if (project, b) in due]
        if not over:
            return None
        st = over[0]
        why = (
            f"{used_of(st.project, st.budget, st.used, st.limit)} and stayed over for more than "
            f"the grace of {self.grace:g} s; ask an admin to raise it"
        )
        await asyncio.to_thread(
            record_event,
            self.db_url,
            st.project,
            st.budget,
            "stopped",
            why,
            user=spawner.user.name,
            server=spawner.name,
        )
        return why

    def _stop_clusters_soon(self, spawner: Any, project: str) -> None:
        if not self.gateway:
            return
        key = (spawner.user.name, project)
        last = self._cluster_stops.get(key, 0.0)
        if time.monotonic() - last < CLUSTER_STOP_EVERY:
            return
        self._cluster_stops[key] = time.monotonic()
        task = asyncio.ensure_future(self._stop_clusters(spawner, project))
        # Keep a reference until done (the loop holds tasks only weakly).
        self._tasks = getattr(self, "_tasks", set())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop_clusters(self, spawner: Any, project: str) -> None:
        user = spawner.user
        token = user.new_api_token(
            scopes=[self.gateway_scope], expires_in=300, note="twinhub: stop clusters over budget"
        )
        try:
            names = await stop_project_clusters(self.gateway, token, project)  # type: ignore[arg-type]
            for name in names:
                why = f"Dask cluster {name} charged to project {project}, over its budget past the grace of {self.grace:g} s"
                spawner.log.warning("Stopped %s of %s", why, user.name)
                await asyncio.to_thread(
                    record_event,
                    self.db_url,
                    project,
                    "cpu_hours",
                    "stopped",
                    why,
                    user=user.name,
                    cluster=name,
                )
        except OSError as e:
            spawner.log.warning(
                "Dask gateway unreachable, clusters of %s not stopped: %s", user.name, e
            )
        except Exception:
            spawner.log.exception(
                "Could not stop the Dask clusters of %s in %s", user.name, project
            )
        finally:
            # jupyterhub.orm is loaded in the hub (the only caller); the service never is.
            from jupyterhub import orm

            orm_token = orm.APIToken.find(user.db, token)
            if orm_token is not None:
                user.db.delete(orm_token)
                user.db.commit()


async def stop_project_clusters(gateway: str, token: str, project: str) -> list[str]:
    """Stop the token's user's pending/running clusters charged to ``project``."""
    client = AsyncHTTPClient()
    headers = {"Authorization": f"jupyterhub {token}"}
    r = await client.fetch(f"{gateway}/api/v1/clusters/?status=PENDING,RUNNING", headers=headers)
    clusters = json.loads(r.body)
    names = [n for n, c in clusters.items() if (c.get("options") or {}).get("project") == project]
    for name in names:
        try:
            await client.fetch(
                f"{gateway}/api/v1/clusters/{name}", method="DELETE", headers=headers
            )
        except HTTPClientError as e:
            if e.code != 404:
                raise
    return names


async def _profile(spawner: Any, slug: str) -> dict | None:
    """Profile ``slug``, or (none given) the default of those the user may start."""
    if slug:
        return {p["slug"]: p for p in spawner.profiles}.get(slug)
    offered = await spawner.profiles_for_user()
    return spawn_profiles.default_profile(offered) if offered else None


def install(c: Any, settings: TwinhubAccounting, rt: Runtime) -> BudgetEnforcer:
    """Wrap the spawner hooks in the JupyterHub config ``c`` (set before by the projects
    part, if at all) with the budget checks; idempotent."""
    section = c.TwinhubSpawner
    inner_spawn = section.spawn_check if "spawn_check" in section else None
    inner_running = section.running_check if "running_check" in section else None
    existing = getattr(inner_spawn, "__self__", None)
    if isinstance(existing, BudgetEnforcer):
        return existing
    gateway = None
    # Kubernetes: the dask-gateway chart's, when the chart renders its address.
    running = "dask-gateway" in (rt.service_urls if rt.kubernetes else rt.ports)
    if running and gateway_settings(rt).enabled:
        gateway = gateway_api_url(rt)
    enforcer = BudgetEnforcer(rt.db_url, settings.grace, inner_spawn, inner_running, gateway)
    section.spawn_check = enforcer.spawn_check
    section.running_check = enforcer.running_check
    section.personal_project = settings.personal_project
    return enforcer
