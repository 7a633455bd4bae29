"""Job backends: start a job's runner (``python -m twinlab.processing.runner``) as its user.

Chosen by class like dask-gateway's backends (``TwinhubProcessing.backend_class``):

- :class:`LocalJobBackend` (embedded): a process in a new session, as the user's OS account
  in multi-user mode (the same account, groups and process cap as their server and Dask
  workers), as the platform's user in personal mode. It outlives a restart of the service;
  its handle (pid, start time, uid) lets the next service process tell it from a reused pid.
- :class:`KubeJobBackend` (Kubernetes): a pod per job, as the user image's uid, no service
  account token, the job's secrets in a Secret of its own.

Whatever the backend, the runner gets the environment of :func:`runner_environment`: the
job's id and secret, the service's internal URL, a short-lived hub token *of the user*
(:mod:`.hubtokens`), that user's storage keys (nobody else's), the gateway's client settings.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import grp
import importlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
from traitlets import Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from twinlab.contract import (
    ENV_HUB_API_URL,
    ENV_HUB_TOKEN,
    ENV_HUB_USER,
    ENV_INSTANCE,
    ENV_PROJECT,
    ENV_STAC_URL,
)

from ... import objectstore
from ...config import Twinhub
from ...gateway import client_environment
from ...spawn import os_accounts, podmeta
from ...spawn.resource_limits import TwinhubUserLimits, limit_processes
from ..base import public_url
from . import hubtokens, outputs
from .context import ProcessingContext

RUNNER_MODULE = "twinlab.processing.runner"
LOG_NAME = "runner.log"
#: Seconds the runner's token outlives the job's wall time (its last reports, clean-up).
TOKEN_MARGIN = 600
#: The job's id and secret (the runner reads them), as the runner protocol names them.
ENV_JOB_ID = "TWINHUB_JOB_ID"
ENV_JOB_SECRET = "TWINHUB_JOB_SECRET"
ENV_PROCESSING_URL = "TWINHUB_PROCESSING_URL"


class BackendError(RuntimeError):
    """A runner could not be started; the message says why (the job fails with it)."""


def _expires_in(ctx: ProcessingContext, job: dict) -> int:
    wall = float(job.get("wall_time") or ctx.settings.wall_time)
    return int(wall + ctx.settings.report_timeout) + TOKEN_MARGIN


def _home_and_name(ctx: ProcessingContext, user: str) -> tuple[str, str]:
    """(HOME, USER) of the runner: the OS account's (multi-user), the platform's (personal);
    on Kubernetes the user image's."""
    rt = ctx.rt
    if rt.kubernetes:
        return KubeJobBackend.home, KubeJobBackend.user_name
    if rt.mode == "multi-user":
        pw = pwd.getpwnam(os_accounts.os_account_name(user, Twinhub(config=rt.config).user_prefix))
    else:
        pw = pwd.getpwuid(os.getuid())
    return pw.pw_dir, pw.pw_name


def runner_environment(
    ctx: ProcessingContext, job: dict, secret: str, user_token: str
) -> dict[str, str]:
    """The runner's whole environment (nothing inherited from the service: its token, its
    database URL and other users' keys stay out). Blocking (storage keys): run in a thread."""
    rt = ctx.rt
    user = str(job["owner"])
    home, name = _home_and_name(ctx, user)
    env = {
        ENV_JOB_ID: str(job["id"]),
        ENV_JOB_SECRET: secret,
        ENV_PROCESSING_URL: ctx.internal_url,
        ENV_HUB_TOKEN: user_token,
        ENV_HUB_API_URL: ctx.hub_api,
        ENV_HUB_USER: user,
        ENV_STAC_URL: public_url(rt, hubtokens.STAC_SERVICE),
        ENV_INSTANCE: rt.instance_id,
        ENV_PROJECT: str(job.get("project") or ""),
        "HOME": home,
        "USER": name,
        "LOGNAME": name,
        "PATH": f"{rt.prefix / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONUNBUFFERED": "1",
        **client_environment(rt),
        # That user's keys and nobody else's (made at their first spawn if not yet).
        **objectstore.cluster_environment(rt, user),
    }
    if rt.kubernetes:
        # The pod's envFrom would replace the user image's own PATH (its Python environment)
        # with this process's (the hub image's): the image's ENV PATH must stay.
        del env["PATH"]
    return env


