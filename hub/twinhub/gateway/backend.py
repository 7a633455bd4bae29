"""dask-gateway-server backends of the embedded platform (local processes).

``TwinhubPersonalBackend``: everything runs as the calling user (upstream ``UnsafeLocalBackend``).
``TwinhubLocalBackend``: the gateway runs as root and starts each cluster as the user's OS
account, like upstream ``LocalBackend`` but with its working-directory setup fixed: upstream
does ``paths.extend(path)`` on the certificate paths, which adds each *character* of the path
to the list it then ``chown``\\ s -- chowning ``/`` (and relative one-letter names in the
current directory) to the user.  We create the tree as root and chown exactly the files and
directories we made, leaves first, without following symlinks.

Both backends:
- refuse more than ``max_clusters_per_user`` active clusters per user;
- never add the proxy's anonymous dashboard route: dashboards go through
  :mod:`twinhub.gateway.dashboard` (hub login, owner only) over mutual TLS;
- tie every scheduler/worker to the gateway process (parent-death signal) and tag it with
  ``TWINHUB_INSTANCE`` so none outlives the platform.
"""

from __future__ import annotations

import asyncio
import ctypes
import grp
import os
import pwd
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.local import LocalBackend, UnsafeLocalBackend
from traitlets import Bool, Integer, Unicode
from traitlets.config import LoggingConfigurable

PRELOAD_FILE = str(Path(__file__).with_name("dashboard_tls.py"))
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this (child) process when the gateway dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except OSError:  # not Linux: rely on the gateway's own shutdown
        pass
    if os.getppid() == 1:  # the gateway died before prctl took effect
        os._exit(1)


class TwinhubBackendMixin(LoggingConfigurable):
    """Platform behaviour shared by the personal and multi-user backends."""

    instance_id = Unicode(
        "", help="The platform instance; set as TWINHUB_INSTANCE in every process started."
    ).tag(config=True)
    max_clusters_per_user = Integer(
        2, min=1, help="Most pending or running clusters per user."
    ).tag(config=True)
    dashboard = Bool(True, help="Serve cluster dashboards to their owners.").tag(config=True)
    service_name = Unicode(
        "dask-gateway", help="This gateway's JupyterHub service name (OAuth client)."
    ).tag(config=True)
    hub_api_url = Unicode(help="JupyterHub API URL (for OAuth token exchange).").tag(config=True)
    hub_login_url = Unicode(help="Browser-facing URL of the hub's OAuth authorize endpoint.").tag(
        config=True
    )

    # -- limits ---------------------------------------------------------------------------
    async def start_cluster(self, user: Any, cluster_options: dict) -> str:
        # Serialised: two concurrent requests must not both pass the count.
        if not hasattr(self, "_start_lock"):
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            active = [c for c in self.db.list_clusters(username=user.name) if c.is_active()]
            if len(active) >= self.max_clusters_per_user:
                raise PublicException(
                    f"user {user.name} already has {len(active)} active cluster(s), the most "
                    f"allowed is {self.max_clusters_per_user}; shut one down first"
                )
            return await super().start_cluster(user, cluster_options)

    async def cleanup(self) -> None:
        await super().cleanup()  # stops every cluster, removing its working directory
        # Leave nothing behind: the clusters directory, and the shared dir holding it when
        # that is now empty (it may live outside the state dir, e.g. /var/lib/twinhub/<id>).
        if self.clusters_directory:
            for d in (self.clusters_directory, os.path.dirname(self.clusters_directory)):
                try:
                    os.rmdir(d)
                except OSError:
                    break  # not empty (or gone): keep it and its parent

    # -- dashboards -------------------------------------------------------------------------
    async def setup(self, app: Any) -> None:
        await super().setup(app)
        if self.dashboard:
            from .dashboard import add_dashboard_routes

            add_dashboard_routes(app, self)

    async def _check_cluster_proxied(self, cluster: Any) -> None:
        # Upstream also routes /clusters/<name>/ to the dashboard, open to anyone: only the
        # scheduler's SNI (TLS, certificate-protected) route is added here.
        if not cluster.added_to_proxies:
            await self.proxy.add_route(
                kind="SNI", sni=cluster.name, target=cluster.scheduler_address
            )
            cluster.added_to_proxies = True

    # -- processes ------------------------------------------------------------------------
    def get_env(self, cluster: Any) -> dict:
        env = super().get_env(cluster)
        cert, key = self.get_tls_paths(cluster)
        env.update(
            {
                "TWINHUB_INSTANCE": self.instance_id,
                # HTTP servers of schedulers and workers: TLS with the cluster's certificate;
                # dashboard_tls.py then requires a client certificate.
                "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TLS__CERT": cert,
                "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TLS__KEY": key,
                "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TLS__CA_FILE": cert,
                # Spill and scratch files stay in the private, removed-at-stop cluster dir.
                "DASK_TEMPORARY_DIRECTORY": cluster.state["workdir"],
            }
        )
        return env

    def get_scheduler_command(self, cluster: Any) -> list[str]:
        return [*super().get_scheduler_command(cluster), "--preload", PRELOAD_FILE]

    def get_worker_command(self, cluster: Any, worker_name: str, scheduler_address=None) -> list:
        cmd = super().get_worker_command(cluster, worker_name, scheduler_address)
        # A worker whose scheduler is gone exits instead of waiting forever.
        return [*cmd, "--preload", PRELOAD_FILE, "--death-timeout", "60"]

    def _preexec(self, cluster: Any, switch_user: Callable[[], None] | None) -> Callable[[], None]:
        workdir = cluster.state["workdir"]

        def preexec() -> None:
            if switch_user is not None:
                switch_user()
            # After any setuid: the kernel clears the parent-death signal on credential change.
            _die_with_parent()
            os.chdir(workdir)

        return preexec


