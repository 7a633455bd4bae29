"""Dask Gateway on Kubernetes: the embedded gateway's projects, limits, budgets and locked
dashboards, for the dask-gateway chart's ``KubeBackend``.

The chart's ``gateway.extraConfig`` (values.yaml) runs :func:`configure` in the gateway pod,
which runs the twinhub hub image. That chart has no key for extra volumes on the gateway pod,
so the runtime comes through ``gateway.env`` instead of the files the hub mounts:
``TWINHUB_RUNTIME_JSON`` (ConfigMap ``twinhub-runtime``, key ``runtime.json``) and
``TWINHUB_DB_URL`` (Secret ``twinhub-db-app``, key ``uri``: twinhub's database, for the
project catalog and the budget states).

What it sets, as :func:`twinhub.gateway.server_config.configure_gateway` does embedded:

- the ``project`` option: one of the user's projects from the same catalog as the spawner
  (the first by default), a group that is not a project refused, an over-budget project
  refused at creation; scheduler and worker pods labelled ``twinhub.io/user`` /
  ``twinhub.io/project`` (label-safe slugs, what NetworkPolicies and accounting select) and
  annotated with the names themselves (what accounting charges);
- ``TwinhubGateway``'s limits: worker cores and memory (requests = limits), workers, cores
  and memory per cluster, clusters per user, idle timeout;
- dashboards: each scheduler's and worker's HTTP server serves TLS with its cluster's
  certificate and requires a client certificate signed by it (``dashboard_tls.py``), so
  neither other pods nor the controller's anonymous Traefik route can read it;
- budgets: :class:`TwinhubKubeBackend` runs :class:`~twinhub.gateway.budget.TwinhubGatewayBudget`
  (clusters over budget get no new workers, then stop after the grace).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.kubernetes.backend import KubeBackend
from dask_gateway_server.models import ClusterStatus
from dask_gateway_server.traitlets import MemoryLimit
from dask_gateway_server.utils import TaskPool
from traitlets.config import Config

from ..errors import PlatformError
from ..process.runtime import Runtime, sqlalchemy_url
from ..services.accounting.config import TwinhubAccounting
from ..services.accounting.config import is_enabled as accounting_enabled
from ..spawn import podmeta
from . import settings
from .backend import ClusterLimitMixin, job_of, requested_job
from .budget import TwinhubGatewayBudget, may_add_workers, message_refusal
from .server_config import (
    GIB,
    _processing_enabled,
    _project_hooks,
    _projects_enabled,
    cluster_options,
)

ENV_RUNTIME = "TWINHUB_RUNTIME_JSON"
ENV_DB_URL = "TWINHUB_DB_URL"
#: Seconds a created cluster counts against its user's limit before the informer reports it;
#: past this the informer's own view decides (a watch that missed the object must not keep it).
CREATED_TTL = 120.0
#: Where dask-gateway's controller mounts each cluster's own Secret (certificate, key, token).
CREDENTIALS = "/etc/dask-credentials"
#: The preload that requires the cluster's client certificate (twinhub is in the user image).
DASHBOARD_PRELOAD = "twinhub.gateway.dashboard_tls"
#: distributed's HTTP servers (scheduler and worker alike) read these.
DASHBOARD_TLS_ENV = {
    "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TLS__CERT": f"{CREDENTIALS}/dask.crt",
    "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TLS__KEY": f"{CREDENTIALS}/dask.pem",
    "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TLS__CA_FILE": f"{CREDENTIALS}/dask.crt",
}


def load_runtime(environ: Mapping[str, str] | None = None) -> Runtime:
    """The platform's runtime from the gateway pod's environment (see the module doc)."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_RUNTIME, "")
    if not text.strip():
        raise PlatformError(
            f"${ENV_RUNTIME} is empty: the gateway pod needs the twinhub-runtime ConfigMap's "
            "runtime.json in it (dask-gateway.gateway.env in the chart's values)"
        )
    data = json.loads(text)
    if data.get("deployment") != "kubernetes":
        raise PlatformError(f"${ENV_RUNTIME}: deployment is {data.get('deployment')!r}")
    config = Config(data.get("config", {}))
    db_url = env.get(ENV_DB_URL, "").strip()
    if db_url:
        # In-process only (never written anywhere): the database URI from its Secret.
        config.Twinhub.db_url = sqlalchemy_url(db_url)
    return Runtime(
        state_dir=Path(data.get("state_dir") or "/srv/twinhub/state"),
        config=config,
        ports={k: int(v) for k, v in data.get("ports", {}).items()},
        mode=data.get("mode", "multi-user"),
        public_url=data.get("public_url", ""),
        instance_id=data.get("instance_id", ""),
        deployment="kubernetes",
        service_urls={k: str(v) for k, v in data.get("service_urls", {}).items()},
    )


