"""Dask Gateway as a platform service.

The supervisor runs ``dask-gateway-server`` as the component ``dask-gateway``; the hub knows it
as the *external* service ``dask-gateway`` (its proxy serves ``/services/dask-gateway/`` and
the schedulers' TLS connections on the same port).  In user servers ``dask_gateway.Gateway()``
needs no arguments: the address and JupyterHub auth come from ``DASK_GATEWAY__*`` variables.

- ``personal`` mode: clusters run as the calling user (dask-gateway's ``UnsafeLocalBackend``).
- ``multi-user`` mode: the gateway runs as root and starts each cluster as the user's OS
  account (:class:`twinhub.gateway.backend.TwinhubLocalBackend`, which fixes upstream's chown
  bug), in a per-cluster 0700 directory under ``Runtime.shared_dir``.

A cluster made with ``shutdown_on_close=True`` stops when the process that made it ends, however
it ends (a lease held by the client, :mod:`twinhub.gateway.kernel_hold`); users' servers load
the client side through ``DASK_GATEWAY__AUTH__TYPE`` (``twinlab.clusters.client``), and the
Dask sidebar (dask-labextension) makes gateway clusters.

Kubernetes: the dask-gateway chart runs the gateway (its own pods, its KubeBackend); the hub
registers it at its in-cluster address (``rt.service_urls["dask-gateway"]``, the chart's
traefik with ``gateway.prefix`` /services/dask-gateway) and points servers at it and at its
TLS proxy (``service_urls["dask-gateway-proxy"]``).

Dashboards are reachable only through the gateway after hub (OAuth or token) authentication,
and only by the cluster's owner; the schedulers' and workers' own HTTP ports require the
cluster's TLS client certificate (see :mod:`twinhub.gateway.dashboard`). On Kubernetes
(:mod:`twinhub.gateway.kube`) the schedulers' and workers' HTTP servers require that
certificate too, and no twinhub route serves dashboards: the dask-gateway controller's own
Traefik route to them gets no answer (docs/kubernetes.md, "Dask Gateway").
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Integer, default, validate
from traitlets.config import Configurable

from twinlab.contract import ENV_INSTANCE

from ..plugin import Part, Say
from ..process.components import Component
from ..process.runtime import Runtime, world_reachable
from ..process.supervisor import free_port, http_ok
from ..services.registration import grant_access, register_service
from .hooks import make_post_stop_hook

SERVICE_NAME = "dask-gateway"
SERVICE_PREFIX = f"/services/{SERVICE_NAME}"
SECRET_NAME = "service-dask-gateway"
CONFIG_FILE = "run/dask_gateway_config.py"
ACCESS_SCOPE = f"access:services!service={SERVICE_NAME}"
CLIENT_AUTH = "twinlab.clusters.client.HubAuth"
# Scopes JupyterHub gives $JUPYTERHUB_API_TOKEN of a server by default (its 'server' role);
# the gateway's scope is added to them.


class TwinhubGateway(Configurable):
    """Dask clusters for platform users, through Dask Gateway."""

    enabled = Bool(True, help="Run the Dask Gateway service.").tag(config=True)

    worker_cores = Integer(
        1, min=1, help="Default CPU cores (and threads) of one Dask worker."
    ).tag(config=True)
    worker_cores_max = Integer(
        help="Most CPU cores a user may request per worker. Default: the machine's cores."
    ).tag(config=True)

    worker_memory = Float(2.0, help="Default memory of one Dask worker, in GiB.").tag(config=True)
    worker_memory_max = Float(8.0, help="Most memory a user may request per worker, in GiB.").tag(
        config=True
    )

    max_workers_per_cluster = Integer(
        4, min=0, help="Most workers one cluster may scale to (0: no workers at all)."
    ).tag(config=True)

    max_clusters_per_user = Integer(
        2, min=1, help="Most clusters one user may have pending or running at once."
    ).tag(config=True)

    idle_timeout = Float(
        1800.0,
        min=0,
        help="Seconds after which a cluster with no work is shut down (0: never).",
    ).tag(config=True)

    orphan_grace = Float(
        10.0,
        min=0,
        help="Seconds a cluster made with shutdown_on_close=True (the default) outlives the "
        "kernel or process that created it, however that ended (killed, crashed, shut down).",
    ).tag(config=True)

    cluster_start_timeout = Float(
        120.0, help="Seconds to wait for a scheduler or worker to start before failing it."
    ).tag(config=True)

    dashboard = Bool(
        True,
        help="Serve cluster dashboards at /services/dask-gateway/clusters/<name>/status "
        "(owner only, after hub login).",
    ).tag(config=True)

    @default("worker_cores_max")
    def _default_cores_max(self) -> int:
        return os.cpu_count() or 1

    @validate("worker_cores_max")
    def _check_cores_max(self, proposal: Any) -> int:
        if proposal.value < 1:
            raise ValueError(f"TwinhubGateway.worker_cores_max must be >= 1, got {proposal.value}")
        return proposal.value

    def check(self) -> None:
        """Refuse inconsistent limits with a message naming the option."""
        if self.worker_cores > self.worker_cores_max:
            raise ValueError(
                f"TwinhubGateway.worker_cores ({self.worker_cores}) exceeds "
                f"worker_cores_max ({self.worker_cores_max})"
            )
        if not 0 < self.worker_memory <= self.worker_memory_max:
            raise ValueError(
                f"TwinhubGateway.worker_memory ({self.worker_memory} GiB) must be > 0 and "
                f"<= worker_memory_max ({self.worker_memory_max} GiB)"
            )


def settings(rt: Runtime) -> TwinhubGateway:
    gw = TwinhubGateway(config=rt.config)
    gw.check()
    return gw


def port(rt: Runtime) -> int:
    try:
        return rt.ports[SERVICE_NAME]
    except KeyError:
        raise RuntimeError(
            f"no port allocated for {SERVICE_NAME!r} in runtime.json (ports: {sorted(rt.ports)})"
        ) from None


def base_url(rt: Runtime) -> str:
    """Where the hub registers the gateway: loopback, or the chart's in-cluster Service."""
    if rt.kubernetes:
        return rt.service_url(SERVICE_NAME).rstrip("/")
    return f"http://127.0.0.1:{port(rt)}"


