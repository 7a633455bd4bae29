"""Hub authentication of gateway requests.

Upstream ``JupyterHubAuthenticator`` turns the hub's 403 for an unknown or revoked token
(JupyterHub >= 5 answers ``GET /hub/api/user`` that way) into a 500 "Permission failure";
a bad token is the client's fault and must read as 401 so clients re-authenticate.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from dask_gateway_server.auth import JupyterHubAuthenticator, unauthorized


class TwinhubHubAuthenticator(JupyterHubAuthenticator):
    """JupyterHub token authentication, answering 401 for tokens the hub does not accept."""

    async def authenticate(self, request: web.Request) -> Any:
        try:
            return await super().authenticate(request)
        except web.HTTPInternalServerError as e:
            # Pinned upstream (2026.3.0) reports the hub's 403 with this reason.
            if (e.reason or "").startswith("Permission failure"):
                raise unauthorized("jupyterhub") from None
            raise
