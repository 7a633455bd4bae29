"""One-time set-password links: how a user an admin made gets a way in (local accounts).

A user added on JupyterHub's admin page (``POST /hub/api/users``) is a hub user with no
local account, so no password. An admin makes them a link on the Accounts page
(``/hub/authorize``) or with ``POST /hub/api/twinhub/users/<name>/set-password-link``; the
user opens it, chooses a password, and logs in. The same link resets a forgotten password.

Nothing is stored: the link carries the name and its expiry, signed (HMAC-SHA256 under the
hub's cookie secret) together with the account's state when it was made (no account, or
the current password hash). Setting a password changes that state, so a link works once;
it also dies when it expires (``TwinhubLocalAuth.set_password_link_hours``), when its user
is deleted, or when the password changes any other way.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

from jupyterhub.apihandlers import APIHandler
from jupyterhub.handlers import BaseHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from . import local_accounts as accounts
from .local_accounts import AccountError

_NO_ACCOUNT = "no-account"


class LinkError(ValueError):
    """A set-password link that cannot be used; the message says why (shown to the user)."""


def _mac(secret: bytes, name: str, expires: int, state: str) -> str:
    msg = json.dumps(["twinhub-set-password", name, expires, state]).encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def _secret(handler: web.RequestHandler) -> bytes:
    key = handler.settings["cookie_secret"]
    return key.encode() if isinstance(key, str) else key


def make_token(secret: bytes, name: str, state: str | None, lifetime_s: int) -> tuple[str, int]:
    """The link's token and its expiry (Unix seconds)."""
    expires = int(time.time()) + lifetime_s
    mac = _mac(secret, name, expires, state or _NO_ACCOUNT)
    raw = json.dumps([name, expires, mac]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("="), expires


def read_token(secret: bytes, token: str, state_of) -> tuple[str, str | None]:
    """(user name, account state) of a valid ``token``; LinkError otherwise.
    ``state_of(name)`` is the account's state now (None: no account)."""
    try:
        raw = base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4))
        name, expires, mac = json.loads(raw)
        if not (isinstance(name, str) and isinstance(expires, int) and isinstance(mac, str)):
            raise ValueError
    except (ValueError, TypeError):
        raise LinkError(
            "This set-password link is not valid: ask an administrator for a new one."
        ) from None
    state = state_of(name)
    good = _mac(secret, name, expires, state or _NO_ACCOUNT)
    # The state is checked before the expiry so a used link says so even once expired.
    if not hmac.compare_digest(good, mac):
        raise LinkError(
            "This set-password link was already used or replaced: log in with your password, "
            "or ask an administrator for a new link."
        )
    if expires < time.time():
        raise LinkError("This set-password link has expired: ask an administrator for a new one.")
    return name, state


async def new_link(handler: BaseHandler, name: str) -> dict:
    """A link for hub user ``name`` (an admin's request): {"url", "expires_at", "username"}."""
    auth = handler.authenticator
    if handler.find_user(name) is None:
        raise web.HTTPError(404, f"No user {name!r} on this hub.")
    state = await asyncio.to_thread(accounts.password_state, auth._db(), name)
    info = await asyncio.to_thread(accounts.get_account, auth._db(), name) if state else None
    if info is not None and not info.approved:
        raise web.HTTPError(
            409, f"{name!r} requested an account that waits for approval: approve it instead."
        )
    token, expires = make_token(_secret(handler), name, state, auth.set_password_link_hours * 3600)
    url = (
        f"{handler.request.protocol}://{handler.request.host}"
        f"{handler.hub.base_url}set-password?token={token}"
    )
    handler.log.info("set-password link made for %s by %s", name, handler.current_user.name)
    return {
        "username": name,
        "url": url,
        "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
    }


class SetPasswordLinkAPIHandler(APIHandler):
    """``POST /hub/api/twinhub/users/<name>/set-password-link`` (admins): a new link."""

    @needs_scope("admin:users")
    async def post(self, user_name: str) -> None:
        self.finish(json.dumps(await new_link(self, user_name)))


class SetPasswordHandler(BaseHandler):
    """``/hub/set-password?token=``: the user behind a link chooses their password."""

    def _read(self) -> tuple[str, str | None]:
        token = self.get_argument("token", "")
        auth = self.authenticator
        name, state = read_token(
            _secret(self), token, lambda n: accounts.password_state(auth._db(), n)
        )
        if self.find_user(name) is None:
            raise LinkError("This link's user no longer exists on this hub.")
        return name, state

    async def _page(self, status: int = 200, **ns) -> None:
        self.set_status(status)
        html = await self.render_template(
            "set-password.html",
            authenticator=self.authenticator,
            token=self.get_argument("token", ""),
            **ns,
        )
        self.finish(html)

    async def get(self) -> None:
        try:
            name, _ = self._read()
        except LinkError as e:
            await self._page(400, error=str(e), done=True)
            return
        await self._page(username=name)

    async def post(self) -> None:
        try:
            name, state = self._read()
        except LinkError as e:
            await self._page(400, error=str(e), done=True)
            return
        new = self.get_body_argument("new_password", "", strip=False)
        confirm = self.get_body_argument("new_password_confirm", "", strip=False)
        auth = self.authenticator
        try:
            if new != confirm:
                raise AccountError("the two passwords differ")
            if state is None:
                await asyncio.to_thread(
                    accounts.create_account,
                    auth._db(),
                    name,
                    password=new,
                    approved=True,
                    min_length=auth.min_password_length,
                    prefix=auth.user_prefix,
                )
            elif not await asyncio.to_thread(
                accounts.replace_password,
                auth._db(),
                name,
                new,
                state,
                min_length=auth.min_password_length,
            ):
                raise LinkError("This set-password link was just used: ask for a new one.")
        except AccountError as e:
            # Policy refusals keep the form: the link is not spent.
            await self._page(400, error=str(e), username=name)
            return
        except LinkError as e:
            await self._page(400, error=str(e), done=True)
            return
        self.log.info("%s set their password with a one-time link", name)
        await self._page(username=name, done=True, message="Password set: you can log in now.")
