"""Keycloak login mode: ``twinhub up --keycloak-url https://host/realms/<realm> ...``.

The :class:`TwinhubKeycloak` configurable holds what an operator sets; everything else
(endpoints, issuer, keys) comes from the realm's OpenID discovery document.  The supervisor
calls :func:`prepare` (moves the client secret into a 0600 secret file, checks the realm
answers); the hub process calls :func:`configure_hub` (through ``twinhub.auth.part.configure_hub``),
which configures :class:`twinhub.auth.keycloak.TwinhubKeycloakAuthenticator`.
See docs/keycloak.md.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from typing import Any

from traitlets import Bool, Dict, Float, Int, List, Unicode
from traitlets.config import Config, Configurable

from ..config import Twinhub
from ..errors import PlatformError
from .groups import hub_group, role_group

SECRET_NAME = "keycloak-client-secret"
SECRET_ENV = "TWINHUB_KEYCLOAK_CLIENT_SECRET"


class TwinhubKeycloak(Configurable):
    """Log in through a Keycloak realm (OpenID Connect) instead of local accounts."""

    url = Unicode(
        "",
        help="Keycloak realm URL, e.g. https://auth.example.org/realms/twinhub. Set: users log "
        "in through Keycloak (local accounts are off). Endpoints come from its discovery document.",
    ).tag(config=True)

    client_id = Unicode(
        "twinhub", help="Client id of the hub in the realm (a confidential OpenID Connect client)."
    ).tag(config=True)

    client_secret = Unicode(
        "",
        help="Client secret. Prefer the environment variable TWINHUB_KEYCLOAK_CLIENT_SECRET or "
        "--keycloak-client-secret: `twinhub up` moves it into <state>/secrets/"
        "keycloak-client-secret (0600) and it never reaches a command line or runtime.json. "
        "Empty: the secret file from an earlier start is used.",
    ).tag(config=True)

    admin_groups = List(
        Unicode(),
        help="Keycloak groups (full paths like /platform-admins) whose members are hub admins; "
        "others lose admin rights at their next login or refresh.",
    ).tag(config=True)

    allowed_groups = List(
        Unicode(),
        help="Keycloak groups (full paths) whose members may log in; others get a 403. "
        "Empty: every user of the realm may log in.",
    ).tag(config=True)

    role_scopes = Dict(
        key_trait=Unicode(),
        value_trait=List(Unicode()),
        help="Keycloak realm roles that grant JupyterHub scopes: {realm_role: [scope, ...]}. "
        "Each becomes the JupyterHub role keycloak-<realm_role>, held through the hub group "
        "realm-role:<realm_role> (every realm role of a user becomes such a group).",
    ).tag(config=True)

    idp_hint = Unicode(
        "",
        help="Keycloak identity-provider alias sent as kc_idp_hint: the login goes straight to "
        "that federated identity provider (e.g. an institution's SAML/OIDC IdP).",
    ).tag(config=True)

    identity_providers = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="Federated identity providers of the realm listed on the hub's login page, "
        "{alias: name shown}, e.g. {'uni-x': 'University X'}: each button sends the login "
        "straight to that provider (kc_idp_hint=<alias>), beside the plain Keycloak button.",
    ).tag(config=True)

    adopt_existing_users = Bool(
        False,
        help="Bind a Keycloak identity to an existing hub user or local account of the same name "
        "at its first Keycloak login. Off: such a login is refused, because the name may belong "
        "to someone else; turn on only when the names are known to be the same people.",
    ).tag(config=True)

    admin_created_takeover = Bool(
        True,
        help="Let the first Keycloak login with a user's name take a hub user an admin made on "
        "the hub's admin page (its servers, groups and roles; never its admin flag: that "
        "comes from admin_groups). The name is Keycloak's preferred_username: turn this off "
        "when people other than the intended user can claim a name in the realm (self-"
        "registration, federated identity providers choosing names at first login). Off: "
        "such logins are refused like any existing user's (see adopt_existing_users); create "
        "users in Keycloak instead.",
    ).tag(config=True)

    cli_client_id = Unicode(
        "twinhub-cli",
        help="Public client of `twinhub login` in the realm (device authorization grant on). "
        "The hub exchanges access tokens of this client (or of the hub's own client) for "
        "JupyterHub API tokens at /hub/api/twinhub/token-exchange. Empty: no device login.",
    ).tag(config=True)

    cli_token_expires_in = Int(
        7 * 24 * 3600,
        min=0,
        help="Lifetime in seconds of the JupyterHub API tokens `twinhub login` gets "
        "(0: they never expire; revoke them on the hub's token page).",
    ).tag(config=True)

    login_service = Unicode(
        "Keycloak", help="Name on the login button ('Sign in with <login_service>')."
    ).tag(config=True)

    scopes = List(
        Unicode(),
        default_value=["openid", "profile", "email"],
        help="OAuth scopes asked for; 'openid' is needed for the ID token.",
    ).tag(config=True)

    validate_cert = Bool(
        True, help="Verify Keycloak's TLS certificate (turn off only for test realms)."
    ).tag(config=True)

    discovery_timeout = Float(
        10.0, help="Seconds to wait for the realm's discovery document at start."
    ).tag(config=True)


class KeycloakError(RuntimeError):
    """Keycloak mode cannot be used as configured; the message says what to fix."""


def enabled(config: Config) -> bool:
    return bool(config.get("TwinhubKeycloak", {}).get("url", ""))


def discover(url: str, timeout: float = 10, validate_cert: bool = True) -> dict[str, Any]:
    """The realm's OpenID discovery document, checked for what the hub needs."""
    url = url.rstrip("/")
    where = url + "/.well-known/openid-configuration"
    ctx = None
    if not validate_cert:
        ctx = ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(where, timeout=timeout, context=ctx) as r:
            meta = json.load(r)
    except urllib.error.HTTPError as e:
        raise KeycloakError(
            f"Keycloak realm {url} answered {e.code} for {where}: is --keycloak-url the realm "
            "URL (https://host/realms/<realm>)?"
        ) from e
    except (OSError, ValueError) as e:
        raise KeycloakError(f"cannot read Keycloak discovery document {where}: {e}") from e
    missing = [
        k
        for k in (
            "issuer",
            "authorization_endpoint",
            "token_endpoint",
            "userinfo_endpoint",
            "jwks_uri",
        )
        if not meta.get(k)
    ]
    if missing:
        raise KeycloakError(f"discovery document {where} lacks {', '.join(missing)}")
    if meta["issuer"].rstrip("/") != url:
        raise KeycloakError(
            f"realm {url} declares issuer {meta['issuer']}: use that URL as --keycloak-url "
            "(Keycloak's frontend URL / hostname must match what users and the hub reach)"
        )
    return meta


