"""Processing: OGC API - Processes with staged jobs that run as their user.

- :class:`~.config.TwinhubProcessing` (``c.TwinhubProcessing.*``): limits, the job backend,
  job clusters, retention;
- the ``processing`` component (:mod:`.app`, uvicorn), a hub service at
  ``/services/processing/``: OGC API - Processes (:mod:`.api`), pages (:mod:`.pages`), the
  OpenAPI document (:mod:`.openapi`), and the internal report endpoints of job runners
  (:mod:`.reports`);
- jobs (:mod:`.jobs`): admission (limits, projects, allocations), the queue, the watch of
  running jobs (wall time, lost runners), dismissal, resumption after a restart; state in
  twinhub's database (:mod:`.store`);
- runners (:mod:`.backend`): ``python -m twinlab.processing.runner`` as the user's OS
  account (embedded) or in a pod (Kubernetes), on a Dask Gateway cluster of the job's own.

The processes themselves (templated ones, and what users register) run in the runner and
on its cluster: :mod:`twinlab.processing`. See docs/processing.md.
"""

from __future__ import annotations

from typing import Any

from ...process.runtime import Runtime
from ..base import AsgiService
from .config import TwinhubProcessing, is_enabled

SERVICE_NAME = "processing"
SERVICE_PREFIX = f"/services/{SERVICE_NAME}/"
#: Where the hub answers the service's token requests, under its API (:mod:`.hubside`).
HUB_TOKENS_PATH = "twinhub/processing/tokens"
#: A job token lives at most the job's wall time and this (:func:`max_token_seconds`).
TOKEN_HOUR = 3600.0


class ProcessingPart(AsgiService):
    """The processing service at /services/processing/."""

    name = SERVICE_NAME
    settings = (TwinhubProcessing,)
    # After the projects service (allocations); runners reach the gateway later, per job.
    start_rank = 45
    factory = "twinhub.services.processing.app:create_app"
    listed = True
    # What the service's own token may do: read users and groups (projects, admins) and
    # the lake's items (inputs are checked at submission). Not ``tokens`` (any scope of any
    # user: admin-equivalent): a job user's short token is minted by the hub itself, through
    # the handlers of :mod:`.hubside` that only this service may call.
    scopes = (
        "read:users",
        "read:groups",
        "access:services!service=stac",
    )

    def enabled(self, rt: Runtime) -> bool:
        return is_enabled(rt)

    def configure_service(self, c: Any, rt: Runtime) -> None:
        """The hub's job-token API (:mod:`.hubside`); runners reach the service straight."""
        settings = TwinhubProcessing(config=rt.config)
        handlers = list(c.JupyterHub.extra_handlers) if "extra_handlers" in c.JupyterHub else []
        handlers.extend(hub_handlers(max_token_seconds(settings), rt.db_url))
        c.JupyterHub.extra_handlers = handlers


def max_token_seconds(settings: TwinhubProcessing) -> int:
    """The longest life the hub gives a job token: the wall time and an hour (more when
    runners retry their reports longer than the hour allows)."""
    margin = max(TOKEN_HOUR, settings.report_timeout + TOKEN_HOUR / 6)
    return int(settings.wall_time + margin)


def hub_handlers(max_expires_in: int, db_url: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``c.JupyterHub.extra_handlers`` entries of :mod:`.hubside`, by import path (tornado
    imports them in the hub; processes that only build its configuration do not load
    JupyterHub's handlers). ``db_url``: twinhub's database, whose processing_jobs the
    handlers check (as the gateway's ``jobs_db_url``)."""
    kwargs: dict[str, Any] = {"max_expires_in": int(max_expires_in), "db_url": db_url}
    base = f"/api/{HUB_TOKENS_PATH}"
    module = f"{__name__}.hubside"
    return [
        (rf"{base}/([^/]+)", f"{module}.ProcessingTokensHandler", kwargs),
        (rf"{base}/([^/]+)/([^/]+)", f"{module}.ProcessingTokenHandler", kwargs),
    ]


__all__ = [
    "SERVICE_NAME",
    "SERVICE_PREFIX",
    "hub_handlers",
    "max_token_seconds",
    "ProcessingPart",
    "TwinhubProcessing",
    "is_enabled",
]
