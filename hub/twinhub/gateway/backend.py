"""dask-gateway-server backends of the embedded platform (local processes).

``TwinhubPersonalBackend``: everything runs as the calling user (upstream ``UnsafeLocalBackend``).
``TwinhubLocalBackend``: the gateway runs as root and starts each cluster as the user's OS
account, like upstream ``LocalBackend`` but with its working-directory setup fixed: upstream
does ``paths.extend(path)`` on the certificate paths, which adds each *character* of the path
to the list it then ``chown``\\ s -- chowning ``/`` (and relative one-letter names in the
current directory) to the user.  We create the tree as root and chown exactly the files and
directories we made, leaves first, without following symlinks.

Both backends:
- refuse more than ``max_clusters_per_user`` active clusters per user, not counting job
  clusters while their job runs (option ``job``: allowed only for a running processing job
  of the user, one each; once that job has ended its cluster counts like any other);
- never add the proxy's anonymous dashboard route: dashboards go through
  :mod:`twinhub.gateway.dashboard` (hub login, owner only) over mutual TLS;
- stop a cluster when the process that created it is gone (``kernel_hold.py``);
- tie every scheduler/worker to the gateway process (parent-death signal) and tag it with
  ``TWINHUB_INSTANCE`` so none outlives the platform.

The multi-user backend also caps each account's processes (``TwinhubUserLimits``) in its
schedulers and workers, the same cap as in the user's server and kernels.  Where cgroups are
usable (:mod:`twinhub.spawn.resource_limits`), each scheduler and worker runs in its own cgroup with the
memory and cores its cluster options gave it: workers run without a nanny, so nothing else
would stop a worker growing past its ``worker_memory``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import grp
import os
import pwd
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.local import LocalBackend, UnsafeLocalBackend
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from traitlets import Bool, Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from twinlab.contract import ENV_INSTANCE

from ..db import DatabaseError, session
from ..db.models import ProcessingJob
from ..spawn import charges, resource_limits
from ..spawn.os_accounts import AccountError, check_account, os_account_name
from ..spawn.resource_limits import limit_processes
from . import budget
from .dashboard import add_dashboard_routes
from .kernel_hold import GRACE_ENV

PRELOAD_FILE = str(Path(__file__).with_name("dashboard_tls.py"))
HOLD_PRELOAD_FILE = str(Path(__file__).with_name("kernel_hold.py"))
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


def _alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def job_of(cluster: Any) -> str:
    """The processing job a cluster was made for (its ``job`` option), "" for none."""
    options = getattr(cluster, "options", None) or {}
    job = options.get("job") if isinstance(options, Mapping) else None
    return job if isinstance(job, str) else ""


def requested_job(cluster_options: Any) -> str:
    """The ``job`` a cluster request names ("" for none, or not a string: the options'
    own validation answers that)."""
    job = cluster_options.get("job") if isinstance(cluster_options, Mapping) else None
    return job if isinstance(job, str) else ""


def running_job_owner(db_url: str, job_id: str) -> str | None:
    """The owner of processing job ``job_id`` if it is running now, else None."""
    with session(db_url) as s:
        row = s.get(ProcessingJob, job_id)
        return row.owner if row is not None and row.status == "running" else None


def running_jobs(db_url: str, owner: str, job_ids: set[str]) -> set[str]:
    """Those of ``job_ids`` that are processing jobs of ``owner`` running now."""
    with session(db_url) as s:
        rows = s.execute(
            select(ProcessingJob.id).where(
                ProcessingJob.id.in_(sorted(job_ids)),
                ProcessingJob.owner == owner,
                ProcessingJob.status == "running",
            )
        )
        return {row[0] for row in rows}


class ClusterLimitMixin(LoggingConfigurable):
    """The per-user cluster limit of every twinhub backend (embedded ones and Kubernetes'),
    and the rule of job clusters.

    A cluster whose ``job`` option names a processing job (the job's runner makes it) does
    not count against ``max_clusters_per_user`` while that job runs (the processing service
    has its own per-user job limits); it is allowed only while that job runs, is the user's,
    and has no other active cluster. Once the job has ended (or cannot be checked), a
    cluster still up counts like an interactive one: a runner cannot leave clusters behind
    to escape the limit.
    """

    max_clusters_per_user = Integer(
        2, min=1, help="Most pending or running clusters per user (TwinhubGateway)."
    ).tag(config=True)

    jobs_db_url = Unicode(
        "",
        help="twinhub's database, whose processing_jobs say which job clusters may start "
        "(a running job of the cluster's user). '': every job cluster is refused.",
    ).tag(config=True)

    @property
    def cluster_start_lock(self) -> asyncio.Lock:
        """Held from the count to the creation: two concurrent requests must not both pass."""
        if not hasattr(self, "_start_lock"):
            self._start_lock = asyncio.Lock()
        return self._start_lock

    def refuse_if_at_limit(self, username: str, active: int) -> None:
        """Raise the user-facing refusal when ``active`` clusters are already the most."""
        if active >= self.max_clusters_per_user:
            raise PublicException(
                f"user {username} already has {active} active cluster(s), the most allowed is "
                f"{self.max_clusters_per_user}; shut one down first"
            )

    async def refuse_unless_job_allowed(
        self, username: str, job: str, active_jobs: list[str]
    ) -> None:
        """Raise the refusal unless ``job`` is a running job of ``username`` with no other
        active cluster (``active_jobs``: the jobs of the user's active clusters)."""
        refused = PublicException(f"job {job} is not a running job of {username}")
        if not self.jobs_db_url:
            raise refused
        try:
            owner = await asyncio.to_thread(running_job_owner, self.jobs_db_url, job)
        except (SQLAlchemyError, DatabaseError) as e:
            self.log.warning("processing jobs unreadable (%s): job cluster %s refused", e, job)
            raise PublicException(
                f"job {job} cannot be checked now (the platform's database is unreachable)"
            ) from None
        if owner != username:
            raise refused
        if job in active_jobs:
            raise PublicException(f"job {job} already has an active cluster")

    async def counted_clusters(self, username: str, jobs: list[str]) -> int:
        """How many of ``username``'s active clusters (``jobs``: each one's job, "" for
        none) count against the limit: all but those of the user's running jobs."""
        job_ids = {j for j in jobs if j}
        if not job_ids:
            return len(jobs)
        running: set[str] = set()
        if self.jobs_db_url:
            try:
                running = await asyncio.to_thread(running_jobs, self.jobs_db_url, username, job_ids)
            except (SQLAlchemyError, DatabaseError) as e:
                # Unknown: count them (a refusal the user can retry beats an escape).
                self.log.warning("processing jobs unreadable (%s): job clusters counted", e)
        return sum(1 for j in jobs if j not in running)

    async def check_new_cluster(
        self, username: str, cluster_options: Any, active: list[Any]
    ) -> None:
        """The limits a new cluster of ``username`` must pass, given its ``active`` clusters
        (whatever carries a ``job`` option for :func:`job_of`)."""
        job = requested_job(cluster_options)
        jobs = [job_of(c) for c in active]
        if job:
            await self.refuse_unless_job_allowed(username, job, jobs)
        else:
            self.refuse_if_at_limit(username, await self.counted_clusters(username, jobs))


class TwinhubBackendMixin(ClusterLimitMixin):
    """Platform behaviour shared by the personal and multi-user backends."""

    instance_id = Unicode(
        "", help="The platform instance; set as TWINHUB_INSTANCE in every process started."
    ).tag(config=True)
    dashboard = Bool(True, help="Serve cluster dashboards to their owners.").tag(config=True)
    hold_grace = Float(
        10.0,
        min=0,
        help="Seconds a cluster outlives the process that created it (kernel_hold.py).",
    ).tag(config=True)
    service_name = Unicode(
        "dask-gateway", help="This gateway's JupyterHub service name (OAuth client)."
    ).tag(config=True)
    hub_api_url = Unicode(help="JupyterHub API URL (for OAuth token exchange).").tag(config=True)
    hub_login_url = Unicode(help="Browser-facing URL of the hub's OAuth authorize endpoint.").tag(
        config=True
    )
    process_cgroups = Bool(
        False,
        help="Run each scheduler/worker in a cgroup limited to its cluster's memory and cores "
        "(where cgroups are usable; on unless TwinhubSpawnerConfig.enforce_limits is 'off').",
    ).tag(config=True)

    accounting_dir = Unicode(
        "",
        help="Directory of the accounting charge files (twinhub.spawn.charges), set by the "
        "accounting service's configure_service; '' when accounting is off. When set, each "
        "cluster has a charge file and (with process_cgroups) an accounting cgroup with a "
        "child per scheduler/worker.",
    ).tag(config=True)

    # -- limits ---------------------------------------------------------------------------
    async def start_cluster(self, user: Any, cluster_options: dict) -> str:
        async with self.cluster_start_lock:
            active = [c for c in self.db.list_clusters(username=user.name) if c.is_active()]
            await self.check_new_cluster(user.name, cluster_options, active)
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

    # -- setup: the clusters directory, dashboards ------------------------------------------
    clusters_dir_mode = 0o700  # the multi-user backend's is traversable by users' accounts

    async def setup(self, app: Any) -> None:
        d = self.clusters_directory
        if d and not os.path.isdir(d):
            # Restarted by the supervisor after cleanup() removed it (GatewayPart.prepare,
            # which made it first, runs only at `twinhub up`).
            os.makedirs(os.path.dirname(d), mode=0o755, exist_ok=True)
            os.mkdir(d, self.clusters_dir_mode)
            os.chmod(d, self.clusters_dir_mode)
        await super().setup(app)
        budget.start(self)  # the gateway's own budget checks (gateway/budget.py)
        if self.dashboard:
            add_dashboard_routes(app, self)

    async def _check_cluster_proxied(self, cluster: Any) -> None:
        # Upstream also routes /clusters/<name>/ to the dashboard, open to anyone: only the
        # scheduler's SNI (TLS, certificate-protected) route is added here.
        if not cluster.added_to_proxies:
            await self.proxy.add_route(
                kind="SNI", sni=cluster.name, target=cluster.scheduler_address
            )
            cluster.added_to_proxies = True

    async def _check_cluster_scale(self, cluster: Any) -> None:
        # No new workers while the cluster's project is at 100 % of its CPU budget.
        if not budget.may_add_workers(self, cluster):
            return
        await super()._check_cluster_scale(cluster)

    async def forward_message_to_scheduler(self, cluster: Any, msg: dict) -> None:
        # Scale-ups / adaptive scaling refused (409 with the figures) while at 100 %.
        why = budget.message_refusal(self, cluster, msg)
        if why:
            raise PublicException(why)
        await super().forward_message_to_scheduler(cluster, msg)

    # -- processes ------------------------------------------------------------------------
    def _process_cgroup(self, cluster: Any, name: str) -> resource_limits.ServerCgroup | None:
        """The cgroup of one scheduler/worker, created with its limits; None: advisory."""
        if not self.process_cgroups:
            return None
        support = resource_limits.detect(f"twinhub-{self.instance_id}")
        cfg = cluster.config
        sched = name == "scheduler"
        lim = resource_limits.Limits(
            cpu=float(cfg.scheduler_cores if sched else cfg.worker_cores),
            memory=int(cfg.scheduler_memory if sched else cfg.worker_memory),
        )
        cg = resource_limits.ServerCgroup(support, f"dask-{cluster.name}-{name}", lim)
        if not cg.enforced:
            return None
        try:
            cg.create()
        except OSError as e:
            self.log.warning("No cgroup for %s of cluster %s: %s", name, cluster.name, e)
            return None
        return cg

    # -- accounting -------------------------------------------------------------------------
    def _cluster_uid(self, cluster: Any) -> int:
        account = getattr(self, "_account", None)  # the multi-user backend's accounts
        return account(cluster.username).pw_uid if account is not None else os.getuid()

    def _accounting_cgroup(
        self, cluster: Any, name: str, limits: resource_limits.ServerCgroup | None
    ) -> resource_limits.AccountingCgroup | None:
        """Open the cluster's charge at its first process; the process's accounting leaf
        (a child of the cluster's: the parent keeps what removed children used)."""
        if not self.accounting_dir:
            return None
        group = f"twinhub-{self.instance_id}-acct" if self.process_cgroups else ""
        support = resource_limits.detect_accounting(group) if group else None
        if support is not None and (not support.kind or support.meters_in_limits(limits)):
            # One cgroup per process (v2, or v1 with cpu,cpuacct co-mounted): the limits one;
            # an accounting leaf would lift its CPU limit. Per-process accounting instead.
            support = None
        sid = charges.cluster_source_id(cluster.name)
        top = f"dask-{cluster.name}"
        if charges.read(self.accounting_dir, sid) is None:
            cgroups: dict = {}
            if support is not None:
                acct = resource_limits.AccountingCgroup(support, top, memory=limits is None)
                memory = []
                if limits is not None and "memory" in limits.support.parents:
                    memory = [str(limits.support.parents["memory"] / f"{top}-*")]
                cgroups = acct.charge_cgroups(memory)
            options = getattr(cluster, "options", None) or {}
            project = options.get("project") if isinstance(options, dict) else None
            charge = charges.Charge(
                source_id=sid,
                user=cluster.username,
                project=str(project) if project else None,
                kind="cluster",
                name=cluster.name,
                started_at=datetime.now(UTC),
                cgroups=cgroups,
                uid=self._cluster_uid(cluster),
            )
            charges.write(self.accounting_dir, charge)  # before any leaf exists
        if support is None:
            return None
        acct = resource_limits.AccountingCgroup(support, f"{top}/{name}", memory=limits is None)
        try:
            acct.create()
        except OSError as e:
            self.log.warning("No accounting cgroup for %s of %s: %s", name, cluster.name, e)
            return None
        return acct

    def _charge_pid(self, cluster: Any, pid: int) -> None:
        """Add a scheduler/worker pid to the charge (per-process accounting's roots)."""
        sid = charges.cluster_source_id(cluster.name)
        charge = charges.read(self.accounting_dir, sid) if self.accounting_dir else None
        if charge is not None and charge.ended_at is None:
            pids = [p for p in (charge.extra or {}).get("pids", []) if _alive(p)] + [pid]
            charges.write(
                self.accounting_dir, replace(charge, extra={**charge.extra, "pids": pids})
            )

    def _end_accounting(self, cluster: Any, name: str = "") -> None:
        """Kill what is left in the process's (default: the cluster's) accounting leaves; a
        worker's leaf goes (its parent keeps the usage), a cluster's charge is ended."""
        if not self.accounting_dir:
            return
        sid = charges.cluster_source_id(cluster.name)
        charge = charges.read(self.accounting_dir, sid)
        if charge is None:
            return
        top = [Path(d) for d in (charge.cgroups or {}).get("leaves", [])]
        if name:
            leaves = [d / name for d in top if (d / name).is_dir()]
            resource_limits.kill_cgroup_procs(leaves)
            for d in leaves:
                with contextlib.suppress(OSError):
                    d.rmdir()
            return
        resource_limits.kill_cgroup_procs(top)
        charges.end(self.accounting_dir, sid)
        # The user's last source: what no cgroup held (detached) would go unmetered.
        n = charges.end_leftovers(self.accounting_dir, user=charge.user, uid=charge.uid)
        if n:
            self.log.info("Killed %d leftover process(es) of uid %s", n, charge.uid)

    def _remove_cgroups(self, cluster: Any, name: str = "") -> None:
        """Kill and remove the cgroups of ``name`` (default: every process) of ``cluster``."""
        if not self.process_cgroups:
            return
        support = resource_limits.detect(f"twinhub-{self.instance_id}")
        prefix = f"dask-{cluster.name}-{name}"
        leaves = {
            d.name
            for parent in support.parents.values()
            if parent.is_dir()
            for d in parent.iterdir()
            if d.name == prefix or (not name and d.name.startswith(prefix))
        }
        for leaf in leaves:
            resource_limits.ServerCgroup(support, leaf, resource_limits.Limits()).kill_and_remove()

    async def start_process(self, cluster: Any, cmd: list, env: dict, name: str) -> int:
        # Upstream's, with a preexec that also joins the process's own cgroup, and the log
        # opened by the child once it runs as the cluster's user: the logs dir is the user's,
        # who could swap it for a symlink to anywhere root may write (upstream opens the log
        # as root); as the user, the open can only reach what the user could write anyway.
        cg = await asyncio.to_thread(self._process_cgroup, cluster, name)
        acct = await asyncio.to_thread(self._accounting_cgroup, cluster, name, cg)
        join = cg.join_paths() if cg is not None else []
        join += acct.join_paths() if acct is not None else []
        inner = self.make_preexec_fn(cluster)
        log_path = os.path.join(self.get_logs_directory(cluster.state["workdir"]), name + ".log")

        def preexec() -> None:
            if join:  # while still root
                resource_limits.join_cgroup(join)
            inner()
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)

        proc = await asyncio.create_subprocess_exec(
            *cmd,
            preexec_fn=preexec,
            start_new_session=True,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.to_thread(self._charge_pid, cluster, proc.pid)
        return proc.pid

    async def do_stop_worker(self, worker: Any) -> None:
        await super().do_stop_worker(worker)
        await asyncio.to_thread(self._remove_cgroups, worker.cluster, f"worker-{worker.name}")
        await asyncio.to_thread(self._end_accounting, worker.cluster, f"worker-{worker.name}")

    async def do_stop_cluster(self, cluster: Any) -> None:
        await super().do_stop_cluster(cluster)
        await asyncio.to_thread(self._remove_cgroups, cluster)
        await asyncio.to_thread(self._end_accounting, cluster)

    def get_env(self, cluster: Any) -> dict:
        env = super().get_env(cluster)
        cert, key = self.get_tls_paths(cluster)
        env.update(
            {
                ENV_INSTANCE: self.instance_id,
                # HTTP servers of schedulers and workers: TLS with the cluster's certificate;
                # dashboard_tls.py then requires a client certificate.
                "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TLS__CERT": cert,
                "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TLS__KEY": key,
                "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TLS__CA_FILE": cert,
                # Spill and scratch files stay in the private, removed-at-stop cluster dir.
                "DASK_TEMPORARY_DIRECTORY": cluster.state["workdir"],
                GRACE_ENV: str(self.hold_grace),
            }
        )
        return env

    def get_scheduler_command(self, cluster: Any) -> list[str]:
        cmd = super().get_scheduler_command(cluster)
        return [*cmd, "--preload", PRELOAD_FILE, "--preload", HOLD_PRELOAD_FILE]

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

    clusters_dir_mode = 0o711

    def _account(self, username: str) -> pwd.struct_passwd:
        try:
            name = os_account_name(username, self.account_prefix)
            if self.state_dir:  # an account of another instance on this host is not theirs
                check_account(username, self.state_dir, self.account_prefix)
        except (ValueError, AccountError) as e:  # 'service:x' (a service's token): no account
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
    state_dir = Unicode(
        "",
        help="The platform's state dir: only OS accounts it recorded (accounts.json) run "
        "clusters. Empty: any account of the right name (tests without a platform).",
    ).tag(config=True)
    max_user_processes = Integer(
        0, min=0, help="RLIMIT_NPROC of each account's Dask processes (TwinhubUserLimits)."
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
        nproc = self.max_user_processes

        def switch_user() -> None:
            if nproc:  # while still root; counted per account with its server and kernels
                limit_processes(nproc)
            os.setgid(gid)
            try:
                os.setgroups(groups)
            except OSError as e:
                print(f"Failed to set groups {e}", file=sys.stderr)
            os.setuid(uid)

        return self._preexec(cluster, switch_user)
