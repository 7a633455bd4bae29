"""``TwinhubKeycloakAuthenticator``: oauthenticator's GenericOAuthenticator for a Keycloak realm.

Configured by :func:`twinhub.auth.realm.configure_hub` from the realm's discovery document.
What it adds to GenericOAuthenticator:

- the ID token of every login is verified (signature against the realm keys, issuer,
  audience, expiry with no leeway, and the OpenID ``nonce`` this login sent, derived from its
  state) and its ``sub`` must match the userinfo ``sub``;
- the account is bound to (issuer, ``sub``) in twinhub's database (``oidc_identities``), so
  a renamed or re-used ``preferred_username`` never takes over someone else's account;
- Keycloak group paths and realm roles become hub groups (``projects:x``, ``realm-role:r``);
- a refresh that finds the user no longer allowed ends their session;
- logout also ends the Keycloak session (end-session endpoint with ``id_token_hint``);
- ``twinhub login``: a Keycloak access token (device flow) is exchanged for a JupyterHub
  token under the same rules as a browser login (``twinhub.auth.token_exchange``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
from urllib.parse import quote, urlencode

import jwt
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLoginHandler, OAuthLogoutHandler
from tornado import web
from traitlets import Bool, Dict, Int, List, Unicode

from ..db import check_schema, current_revision, upgrade
from ..hubconf.handlers import platform_handlers
from . import identities
from .access_token import AccessTokenLogin, ExchangesAccessTokens, access_token_auth_model
from .groups import hub_group, role_group
from .local_accounts import AccountError, normalize_username
from .revoke import revoke_platform_access
from .token_exchange import login_handlers

# auth_state of a hub user made by an admin and not logged in yet (see admin_created_user).
ADMIN_CREATED = "twinhub_admin_created"


def _state_id(state: str) -> str:
    """The random ``state_id`` in oauthenticator's state (base64url JSON); '' if unreadable."""
    try:
        raw = base64.urlsafe_b64decode(state.encode() + b"=" * (-len(state) % 4))
        return str(json.loads(raw).get("state_id") or "")
    except (ValueError, AttributeError):
        return ""


def login_nonce(handler, state_id: str) -> str:
    """The OpenID nonce of the login whose state is ``state_id``: an HMAC under the hub's
    cookie secret, so nothing needs storing, and an ID token issued for another login (another
    state, another browser) never matches."""
    key = handler.settings["cookie_secret"]
    key = key.encode() if isinstance(key, str) else key
    return hmac.new(key, b"twinhub-oidc-nonce:" + state_id.encode(), hashlib.sha256).hexdigest()


class KeycloakLoginHandler(OAuthLoginHandler):
    """``/hub/oauth_login``: oauthenticator's, plus the ``nonce`` of OpenID Connect."""

    def authorize_redirect(self, *args, extra_params=None, **kwargs):
        # oauthenticator 17 has no hook for per-login parameters; this tornado method receives
        # the final parameters, the login's state among them, so the nonce is derived here.
        extra_params = dict(extra_params or {})
        idp = self.get_argument("idp", "")
        if idp:
            # A button of the login page: straight to that federated identity provider.
            if idp not in self.authenticator.identity_providers:
                raise web.HTTPError(
                    400, f"Unknown identity provider {idp!r}: choose one on the login page."
                )
            extra_params["kc_idp_hint"] = idp
        state_id = _state_id(extra_params.get("state", ""))
        if state_id:
            extra_params["nonce"] = login_nonce(self, state_id)
        return super().authorize_redirect(*args, extra_params=extra_params, **kwargs)


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