class JobBackend(LoggingConfigurable):
    """Starts, watches and stops job runners (``c.<BackendClass>.*`` configures one)."""

    def __init__(self, ctx: ProcessingContext, **kwargs: Any) -> None:
        super().__init__(config=ctx.rt.config, **kwargs)
        self.ctx = ctx

    async def start(self, job: dict, secret: str) -> dict:
        """Start ``job``'s runner; its handle (JSON-able, stored with the job, with
        ``token_id``: the minted token to revoke at the end). Raises :class:`BackendError`."""
        raise NotImplementedError

    def alive(self, handle: dict) -> bool:
        """Whether the runner of ``handle`` still runs."""
        raise NotImplementedError

    async def stop(self, handle: dict, grace: float = 3.0) -> None:
        """Stop the runner (SIGTERM, then SIGKILL after ``grace`` s). Idempotent."""
        raise NotImplementedError

    def output_tail(self, handle: dict, max_bytes: int = 4096) -> str:
        """The end of the runner's stdout/stderr ("" if none)."""
        raise NotImplementedError

    async def _mint(self, job: dict) -> tuple[str, str]:
        try:
            return await hubtokens.mint(
                self.ctx,
                str(job["owner"]),
                _expires_in(self.ctx, job),
                note=f"twinhub processing job {job['id']}",
            )
        except hubtokens.HubTokenError as e:
            raise BackendError(f"no token for the job's runner: {e}") from e

    async def _environment(self, job: dict, secret: str, token: str) -> dict[str, str]:
        try:
            return await asyncio.to_thread(runner_environment, self.ctx, job, secret, token)
        except (ValueError, KeyError, OSError, os_accounts.AccountError) as e:
            raise BackendError(f"cannot prepare the runner of {job['owner']}: {e}") from e
        except objectstore.StorageError as e:
            raise BackendError(f"no storage for {job['owner']}: {e}") from e


