"""Hub handlers that sharpen JupyterHub's answers where users were left guessing.

Registered ahead of JupyterHub's own handlers through the authenticator's ``get_handlers``
(the only hook JupyterHub gives for that), so every authenticator twinhub uses includes
:func:`platform_handlers`.
"""

from __future__ import annotations

import functools
import json

from jupyterhub.apihandlers.users import (
    UserAPIHandler,
    UserListAPIHandler,
    UserServerAPIHandler,
    UserTokenListAPIHandler,
)
from jupyterhub.scopes import needs_scope
from tornado import web
from traitlets import Integer
from traitlets.config import Configurable

from ..process.runtime import Runtime
from ..spawn.os_accounts import check_platform_name
from .help import HelpHandler
from .home import TwinhubHomeHandler


class PendingAwareServerAPIHandler(UserServerAPIHandler):
    """``POST /api/users/<name>/server[s/<server>]`` that explains a spawn already pending.

    JupyterHub answers a second start request while the first is pending with an empty
    202, and silently ignores the new options.  Here the answer says so: 202 with a message
    and the progress URL when the same options were asked for, 409 naming both profiles
    when different ones were.  A first request still pending when JupyterHub answers (after
    its ``slow_spawn_timeout``) gets the same 202 body; both say how many spawns are queued
    ahead in :mod:`twinhub.spawn.startqueue` (``queued_ahead``, null when not queued).
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
            ahead = getattr(spawner, "queue_ahead", None)
            queued = f" (queued, {ahead} ahead of you)" if ahead is not None else ""
            self.set_status(202)
            self.set_header("Content-Type", "application/json")
            self.write(
                json.dumps(
                    {
                        "message": f"{label} is already starting{queued}; follow its progress",
                        "queued_ahead": ahead,
                        "progress_url": progress + "/progress",
                    }
                )
            )
            return
        target = None
        if user is not None:
            target = user.get_or_create_spawner(server_name, server_name)
            target._twinhub_requested_profile = self._requested_profile()
        await UserServerAPIHandler.post.__wrapped__(self, user_name, server_name)
        if self.get_status() == 202 and target is not None and target.pending == "spawn":
            ahead = getattr(target, "queue_ahead", None)  # set while in twinhub's start queue
            # JupyterHub answers an empty 202: say where the spawn stands and where to follow it.
            progress = f"{self.hub.base_url}api/users/{user_name}/server" + (
                f"s/{server_name}" if server_name else ""
            )
            where = f"queued, {ahead} ahead of you" if ahead is not None else "starting"
            self.set_header("Content-Type", "application/json")
            self.write(
                json.dumps(
                    {
                        "message": f"Your server is {where}; follow its progress",
                        "queued_ahead": ahead,
                        "progress_url": progress + "/progress",
                    }
                )
            )

    def _requested_profile(self) -> str | None:
        options = self.get_server_json_body().get("user_options") or {}
        return options.get("profile")


class TwinhubHubRequests(Configurable):
    """Bounds on what the hub's REST API stores from a request (user names, token notes)."""

    max_token_note = Integer(
        1000, min=1, help="Longest token note (characters) POST .../tokens accepts."
    ).tag(config=True)
    max_token_body = Integer(
        64 * 1024,
        min=1024,
        help="Largest body (bytes) of a token request (POST /hub/api/users/<name>/tokens).",
    ).tag(config=True)


@functools.cache
def request_limits() -> TwinhubHubRequests:
    """The limits from twinhub_config.py (defaults for a hub started without a state dir)."""
    try:
        return TwinhubHubRequests(config=Runtime.load().config)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError):
        return TwinhubHubRequests()


def check_new_user_name(handler: web.RequestHandler, name: str) -> None:
    """400 naming the rule for a name that cannot become a platform user (an OS account
    ``<prefix><name>`` in multi-user mode, a bucket...): checked before anything is made."""
    prefix = getattr(handler.authenticator, "user_prefix", "twin-")
    try:
        check_platform_name(name, prefix)
    except ValueError as e:
        raise web.HTTPError(400, "%s", f"Cannot create user: {e}") from None