class TwinhubKeycloakAuthenticator(GenericOAuthenticator, ExchangesAccessTokens):
    """Log in through a Keycloak realm; see docs/keycloak.md."""

    login_handler = KeycloakLoginHandler
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

    device_authorization_url = Unicode(
        "", help="Keycloak's device authorization endpoint (discovery), for `twinhub login`."
    ).tag(config=True)

    introspection_url = Unicode(
        "", help="Keycloak's token introspection endpoint (discovery): checks exchanged tokens."
    ).tag(config=True)

    cli_client_id = Unicode("", help="TwinhubKeycloak.cli_client_id (see there).").tag(config=True)

    cli_token_expires_in = Int(0, help="TwinhubKeycloak.cli_token_expires_in (see there).").tag(
        config=True
    )

    db_url = Unicode(
        "", help="twinhub's database (Twinhub.db_url), holding the identity bindings."
    ).tag(config=True)

    user_prefix = Unicode(
        "twin-", help="Twinhub.user_prefix: Keycloak names must make valid OS account names."
    ).tag(config=True)

    adopt_existing_users = Bool(
        False, help="TwinhubKeycloak.adopt_existing_users (see there)."
    ).tag(config=True)

    identity_providers = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="TwinhubKeycloak.identity_providers (see there).",
    ).tag(config=True)

    admin_created_takeover = Bool(
        True, help="TwinhubKeycloak.admin_created_takeover (see there)."
    ).tag(config=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._jwks: jwt.PyJWKClient | None = None
        if self.db_url:
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

    def _check_nonce(self, claims: dict, nonce: str) -> None:
        got = str(claims.get("nonce", "")).encode()
        if not nonce or not hmac.compare_digest(got, nonce.encode()):
            raise self._refused(
                "its nonce does not match this login (an ID token from another login, replayed "
                "or injected)"
            )

    @staticmethod
    def _claim(token: str, name: str):
        return jwt.decode(token, options={"verify_signature": False}).get(name)

    def _refused(self, why: str) -> web.HTTPError:
        self.log.warning("Keycloak login refused: ID token rejected: %s", why)
        return web.HTTPError(403, f"Login refused: the ID token from Keycloak is invalid: {why}.")

    # -- login ----------------------------------------------------------------------------
    async def authenticate(self, handler, data=None, **kwargs) -> dict:
        if isinstance(data, AccessTokenLogin):
            # `twinhub login`: the token was checked by introspection instead of an ID token.
            model, sub = await access_token_auth_model(self, data.token)
            return await self._bind_checks(handler, model, sub, "introspection")
        params = self.build_access_tokens_request_params(handler, data)
        token_info = await self.get_token_info(handler, params)
        # PyJWKClient fetches keys with urllib: keep it off the event loop.
        claims = await asyncio.to_thread(self._verify_id_token, token_info)
        # The state cookie was checked against the callback's state by oauthenticator.
        state_id = _state_id(handler.get_state_cookie())
        self._check_nonce(claims, login_nonce(handler, state_id) if state_id else "")
        model = await self._token_to_auth_model(token_info)
        return await self._bind_checks(handler, model, claims["sub"], "ID token")

    async def _bind_checks(self, handler, model: dict, sub: str, source: str) -> dict:
        """What every login must pass, browser or `twinhub login`: one identity, the groups
        claim present when groups decide, and the (issuer, sub) binding of the account."""
        info = model["auth_state"][self.user_auth_state_key]
        if info.get("sub") != sub:
            raise web.HTTPError(403, f"Login refused: userinfo and {source} name different users.")
        if "groups" not in info and self.allowed_groups:
            # Not "in no group": the claim itself is missing, so membership is unknown.
            raise web.HTTPError(
                403,
                "Login refused: Keycloak sent no groups claim, so membership of the allowed "
                "groups cannot be checked: the client's 'groups' mapper is missing in the realm.",
            )
        name = model["name"]
        existing = handler.find_user(name)
        # A hub user an admin made on the admin page while Keycloak login is on is waiting for
        # the Keycloak identity of that name: not an account "from before" to protect.
        takeover = (
            existing is not None
            and self.admin_created_takeover
            and await self._admin_created(existing)
        )
        exists = existing is not None and not takeover
        if takeover and model.get("admin") is None:
            # Whoever claims the name gets the user, not the admin flag the admin page gave
            # it: admin comes from Keycloak (admin_groups; admin_users) or not at all. None
            # would keep the hub's flag.
            model["admin"] = False
        try:
            res = await asyncio.to_thread(
                identities.resolve,
                self.db_url,
                self.issuer,
                sub,
                name,
                hub_user_exists=exists,
                adopt_existing=self.adopt_existing_users,
            )
        except identities.IdentityConflict as e:
            self.log.warning("Keycloak login of %s (sub %s) refused: %s", name, sub, e)
            raise web.HTTPError(403, str(e)) from e
        if res.username != name:
            self.log.info("%s logs in as %s (renamed in Keycloak)", name, res.username)
        model["name"] = res.username
        model["auth_state"]["oidc_sub"] = sub
        model["auth_state"]["oidc_username"] = name
        return model

    async def admin_created_user(self, user) -> None:
        """Called for a user an admin made through the REST API (the admin page): mark it so
        the first Keycloak login of that name takes it (twinhub.hubconf.handlers)."""
        await user.save_auth_state({ADMIN_CREATED: True})

    @staticmethod
    async def _admin_created(user) -> bool:
        state = await user.get_auth_state()
        return bool(state and state.get(ADMIN_CREATED) and not state.get("oidc_sub"))

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
        super().delete_user(user)
        revoke_platform_access(user.name)

    # -- pages ----------------------------------------------------------------------------
    def get_custom_html(self, base_url: str) -> str:
        """The login page: with federated identity providers, a button for each beside the
        Keycloak one (JupyterHub renders this as a template with the login URL)."""
        if not self.identity_providers:
            return ""

        def text(s: str) -> str:
            # Operator-given names: HTML-escaped, and no Jinja syntax survives.
            return html.escape(s).replace("{", "&#123;").replace("}", "&#125;")

        sep = "{{ '&' if '?' in authenticator_login_url else '?' }}"
        items = "\n".join(
            f'    <li class="mb-2"><a role="button" class="btn btn-outline-secondary" '
            f'id="twinhub-idp-{text(alias)}" '
            f'href="{{{{ authenticator_login_url }}}}{sep}idp={quote(alias, safe="")}">'
            f"{text(name)}</a></li>"
            for alias, name in self.identity_providers.items()
        )
        return f"""<div class="service-login" id="twinhub-login-choices">
  <a role="button" class="btn btn-jupyter btn-lg" href="{{{{ authenticator_login_url }}}}">
    Sign in with {text(self.login_service)}</a>
  <p class="mt-3">or with your institution's account:</p>
  <ul class="list-unstyled" id="twinhub-idps">
{items}
  </ul>
</div>"""

    def get_handlers(self, app) -> list[tuple[str, type]]:
        return [*super().get_handlers(app), *platform_handlers(), *login_handlers()]
