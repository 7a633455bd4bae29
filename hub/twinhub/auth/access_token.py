"""A login by Keycloak access token (``twinhub login``), the authenticator's side.

:class:`AccessTokenLogin` is what the token-exchange handler (:mod:`.token_exchange`) hands to
``get_authenticated_user``; :func:`access_token_auth_model` checks the token with Keycloak.
:class:`ExchangesAccessTokens` marks the authenticator that can (Keycloak's), so that the
handlers need not import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from tornado import web
from tornado.httpclient import HTTPClientError


@dataclass(frozen=True)
class AccessTokenLogin:
    """``data`` for ``Authenticator.get_authenticated_user``: a login by access token.

    A class of its own (never form data) so nothing a browser posts can select this path.
    """

    token: str


async def access_token_auth_model(authenticator, token: str) -> tuple[dict, str]:
    """Check ``token`` with Keycloak and build the auth model from userinfo, as a browser
    login does; returns (model, sub).  HTTPError 401/403 says what is wrong."""
    a = authenticator
    body = urlencode(
        {
            "token": token,
            "token_type_hint": "access_token",
            "client_id": a.client_id,
            "client_secret": a.client_secret,
        }
    )
    try:
        info = await a.httpfetch(
            a.introspection_url,
            "Introspecting a token for twinhub login...",
            method="POST",
            body=body,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            validate_cert=a.validate_server_cert,
        )
    except HTTPClientError as e:
        a.log.error("Keycloak token introspection failed: %s", e)
        raise web.HTTPError(
            502, "Keycloak could not check the token (introspection failed)."
        ) from e
    if not isinstance(info, dict) or not info.get("active"):
        raise web.HTTPError(
            401,
            "The Keycloak access token is not valid (expired, revoked or from another realm): "
            "run `twinhub login` again.",
        )
    client = info.get("client_id") or info.get("azp")
    allowed = {a.cli_client_id, a.client_id}
    if client not in allowed:
        raise web.HTTPError(
            403,
            f"The access token was issued to client {client!r}; this hub exchanges only tokens "
            f"of {' or '.join(repr(c) for c in sorted(allowed))}.",
        )
    if not info.get("sub"):
        raise web.HTTPError(401, "Keycloak's introspection names no user (sub) for the token.")
    try:
        model = await a._token_to_auth_model({"access_token": token, "token_type": "Bearer"})
    except HTTPClientError as e:
        if 400 <= e.code < 500:
            raise web.HTTPError(
                401, f"Keycloak's userinfo endpoint refused the token ({e.code})."
            ) from e
        raise
    return model, info["sub"]


class ExchangesAccessTokens:
    """Mixin of an authenticator that logs in Keycloak access tokens (:class:`AccessTokenLogin`),
    with the attributes :func:`access_token_auth_model` reads."""

    cli_client_id: str
    device_authorization_url: str
    introspection_url: str

    @property
    def device_login_configured(self) -> bool:
        """Whether ``twinhub login`` works: a CLI client and the realm's device
        authorization and introspection endpoints."""
        return bool(self.cli_client_id and self.device_authorization_url and self.introspection_url)
