"""The service registry: catalogue, onboarding workflow, landing page, single sign-on.

- :class:`~.config.TwinhubRegistry` (``c.TwinhubRegistry.*``): vocabulary, reviewers group,
  reserved slugs, evaluation and health intervals, outbound fetch bounds;
- the ``registry`` component (:mod:`.app`, uvicorn), a hub service at ``/services/registry/``:
  OGC API - Records (:mod:`.records`), the onboarding REST API (:mod:`.api`), pages
  (:mod:`.pages`), and the sign-on gateway (:mod:`.gateway`) of every integrated web service
  at ``/services/<slug>/``;
- in the hub process (:meth:`RegistryPart.configure_service`): visitors who are not logged
  in land on the registry's welcome page rather than the login form.

See docs/registry.md.
"""

from __future__ import annotations

from typing import Any

from ...process.runtime import Runtime
from ..base import AsgiService
from .config import TwinhubRegistry, is_enabled

SERVICE_NAME = "registry"
SERVICE_PREFIX = f"/services/{SERVICE_NAME}/"


class WelcomeForVisitors:
    """``c.JupyterHub.default_url``: a visitor who is not logged in goes to the registry's
    welcome page; a logged-in user gets JupyterHub's own default (a falsy answer)."""

    def __call__(self, handler: Any) -> str:
        if handler.current_user is not None:
            return ""
        return handler.base_url + SERVICE_PREFIX.lstrip("/") + "welcome"


class RegistryPart(AsgiService):
    """The registry at /services/registry/ and the gateway of registered web services."""

    name = SERVICE_NAME
    settings = (TwinhubRegistry,)
    # After the projects service: evaluation reads projects' allocations.
    start_rank = 40
    factory = "twinhub.services.registry.app:create_app"
    listed = True
    # What the service's own token may do: read users and groups (who is a reviewer, a
    # project member), register the routes of integrated services with the hub
    # (admin:services; proxy: have the hub add their proxy routes at once, not at its next
    # periodic check), and read the lake's collections for the landing page.
    scopes = (
        "read:users",
        "read:groups",
        "admin:services",
        "proxy",
        "access:services!service=stac",
    )

    def enabled(self, rt: Runtime) -> bool:
        return is_enabled(rt)

    def configure_service(self, c: Any, rt: Runtime) -> None:
        """The hub's root sends visitors who are not logged in to the welcome page; the
        hub's pages link to it ("Services"); admins' browser sessions act as admins."""
        c.JupyterHub.default_url = WelcomeForVisitors()
        variables = dict(c.JupyterHub.template_vars) if "template_vars" in c.JupyterHub else {}
        variables["registry_url"] = SERVICE_PREFIX + "welcome"
        c.JupyterHub.template_vars = variables
        # A browser's sign-on token carries only the access scope by default, so an admin on
        # the onboarding page could not integrate. JupyterHub grants an allowed scope only
        # to users who hold it: admins' tokens get admin:users, everyone else's stay as they
        # are. The token lives in an HttpOnly cookie limited to /services/registry/, and
        # cookie writes need the page's XSRF header.
        services = [dict(s) for s in c.JupyterHub.services]
        for s in services:
            if s["name"] == self.name:
                s["oauth_client_allowed_scopes"] = ["admin:users"]
        c.JupyterHub.services = services


__all__ = [
    "SERVICE_NAME",
    "SERVICE_PREFIX",
    "RegistryPart",
    "TwinhubRegistry",
    "WelcomeForVisitors",
    "is_enabled",
]
