"""Budgets held by the Dask gateway itself: the clusters of a project over its CPU budget get
no new workers, and are stopped once ``TwinhubAccounting.grace`` has passed.

The hub also stops a user's clusters, from the running check of their servers
(:mod:`twinhub.services.accounting.enforce`); that runs only while the user has a server.
A cluster made straight from the gateway API, or kept after its server stopped
(``shutdown_on_close=False``), would run on: so the gateway checks too, every
``interval`` seconds, reading accounting's ``budget_states`` (one small query; the
accounting service updates them after each meter tick) for the projects of its active
clusters (``cluster.options["project"]``):

- a project at 100 % of ``cpu_hours``: scale-ups and adaptive scaling of its clusters are
  refused with the figures, and workers their schedulers ask for are not started;
- over for longer than the grace (from ``over_since``): its clusters are stopped, the reason
  logged and recorded as a ``stopped`` event;
- once an admin raised the budget (the service's next tick clears the state), the next check
  lets the project's clusters scale again.

The backend calls :func:`start` from its ``setup()``, :func:`may_add_workers` before starting
workers and :func:`message_refusal` before forwarding a scale/adapt request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable

#: The budget whose exhaustion stops clusters (they use no GPU).
BUDGET = "cpu_hours"


class TwinhubGatewayBudget(LoggingConfigurable):
    """The gateway's budget checks (``c.TwinhubGatewayBudget.*``, set by ``configure_gateway``
    from ``TwinhubAccounting`` when accounting is on)."""

    db_url = Unicode(
        "",
        help="twinhub's database, holding accounting's budget_states; '' (accounting off): "
        "no checks.",
    ).tag(config=True)
    grace = Float(
        300.0, help="Seconds a cluster may run on over budget (TwinhubAccounting.grace)."
    ).tag(config=True)
    interval = Float(
        15.0,
        min=0.1,
        help="Seconds between two checks of the budgets of active clusters' projects "
        "(TwinhubAccounting.interval).",
    ).tag(config=True)
    personal_project = Unicode(
        "personal",
        help="The project of a cluster without a project option (TwinhubAccounting."
        "personal_project).",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: Projects at 100 % at the last check -> their budget state (figures, over_since).
        self.blocked: dict[str, Any] = {}
        self._refused: set[str] = set()  # clusters whose refused workers were logged
        self._task: asyncio.Future | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.db_url)

    def project_of(self, cluster: Any) -> str:
        options = getattr(cluster, "options", None) or {}
        project = options.get("project") if isinstance(options, Mapping) else None
        return str(project) if project else self.personal_project

    def refusal(self, cluster: Any) -> str | None:
        """Why ``cluster`` may get no new worker now (None: it may)."""
        st = self.blocked.get(self.project_of(cluster))
        if st is None:
            return None
        return (
            f"{_figures(st)}: its Dask clusters get no new workers (and stop after the grace "
            f"of {self.grace:g} s); ask an admin to raise it"
        )

    async def check(self, backend: Any, now: datetime | None = None) -> list[str]:
        """One check: refresh the blocked projects, stop the clusters past the grace;
        return the names of the clusters stopped."""
        # Imported at the first check, not at the gateway's start (which `twinhub up` waits
        # for): the accounting modules pull in SQLAlchemy models and the usage queries.
        from ..services.accounting import enforce

        now = now or datetime.now(UTC)
        clusters = list(backend.db.active_clusters())
        projects = {self.project_of(c) for c in clusters}
        rows = await asyncio.to_thread(enforce.states, self.db_url, projects) if projects else []
        over = {r.project: r for r in rows if r.budget == BUDGET and r.level >= 100}
        released = set(self.blocked) - set(over)
        self.blocked = over
        stopped: list[str] = []
        for c in clusters:
            project = self.project_of(c)
            if project in released:
                self._refused.discard(c.name)
                backend.queue.put(c)  # reconciled again: starts the workers it asks for
            st = over.get(project)
            if st is None or st.over_since is None:
                continue
            if st.over_since + timedelta(seconds=self.grace) > now:
                continue
            why = (
                f"Dask cluster {c.name} charged to project {project}: {_figures(st)} and stayed "
                f"over for more than the grace of {self.grace:g} s; ask an admin to raise it"
            )
            self.log.warning("Stopping cluster %s of %s: %s", c.name, c.username, why)
            await backend.stop_cluster(c.name)
            await asyncio.to_thread(
                enforce.record_event,
                self.db_url,
                project,
                st.budget,
                "stopped",
                why,
                user=c.username,
                cluster=c.name,
            )
            stopped.append(c.name)
        return stopped

    async def run(self, backend: Any) -> None:
        """Check every ``interval`` seconds until cancelled (the backend's task pool)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check(backend)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database away for a moment: keep what is blocked, try again later.
                self.log.warning("Budget check of Dask clusters failed", exc_info=True)


def _figures(st: Any) -> str:
    # Imported here for the reason given in check() (called only once a project is over).
    from ..services.accounting.enforce import used_of

    return used_of(st.project, st.budget, st.used, st.limit)


# -- what the backend calls -------------------------------------------------------------------
def start(backend: Any) -> TwinhubGatewayBudget:
    """From the backend's ``setup()``, after upstream's (its task pool then exists): start the
    periodic check (when accounting is on) in the backend's task pool, cancelled at cleanup."""
    budget = TwinhubGatewayBudget(parent=backend, log=backend.log)
    backend._twinhub_budget = budget
    if budget.enabled:
        budget._task = backend.task_pool.spawn(budget.run(backend))  # a strong reference
    return budget


def _budget(backend: Any) -> TwinhubGatewayBudget | None:
    return getattr(backend, "_twinhub_budget", None)


def may_add_workers(backend: Any, cluster: Any) -> bool:
    """False while ``cluster``'s project is at 100 %: the backend then starts none of the
    workers its scheduler asks for (from ``_check_cluster_scale``)."""
    budget = _budget(backend)
    why = budget.refusal(cluster) if budget is not None else None
    if why is None:
        return True
    if cluster.name not in budget._refused:  # once per cluster and blocked period
        budget._refused.add(cluster.name)
        budget.log.info("No new workers for cluster %s: %s", cluster.name, why)
    return False


def message_refusal(
    backend: Any,
    cluster: Any,
    msg: Mapping[str, Any],
    current_workers: Callable[[Any], int] | None = None,
) -> str | None:
    """Why a scale/adapt request for ``cluster`` is refused (None: forward it): while its
    project is at 100 %, scaling up or switching adaptive scaling on; scaling down, and
    switching adaptive off, stay allowed. ``current_workers(cluster)``: its size now (default:
    its active workers in the backend's database, as the embedded backends keep them)."""
    budget = _budget(backend)
    why = budget.refusal(cluster) if budget is not None else None
    if why is None:
        return None
    op = msg.get("op")
    if op == "adapt" and msg.get("active", True):
        return why
    if op == "scale":
        current = (current_workers or partial(_db_workers, backend))(cluster)
        if int(msg.get("count") or 0) > current:
            return why
    return None


def _db_workers(backend: Any, cluster: Any) -> int:
    live = backend.db.get_cluster(cluster.name)
    return len(live.active_workers()) if live is not None else 0