class TwinhubPersonalBackend(TwinhubBackendMixin, UnsafeLocalBackend):
    """Clusters as local processes of the calling user (personal mode)."""

    def make_preexec_fn(self, cluster: Any) -> Callable[[], None]:
        return self._preexec(cluster, None)


class TwinhubLocalBackend(TwinhubBackendMixin, LocalBackend):
    """Clusters as local processes of each user's OS account (multi-user mode, gateway as root)."""

    def _account(self, username: str) -> pwd.struct_passwd:
        from ..accounts import os_account_name

        try:
            name = os_account_name(username, self.account_prefix)
        except ValueError as e:  # e.g. 'service:x' (a hub service's token): no OS account
            raise PublicException(f"cannot run clusters for {username!r}: {e}") from None
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise PublicException(
                f"no OS account {name!r} for user {username}: start your server first"
            ) from None

    account_prefix = Unicode(
        "twin-", help="Prefix of users' OS accounts (Twinhub.user_prefix)."
    ).tag(config=True)

    async def start_cluster(self, user: Any, cluster_options: dict) -> str:
        self._account(user.name)  # refuse now (422) rather than fail in the background
        return await super().start_cluster(user, cluster_options)

    def set_file_permissions(self, paths: list[str], username: str) -> None:
        pw = self._account(username)
        for p in paths:
            os.chown(p, pw.pw_uid, pw.pw_gid, follow_symlinks=False)

    def setup_working_directory(self, cluster: Any) -> str:
        if not self.clusters_directory:
            raise PublicException("LocalBackend.clusters_directory is not set")
        pw = self._account(cluster.username)  # fail before creating anything
        workdir = os.path.join(self.clusters_directory, cluster.name)
        certsdir = self.get_certs_directory(workdir)
        logsdir = self.get_logs_directory(workdir)
        os.mkdir(workdir, 0o700)  # a fresh name: an existing entry is an error
        os.mkdir(certsdir, 0o700)
        os.mkdir(logsdir, 0o700)
        cert_path, key_path = self._get_tls_paths(workdir)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        for path, data in [(cert_path, cluster.tls_cert), (key_path, cluster.tls_key)]:
            with os.fdopen(os.open(path, flags, 0o600), "wb") as f:
                f.write(data)
        # Leaves first, workdir last: until then root owns the tree and the user cannot
        # swap anything in it for a symlink.
        self.set_file_permissions(
            [cert_path, key_path, certsdir, logsdir, workdir], cluster.username
        )
        self.log.debug(
            "Working directory %s for cluster %s (uid %d)", workdir, cluster.name, pw.pw_uid
        )
        return workdir

    def get_env(self, cluster: Any) -> dict:
        env = super().get_env(cluster)
        pw = self._account(cluster.username)
        env.update({"USER": pw.pw_name, "LOGNAME": pw.pw_name, "HOME": pw.pw_dir})
        return env

    def make_preexec_fn(self, cluster: Any) -> Callable[[], None]:
        pw = self._account(cluster.username)
        uid, gid = pw.pw_uid, pw.pw_gid
        groups = [g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem]

        def switch_user() -> None:
            os.setgid(gid)
            try:
                os.setgroups(groups)
            except OSError as e:
                print(f"Failed to set groups {e}", file=sys.stderr)
            os.setuid(uid)

        return self._preexec(cluster, switch_user)