def prepare(rt) -> None:
    """Supervisor side: move the client secret out of the config into a 0600 file and check
    the realm answers, so a mistake is one clear line before anything starts."""
    if not enabled(rt.config):
        return
    section = rt.config.TwinhubKeycloak
    secret = section.pop("client_secret", "") or os.environ.get(SECRET_ENV, "")
    path = rt.secrets_dir / SECRET_NAME
    rt.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if secret:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret)
        path.chmod(0o600)
    elif not path.exists():
        raise PlatformError(
            "Keycloak mode needs the client secret: --keycloak-client-secret, "
            f"${SECRET_ENV} or c.TwinhubKeycloak.client_secret"
        )
    kc = TwinhubKeycloak(config=rt.config)
    if not kc.client_id:
        raise PlatformError("Keycloak mode needs --keycloak-client-id")
    try:
        discover(kc.url, kc.discovery_timeout, kc.validate_cert)
    except KeycloakError as e:
        raise PlatformError(str(e)) from e


def read_client_secret(rt) -> str:
    if rt.kubernetes:
        # The chart's Secret, mounted: a missing key is named by Runtime.secret.
        return rt.secret(SECRET_NAME)
    path = rt.secrets_dir / SECRET_NAME
    try:
        return path.read_text().strip()
    except FileNotFoundError as e:
        raise KeycloakError(f"{path} is missing: start with `twinhub up`") from e