def pod_metadata(user: str, project: str | None) -> dict[str, dict[str, str]]:
    """KubeClusterConfig overrides naming the user and project on scheduler and worker pods:
    labels are label-safe slugs (as on user servers' pods), annotations the names."""
    labels = podmeta.labels(user, project)
    annotations = podmeta.annotations(user, project)
    return {
        "scheduler_extra_pod_labels": labels,
        "worker_extra_pod_labels": labels,
        "scheduler_extra_pod_annotations": annotations,
        "worker_extra_pod_annotations": annotations,
    }


def kube_cluster_options(
    gw: Any,
    user_projects: Callable[[list[str]], list[str]] | None,
    personal: str,
    refusal: Callable[[str], str | None] | None,
) -> Callable[[Any], Any]:
    """``c.Backend.cluster_options`` as a callable(user): the embedded options (worker cores
    and memory within the limits, the user's projects), whose handler also sets the pods'
    resource limits (= requests: nothing grows past its option) and labels.
    ``user_projects`` None: projects are off, clusters carry no project."""

    def for_user(user: Any) -> Any:
        mine = None
        if user_projects is not None:
            mine = user_projects(list(getattr(user, "groups", None) or [])) or [personal]
        opts = cluster_options(gw, None, mine, refusal)
        embedded = opts.handler

        def handler(options: Any, user: Any) -> dict:
            out = embedded(options, user)
            out["worker_cores_limit"] = out["worker_cores"]
            out["worker_memory_limit"] = out["worker_memory"]
            project = options.project if "project" in options else None
            out.update(pod_metadata(user.name, project))
            return out

        opts.handler = handler
        return opts

    return for_user


def configure(c: Any, environ: Mapping[str, str] | None = None) -> Runtime:
    """Apply the platform's gateway settings to the chart's gateway config ``c`` (after the
    chart's own lines: the backend, its image and auth stay the chart's)."""
    rt = load_runtime(environ)
    gw = settings(rt)
    kc = c.KubeClusterConfig
    c.DaskGateway.backend_class = "twinhub.gateway.kube.TwinhubKubeBackend"
    c.TwinhubKubeBackend.max_clusters_per_user = gw.max_clusters_per_user
    if _processing_enabled(rt):
        # Job clusters (option ``job``) are checked against the processing jobs.
        c.TwinhubKubeBackend.jobs_db_url = rt.db_url

    # distributed 2026 has no dask-scheduler/dask-worker scripts; the preload locks each
    # HTTP server (dashboard, /info, worker logs) to the cluster's certificate holders.
    kc.scheduler_cmd = ["dask", "scheduler", "--preload", DASHBOARD_PRELOAD]
    kc.worker_cmd = ["dask", "worker", "--preload", DASHBOARD_PRELOAD]
    env = dict(kc.environment) if "environment" in kc else {}
    kc.environment = {**env, **DASHBOARD_TLS_ENV}

    # The embedded defaults, unless the chart's values set the scheduler's size.
    if "scheduler_cores" not in kc:
        kc.scheduler_cores = 1
    if "scheduler_memory" not in kc:
        kc.scheduler_memory = GIB
    kc.worker_cores = gw.worker_cores
    kc.worker_memory = int(gw.worker_memory * GIB)
    kc.cluster_max_workers = gw.max_workers_per_cluster
    # What max_workers_per_cluster workers of the largest size and the scheduler need: a
    # ceiling the gateway also checks, whatever the options.
    kc.cluster_max_cores = float(kc.scheduler_cores) + gw.max_workers_per_cluster * float(
        gw.worker_cores_max
    )
    kc.cluster_max_memory = MemoryLimit().validate(None, kc.scheduler_memory) + int(
        gw.max_workers_per_cluster * gw.worker_memory_max * GIB
    )
    kc.idle_timeout = gw.idle_timeout

    accounting = accounting_enabled(rt)
    acct = TwinhubAccounting(config=rt.config)
    personal = acct.personal_project
    if rt.mode == "multi-user" and _projects_enabled(rt):
        user_projects, refusal = _project_hooks(rt)
        c.Backend.cluster_options = kube_cluster_options(
            gw, user_projects, personal, refusal if accounting else None
        )
    else:
        c.Backend.cluster_options = kube_cluster_options(gw, None, personal, None)
    if accounting:
        c.TwinhubGatewayBudget.db_url = rt.db_url  # fails now, naming the Secret, if absent
        c.TwinhubGatewayBudget.grace = acct.grace
        c.TwinhubGatewayBudget.interval = acct.interval
        c.TwinhubGatewayBudget.personal_project = acct.personal_project
    return rt


class _BudgetView:
    """The KubeBackend as TwinhubGatewayBudget.check uses a database backend: its active
    clusters, a reconcile queue and stop_cluster."""

    def __init__(self, backend: KubeBackend) -> None:
        self.backend = backend
        self.db = self
        self.queue = self

    def active_clusters(self) -> list[Any]:
        return [c for c in self.backend.clusters.values() if c.status <= ClusterStatus.RUNNING]

    def put(self, cluster: Any) -> None:
        # Nothing to requeue: the scheduler's next heartbeat asks for its workers again.
        pass

    async def stop_cluster(self, name: str, failed: bool = False) -> None:
        await self.backend.stop_cluster(name, failed=failed)


