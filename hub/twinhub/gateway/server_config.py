"""Configuration of the ``dask-gateway-server`` process, built from the platform's runtime.

Called from the generated ``<state>/run/dask_gateway_config.py``; reads secrets from their
0600 files in-process, so no token appears on a command line or in the environment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dask_gateway_server.options import Float, Integer, Options, Select, String
from sqlalchemy.exc import SQLAlchemyError

from twinlab.contract import ENV_INSTANCE

from ..db.schema import DatabaseError
from ..process.runtime import Runtime
from ..services.accounting.config import TwinhubAccounting
from ..services.accounting.config import is_enabled as accounting_enabled
from ..spawn.resource_limits import TwinhubUserLimits
from . import SECRET_NAME, SERVICE_NAME, SERVICE_PREFIX, clusters_dir, port, settings

GIB = 2**30
log = logging.getLogger("twinhub.gateway")


class ProjectSelect(Select):
    """The ``project`` option: one of the user's projects, refused by name otherwise."""

    def validate(self, x: Any) -> str:
        if not isinstance(x, str) or x not in self.options:
            raise ValueError(
                f"project {x!r} is not one of your projects; allowed: {', '.join(self.options)}"
            )
        return x


def cluster_options(
    gw: Any,
    user_env: Callable[[str], dict] | None = None,
    projects: list[str] | None = None,
    refusal: Callable[[str], str | None] | None = None,
) -> Any:
    """What a user may choose per cluster (``gateway.cluster_options()``), within the limits.

    ``user_env(username)``: the whole environment of that user's clusters (it replaces
    ``ClusterConfig.environment``), e.g. with their own S3 keys. ``projects``: the projects
    the cluster may be charged to (an option ``project``, the first by default; the backend
    reads ``cluster.options["project"]``); ``refusal(project)``: why a new cluster may not be
    charged to it now (a budget used up), or None.
    """

    def to_config(options: Any, user: Any) -> dict:
        if refusal is not None and "project" in options:
            why = refusal(options.project)
            if why:
                raise ValueError(why)  # the gateway answers it to the user
        out = {
            "worker_cores": options.worker_cores,
            "worker_threads": options.worker_cores,
            "worker_memory": int(options.worker_memory * GIB),
        }
        if user_env is not None:
            out["environment"] = user_env(user.name)
        return out

    fields: list[Any] = [
        Integer(
            "worker_cores",
            default=gw.worker_cores,
            min=1,
            max=gw.worker_cores_max,
            label="Worker cores",
        ),
        Float(
            "worker_memory",
            default=gw.worker_memory,
            min=0.25,
            max=gw.worker_memory_max,
            label="Worker memory (GiB)",
        ),
    ]
    if projects:
        fields.append(ProjectSelect("project", options=list(projects), label="Project"))
    # The processing job a runner makes its cluster for ("": an interactive cluster). The
    # backend checks it (ClusterLimitMixin.check_new_cluster): a running job of the user's.
    fields.append(String("job", default="", label="Processing job"))
    return Options(*fields, handler=to_config)


def user_cluster_options(
    gw: Any,
    user_env: Callable[[str], dict] | None,
    user_projects: Callable[[list[str]], list[str]],
    personal: str,
    refusal: Callable[[str], str | None] | None = None,
) -> Callable[[Any], Any]:
    """``c.Backend.cluster_options`` as a callable(user): the options above with the user's
    projects (``user_projects(groups)``, read at each call: admins change them at run time;
    ``personal`` when in none), like the server they charge (docs/projects.md)."""

    def for_user(user: Any) -> Any:
        mine = user_projects(list(getattr(user, "groups", None) or []))
        return cluster_options(gw, user_env, mine or [personal], refusal)

    return for_user