def proxy_address(rt: Runtime) -> str:
    """The gateway's scheduler proxy (``gateway://``: TLS connections of Dask clients)."""
    if rt.kubernetes:
        return rt.service_url(f"{SERVICE_NAME}-proxy")
    return f"gateway://127.0.0.1:{port(rt)}"


def gateway_url(rt: Runtime) -> str:
    """The gateway (API, dashboards) as the platform's own processes and, in Kubernetes,
    user servers reach it: straight, not through the proxy."""
    return base_url(rt) + SERVICE_PREFIX


def clusters_dir(rt: Runtime) -> Path:
    """Parent of the per-cluster working directories."""
    if rt.mode == "multi-user":
        # OS accounts must traverse it: it lives in the world-traversable shared dir.
        return rt.shared_dir / "dask-clusters"
    return rt.path("run", "dask-clusters")


def config_path(rt: Runtime) -> Path:
    return rt.path(CONFIG_FILE)


__all__ = [
    "TwinhubGateway",
    "clusters_dir",
    "gateway_url",
    "settings",
]


def client_environment(rt: Runtime) -> dict[str, str]:
    """What makes ``dask_gateway.Gateway()`` work with no arguments (dask config from the
    environment): in user servers, and in processing jobs' runners."""
    return {
        "DASK_GATEWAY__ADDRESS": gateway_url(rt),
        "DASK_GATEWAY__PUBLIC_ADDRESS": rt.url.rstrip("/") + SERVICE_PREFIX,
        "DASK_GATEWAY__PROXY_ADDRESS": proxy_address(rt),
        # JupyterHub auth, whose module also fixes dask-gateway's client (a refused cluster
        # deadlocked the others) and leases clusters to the process that made them
        # (twinlab/clusters/client.py).
        "DASK_GATEWAY__AUTH__TYPE": CLIENT_AUTH,
    }