async def tell_authenticator(handler: web.RequestHandler, names: list[str]) -> None:
    """Tell the authenticator which users an admin just made (``admin_created_user``, when it
    has one: Keycloak lets their first Keycloak login take the account)."""
    hook = getattr(handler.authenticator, "admin_created_user", None)
    if hook is None:
        return
    for name in names:
        user = handler.find_user(name)
        if user is not None:
            await hook(user)


class CheckedUserAPIHandler(UserAPIHandler):
    """``POST /api/users/<name>``: JupyterHub checks no name rule here at all (``root`` and
    ``Bad Name`` were created); refuse names that cannot be platform users."""

    @needs_scope("admin:users")
    async def post(self, user_name: str) -> None:
        new = self.find_user(user_name) is None
        if new:
            check_new_user_name(self, user_name)
        await UserAPIHandler.post.__wrapped__(self, user_name)
        if new:
            await tell_authenticator(self, [user_name])

    @needs_scope("admin:users")
    async def patch(self, user_name: str) -> None:
        # A rename ({"name": ...}) makes a new name: the same rule.
        data = self.get_json_body()
        new = data.get("name") if isinstance(data, dict) else None
        if isinstance(new, str) and new != user_name:
            check_new_user_name(self, new)
        await UserAPIHandler.patch.__wrapped__(self, user_name)


class CheckedUserListAPIHandler(UserListAPIHandler):
    """``POST /api/users`` (several names): the same rule, every name checked first."""

    @needs_scope("admin:users")
    async def post(self) -> None:
        data = self.get_json_body()
        new = []
        if isinstance(data, dict) and isinstance(data.get("usernames"), list):
            for name in data["usernames"]:
                if not isinstance(name, str):
                    raise web.HTTPError(400, "usernames must be a list of strings")
                name = self.authenticator.normalize_username(name)
                if self.find_user(name) is None:
                    check_new_user_name(self, name)
                    new.append(name)
        await UserListAPIHandler.post.__wrapped__(self)
        await tell_authenticator(self, new)


class BoundedTokenAPIHandler(UserTokenListAPIHandler):
    """``POST /api/users/<name>/tokens`` with bounded body and note (a 5 MB note was
    stored); checked before authentication so nothing large is parsed or kept."""

    async def post(self, user_name: str) -> None:
        limits = request_limits()
        if len(self.request.body) > limits.max_token_body:
            raise web.HTTPError(
                400,
                "%s",
                f"token request body too large: at most {limits.max_token_body} bytes",
            )
        body = self.get_json_body() or {}
        note = body.get("note") if isinstance(body, dict) else None
        if note is not None and not isinstance(note, str):
            raise web.HTTPError(400, "token note must be a string")
        if note and len(note) > limits.max_token_note:
            raise web.HTTPError(
                400, "%s", f"token note too long: at most {limits.max_token_note} characters"
            )
        await super().post(user_name)


def platform_handlers() -> list[tuple[str, type]]:
    """The hub handlers that replace or add to JupyterHub's (the authenticators add them with
    their own, ``twinhub login``'s among them: :mod:`twinhub.auth.token_exchange`): the REST
    API's checks, the home page and the help pages (:mod:`twinhub.hubconf.face`)."""
    return [
        (r"/home", TwinhubHomeHandler),
        (r"/help/?", HelpHandler),
        (r"/help/([^/]+)", HelpHandler),
        (r"/api/users", CheckedUserListAPIHandler),
        (r"/api/users/([^/]+)", CheckedUserAPIHandler),
        (r"/api/users/([^/]+)/tokens", BoundedTokenAPIHandler),
        (r"/api/users/([^/]+)/server", PendingAwareServerAPIHandler),
        (r"/api/users/([^/]+)/servers/([^/]*)", PendingAwareServerAPIHandler),
    ]
