"""One-time set-password links: how a user an admin made gets a way in (local accounts).

A user added on JupyterHub's admin page (``POST /hub/api/users``) is a hub user with no
local account, so no password. An admin makes them a link on the Accounts page
(``/hub/authorize``) or with ``POST /hub/api/twinhub/users/<name>/set-password-link``; the
user opens it, chooses a password, and logs in. The same link resets a forgotten password.

Nothing is stored: the link carries the name and its expiry, signed (HMAC-SHA256 under the
hub's cookie secret) together with the state of the user when it was made: the hub user's
``cookie_id`` and the account's password hash (or "no account"). Setting a password changes
the hash and renews the ``cookie_id``, so a link works once; it also dies when it expires
(``TwinhubLocalAuth.set_password_link_hours``), when its user is deleted or re-created, when
the account is deleted or its approval withdrawn on the Accounts page (both renew the
``cookie_id``), or when the password changes any other way.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

from jupyterhub import orm
from jupyterhub.apihandlers import APIHandler
from jupyterhub.handlers import BaseHandler
from jupyterhub.scopes import Scope, needs_scope
from tornado import web

from . import local_accounts as accounts
from .local_accounts import AccountError

_NO_ACCOUNT = "no-account"
# Longer tokens are refused unread: a link's token is ~200 characters, and the page is public.
_MAX_TOKEN = 2048
_INVALID = "This set-password link is not valid: ask an administrator for a new one."


class LinkError(ValueError):
    """A set-password link that cannot be used; the message says why (shown to the user)."""


def link_state(cookie_id: str, password_hash: str | None) -> str:
    """What a link is signed over: the hub user (its ``cookie_id``: a deleted and re-created
    user, or one whose sessions were ended, has a new one) and the account's password."""
    return f"{cookie_id}/{password_hash or _NO_ACCOUNT}"


def _mac(secret: bytes, name: str, expires: int, state: str) -> bytes:
    msg = json.dumps(["twinhub-set-password", name, expires, state]).encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest().encode()


def _secret(handler: web.RequestHandler) -> bytes:
    key = handler.settings["cookie_secret"]
    return key.encode() if isinstance(key, str) else key


def make_token(secret: bytes, name: str, state: str, lifetime_s: int) -> tuple[str, int]:
    """The link's token and its expiry (Unix seconds); ``state`` from :func:`link_state`."""
    expires = int(time.time()) + lifetime_s
    mac = _mac(secret, name, expires, state).decode()
    raw = json.dumps([name, expires, mac]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("="), expires


def parse_token(token: str) -> tuple[str, int, str]:
    """(name, expires, mac) as the token says, not yet checked; LinkError when unreadable."""
    try:
        if len(token) > _MAX_TOKEN:
            raise ValueError
        raw = base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4))
        name, expires, mac = json.loads(raw)
        if not (isinstance(name, str) and isinstance(expires, int) and isinstance(mac, str)):
            raise ValueError
        name.encode()  # a lone surrogate is no user name (and no database accepts it)
    except (ValueError, TypeError, RecursionError):
        # RecursionError: deeply nested JSON ("[[[[..."); UnicodeError is a ValueError.
        raise LinkError(_INVALID) from None
    return name, expires, mac


def check_token(secret: bytes, parsed: tuple[str, int, str], state: str | None) -> None:
    """LinkError unless ``parsed`` was signed over ``state`` (None: the user is gone) and has
    not expired."""
    name, expires, mac = parsed
    # A missing user gets the same answer as a wrong signature: the public page must not
    # tell which user names exist.
    good = _mac(secret, name, expires, state if state is not None else "")
    # Bytes: compare_digest refuses str with non-ASCII characters (a crafted token).
    # The state is checked before the expiry so a used link says so even once expired.
    if state is None or not hmac.compare_digest(good, mac.encode("utf-8", "replace")):
        raise LinkError(
            "This set-password link was already used or replaced: log in with your password, "
            "or ask an administrator for a new link."
        )
    if expires < time.time():
        raise LinkError("This set-password link has expired: ask an administrator for a new one.")


def read_token(secret: bytes, token: str, state_of) -> tuple[str, str]:
    """(user name, state) of a valid ``token``; LinkError otherwise. ``state_of(name)`` is
    the user's :func:`link_state` now (None: no such hub user)."""
    parsed = parse_token(token)
    state = state_of(parsed[0])
    check_token(secret, parsed, state)
    assert state is not None
    return parsed[0], state


def end_sessions(handler: BaseHandler, user) -> None:
    """Renew hub user ``user``'s ``cookie_id``: its browser sessions end (the login cookie
    names the old one) and every set-password link made for it dies."""
    user.orm_user.cookie_id = orm.new_token()
    handler.db.commit()


async def _state_now(handler: BaseHandler, user) -> tuple[str, str | None]:
    """(link state, password hash) of hub user ``user`` now."""
    auth = handler.authenticator
    pw = await asyncio.to_thread(accounts.password_state, auth._db(), user.name)
    return link_state(user.orm_user.cookie_id, pw), pw


async def new_link(handler: BaseHandler, name: str) -> dict:
    """A link for hub user ``name`` (an admin's request): {"url", "expires_at", "username"}."""
    auth = handler.authenticator
    # A link is a way into the account: only for whoever may manage every user. A holder of
    # admin:users narrowed to a group could otherwise take over any user in range, hub admins
    # included.
    if handler.parsed_scopes.get("admin:users") != Scope.ALL:
        raise web.HTTPError(
            403, "Set-password links need the admin:users permission over all users."
        )
    user = handler.find_user(name)
    if user is None:
        raise web.HTTPError(404, f"No user {name!r} on this hub.")
    state, pw = await _state_now(handler, user)
    info = await asyncio.to_thread(accounts.get_account, auth._db(), name) if pw else None
    if info is not None and not info.approved:
        # Never "approve it": anyone may have requested this name on /hub/signup, and
        # approving would hand them the hub user (with its admin flag and servers).
        raise web.HTTPError(
            409,
            f"Someone requested an account named {name!r} on the signup page; it waits for "
            "approval. It may not be this hub user's: delete the request on the Accounts "
            "page, then make a link.",
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

    def set_default_headers(self) -> None:
        super().set_default_headers()
        # The token is in the URL: never sent on as a Referer, never kept in a cache (set
        # here, not in prepare, so error pages carry them too).
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    async def _read(self) -> tuple[str, str | None]:
        """(name, password hash) of the link's user; LinkError when the link is not valid."""
        parsed = parse_token(self.get_argument("token", ""))
        user = self.find_user(parsed[0])
        if user is None:
            check_token(_secret(self), parsed, None)
        # The account's lookup is a blocking query: off the event loop (a public page).
        state, pw = await _state_now(self, user)
        check_token(_secret(self), parsed, state)
        return parsed[0], pw

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
            name, _ = await self._read()
        except LinkError as e:
            await self._page(400, error=str(e), done=True)
            return
        await self._page(username=name)

    async def post(self) -> None:
        try:
            name, state = await self._read()
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
        user = self.find_user(name)
        if user is not None:
            # Other links made for this user die with the cookie_id, and so do sessions opened
            # before the password was set (perhaps by whoever forgot it, or took it).
            end_sessions(self, user)
        self.log.info("%s set their password with a one-time link", name)
        await self._page(username=name, done=True, message="Password set: you can log in now.")