class _JobView:
    """A cluster as :func:`~twinhub.gateway.backend.job_of` reads it: its options only."""

    def __init__(self, job: str) -> None:
        self.options = {"job": job} if job else {}


class TwinhubKubeBackend(ClusterLimitMixin, KubeBackend):
    """dask-gateway's KubeBackend with the embedded gateway's per-user cluster limit and
    budget checks."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Clusters this replica created that the informer has not reported yet, per user,
        # with their creation time (monotonic): counted too, until reported or CREATED_TTL.
        self._created: dict[str, dict[str, float]] = defaultdict(dict)
        # The job of each such cluster that has one (its option, until the informer has it).
        self._created_jobs: dict[str, str] = {}
        self._twinhub_budget = TwinhubGatewayBudget(parent=self, log=self.log)

    async def setup(self, app: Any) -> None:
        await super().setup(app)
        self.task_pool = TaskPool()
        if self._twinhub_budget.enabled:
            self.task_pool.spawn(self._twinhub_budget.run(_BudgetView(self)))

    async def cleanup(self) -> None:
        if hasattr(self, "task_pool"):
            await self.task_pool.close()
        await super().cleanup()

    async def active_clusters(self, username: str) -> dict[str, str]:
        """The user's active clusters, name -> their ``job`` ("" for none): the informer's,
        and those this replica created that it has not reported yet."""
        listed = {c.name: job_of(c) for c in await self.list_clusters(username=username)}
        created = self._created[username]
        now = time.monotonic()
        for name, at in list(created.items()):
            if name in self.clusters or now - at > CREATED_TTL:
                del created[name]  # counted (or ended) by the informer's cache from now on
                self._created_jobs.pop(name, None)
        if not created:
            self._created.pop(username, None)
        return {**{n: self._created_jobs.get(n, "") for n in created}, **listed}

    async def active_cluster_count(self, username: str) -> int:
        """The user's active clusters that count against the limit (all but the clusters
        of the user's running jobs)."""
        jobs = list((await self.active_clusters(username)).values())
        return await self.counted_clusters(username, jobs)

    async def sync_cluster(self, cluster_name: str) -> None:
        """KubeBackend's cache update from the informer, which also forgets the name among
        the clusters created but not yet seen: whether the object is there or gone, the
        informer now decides (a cluster deleted before its user's next request must not
        count against the limit for the life of the pod)."""
        await super().sync_cluster(cluster_name)
        self._created_jobs.pop(cluster_name, None)
        for user in [u for u, names in self._created.items() if cluster_name in names]:
            del self._created[user][cluster_name]
            if not self._created[user]:
                del self._created[user]

    async def start_cluster(self, user: Any, cluster_options: dict) -> str:
        # Per replica: two requests that land on two gateway replicas at once can both pass
        # (docs/kubernetes.md, "Dask Gateway").
        async with self.cluster_start_lock:
            active = await self.active_clusters(user.name)
            views = [_JobView(job) for job in active.values()]
            await self.check_new_cluster(user.name, cluster_options, views)
            name = await super().start_cluster(user, cluster_options)
            self._created[user.name][name] = time.monotonic()
            job = requested_job(cluster_options)
            if job:
                self._created_jobs[name] = job
            return name

    def requested_workers(self, cluster_name: str) -> int:
        """The cluster's size as its DaskCluster object holds it (``spec.replicas``, which
        every gateway replica's heartbeat handling writes): shared by all replicas, unlike
        the heartbeats one replica happened to receive. 0 when the informer has no object."""
        informer = getattr(self, "informer", None)
        obj = informer.get(cluster_name) if informer is not None else None
        return int(((obj or {}).get("spec") or {}).get("replicas") or 0)

    def capped_heartbeat(self, cluster_name: str, msg: dict) -> dict:
        """A scheduler's heartbeat with the workers it asks for capped at those it has while
        its project is at 100 % (no new workers, as embedded)."""
        active = len(msg.get("active_workers", ()))
        cluster = self.clusters.get(cluster_name)
        grows = cluster is not None and msg.get("count", 0) > active
        if grows and not may_add_workers(self, cluster):
            return {**msg, "count": active}
        return msg

    def scale_refusal(self, cluster: Any, msg: Mapping[str, Any]) -> str | None:
        """Why a scale/adapt request is refused (None: forwarded): the embedded rule
        (growing while the project is at 100 %), the size now read from the cluster object."""
        return message_refusal(self, cluster, msg, lambda c: self.requested_workers(c.name))

    async def on_cluster_heartbeat(self, cluster_name: str, msg: dict) -> None:
        await super().on_cluster_heartbeat(cluster_name, self.capped_heartbeat(cluster_name, msg))

    async def forward_message_to_scheduler(self, cluster: Any, msg: dict) -> None:
        why = self.scale_refusal(cluster, msg)
        if why:
            raise PublicException(why)
        await super().forward_message_to_scheduler(cluster, msg)