# -- embedded: a local process --------------------------------------------------------------
class LocalJobBackend(JobBackend):
    """The runner as a local process of the user's OS account (personal: the platform's)."""

    command = List(
        Unicode(),
        help="The runner's argv; empty: this Python's `python -m twinlab.processing.runner` "
        "(the platform's environment, which user servers run from too).",
    ).tag(config=True)

    def __init__(self, ctx: ProcessingContext, **kwargs: Any) -> None:
        super().__init__(ctx, **kwargs)
        # Runners this process started, to reap them (a dead child is a zombie until then).
        self._children: dict[int, subprocess.Popen] = {}

    def jobs_dir(self) -> Path:
        return self.ctx.rt.path("processing", "jobs")

    def _account(self, user: str) -> pwd.struct_passwd | None:
        """The OS account to run as (None: the platform's own user, personal mode)."""
        rt = self.ctx.rt
        if rt.mode != "multi-user":
            return None
        tw = Twinhub(config=rt.config)
        try:
            os_accounts.check_account(user, rt.state_dir, tw.user_prefix)
            account = os_accounts.ensure_account(user, rt.state_dir, tw.user_prefix, tw.home_root)
        except (ValueError, os_accounts.AccountError) as e:
            raise BackendError(f"cannot run jobs for {user!r}: {e}") from None
        return pwd.getpwnam(account.name)

    def _job_dir(self, job_id: str, pw: pwd.struct_passwd | None) -> tuple[Path, int]:
        """A fresh 0700 job dir owned by the runner's user, and its log file's fd.

        Made by root and handed over last: the log is created with O_EXCL|O_NOFOLLOW in a
        directory nobody else could write yet, so no link of the user redirects root's write.
        """
        if not outputs.JOB_ID.fullmatch(job_id):
            raise BackendError(f"not a job id: {job_id!r}")
        parent = self.jobs_dir()
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        d = parent / job_id
        if d.is_symlink() or d.exists():
            # An earlier attempt's: its user could have put anything in it.
            if d.is_symlink():
                d.unlink()
            else:
                shutil.rmtree(d)
        os.mkdir(d, 0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND
        fd = os.open(d / LOG_NAME, flags, 0o600)
        if pw is not None:
            os.fchown(fd, pw.pw_uid, pw.pw_gid)
            os.chown(d, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
        return d, fd

    def _preexec(self, pw: pwd.struct_passwd | None) -> Any:
        if pw is None:
            return None
        uid, gid = pw.pw_uid, pw.pw_gid
        groups = [g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem]
        nproc = TwinhubUserLimits(config=self.ctx.rt.config).max_processes

        def switch_user() -> None:
            # Popen's own user= switches before preexec_fn runs: the cap needs root first.
            if nproc:
                limit_processes(nproc)
            os.setgid(gid)
            os.setgroups(groups)
            os.setuid(uid)

        return switch_user

    async def start(self, job: dict, secret: str) -> dict:
        user = str(job["owner"])
        pw = await asyncio.to_thread(self._account, user)
        token, token_id = await self._mint(job)
        try:
            env = await self._environment(job, secret, token)
            d, fd = await asyncio.to_thread(self._job_dir, str(job["id"]), pw)
            try:
                proc = subprocess.Popen(
                    list(self.command) or [sys.executable, "-m", RUNNER_MODULE],
                    env=env,
                    cwd=env["HOME"] if os.path.isdir(env["HOME"]) else "/",
                    stdin=subprocess.DEVNULL,
                    stdout=fd,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group: stop() kills it all
                    preexec_fn=self._preexec(pw),
                    close_fds=True,
                )
            except (OSError, subprocess.SubprocessError) as e:
                raise BackendError(f"the runner did not start: {e}") from e
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(hubtokens.HubTokenError):
                await hubtokens.revoke(self.ctx, user, token_id)
            raise
        self._children[proc.pid] = proc
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            started = 0.0  # already gone: alive() says so, output_tail() says why
        return {
            "kind": "local",
            "pid": proc.pid,
            "started": started,
            "uid": pw.pw_uid if pw is not None else os.getuid(),
            "dir": str(d),
            "token_id": token_id,
        }

    def _process(self, handle: dict) -> psutil.Process | None:
        """The runner's process if the handle still names it (same start time, same uid)."""
        pid = int(handle.get("pid") or 0)
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:  # reaped now
            del self._children[pid]
            return None
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - float(handle.get("started") or 0)) > 0.05:
                return None  # a reused pid
            if p.uids().real != int(handle.get("uid", -1)):
                return None
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
            return p
        except (psutil.Error, ValueError):
            return None

    def alive(self, handle: dict) -> bool:
        return handle.get("kind") == "local" and self._process(handle) is not None

    def _group(self, handle: dict) -> list[psutil.Process]:
        """What is left of the runner's process group (its leader may be gone): processes
        of its session, of its uid, started since."""
        pgid, uid = int(handle.get("pid") or 0), int(handle.get("uid", -1))
        since = float(handle.get("started") or 0) - 0.05
        try:
            leader = psutil.Process(pgid)
            if abs(leader.create_time() - since - 0.05) > 0.05 or leader.uids().real != uid:
                # The pid names another process now: Linux reuses no pid while a group of
                # that id has members, so the runner's group is gone.
                return []
        except psutil.NoSuchProcess:
            pass  # the runner is gone: what is left of its group still carries its id
        except psutil.Error:
            return []
        out = []
        for p in psutil.process_iter():
            try:
                if (
                    os.getpgid(p.pid) == pgid
                    and p.uids().real == uid
                    and p.create_time() >= since
                    and p.pid != os.getpid()
                ):
                    out.append(p)
            except (psutil.Error, OSError):
                continue
        return out

    def _signal(self, handle: dict, sig: int) -> int:
        # Never group 0 or 1 (signalling those reaches everyone).
        procs = self._group(handle) if int(handle.get("pid") or 0) > 1 else []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        return len(procs)

    async def stop(self, handle: dict, grace: float = 3.0) -> None:
        if handle.get("kind") != "local":
            return
        if not await asyncio.to_thread(self._signal, handle, signal.SIGTERM):
            self._process(handle)  # reap
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline:
            await asyncio.sleep(0.1)
            self._process(handle)  # reap our child as soon as it exits
            if not await asyncio.to_thread(self._group, handle):
                return
        await asyncio.to_thread(self._signal, handle, signal.SIGKILL)
        for _ in range(20):
            self._process(handle)
            if not await asyncio.to_thread(self._group, handle):
                return
            await asyncio.sleep(0.1)

    def output_tail(self, handle: dict, max_bytes: int = 4096) -> str:
        d = handle.get("dir")
        if not d:
            return ""
        # Read as root; O_NOFOLLOW: the user may have replaced the file by a link.
        try:
            fd = os.open(Path(d) / LOG_NAME, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return ""
        with os.fdopen(fd, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read(max_bytes).decode("utf-8", "replace")


# -- Kubernetes: a pod per job ---------------------------------------------------------------
LABEL_JOB = "twinhub.io/job"
LABEL_COMPONENT = "twinhub.io/component"


class KubeJobBackend(JobBackend):
    """The runner as a pod (kubernetes_asyncio, as KubeSpawner uses).

    Not exercised here (no API server on this machine): the manifest is checked by unit
    tests and validated against the Kubernetes schema in tests/kubernetes (the chart's).
    ``alive`` and ``output_tail`` answer from what the last :meth:`refresh` read (the
    interface is synchronous); the job manager's loop calls ``refresh`` through ``alive``'s
    background task.
    """

    #: HOME and USER of the user image (jupyter/docker-stacks' jovyan).
    home = "/home/jovyan"
    user_name = "jovyan"

    namespace = Unicode(
        "", help="Namespace of job pods; '': the service pod's own (its service account's)."
    ).tag(config=True)
    image = Unicode(
        "", help="Image of job pods: the user image (twinlab, Dask, the process libraries)."
    ).tag(config=True)
    image_pull_policy = Unicode("IfNotPresent", help="Job pods' imagePullPolicy.").tag(config=True)
    run_as_uid = Integer(1000, help="Uid of job pods (the user image's).").tag(config=True)
    run_as_gid = Integer(1000, help="Gid of job pods (the user image's).").tag(config=True)
    cpu = Unicode("1", help="CPU request and limit of a runner pod.").tag(config=True)
    memory = Unicode("1Gi", help="Memory request and limit of a runner pod.").tag(config=True)
    service_account = Unicode(
        "", help="Service account of job pods ('': the namespace's default; no token mounted)."
    ).tag(config=True)

    def __init__(self, ctx: ProcessingContext, **kwargs: Any) -> None:
        super().__init__(ctx, **kwargs)
        self._phases: dict[str, str] = {}
        self._tails: dict[str, str] = {}
        self._api: Any = None
        self._refreshed = False  # once read, a pod that is not listed is gone

    def get_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        f = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        return f.read_text().strip() if f.exists() else "default"

    @staticmethod
    def pod_name(job_id: str) -> str:
        return f"twinhub-job-{job_id}".lower()[:63]

    def pod_manifest(self, job: dict, env: dict[str, str]) -> dict:
        """The runner's pod: the job's environment from its own Secret (:meth:`secret_manifest`)
        so no secret shows in the pod object; no service account token; killed by Kubernetes
        past the job's wall time."""
        name = self.pod_name(str(job["id"]))
        labels = {
            **podmeta.labels(str(job["owner"]), job.get("project")),
            LABEL_JOB: str(job["id"]),
            LABEL_COMPONENT: "processing-job",
        }
        wall = float(job.get("wall_time") or self.ctx.settings.wall_time)
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "activeDeadlineSeconds": max(1, int(wall)),
            "securityContext": {
                "runAsUser": self.run_as_uid,
                "runAsGroup": self.run_as_gid,
                "fsGroup": self.run_as_gid,
                "runAsNonRoot": True,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "runner",
                    "image": self.image,
                    "imagePullPolicy": self.image_pull_policy,
                    "command": ["python", "-m", RUNNER_MODULE],
                    "workingDir": self.home,
                    "envFrom": [{"secretRef": {"name": name}}],
                    "resources": {
                        "requests": {"cpu": self.cpu, "memory": self.memory},
                        "limits": {"cpu": self.cpu, "memory": self.memory},
                    },
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        }
        if self.service_account:
            spec["serviceAccountName"] = self.service_account
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": podmeta.annotations(str(job["owner"]), job.get("project")),
            },
            "spec": spec,
        }

    def secret_manifest(self, job: dict, env: dict[str, str]) -> dict:
        """The Secret holding the runner's environment (token, job secret, S3 keys)."""
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": self.pod_name(str(job["id"])),
                "labels": {LABEL_JOB: str(job["id"]), LABEL_COMPONENT: "processing-job"},
            },
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in env.items()},
        }

    async def _core(self) -> Any:
        if self._api is None:
            # kubernetes_asyncio is only in the chart's images' paths of use: imported when
            # the Kubernetes backend starts its first pod.
            from kubernetes_asyncio import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                await config.load_kube_config()
            self._api = client.CoreV1Api()
        return self._api

    async def start(self, job: dict, secret: str) -> dict:
        if not self.image:
            raise BackendError("KubeJobBackend.image is not set (the chart sets the user image)")
        token, token_id = await self._mint(job)
        env = await self._environment(job, secret, token)
        env.update(HOME=self.home, USER=self.user_name, LOGNAME=self.user_name)
        ns = self.get_namespace()
        api = await self._core()
        try:
            await api.create_namespaced_secret(ns, self.secret_manifest(job, env))
            await api.create_namespaced_pod(ns, self.pod_manifest(job, env))
        except Exception as e:  # the API's errors carry its answer
            name = self.pod_name(str(job["id"]))
            with contextlib.suppress(Exception):
                await api.delete_namespaced_secret(name, ns)
                await hubtokens.revoke(self.ctx, str(job["owner"]), token_id)
            raise BackendError(f"the runner's pod was not created: {e}") from e
        name = self.pod_name(str(job["id"]))
        self._phases[name] = "Pending"
        self._ensure_refresh()
        return {"kind": "kube", "pod": name, "namespace": ns, "token_id": token_id}

    def _ensure_refresh(self) -> None:
        task = self.ctx.extras.get("kube-job-refresh")
        if task is None or task.done():
            self.ctx.extras["kube-job-refresh"] = asyncio.ensure_future(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.refresh()
            await asyncio.sleep(self.ctx.settings.poll_interval)

    async def refresh(self) -> None:
        """Read the phases of job pods (and the log tail of the ended ones)."""
        api = await self._core()
        pods = await api.list_namespaced_pod(
            self.get_namespace(), label_selector=f"{LABEL_COMPONENT}=processing-job"
        )
        seen = {}
        for pod in pods.items:
            name = pod.metadata.name
            seen[name] = pod.status.phase or "Pending"
            if seen[name] in ("Succeeded", "Failed") and name not in self._tails:
                with contextlib.suppress(Exception):
                    self._tails[name] = await api.read_namespaced_pod_log(
                        name, self.get_namespace(), tail_lines=100
                    )
        self._phases, self._refreshed = seen, True

    def alive(self, handle: dict) -> bool:
        if handle.get("kind") != "kube":
            return False
        self._ensure_refresh()
        phase = self._phases.get(handle["pod"])
        if phase is None:  # not read yet (a restart): alive until a refresh says otherwise
            return not self._refreshed
        return phase in ("Pending", "Running", "Unknown")

    async def stop(self, handle: dict, grace: float = 3.0) -> None:
        if handle.get("kind") != "kube":
            return
        api = await self._core()
        ns = handle.get("namespace") or self.get_namespace()
        for delete in (api.delete_namespaced_pod, api.delete_namespaced_secret):
            with contextlib.suppress(Exception):  # already gone: idempotent
                await delete(handle["pod"], ns, grace_period_seconds=int(grace))
        self._phases[handle["pod"]] = "Failed"

    def output_tail(self, handle: dict, max_bytes: int = 4096) -> str:
        return self._tails.get(str(handle.get("pod")), "")[-max_bytes:]


def backend_for(ctx: ProcessingContext) -> JobBackend:
    """The configured backend (``TwinhubProcessing.backend_class``), else the deployment's."""
    path = ctx.settings.backend_class
    if not path:
        cls: type = KubeJobBackend if ctx.rt.kubernetes else LocalJobBackend
    else:
        module, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise ValueError(f"TwinhubProcessing.backend_class {path!r}: {e}") from None
        if not (isinstance(cls, type) and issubclass(cls, JobBackend)):
            raise ValueError(f"TwinhubProcessing.backend_class {path!r} is not a JobBackend")
    return cls(ctx)