def _project_hooks(rt: Runtime) -> tuple[Callable[[list[str]], list[str]], Any]:
    """(groups -> the user's projects, project -> budget refusal or None), from the same
    catalog and budget states as the hub's spawn checks."""
    state: dict[str, Any] = {}

    def catalog() -> Any:
        if "catalog" not in state:
            # Imported at the first cluster request: ~0.3 s the gateway's start need not wait
            # for (twinhub up waits for the gateway).
            from ..services.projects.catalog import ProjectCatalog

            state["catalog"] = ProjectCatalog.from_runtime(rt)
        return state["catalog"]

    def user_projects(groups: list[str]) -> list[str]:
        cat = catalog()
        try:
            return list(cat.effective(groups).projects)
        except (SQLAlchemyError, DatabaseError) as e:
            # Admins' run-time projects unreadable now: the configured ones still hold.
            log.warning("projects changed at run time unreadable (%s): configured ones only", e)
            return sorted(set(groups) & set(cat.configured))

    def refusal(project: str) -> str | None:
        # Imported at the first cluster request, as above.
        from ..services.accounting import enforce

        try:
            return enforce.spawn_refusal(rt.db_url, project, ("cpu_hours",))
        except (SQLAlchemyError, DatabaseError) as e:
            # The hub's running checks still stop what goes over; a cluster is not refused
            # for a database hiccup.
            log.warning("budget states unreadable (%s): cluster of %s not checked", e, project)
            return None

    return user_projects, refusal