def configure_hub(c: Any, rt) -> None:
    """Hub side: GenericOAuthenticator (our subclass) configured from the realm URL alone."""
    # oauthenticator and jwt take ~0.15 s to import: `twinhub up` and hubs with local
    # accounts import this module too and never need them.
    from .keycloak import TwinhubKeycloakAuthenticator

    kc = TwinhubKeycloak(config=rt.config)
    if rt.kubernetes and not rt.public_url:
        # Browsers come back from Keycloak to the hub's public address; the in-cluster one
        # (service_urls["proxy"]) is no address a browser can reach.
        raise KeycloakError(
            "Keycloak login needs the platform's public URL for its OAuth callback: set "
            "twinhub.publicUrl in the chart's values"
        )
    meta = discover(kc.url, kc.discovery_timeout, kc.validate_cert)
    c.JupyterHub.authenticator_class = TwinhubKeycloakAuthenticator
    a = c.TwinhubKeycloakAuthenticator
    a.client_id = kc.client_id
    a.client_secret = read_client_secret(rt)
    a.authorize_url = meta["authorization_endpoint"]
    a.token_url = meta["token_endpoint"]
    a.userdata_url = meta["userinfo_endpoint"]
    a.issuer = meta["issuer"]
    a.jwks_url = meta["jwks_uri"]
    a.id_token_algorithms = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
    a.end_session_url = meta.get("end_session_endpoint", "")
    # `twinhub login` (device flow + token exchange); off when the realm lacks either endpoint.
    a.device_authorization_url = meta.get("device_authorization_endpoint", "")
    a.introspection_url = meta.get("introspection_endpoint", "")
    a.cli_client_id = kc.cli_client_id
    a.cli_token_expires_in = kc.cli_token_expires_in
    a.oauth_callback_url = rt.url + "hub/oauth_callback"
    a.post_logout_redirect_url = rt.url + "hub/"
    a.username_claim = "preferred_username"
    a.scope = list(kc.scopes)
    a.login_service = kc.login_service
    a.enable_pkce = True
    a.validate_server_cert = kc.validate_cert
    a.enable_auth_state = True
    a.manage_groups = True
    a.refresh_pre_spawn = True
    a.db_url = rt.db_url
    a.user_prefix = Twinhub(config=rt.config).user_prefix
    a.adopt_existing_users = kc.adopt_existing_users
    a.admin_created_takeover = kc.admin_created_takeover
    a.admin_groups = {hub_group(g) for g in kc.admin_groups}
    a.allowed_groups = {hub_group(g) for g in kc.allowed_groups}
    # Realm membership is the allow list unless groups narrow it.
    a.allow_all = not kc.allowed_groups
    if kc.allowed_groups:
        a.custom_403_message = (
            "Your Keycloak account is not in a group allowed on this platform ("
            + ", ".join(sorted(kc.allowed_groups))
            + "). Ask your project manager to add you."
        )
    if kc.idp_hint:
        a.extra_authorize_params = {"kc_idp_hint": kc.idp_hint}
    a.identity_providers = dict(kc.identity_providers)
    roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
    for role, scopes in sorted(kc.role_scopes.items()):
        roles.append(
            {
                "name": f"keycloak-{role}",
                "description": f"Granted by the Keycloak realm role {role}",
                "scopes": list(scopes),
                "groups": [role_group(role)],
            }
        )
    c.JupyterHub.load_roles = roles
    own = rt.config.get("TwinhubKeycloakAuthenticator", {})
    if own:
        # What an operator set on the authenticator itself wins.
        a.merge(own)
