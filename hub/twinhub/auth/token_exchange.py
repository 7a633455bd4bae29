"""``twinhub login``'s hub side: a Keycloak access token in, a JupyterHub API token out.

- ``GET /hub/api/twinhub/login-config`` (public, nothing secret): how to log in from a
  script: in Keycloak mode the realm's device authorization and token endpoints and the CLI's
  public client id; with local accounts, the hub's token page.
- ``POST /hub/api/twinhub/token-exchange`` with ``Authorization: Bearer <access token>``:
  the token is checked with Keycloak (introspection with the hub's client credentials:
  active, issued to the CLI client or the hub's own client; then userinfo for the claims),
  and the login goes through the authenticator exactly as a browser login does (the same
  ``get_authenticated_user``: sub binding, allowed groups, admin groups; then the same
  ``auth_to_user``: groups synced).  Answers a JupyterHub token with note "twinhub login".
  Refusals are 401 (token not valid) or 403 (not allowed) with a JSON message; no user is
  created then.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.utils import isoformat
from tornado import web

from .access_token import AccessTokenLogin, ExchangesAccessTokens

TOKEN_NOTE = "twinhub login"
_BEARER = re.compile(r"^\s*bearer\s+(\S+)\s*$", re.IGNORECASE)


def _keycloak(handler) -> Any:
    """The hub's Keycloak authenticator when device login is configured, else None."""
    a = handler.authenticator
    if isinstance(a, ExchangesAccessTokens) and a.device_login_configured:
        return a
    return None


class LoginConfigHandler(APIHandler):
    """``GET /api/twinhub/login-config``: what ``twinhub login`` needs; public."""

    def check_xsrf_cookie(self) -> None:
        # Public, read-only, and the same for everyone: no session is involved.
        return None

    async def get(self) -> None:
        a = _keycloak(self)
        self.set_header("Content-Type", "application/json")
        if a is None and isinstance(self.authenticator, ExchangesAccessTokens):
            self.write(
                json.dumps(
                    {
                        "mode": "keycloak",
                        "device_login": False,
                        "message": "Device login is off on this hub: TwinhubKeycloak."
                        "cli_client_id is empty, or the realm announces no device "
                        "authorization or introspection endpoint.",
                        "token_page": self.hub.base_url + "token",
                    }
                )
            )
            return
        if a is None:
            self.write(
                json.dumps(
                    {
                        "mode": "local",
                        "message": "This hub does not log in through Keycloak: sign in in a "
                        "browser and create a token on the token page.",
                        "token_page": self.hub.base_url + "token",
                    }
                )
            )
            return
        self.write(
            json.dumps(
                {
                    "mode": "keycloak",
                    "device_login": True,
                    "issuer": a.issuer,
                    "client_id": a.cli_client_id,
                    "device_authorization_endpoint": a.device_authorization_url,
                    "token_endpoint": a.token_url,
                    "scope": " ".join(a.scope),
                    "token_exchange_path": self.hub.base_url + "api/twinhub/token-exchange",
                    "token_expires_in": a.cli_token_expires_in or None,
                }
            )
        )


class TokenExchangeHandler(APIHandler):
    """``POST /api/twinhub/token-exchange``: Keycloak access token -> JupyterHub token."""

    def check_xsrf_cookie(self) -> None:
        # Authenticated by the bearer token alone (never by a cookie), like any API token.
        return None

    async def post(self) -> None:
        a = _keycloak(self)
        if a is None:
            raise web.HTTPError(
                404,
                "This hub does not log in through Keycloak (or has no device login client): "
                f"sign in in a browser and create a token at {self.hub.base_url}token.",
            )
        m = _BEARER.match(self.request.headers.get("Authorization", ""))
        if not m:
            raise web.HTTPError(
                401, "Send the Keycloak access token as 'Authorization: Bearer <token>'."
            )
        authenticated = await a.get_authenticated_user(self, AccessTokenLogin(m.group(1)))
        if authenticated is None:
            raise web.HTTPError(
                403,
                a.custom_403_message or "Your Keycloak account is not allowed on this platform.",
            )
        existing = self.find_user(authenticated["name"])
        if existing is not None:
            state = await existing.get_auth_state()
            if state and state.get("refresh_token"):
                # Keep the browser login's tokens (they can be refreshed; the CLI's access
                # token cannot be by the hub): groups and admin still come from this login.
                authenticated["auth_state"] = state
        user = await self.auth_to_user(authenticated)
        expires_in = a.cli_token_expires_in or None
        token = user.new_api_token(note=TOKEN_NOTE, expires_in=expires_in)
        orm_token = orm.APIToken.find(self.db, token)
        self.log.info(
            "twinhub login: issued a token to %s (expires in %s s)", user.name, expires_in
        )
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(
            json.dumps(
                {
                    "token": token,
                    "user": user.name,
                    "admin": user.admin,
                    "groups": sorted(g.name for g in user.groups),
                    "note": TOKEN_NOTE,
                    "expires_at": isoformat(orm_token.expires_at) if orm_token.expires_at else None,
                }
            )
        )


def login_handlers() -> list[tuple[str, type]]:
    """The hub API handlers of ``twinhub login`` (every authenticator adds them)."""
    return [
        (r"/api/twinhub/login-config", LoginConfigHandler),
        (r"/api/twinhub/token-exchange", TokenExchangeHandler),
    ]