def configure_gateway(c: Any, state_dir: str | Path) -> Runtime:
    """Apply the platform's gateway settings to dask-gateway-server's config object ``c``."""
    rt = Runtime.load(state_dir)
    gw = settings(rt)
    bin_dask = rt.bin("dask")

    # The private API listens on a free loopback port; the proxy (Go binary started by the
    # gateway) serves HTTP and the schedulers' TLS (SNI-routed) on the allocated port.
    c.DaskGateway.address = "127.0.0.1:0"
    c.Proxy.address = f"127.0.0.1:{port(rt)}"
    c.Proxy.prefix = SERVICE_PREFIX
    c.DaskGateway.log_level = "INFO"

    c.DaskGateway.authenticator_class = "twinhub.gateway.auth.TwinhubHubAuthenticator"
    c.JupyterHubAuthenticator.jupyterhub_api_url = rt.hub_api_url
    c.JupyterHubAuthenticator.jupyterhub_api_token = rt.secret(SECRET_NAME)
    # Requires access:services!service=dask-gateway on every token (hub RBAC decides).
    c.JupyterHubAuthenticator.jupyterhub_service_name = SERVICE_NAME

    if rt.mode == "multi-user":
        c.DaskGateway.backend_class = "twinhub.gateway.backend.TwinhubLocalBackend"
    else:
        c.DaskGateway.backend_class = "twinhub.gateway.backend.TwinhubPersonalBackend"
    c.TwinhubLocalBackend.account_prefix = rt.config.get("Twinhub", {}).get("user_prefix", "twin-")
    c.TwinhubLocalBackend.max_user_processes = TwinhubUserLimits(config=rt.config).max_processes
    enforce = rt.config.get("TwinhubSpawnerConfig", {}).get("enforce_limits", "auto")
    c.TwinhubBackendMixin.process_cgroups = enforce != "off"
    c.LocalBackend.clusters_directory = str(clusters_dir(rt))
    # Only what the dask processes need; notably not the gateway's own secrets.
    c.LocalBackend.inherited_environment = ["PATH", "LANG", "LC_ALL"]
    c.DBBackendBase.cluster_start_timeout = gw.cluster_start_timeout
    c.DBBackendBase.worker_start_timeout = gw.cluster_start_timeout
    # The in-memory database makes the gateway stop every cluster when it stops.
    c.DBBackendBase.db_url = "sqlite:///:memory:"
    c.DBBackendBase.stop_clusters_on_shutdown = True
    # Fast feedback on a small machine: clusters report every 5 s, checks every 10 s.
    c.DBBackendBase.cluster_heartbeat_period = 5
    c.DBBackendBase.cluster_status_period = 10
    c.DBBackendBase.worker_status_period = 10

    c.TwinhubBackendMixin.instance_id = rt.instance_id
    c.TwinhubLocalBackend.state_dir = str(rt.state_dir)
    c.TwinhubBackendMixin.max_clusters_per_user = gw.max_clusters_per_user
    if _processing_enabled(rt):
        # Job clusters (option ``job``) are checked against the processing jobs.
        c.TwinhubBackendMixin.jobs_db_url = rt.db_url
    c.TwinhubBackendMixin.dashboard = gw.dashboard
    c.TwinhubBackendMixin.hold_grace = gw.orphan_grace
    c.TwinhubBackendMixin.service_name = SERVICE_NAME
    c.TwinhubBackendMixin.hub_api_url = rt.hub_api_url
    c.TwinhubBackendMixin.hub_login_url = rt.url.rstrip("/") + "/hub/api/oauth2/authorize"

    # distributed 2026 has no dask-scheduler / dask-worker scripts: use `dask <command>`.
    c.ClusterConfig.scheduler_cmd = [bin_dask, "scheduler"]
    # No nanny: one process per worker, which dies with the gateway (see backend.py).
    c.ClusterConfig.worker_cmd = [bin_dask, "worker", "--no-nanny"]
    c.ClusterConfig.worker_cores = gw.worker_cores
    c.ClusterConfig.worker_memory = int(gw.worker_memory * GIB)
    c.ClusterConfig.scheduler_cores = 1
    c.ClusterConfig.scheduler_memory = GIB
    c.ClusterConfig.cluster_max_workers = gw.max_workers_per_cluster
    c.ClusterConfig.idle_timeout = gw.idle_timeout
    base_env = {ENV_INSTANCE: rt.instance_id}
    c.ClusterConfig.environment = base_env
    # The object store's modules add ~0.2 s to the gateway's start (which `twinhub up`
    # waits for); they are needed only once a user asks for a cluster.
    from .. import objectstore

    def user_env(username: str) -> dict[str, str]:
        # That user's object-store keys and nobody else's (created at their first spawn).
        return {**base_env, **objectstore.cluster_environment(rt, username)}

    if rt.mode == "multi-user" and _projects_enabled(rt):
        # Charged like servers: a project option of the user's projects (docs/projects.md).
        user_projects, refusal = _project_hooks(rt)
        personal = TwinhubAccounting(config=rt.config).personal_project
        c.Backend.cluster_options = user_cluster_options(
            gw, user_env, user_projects, personal, refusal if accounting_enabled(rt) else None
        )
    else:
        c.Backend.cluster_options = cluster_options(gw, user_env)
    if accounting_enabled(rt):
        # Where the backend writes each cluster's charge file (twinhub.spawn.charges).
        c.TwinhubBackendMixin.accounting_dir = str(rt.path("run/accounting/charges"))
        # The gateway's own budget checks (gateway/budget.py): clusters over budget stop
        # even when their user runs no server.
        acct = TwinhubAccounting(config=rt.config)
        c.TwinhubGatewayBudget.db_url = rt.db_url
        c.TwinhubGatewayBudget.grace = acct.grace
        c.TwinhubGatewayBudget.interval = acct.interval
        c.TwinhubGatewayBudget.personal_project = acct.personal_project
    return rt


def _projects_enabled(rt: Runtime) -> bool:
    # TwinhubProjects.enabled, read from the raw config: importing the projects package costs
    # the gateway's start ~0.3 s (see _project_hooks). Unset: on in multi-user mode.
    value = rt.config.get("TwinhubProjects", {}).get("enabled")
    return True if value is None else bool(value)


def _processing_enabled(rt: Runtime) -> bool:
    # TwinhubProcessing.enabled (twinhub.services.processing.config.is_enabled), read from the
    # raw config: the gateway needs no other processing option, and one given on the command
    # line reaches it unparsed when the platform runs without the processing part.
    value = rt.config.get("TwinhubProcessing", {}).get("enabled")
    if value is None:
        return rt.mode != "personal" or rt.kubernetes
    return bool(value)
