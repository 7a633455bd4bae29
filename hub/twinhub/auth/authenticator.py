"""``TwinhubLocalAuth``: JupyterHub authenticator over the ``local_accounts`` table."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque

from jupyterhub.auth import Authenticator
from tornado import web
from traitlets import Bool, Integer, Unicode, default

from ..db import check_schema, current_revision, upgrade
from ..hubconf.handlers import platform_handlers
from . import local_accounts as accounts
from .links import SetPasswordHandler, SetPasswordLinkAPIHandler
from .local_accounts import AccountError
from .pages import AuthorizeHandler, ChangePasswordHandler, SignupHandler
from .revoke import revoke_platform_access
from .token_exchange import login_handlers


class TwinhubLocalAuth(Authenticator):
    """Per-user passwords stored (as argon2id hashes) in twinhub's own database.

    Accounts are created by an admin (``twinhub user add``; or on the admin page, then a
    one-time set-password link from ``/hub/authorize``: :mod:`twinhub.auth.links`) or
    requested on ``/hub/signup`` and approved on ``/hub/authorize``; only approved accounts
    may log in.
    """

    db_url = Unicode(
        "",
        help="SQLAlchemy URL of twinhub's own database holding local_accounts. "
        "Set by twinhub.auth.part.configure_hub from Twinhub.db_url.",
    ).tag(config=True)

    min_password_length = Integer(
        accounts.DEFAULT_MIN_PASSWORD_LENGTH,
        help="Shortest password accepted on signup and password change.",
    ).tag(config=True)

    enable_signup = Bool(
        True,
        help="Offer /hub/signup, where people request an account that an admin approves.",
    ).tag(config=True)

    open_signup = Bool(
        False,
        help="Approve accounts requested on /hub/signup at once, without an admin. "
        "Only for closed networks: anyone who reaches the page gets an account.",
    ).tag(config=True)

    user_prefix = Unicode(
        "twin-",
        help="Prefix of OS accounts (Twinhub.user_prefix): names are refused when "
        "<prefix><name> could not be an OS account.",
    ).tag(config=True)

    set_password_link_hours = Integer(
        72,
        min=1,
        help="Hours a one-time set-password link stays valid (made by an admin on /hub/authorize "
        "for a user added on the admin page, or to reset a password).",
    ).tag(config=True)

    max_pending_signups = Integer(
        100,
        help="Signup requests waiting for approval above which /hub/signup refuses new ones "
        "(each costs a password hash and a row: an unauthenticated page must be bounded).",
    ).tag(config=True)

    max_failed_logins = Integer(
        5,
        help="Failed logins for one user name within lockout_seconds after which further "
        "attempts are refused until the window passes. 0 disables the limit.",
    ).tag(config=True)

    lockout_seconds = Integer(
        300, help="Window (seconds) over which failed logins are counted."
    ).tag(config=True)

    @default("any_allow_config")
    def _any_allow_config_default(self) -> bool:
        # Approval on /hub/authorize is this authenticator's allow list.
        return True

    @default("refresh_pre_spawn")
    def _refresh_pre_spawn_default(self) -> bool:
        # A withdrawn approval must stop someone from starting servers at once.
        return True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        if self.db_url:
            if current_revision(self.db_url) is None:
                # A fresh database holds nothing to back up: create the tables here so a
                # hub started without the supervisor's upgrade step still works.
                upgrade(self.db_url)
            # An older schema is left to backup_and_upgrade (it backs up first): refuse.
            check_schema(self.db_url)

    def _db(self) -> str:
        if not self.db_url:
            raise RuntimeError(
                "TwinhubLocalAuth.db_url is not set (twinhub.auth.part.configure_hub)"
            )
        return self.db_url

    # -- login ----------------------------------------------------------------------------
    def _locked(self, name: str) -> bool:
        if self.max_failed_logins <= 0:
            return False
        q = self._failures[name]
        cutoff = time.monotonic() - self.lockout_seconds
        while q and q[0] < cutoff:
            q.popleft()
        return len(q) >= self.max_failed_logins

    async def authenticate(self, handler, data: dict) -> dict | None:
        name = (data.get("username") or "").strip().lower()
        password = data.get("password") or ""
        if not name or not password:
            return None
        if self._locked(name):
            self.log.warning("login for %r refused: too many failed attempts", name)
            raise web.HTTPError(
                429, "Too many failed logins for this user name: wait a few minutes."
            )
        # argon2 takes tens of ms and 64 MiB: keep it off the event loop.
        info = await asyncio.to_thread(accounts.verify_login, self._db(), name, password)
        if info is None:
            self._failures[name].append(time.monotonic())
            return None
        self._failures.pop(name, None)
        if not info.approved:
            # Only said to someone who knows the password, so it reveals nothing.
            raise web.HTTPError(403, "Your account is waiting for approval by an administrator.")
        # admin None leaves the hub's admin flag as it is (it may be changed in the admin
        # panel); an account created as admin is made admin.
        return {"name": info.username, "admin": True if info.is_admin else None}

    def check_allowed(self, username: str, authentication: dict | None = None) -> bool:
        if super().check_allowed(username, authentication):
            return True
        info = accounts.get_account(self._db(), username)
        return bool(info and info.approved)

    async def refresh_user(self, user, handler=None):
        # A withdrawn approval or a deleted account ends existing sessions too.
        info = await asyncio.to_thread(accounts.get_account, self._db(), user.name)
        return bool(info and info.approved)

    def delete_user(self, user) -> None:
        super().delete_user(user)
        if accounts.delete_account(self._db(), user.name):
            self.log.info("deleted local account %s with its hub user", user.name)
        revoke_platform_access(user.name)

    async def admin_created_user(self, user) -> None:
        """An admin made ``user`` (the admin page, the REST API; twinhub.hubconf.handlers).
        A sign-up request of that name still waiting for approval was made by someone else
        before the user existed: approving it would hand the admin's user to them. It goes;
        the user gets in with a set-password link."""
        info = await asyncio.to_thread(accounts.get_account, self._db(), user.name)
        if info is not None and not info.approved:
            await asyncio.to_thread(accounts.delete_account, self._db(), user.name)
            self.log.warning(
                "removed the sign-up request %s: an admin made a user of that name", user.name
            )

    # -- pages ----------------------------------------------------------------------------
    def get_handlers(self, app) -> list[tuple[str, type]]:
        return [
            *super().get_handlers(app),
            *platform_handlers(),
            *login_handlers(),
            (r"/signup", SignupHandler),
            (r"/authorize", AuthorizeHandler),
            (r"/change-password", ChangePasswordHandler),
            (r"/set-password", SetPasswordHandler),
            (r"/api/twinhub/users/([^/]+)/set-password-link", SetPasswordLinkAPIHandler),
        ]

    # -- account operations used by the handlers ------------------------------------------
    async def request_account(self, name: str, password: str) -> accounts.AccountInfo:
        if not self.enable_signup:
            raise AccountError("signup is disabled on this platform")
        if not self.open_signup:
            pending = await asyncio.to_thread(accounts.count_pending, self._db())
            if pending >= self.max_pending_signups:
                raise AccountError(
                    "too many account requests are waiting for approval: try again later"
                )
        return await asyncio.to_thread(
            accounts.request_account,
            self._db(),
            name,
            password,
            approved=self.open_signup,
            min_length=self.min_password_length,
            prefix=self.user_prefix,
        )

    async def change_password(self, name: str, current: str, new: str) -> None:
        if await asyncio.to_thread(accounts.verify_login, self._db(), name, current) is None:
            raise AccountError("current password is wrong")
        await asyncio.to_thread(
            accounts.set_password, self._db(), name, new, min_length=self.min_password_length
        )