class GatewayPart(Part):
    """Dask Gateway at /services/dask-gateway/."""

    name = "dask-gateway"
    settings = (TwinhubGateway,)
    start_rank = 60

    def plan(self, rt: Runtime) -> None:
        rt.ports[SERVICE_NAME] = free_port()

    def prepare(self, rt: Runtime, say: Say) -> None:
        """Write the gateway's config file and create its cluster directory (before start)."""
        settings(rt)  # fail early, naming the bad option
        d = clusters_dir(rt)
        if rt.mode == "multi-user":
            # root-owned, traversable but not listable: users reach only their own 0700 dirs.
            d.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            d.mkdir(mode=0o711, exist_ok=True)
            if d.is_symlink() or d.stat().st_uid != os.geteuid():
                raise RuntimeError(f"{d} must be a directory owned by the gateway's user (root)")
            d.chmod(0o711)
            if not world_reachable(d):
                raise RuntimeError(
                    f"{d} is not reachable by users' OS accounts: every directory above it needs "
                    "o+x (set Twinhub.shared_dir to a world-traversable place)"
                )
        else:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Clusters never survive a gateway restart (in-memory database): a directory left here
        # is from a gateway that was killed, and holds that cluster's key.
        for stale in d.iterdir():
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
        f = config_path(rt)
        f.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        f.write_text(
            "# Generated by twinhub (twinhub.gateway.GatewayPart.prepare) at every start: do not edit.\n"
            "# Set c.TwinhubGateway.* in twinhub_config.py instead.\n"
            "# ruff: noqa: F821  (c is injected by dask-gateway-server's config loader)\n"
            "from twinhub.gateway.server_config import configure_gateway\n\n"
            f"configure_gateway(c, {str(rt.state_dir)!r})\n"
        )
        f.chmod(0o600)

    def components(self, rt: Runtime) -> list[Component]:
        if not settings(rt).enabled:
            return []
        return [
            Component(
                name=SERVICE_NAME,
                argv=[rt.bin("dask-gateway-server"), "-f", str(config_path(rt))],
                env={
                    "TWINHUB_STATE": str(rt.state_dir),
                    ENV_INSTANCE: rt.instance_id,
                    # the proxy binary it starts reads PATH for nothing, but Python needs one
                    "PATH": f"{rt.prefix / 'bin'}:/usr/bin:/bin",
                },
                port=port(rt),
                ready_url=f"{gateway_url(rt)}/api/health",
                # The Go proxy answers 404 until it has loaded its routes: only a 200 is ready.
                ready=functools.partial(http_ok, f"{gateway_url(rt)}/api/health"),
                # No dependency on the hub (asked per request). The hub waits up to 30 s at its
                # startup for external services that do not answer: start this one before or
                # right after the hub.
            )
        ]

    def configure_hub(self, c: Any, rt: Runtime) -> None:
        """Register the gateway with the hub and point user servers at it."""
        gw = settings(rt)
        if not gw.enabled or (rt.kubernetes and SERVICE_NAME not in rt.service_urls):
            return  # Kubernetes: the chart's dask-gateway is off
        register_service(c, SERVICE_NAME, base_url(rt), rt.secret(SECRET_NAME))
        # Users reach it, and $JUPYTERHUB_API_TOKEN of a user server is accepted by it.
        grant_access(c, SERVICE_NAME)

        public = rt.url.rstrip("/") + SERVICE_PREFIX
        c.Spawner.environment.update(
            {
                **client_environment(rt),
                # The Dask sidebar (dask-labextension) makes gateway clusters, owned by the
                # user (the server's own token); scaling from the sidebar within the limits.
                "DASK_LABEXTENSION__FACTORY__MODULE": "dask_gateway",
                "DASK_LABEXTENSION__FACTORY__CLASS": "GatewayCluster",
            }
        )
        c.Spawner.post_stop_hook = make_post_stop_hook(gateway_url(rt), ACCESS_SCOPE)
        # Listed in the servers' $TWINHUB_SERVICES (both spawners read this section). Merge,
        # never assign: other parts add theirs the same way.
        c.TwinhubSpawner.services.update({SERVICE_NAME: public + "/"})
