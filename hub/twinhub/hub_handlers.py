"""Hub handlers that sharpen JupyterHub's answers where users were left guessing.

Registered ahead of JupyterHub's own handlers through the authenticator's ``get_handlers``
(the only hook JupyterHub gives for that), so every authenticator twinhub uses includes
:func:`platform_handlers`.
"""

from __future__ import annotations

import json

from jupyterhub.apihandlers.users import UserServerAPIHandler
from jupyterhub.scopes import needs_scope
from tornado import web


class PendingAwareServerAPIHandler(UserServerAPIHandler):
    """``POST /api/users/<name>/server[s/<server>]`` that explains a spawn already pending.

    JupyterHub answers a second start request while the first is pending with an empty
    202, and silently ignores the new options.  Here the answer says so: 202 with a message
    and the progress URL when the same options were asked for, 409 naming both profiles
    when different ones were.
    """

    @needs_scope("start:servers")
    async def post(self, user_name: str, server_name: str = "") -> None:
        user = self.find_user(user_name)
        spawner = user.spawners.get(server_name) if user is not None else None
        if spawner is not None and spawner.pending == "spawn":
            wanted = self._requested_profile()
            # user_options are set part-way through a spawn: prefer what we recorded.
            current = getattr(spawner, "_twinhub_requested_profile", None) or (
                spawner.user_options or {}
            ).get("profile")
            label = f"{user_name}'s server" + (f" {server_name!r}" if server_name else "")
            progress = f"{self.hub.base_url}api/users/{user_name}/server" + (
                f"s/{server_name}" if server_name else ""
            )
            if wanted and current and wanted != current:
                raise web.HTTPError(
                    409,
                    f"{label} is already starting with profile {current!r}; your request for "
                    f"profile {wanted!r} was not applied. Wait for it to start, or stop it "
                    f"(DELETE {progress}) and start again.",
                )
            self.set_status(202)
            self.set_header("Content-Type", "application/json")
            self.write(
                json.dumps(
                    {
                        "message": f"{label} is already starting; follow its progress",
                        "progress_url": progress + "/progress",
                    }
                )
            )
            return
        if user is not None:
            target = user.get_or_create_spawner(server_name, server_name)
            target._twinhub_requested_profile = self._requested_profile()
        await UserServerAPIHandler.post.__wrapped__(self, user_name, server_name)

    def _requested_profile(self) -> str | None:
        options = self.get_server_json_body().get("user_options") or {}
        return options.get("profile")


def platform_handlers() -> list[tuple[str, type]]:
    from .auth.token_exchange import login_handlers

    return [
        (r"/api/users/([^/]+)/server", PendingAwareServerAPIHandler),
        (r"/api/users/([^/]+)/servers/([^/]*)", PendingAwareServerAPIHandler),
        # `twinhub login` (answers "use the token page" with local accounts).
        *login_handlers(),
    ]
