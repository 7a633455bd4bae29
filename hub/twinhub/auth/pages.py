"""Hub pages of the local-accounts authenticator: signup, admin approval, password change.

Every form posts ``_xsrf``: JupyterHub's BaseHandler checks it on every POST, so these
pages get the same CSRF protection as the hub's own login form.
"""

from __future__ import annotations

import asyncio

from jupyterhub import orm
from jupyterhub.handlers import BaseHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from . import local_accounts as accounts
from .links import end_sessions, new_link
from .local_accounts import AccountError, normalize_username
from .passwords import generate_password


class _AuthPage(BaseHandler):
    @property
    def db_url(self) -> str:
        return self.authenticator._db()

    async def _page(self, template: str, status: int = 200, **ns) -> None:
        self.set_status(status)
        self.finish(await self.render_template(template, authenticator=self.authenticator, **ns))


class SignupHandler(_AuthPage):
    """``/hub/signup``: anyone may request an account; it waits for an admin's approval."""

    async def get(self) -> None:
        if not self.authenticator.enable_signup:
            raise web.HTTPError(404, "Signup is disabled on this platform.")
        await self._page("signup.html")

    async def post(self) -> None:
        if not self.authenticator.enable_signup:
            raise web.HTTPError(404, "Signup is disabled on this platform.")
        name = self.get_body_argument("username", "", strip=True)
        password = self.get_body_argument("password", "", strip=False)
        confirm = self.get_body_argument("password_confirm", "", strip=False)
        try:
            if password != confirm:
                raise AccountError("the two passwords differ")
            # A hub user of that name (added on the admin page, waiting for a set-password
            # link) is someone else's: a request for it would hand over the user, admin flag
            # and all, once approved (at once with open_signup).
            if self.find_user(normalize_username(name, self.authenticator.user_prefix)):
                raise AccountError("user name taken: choose another one")
            info = await self.authenticator.request_account(name, password)
        except AccountError as e:
            await self._page("signup.html", status=400, error=str(e), username=name)
            return
        self.log.info("account requested: %s (approved=%s)", info.username, info.approved)
        if info.approved:
            message = f"Account {info.username} created: you can log in now."
        else:
            message = (
                f"Account {info.username} requested. An administrator must approve it "
                "before you can log in."
            )
        await self._page("signup.html", message=message, done=True)


class AuthorizeHandler(_AuthPage):
    """``/hub/authorize``: admins approve, withdraw, reset or delete local accounts, and make
    one-time set-password links (for hub users added on the admin page, or to reset)."""

    ACTIONS = ("approve", "revoke", "reset", "delete", "link")

    async def _render(self, status: int = 200, **ns) -> None:
        rows = await asyncio.to_thread(accounts.list_accounts, self.db_url)
        known = {a.username for a in rows}
        # Hub users with no local account (added on the admin page): no password, no way in
        # until they get a set-password link.
        no_way_in = sorted(u.name for u in self.db.query(orm.User) if u.name not in known)
        await self._page(
            "authorize.html",
            status=status,
            pending=[a for a in rows if not a.approved],
            approved=[a for a in rows if a.approved],
            no_way_in=no_way_in,
            link_hours=self.authenticator.set_password_link_hours,
            **ns,
        )

    @web.authenticated
    @needs_scope("admin:users")
    async def get(self) -> None:
        await self._render()

    @web.authenticated
    @needs_scope("admin:users")
    async def post(self) -> None:
        action = self.get_body_argument("action", "")
        name = self.get_body_argument("username", "", strip=True)
        if action not in self.ACTIONS:
            await self._render(400, error=f"unknown action {action!r}")
            return
        if action == "link":
            try:
                made = await new_link(self, name)
            except web.HTTPError as e:
                await self._render(e.status_code, error=e.log_message)
                return
            await self._render(link=made)
            return
        info = await asyncio.to_thread(accounts.get_account, self.db_url, name)
        if info is None:
            await self._render(404, error=f"no account {name!r}")
            return
        me = self.current_user.name
        if name == me and action in ("revoke", "delete"):
            await self._render(400, error="you cannot lock yourself out")
            return
        ns: dict = {}
        if action == "approve":
            await asyncio.to_thread(accounts.set_approved, self.db_url, name, True)
            ns["message"] = f"{name} approved: they can log in now."
        elif action == "revoke":
            await asyncio.to_thread(accounts.set_approved, self.db_url, name, False)
            ns["message"] = f"{name} can no longer log in."
        elif action == "reset":
            new = generate_password()
            await asyncio.to_thread(accounts.set_password, self.db_url, name, new, min_length=1)
            ns["message"] = f"New password for {name} (shown once): {new}"
        else:
            await asyncio.to_thread(accounts.delete_account, self.db_url, name)
            ns["message"] = f"account {name} deleted."
        hub_user = self.find_user(name)
        if hub_user is not None and action in ("revoke", "delete"):
            # Their browser sessions end now, and set-password links made before die: once
            # deleted, the account's state is "no account" again, as when a link was made.
            end_sessions(self, hub_user)
        self.log.info("admin %s: %s %s", me, action, name)
        await self._render(**ns)


class ChangePasswordHandler(_AuthPage):
    """``/hub/change-password``: a logged-in user changes their own password."""

    @web.authenticated
    async def get(self) -> None:
        await self._page("change-password.html")

    @web.authenticated
    async def post(self) -> None:
        current = self.get_body_argument("current_password", "", strip=False)
        new = self.get_body_argument("new_password", "", strip=False)
        confirm = self.get_body_argument("new_password_confirm", "", strip=False)
        try:
            if new != confirm:
                raise AccountError("the two new passwords differ")
            await self.authenticator.change_password(self.current_user.name, current, new)
        except AccountError as e:
            await self._page("change-password.html", status=400, error=str(e))
            return
        self.log.info("%s changed their password", self.current_user.name)
        await self._page("change-password.html", message="Password changed.")
