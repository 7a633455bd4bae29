"""Your Dask clusters on the platform's gateway: see them all, stop one or all.

    from twinlab import clusters
    clusters.list_clusters()          # a table: name, status, workers, dashboard, created
    clusters.stop_cluster("3f2a...")  # one
    clusters.stop_clusters()          # all of yours

It sees every cluster you own, wherever it was started (any kernel, the Dask sidebar, a
script), not only those of this kernel: the gateway answers each user with their own clusters
only.  ``twinlab.clusters.client`` holds the platform's gateway client fixes (loaded through
dask's config in every server).
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from dask_gateway import Gateway

from . import client  # noqa: F401  (the client fixes, also when Gateway() gets auth= itself)

__all__ = ["ClusterInfo", "ClusterList", "list_clusters", "stop_cluster", "stop_clusters"]

ACTIVE = ("pending", "running")


@dataclass(frozen=True)
class ClusterInfo:
    """One of your clusters, as the gateway and its scheduler report it."""

    name: str
    status: str  # PENDING, RUNNING, STOPPING, STOPPED, FAILED
    workers: int | None  # None: not running (or its scheduler did not answer)
    dashboard: str | None  # the dashboard's link (opens after hub login)
    created: datetime
    stopped: datetime | None = None


class ClusterList(list[ClusterInfo]):
    """A list of :class:`ClusterInfo` shown as a table in notebooks."""

    def _repr_html_(self) -> str:
        if not self:
            return "<p>No Dask clusters.</p>"
        rows = []
        for c in self:
            link = (
                f'<a href="{html.escape(c.dashboard)}" target="_blank">dashboard</a>'
                if c.dashboard
                else ""
            )
            workers = "" if c.workers is None else str(c.workers)
            rows.append(
                f"<tr><td><code>{html.escape(c.name)}</code></td><td>{c.status}</td>"
                f"<td>{workers}</td><td>{link}</td><td>{c.created:%Y-%m-%d %H:%M:%S}</td></tr>"
            )
        head = "<tr><th>name</th><th>status</th><th>workers</th><th>dashboard</th><th>created</th></tr>"
        return f"<table>{head}{''.join(rows)}</table>"


def _workers(gateway: Gateway, name: str) -> int | None:
    try:
        # shutdown_on_close=False: looking must never stop (or hold) the cluster.
        cluster = gateway.connect(name, shutdown_on_close=False)
    except (ValueError, OSError):
        return None
    try:
        return len(cluster.scheduler_info.get("workers", {}))
    finally:
        cluster.close()


def list_clusters(include_stopped: bool = False, gateway: Gateway | None = None) -> ClusterList:
    """Your clusters, newest first: pending and running ones (``include_stopped``: all that
    the gateway still remembers)."""
    g = gateway or Gateway()
    try:
        statuses = None if not include_stopped else [*ACTIVE, "stopping", "stopped", "failed"]
        reports = g.list_clusters(status=statuses)
        out = ClusterList(
            ClusterInfo(
                name=r.name,
                status=r.status.name,
                workers=_workers(g, r.name) if r.status.name == "RUNNING" else None,
                dashboard=r.dashboard_link,
                created=r.start_time,
                stopped=r.stop_time,
            )
            for r in reports
        )
    finally:
        if gateway is None:
            g.close()
    out.sort(key=lambda c: c.created, reverse=True)
    return out


def stop_cluster(name: str, gateway: Gateway | None = None) -> None:
    """Stop one of your clusters (``ValueError`` if you have none of that name)."""
    g = gateway or Gateway()
    try:
        g.get_cluster(name)  # 404 -> ValueError, before asking to stop
        g.stop_cluster(name)
    finally:
        if gateway is None:
            g.close()


def stop_clusters(names: Iterable[str] | None = None, gateway: Gateway | None = None) -> list[str]:
    """Stop the named clusters, or all your pending and running ones but those of your
    processing jobs (dismiss a job to stop its cluster); returns the names."""
    g = gateway or Gateway()
    try:
        todo = (
            list(names)
            if names is not None
            else [r.name for r in g.list_clusters() if not (r.options or {}).get("job")]
        )
        for name in todo:
            g.stop_cluster(name)
    finally:
        if gateway is None:
            g.close()
    return todo
