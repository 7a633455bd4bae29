"""Job backends: start a job's runner (``python -m twinlab.processing.runner``) as its user.

Chosen by class like dask-gateway's backends (``TwinhubProcessing.backend_class``):

- :class:`~.backend_local.LocalJobBackend` (embedded): a process in a new session and a
  cgroup of its own, as the user's OS account in multi-user mode (the same account, groups
  and process cap as their server and Dask workers), as the platform's user in personal
  mode. It outlives a restart of the service; its handle (pid, start time, uid, cgroup)
  lets the next service process tell it from a reused pid and stop all it started.
- :class:`~.backend_kube.KubeJobBackend` (Kubernetes): a pod per job, as the user image's
  uid, no service account token, the job's secrets in a Secret of its own.

Whatever the backend, the runner gets the environment of :func:`runner_environment`: the
job's id and secret, the service's internal URL, a short-lived hub token *of the user*
(:mod:`.hubtokens`), that user's storage keys (nobody else's), the gateway's client settings.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import pwd
from typing import Any

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
from ...spawn import os_accounts
from ..base import public_url
from . import hubtokens
from .context import ProcessingContext

log = logging.getLogger("twinhub.processing")

RUNNER_MODULE = "twinlab.processing.runner"
LOG_NAME = "runner.log"
#: Seconds the runner's token outlives the job's wall time (its last reports, clean-up).
TOKEN_MARGIN = 600
#: The job's id and secret (the runner reads them), as the runner protocol names them.
ENV_JOB_ID = "TWINHUB_JOB_ID"
ENV_JOB_SECRET = "TWINHUB_JOB_SECRET"
ENV_PROCESSING_URL = "TWINHUB_PROCESSING_URL"
#: HOME and USER of the user image on Kubernetes (jupyter/docker-stacks' jovyan).
KUBE_HOME = "/home/jovyan"
KUBE_USER = "jovyan"
#: The deployments' default backends (imported when chosen: no import loop with this module).
DEFAULT_LOCAL = "twinhub.services.processing.backend_local.LocalJobBackend"
DEFAULT_KUBE = "twinhub.services.processing.backend_kube.KubeJobBackend"


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
        return KUBE_HOME, KUBE_USER
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

    async def start(self, job: dict, secret: str, token: tuple[str, str] | None = None) -> dict:
        """Start ``job``'s runner; its handle (JSON-able, stored with the job, with
        ``token_id``: the runner's token to revoke at the end). ``token``: (token, its id)
        minted by the caller (the job manager stores the id first); None: minted here.
        A failed start revokes the token whoever minted it (revoking is idempotent) and
        raises :class:`BackendError`."""
        raise NotImplementedError

    def alive(self, handle: dict) -> bool:
        """Whether the runner of ``handle`` still runs."""
        raise NotImplementedError

    async def stop(self, handle: dict, grace: float = 3.0) -> None:
        """Stop the runner and whatever it started (SIGTERM, then SIGKILL after ``grace``
        s). Idempotent."""
        raise NotImplementedError

    def holds(self, handle: dict) -> bool:
        """Whether anything of an ended job's runner is still held here (a release cut
        short by a restart: run it again). Blocking: call it in a thread."""
        return False

    def output_tail(self, handle: dict, max_bytes: int = 4096) -> str:
        """The end of the runner's stdout/stderr ("" if none)."""
        raise NotImplementedError

    async def cleanup(self, handle: dict) -> None:
        """Remove what the runner left on the service's side (its log, its job dir) once
        the job is over and its tail read. Idempotent; the default has nothing to remove."""

    async def _token(self, job: dict, token: tuple[str, str] | None) -> tuple[str, str]:
        """The runner's token: the caller's, else a fresh one."""
        if token is not None:
            return str(token[0]), str(token[1])
        try:
            return await hubtokens.mint(
                self.ctx,
                str(job["owner"]),
                _expires_in(self.ctx, job),
                note=f"twinhub processing job {job['id']}",
            )
        except hubtokens.HubTokenError as e:
            raise BackendError(f"no token for the job's runner: {e}") from e

    async def _revoke(self, job: dict, token_id: str) -> None:
        """Revoke the runner's token after a failed start (a failure to do so is logged:
        the start's own error is what the job reports; the token expires anyway)."""
        try:
            await hubtokens.revoke(self.ctx, str(job["owner"]), token_id)
        except Exception as e:
            log.warning("job %s: cannot revoke the runner's token: %s", job.get("id"), e)

    async def _environment(self, job: dict, secret: str, token: str) -> dict[str, str]:
        try:
            return await asyncio.to_thread(runner_environment, self.ctx, job, secret, token)
        except (ValueError, KeyError, OSError, os_accounts.AccountError) as e:
            raise BackendError(f"cannot prepare the runner of {job['owner']}: {e}") from e
        except objectstore.StorageError as e:
            raise BackendError(f"no storage for {job['owner']}: {e}") from e


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def __getattr__(name: str) -> Any:
    # The backends moved to backend_local / backend_kube: their old names still resolve
    # (configured import paths such as ...processing.backend.LocalJobBackend, callers).
    if name in ("LocalJobBackend", "KubeJobBackend"):
        return _import(DEFAULT_LOCAL if name == "LocalJobBackend" else DEFAULT_KUBE)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def backend_for(ctx: ProcessingContext) -> JobBackend:
    """The configured backend (``TwinhubProcessing.backend_class``), else the deployment's."""
    path = ctx.settings.backend_class or (DEFAULT_KUBE if ctx.rt.kubernetes else DEFAULT_LOCAL)
    try:
        cls = _import(path)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"TwinhubProcessing.backend_class {path!r}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, JobBackend)):
        raise ValueError(f"TwinhubProcessing.backend_class {path!r} is not a JobBackend")
    return cls(ctx)
