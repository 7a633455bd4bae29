"""``TwinhubKeycloakAuthenticator``: oauthenticator's GenericOAuthenticator for a Keycloak realm.

Configured by :func:`twinhub.keycloak.configure_hub` from the realm's discovery document.
What it adds to GenericOAuthenticator:

- the ID token of every login is verified (signature against the realm keys, issuer,
  audience, expiry with no leeway) and its ``sub`` must match the userinfo ``sub``;
- the account is bound to (issuer, ``sub``) in twinhub's database (``oidc_identities``), so
  a renamed or re-used ``preferred_username`` never takes over someone else's account;
- Keycloak group paths and realm roles become hub groups (``projects:x``, ``realm-role:r``);
- a refresh that finds the user no longer allowed ends their session;
- logout also ends the Keycloak session (end-session endpoint with ``id_token_hint``).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import jwt
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLogoutHandler
from tornado import web
from traitlets import Bool, List, Unicode

from twinhub.db import identities
from twinhub.keycloak import hub_group, role_group

from .accounts import AccountError, normalize_username


class KeycloakLogoutHandler(OAuthLogoutHandler):
    """``/hub/logout``: end the hub session, then the Keycloak session."""

    async def get(self) -> None:
        user = self.current_user
        state = await user.get_auth_state() if user else None
        self._kc_id_token = (state or {}).get("id_token")
        await super().get()

    async def render_logout_page(self) -> None:
        url = self.authenticator.end_session_redirect(getattr(self, "_kc_id_token", None))
        if url:
            self.redirect(url)
        else:
            await super().render_logout_page()


class TwinhubKeycloakAuthenticator(GenericOAuthenticator):
    """Log in through a Keycloak realm; see docs/keycloak.md."""

    logout_handler = KeycloakLogoutHandler

    issuer = Unicode("", help="Issuer the ID token must name (the realm URL, from discovery).").tag(
        config=True
    )

    jwks_url = Unicode("", help="Realm signing keys (jwks_uri, from discovery).").tag(config=True)

    id_token_algorithms = List(
        Unicode(), default_value=["RS256"], help="Signature algorithms accepted on ID tokens."
    ).tag(config=True)

    end_session_url = Unicode(
        "", help="Keycloak's end-session endpoint; empty: logout ends the hub session only."
    ).tag(config=True)

    post_logout_redirect_url = Unicode(
        "", help="Where Keycloak sends the browser after logout (must be registered on the client)."
    ).tag(config=True)

    db_url = Unicode(
        "", help="twinhub's database (Twinhub.db_url), holding the identity bindings."
    ).tag(config=True)

    user_prefix = Unicode(
        "twin-", help="Twinhub.user_prefix: Keycloak names must make valid OS account names."
    ).tag(config=True)

    adopt_existing_users = Bool(
        False, help="TwinhubKeycloak.adopt_existing_users (see there)."
    ).tag(config=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._jwks: jwt.PyJWKClient | None = None
        if self.db_url:
            from twinhub.db import check_schema, current_revision, upgrade

            if current_revision(self.db_url) is None:
                upgrade(self.db_url)
            check_schema(self.db_url)

    # -- groups -------------------------------------------------------------------------
    def _groups_from_auth_state(self, auth_state: dict) -> set[str]:
        info = auth_state.get(self.user_auth_state_key) or {}
        groups = {hub_group(p) for p in info.get("groups") or [] if isinstance(p, str)}
        roles = (info.get("realm_access") or {}).get("roles") or []
        return groups | {role_group(r) for r in roles if isinstance(r, str)}

    async def get_user_groups(self, auth_state: dict) -> set[str]:
        return self._groups_from_auth_state(auth_state)

    # -- tokens and claims ----------------------------------------------------------------
    def user_info_to_username(self, user_info: dict) -> str:
        name = user_info.get("preferred_username")
        if not name or not isinstance(name, str):
            raise web.HTTPError(
                403,
                "Keycloak sent no preferred_username for this account: the client's 'profile' "
                "scope (username mapper) is missing in the realm. Login refused.",
            )
        try:
            return normalize_username(name, self.user_prefix)
        except AccountError as e:
            raise web.HTTPError(
                403, f"Keycloak user name {name!r} cannot be used on this platform: {e}"
            ) from e

    def _verify_id_token(self, token_info: dict) -> dict:
        id_token = token_info.get("id_token")
        if not id_token:
            raise web.HTTPError(403, "Keycloak returned no ID token: is 'openid' in the scopes?")
        try:
            if self._jwks is None:
                self._jwks = jwt.PyJWKClient(self.jwks_url, cache_keys=True)
            key = self._jwks.get_signing_key_from_jwt(id_token).key
            return jwt.decode(
                id_token,
                key,
                algorithms=list(self.id_token_algorithms),
                audience=self.client_id,
                issuer=self.issuer,
                leeway=0,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError as e:
            why = "it has expired (check the clocks of Keycloak and the hub)"
            raise self._refused(why) from e
        except jwt.InvalidIssuerError as e:
            why = f"it was issued by {self._claim(id_token, 'iss')!r}, not {self.issuer!r}"
            raise self._refused(why) from e
        except jwt.InvalidAudienceError as e:
            why = f"it is for {self._claim(id_token, 'aud')!r}, not client {self.client_id!r}"
            raise self._refused(why) from e
        except (jwt.InvalidSignatureError, jwt.PyJWKClientError) as e:
            raise self._refused("its signature does not verify with the realm's keys") from e
        except jwt.InvalidTokenError as e:
            raise self._refused(str(e)) from e

    @staticmethod
    def _claim(token: str, name: str):
        return jwt.decode(token, options={"verify_signature": False}).get(name)

    def _refused(self, why: str) -> web.HTTPError:
        self.log.warning("Keycloak login refused: ID token rejected: %s", why)
        return web.HTTPError(403, f"Login refused: the ID token from Keycloak is invalid: {why}.")

    # -- login ----------------------------------------------------------------------------
    async def authenticate(self, handler, data=None, **kwargs) -> dict:
        params = self.build_access_tokens_request_params(handler, data)
        token_info = await self.get_token_info(handler, params)
        # PyJWKClient fetches keys with urllib: keep it off the event loop.
        claims = await asyncio.to_thread(self._verify_id_token, token_info)
        model = await self._token_to_auth_model(token_info)
        info = model["auth_state"][self.user_auth_state_key]
        if info.get("sub") != claims["sub"]:
            raise web.HTTPError(403, "Login refused: userinfo and ID token name different users.")
        if "groups" not in info and self.allowed_groups:
            # Not "in no group": the claim itself is missing, so membership is unknown.
            raise web.HTTPError(
                403,
                "Login refused: Keycloak sent no groups claim, so membership of the allowed "
                "groups cannot be checked: the client's 'groups' mapper is missing in the realm.",
            )
        name = model["name"]
        try:
            res = await asyncio.to_thread(
                identities.resolve,
                self.db_url,
                self.issuer,
                claims["sub"],
                name,
                hub_user_exists=handler.find_user(name) is not None,
                adopt_existing=self.adopt_existing_users,
            )
        except identities.IdentityConflict as e:
            self.log.warning("Keycloak login of %s (sub %s) refused: %s", name, claims["sub"], e)
            raise web.HTTPError(403, str(e)) from e
        if res.username != name:
            self.log.info("%s logs in as %s (renamed in Keycloak)", name, res.username)
        model["name"] = res.username
        model["auth_state"]["oidc_sub"] = claims["sub"]
        model["auth_state"]["oidc_username"] = name
        return model

    async def run_post_auth_hook(self, handler, auth_model: dict) -> dict:
        # Only here is the login allowed: bind the identity now, not for refused logins.
        state = auth_model.get("auth_state") or {}
        try:
            await asyncio.to_thread(
                identities.bind,
                self.db_url,
                self.issuer,
                state["oidc_sub"],
                auth_model["name"],
                state.get("oidc_username", auth_model["name"]),
            )
        except identities.IdentityConflict as e:
            raise web.HTTPError(403, str(e)) from e
        return await super().run_post_auth_hook(handler, auth_model)

    async def refresh_user(self, user, handler=None, **kwargs):
        result = await self._refresh(user, handler, **kwargs)
        if result is False and handler is not None and not hasattr(handler, "_token_authenticated"):
            # JupyterHub 6.1's refresh_auth reads this attribute, set only on token-authenticated
            # requests: without it a failed refresh of a browser session logs an AttributeError.
            handler._token_authenticated = False
        return result

    async def _refresh(self, user, handler=None, **kwargs):
        model = await super().refresh_user(user, handler, **kwargs)
        if not isinstance(model, dict):
            return model
        state = model.get("auth_state") or {}
        sub = (state.get(self.user_auth_state_key) or {}).get("sub")
        bound = await asyncio.to_thread(identities.bound_username, self.db_url, self.issuer, sub)
        if bound != user.name:
            self.log.warning(
                "refresh of %s returned another identity (%s): login again", user.name, sub
            )
            return False
        model["name"] = user.name
        state["oidc_sub"] = sub
        allowed = self.allow_all or model.get("admin") or user.name in self.allowed_users
        if not allowed and not set(model.get("groups") or []) & self.allowed_groups:
            self.log.info("%s is no longer in an allowed Keycloak group: session ended", user.name)
            return False
        return model

    # -- logout ---------------------------------------------------------------------------
    def end_session_redirect(self, id_token: str | None) -> str:
        if not self.end_session_url:
            return ""
        params = {"client_id": self.client_id}
        if self.post_logout_redirect_url:
            params["post_logout_redirect_uri"] = self.post_logout_redirect_url
        if id_token:
            params["id_token_hint"] = id_token
        return (
            self.end_session_url + ("&" if "?" in self.end_session_url else "?") + urlencode(params)
        )

    def delete_user(self, user) -> None:
        from .revoke import revoke_platform_access

        super().delete_user(user)
        revoke_platform_access(user.name)

    # -- pages ----------------------------------------------------------------------------
    def get_handlers(self, app) -> list[tuple[str, type]]:
        from ..hub_handlers import platform_handlers

        return [*super().get_handlers(app), *platform_handlers()]
