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


class ProcessingPart(AsgiService):
    """The processing service at /services/processing/."""

    name = SERVICE_NAME
    settings = (TwinhubProcessing,)
    # After the projects service (allocations); runners reach the gateway later, per job.
    start_rank = 45
    factory = "twinhub.services.processing.app:create_app"
    listed = True
    # What the service's own token may do: read users and groups (projects, admins), mint
    # a short-lived token *for a job's user* (tokens: what the runner authenticates to the
    # Dask gateway and the STAC API with; it carries only those two access scopes and dies
    # with the job) and read the lake's items (inputs are checked at submission).
    scopes = (
        "read:users",
        "read:groups",
        "tokens",
        "access:services!service=stac",
    )

    def enabled(self, rt: Runtime) -> bool:
        return is_enabled(rt)

    def configure_service(self, c: Any, rt: Runtime) -> None:
        """Nothing beyond registration: runners reach the service straight."""


__all__ = [
    "SERVICE_NAME",
    "SERVICE_PREFIX",
    "ProcessingPart",
    "TwinhubProcessing",
    "is_enabled",
]
