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
    # (admin:services: its most sensitive right, it could create any service; docs/registry.md),
    # and read the lake's collections for the landing page. Not "proxy": with it a bug in
    # this exposed service could point the hub's proxy API elsewhere (and hand over the
    # proxy's token); the hub adds the routes itself at its next check_routes instead.
    scopes = (
        "read:users",
        "read:groups",
        "admin:services",
        "access:services!service=stac",
    )
    #: Seconds at most between the hub's route checks (check_routes runs in its
    #: last-activity update): how soon an integrated service's route appears.
    route_check_interval = 30

    def enabled(self, rt: Runtime) -> bool:
        return is_enabled(rt)

    def configure_service(self, c: Any, rt: Runtime) -> None:
        """The hub's root sends visitors who are not logged in to the welcome page; the
        hub's pages link to it ("Services"); admins' browser sessions act as admins; the
        hub checks its proxy routes often enough for new services to appear soon."""
        c.JupyterHub.default_url = WelcomeForVisitors()
        variables = dict(c.JupyterHub.template_vars) if "template_vars" in c.JupyterHub else {}
        variables["registry_url"] = SERVICE_PREFIX + "welcome"
        c.JupyterHub.template_vars = variables
        # A browser's sign-on token carries only the access scope by default, so an admin on
        # the onboarding page could not integrate. JupyterHub grants an allowed scope only
        # to users who hold it: admins' tokens get admin-ui, everyone else's stay as they
        # are. admin-ui opens only the hub's admin page (no API power if the cookie's token
        # leaked); the registry counts it as an admin's (entry.registry_admin). Not
        # admin:users: any page on the origin can drive a browser session.
        services = [dict(s) for s in c.JupyterHub.services]
        for s in services:
            if s["name"] == self.name:
                s["oauth_client_allowed_scopes"] = ["admin-ui"]
        c.JupyterHub.services = services
        # Without the proxy scope the registry cannot add routes itself: the hub adds them
        # in check_routes, run every last_activity_interval (300 s by default).
        current = (
            c.JupyterHub.last_activity_interval if "last_activity_interval" in c.JupyterHub else 300
        )
        c.JupyterHub.last_activity_interval = min(current, self.route_check_interval)


__all__ = [
    "SERVICE_NAME",
    "SERVICE_PREFIX",
    "RegistryPart",
    "TwinhubRegistry",
    "WelcomeForVisitors",
    "is_enabled",
]
