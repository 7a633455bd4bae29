"""JupyterHub authentication for ASGI services (Starlette/FastAPI apps such as the STAC API).

Tornado services get this from ``jupyterhub.services.auth.HubOAuthenticated``; ASGI apps
have nothing upstream, so :class:`HubAuthMiddleware` does the same job around any ASGI app:

- ``Authorization: token <t>`` / ``Bearer <t>`` (scripts, notebooks: ``$JUPYTERHUB_API_TOKEN``);
- a browser without a token is sent through the hub's OAuth (single sign-on: no second
  login), and comes back to ``<prefix>oauth_callback``, which stores the token in an
  HttpOnly cookie limited to the service's path. The pending login (OAuth state, where to
  return, when it began) travels in a signed cookie, keyed by the service's token, so any
  replica of the service can finish a login another began, and nothing is kept per login
  (anyone can start one); it is good for ``STATE_MAX_AGE`` seconds;
- every token is checked with the hub (cached briefly) and must carry the service's access
  scope (``access:services!service=<name>``), else 403 naming the missing scope.

The cookie is accepted for safe methods (GET/HEAD) only: pages of other users' servers share
the origin, and must not be able to make a logged-in browser write through the service.
A service with pages that write (``xsrf_writes=True``) also accepts a cookie write that
carries the page's anti-forgery value (:func:`xsrf_token`, in ``scope["state"]["xsrf"]``
for the page to embed; only for navigations, not for a script's ``fetch()`` or a frame)
in ``X-Twinhub-XSRF`` from the same origin. ``scope["state"]["auth_source"]`` says how
the caller authenticated (``"header"``, ``"cookie"``; None: anonymous). That stops other sites
(which cannot read the page), not pages served on the same origin (which can), as the
registry's security docs explain.

``anonymous_paths`` answer without credentials too (``hub_user`` is None), for pages and
catalogues anyone may read; credentials sent there are still checked.
The hub's user model lands in ``scope["state"]["hub_user"]`` for the app.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import httpx
from jupyterhub.services.auth import HubOAuth

from .asgi import ASGIApp, BadRequest, Receive, Scope, Send, header, send_error

log = logging.getLogger("twinhub.hubauth")


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Seconds a browser's OAuth login may take (the hub's own state lifetime).
STATE_MAX_AGE = 600
#: A longer path + query is not kept as the place to return to (the service root is).
MAX_NEXT_URL = 2048
#: Bytes of the signed state cookie's value at most (browsers keep cookies up to ~4 kB,
#: name included): a next URL that would make it longer is replaced by the service root.
MAX_STATE_COOKIE = 3500
#: Seconds a replica's clock may run behind the one that began the login.
CLOCK_SKEW = 60
#: What a token may look like: printable ASCII, bounded (hub tokens are ~40 characters).
_TOKEN = re.compile(r"[\x21-\x7e]{1,1024}")
_DOT_SEGMENT = re.compile(r"(^|/)\.\.?(/|$)")
#: The header a page's script sends its anti-forgery value in (pages: a meta tag).
XSRF_HEADER = b"x-twinhub-xsrf"


def _safe_next(next_url: str, prefix: str) -> bool:
    """Whether a post-login target stays under ``prefix``: the prefix check alone lets
    ``<prefix>../../user/x/`` through, which the browser resolves off the service. Dot
    segments are looked for in every percent-decoding of the path (a browser reads ``%2e``
    as a dot), with ``\\`` read as ``/`` as browsers do."""
    if not next_url.startswith(prefix):
        return False
    path = next_url.split("?", 1)[0]
    for _ in range(8):
        if _DOT_SEGMENT.search(path.replace("\\", "/")):
            return False
        decoded = unquote(path)
        if decoded == path:
            return True
        path = decoded
    return False  # still escaped after 8 rounds: nobody's genuine path


def xsrf_token(service_token: str, cookie_token: str) -> str:
    """The anti-forgery value for a browser session: an HMAC of its cookie's token keyed by
    the service's own API token (no state kept; another site can neither read nor make it,
    and it changes with every login)."""
    mac = hmac.new(service_token.encode(), b"twinhub-xsrf\0" + cookie_token.encode(), "sha256")
    return mac.hexdigest()


def token_cookie_name(prefix: str) -> str:
    """The name of the cookie holding a browser's hub token for the service at ``prefix``
    (``/services/registry/`` → ``twinhub-services-registry-token``)."""
    return "twinhub-" + prefix.strip("/").replace("/", "-") + "-token"


async def send_redirect(send: Send, location: str, headers=()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 302,
            "headers": [(b"location", location.encode()), (b"content-length", b"0"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": b""})


class HubAuthMiddleware:
    """Authenticate every request to ``app`` against JupyterHub (see the module docstring).

    ``prefix`` is the service's public path (``/services/stac/``); ``public_paths`` (relative
    to it, e.g. ``_mgmt/ping``) answer without credentials (health checks only).
    ``anonymous_paths`` (relative; ``""`` the prefix itself; ending in ``/``: everything
    below) pass without credentials as ``hub_user`` None, and with a cookie that is no
    longer valid likewise; a token sent in a header is checked as anywhere else.
    ``xsrf_writes``: accept cookie writes that carry the page's :func:`xsrf_token`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        prefix: str,
        public_paths: tuple[str, ...] = (),
        anonymous_paths: tuple[str, ...] = (),
        xsrf_writes: bool = False,
        hub_auth: HubOAuth | None = None,
        cache_max_age: int = 60,
    ) -> None:
        self.app = app
        self.prefix = "/" + prefix.strip("/") + "/"
        self.public = {self.prefix + p.lstrip("/") for p in public_paths}
        rel = [p.lstrip("/") for p in anonymous_paths]
        self.anonymous = {self.prefix + p for p in rel if not p.endswith("/")}
        if "" in rel:  # the root, also as the proxy may pass it: without the final slash
            self.anonymous.add(self.prefix.rstrip("/"))
        self.anonymous_below = tuple(self.prefix + p for p in rel if p.endswith("/"))
        self.xsrf_writes = xsrf_writes
        # HubOAuth reads JUPYTERHUB_API_TOKEN/_API_URL/_CLIENT_ID/_SERVICE_NAME from the env.
        self.hub_auth = hub_auth or HubOAuth(cache_max_age=cache_max_age)
        self.cookie = token_cookie_name(self.prefix)
        self.state_cookie = self.cookie.removesuffix("-token") + "-oauth-state"

    # -- the signed pending login ----------------------------------------------------------
    def _state_key(self) -> bytes:
        """Key of the state cookie's MAC: derived from the service's token, which every
        replica shares (no extra secret), and apart from the XSRF value's use of it."""
        msg = b"twinhub-oauth-state\0" + self.state_cookie.encode()
        return hmac.new(self.hub_auth.api_token.encode(), msg, hashlib.sha256).digest()

    def _verifier(self, state: str, issued: int) -> str:
        """The login's PKCE verifier, derived from its state (so it never travels to the
        browser, and any replica finds it again): 43 URL-safe characters, as RFC 7636 asks."""
        mac = hmac.new(self._state_key(), f"pkce\0{state}\0{issued}".encode(), hashlib.sha256)
        return _b64(mac.digest())

    def _sign_state(self, payload: dict[str, Any]) -> str:
        """``<payload>.<mac>``, both unpadded base64url (cookie-safe characters only)."""
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        mac = hmac.new(self._state_key(), body.encode(), hashlib.sha256).digest()
        return body + "." + _b64(mac)

    def _open_state(self, value: str) -> dict[str, Any] | None:
        """The payload of a state cookie this service signed, unexpired; else None."""
        body, _, mac = value.partition(".")
        if not body or not mac or len(value) > MAX_STATE_COOKIE:
            return None
        want = hmac.new(self._state_key(), body.encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(_unb64(mac), want):
                return None
            payload = json.loads(_unb64(body))
        except ValueError:  # binascii.Error and JSONDecodeError are ValueErrors
            return None
        if not isinstance(payload, dict):
            return None
        state, next_url, issued = payload.get("s"), payload.get("n"), payload.get("t")
        if not (isinstance(state, str) and isinstance(next_url, str) and type(issued) is int):
            return None
        if not -CLOCK_SKEW <= time.time() - issued <= STATE_MAX_AGE:
            return None
        return payload

    # -- helpers ---------------------------------------------------------------------------
    def _cookies(self, scope: Scope) -> dict[str, str]:
        jar = SimpleCookie()
        try:
            jar.load(header(scope, b"cookie"))
        except Exception:  # a malformed Cookie header from elsewhere on the origin
            return {}
        return {k: m.value for k, m in jar.items()}

    def _set_cookie(self, name: str, value: str, scope: Scope, max_age: int) -> tuple:
        secure = "; Secure" if _scheme(scope) == "https" else ""
        c = f"{name}={value}; Path={self.prefix}; HttpOnly; SameSite=Lax; Max-Age={max_age}"
        return (b"set-cookie", (c + secure).encode())

    async def _user_for(self, token: str) -> dict[str, Any] | None:
        try:
            return await self.hub_auth.user_for_token(token, use_cache=True, sync=False)
        except Exception as e:  # the hub is down or refused us: say so, do not pass
            log.error("cannot check a token with the hub: %s", e)
            raise

    # -- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in self.public:
            await self.app(scope, receive, send)
            return
        if path == self.prefix + "oauth_callback":
            await self._oauth_callback(scope, send)
            return

        method = scope.get("method", "GET")
        # dot segments are left as sent; a path with them is not treated as the page it
        # might resolve to (".../static/../api/..." is not anonymous)
        anonymous_ok = (path in self.anonymous or path.startswith(self.anonymous_below)) and (
            not _DOT_SEGMENT.search(path)
        )
        state = scope.setdefault("state", {})
        state["xsrf"] = None
        # How the caller authenticated ("header", "cookie"; None: anonymous): services
        # refuse their most dangerous writes to browser sessions (any page on the origin
        # can drive one).
        state["auth_source"] = None
        token, source = _header_token(scope), "header"
        if not token:
            token, source = self._cookies(scope).get(self.cookie, ""), "cookie"
        if token and source == "cookie" and method not in SAFE_METHODS:
            refusal = self._xsrf_refusal(scope, token)
            if refusal:
                await send_error(send, 403, refusal)
                return
        if not token:
            if anonymous_ok:
                await self._anonymous(scope, receive, send)
                return
            await self._login_or_401(scope, send)
            return
        if not _TOKEN.fullmatch(token):  # no hub token looks like this: not worth asking
            if anonymous_ok and source == "cookie":
                await self._anonymous(scope, receive, send)
                return
            await send_error(
                send,
                401,
                "invalid token: not a JupyterHub API token",
                [(b"www-authenticate", b'token realm="jupyterhub"')],
            )
            return
        try:
            user = await self._user_for(token)
        except Exception:
            await send_error(send, 502, "cannot reach the hub to check the token")
            return
        if user is None:
            if anonymous_ok and source == "cookie":  # a stale session reads as anyone may
                await self._anonymous(scope, receive, send)
                return
            if source == "cookie" and method in SAFE_METHODS and _wants_html(scope):
                await self._login_or_401(scope, send)  # expired session: log in again
                return
            await send_error(
                send,
                401,
                "invalid or expired token",
                [(b"www-authenticate", b'token realm="jupyterhub"')],
            )
            return
        granted = self.hub_auth.check_scopes(self.hub_auth.access_scopes, user)
        if not granted:
            need = " or ".join(sorted(self.hub_auth.access_scopes))
            await send_error(send, 403, f"the token of {user.get('name')!r} lacks the scope {need}")
            return
        state["hub_user"] = user
        state["auth_source"] = source
        if source == "cookie" and _is_navigation(scope):
            state["xsrf"] = xsrf_token(self.hub_auth.api_token, token)
        await self.app(scope, receive, send)

    async def _anonymous(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"]["hub_user"] = None
        await self.app(scope, receive, send)

    def _xsrf_refusal(self, scope: Scope, cookie_token: str) -> str | None:
        """None if a cookie-authenticated write may go on, else the 403 message."""
        method = scope.get("method", "")
        if not self.xsrf_writes:
            return (
                f"{method} needs an 'Authorization: token ...' header; a "
                "browser session may only read"
            )
        sent = header(scope, XSRF_HEADER)
        if not sent:
            return (
                f"{method} from a browser session needs the X-Twinhub-XSRF header of the "
                "service's page (or send 'Authorization: token ...')"
            )
        expected = xsrf_token(self.hub_auth.api_token, cookie_token)
        if not hmac.compare_digest(sent.encode("latin-1"), expected.encode()):
            return f"{method} refused: X-Twinhub-XSRF does not match this browser session"
        fetch_site = header(scope, b"sec-fetch-site")
        if fetch_site and fetch_site != "same-origin":
            return f"{method} refused: the request comes from another site ({fetch_site})"
        origin = header(scope, b"origin")
        if origin and not _own_origin(scope, origin):
            return f"{method} refused: Origin {origin[:200]!r} is not this site"
        return None

    async def _login_or_401(self, scope: Scope, send: Send) -> None:
        if scope.get("method") in ("GET", "HEAD") and _wants_html(scope):
            state = secrets.token_urlsafe(16)
            issued = int(time.time())
            verifier = self._verifier(state, issued)
            challenge = _b64(hashlib.sha256(verifier.encode()).digest())  # PKCE's S256
            next_url = scope.get("path", self.prefix)
            if scope.get("query_string"):
                next_url += "?" + scope["query_string"].decode("latin-1")
            if len(next_url) > MAX_NEXT_URL or not _safe_next(next_url, self.prefix):
                next_url = self.prefix  # not worth keeping, or it would leave the service
            cookie = self._sign_state({"s": state, "n": next_url, "t": issued})
            if len(cookie) > MAX_STATE_COOKIE:  # (non-ASCII paths grow when encoded)
                cookie = self._sign_state({"s": state, "n": self.prefix, "t": issued})
            params = {
                "client_id": self.hub_auth.oauth_client_id,
                "redirect_uri": self.hub_auth.oauth_redirect_uri,
                "response_type": "code",
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
            url = self.hub_auth.oauth_authorization_url + "?" + urlencode(params)
            await send_redirect(
                send,
                url,
                headers=[self._set_cookie(self.state_cookie, cookie, scope, STATE_MAX_AGE)],
            )
            return
        await send_error(
            send,
            401,
            "authentication required: send 'Authorization: token <JupyterHub "
            "API token>' (in a user server: $JUPYTERHUB_API_TOKEN), or log in with a browser",
            [(b"www-authenticate", b'token realm="jupyterhub"')],
        )

    async def _oauth_callback(self, scope: Scope, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        code = (query.get("code") or [""])[0]
        state = (query.get("state") or [""])[0]
        cookie_state = self._cookies(scope).get(self.state_cookie, "")
        if not code or not state:
            await send_error(send, 400, "oauth_callback needs code and state")
            return
        pending = self._open_state(cookie_state) if cookie_state else None
        if pending is None or not secrets.compare_digest(state.encode(), pending["s"].encode()):
            await send_error(
                send, 403, "OAuth state does not match this browser's login (or it expired)"
            )
            return
        next_url, verifier = pending["n"], self._verifier(pending["s"], pending["t"])
        try:
            token = await self.hub_auth.token_for_code(code, code_verifier=verifier, sync=False)
        except Exception as e:
            await send_error(send, 403, f"OAuth login failed: {e}")
            return
        if not _safe_next(next_url, self.prefix):  # never redirect off the service
            next_url = self.prefix
        await send_redirect(
            send,
            quote(next_url, safe="/?&=%:+,"),
            headers=[
                self._set_cookie(self.cookie, token, scope, 24 * 3600),
                self._set_cookie(self.state_cookie, "", scope, 0),
            ],
        )


async def hub_user_model(
    client: httpx.AsyncClient, hub_api: str, name: str
) -> dict[str, Any] | None:
    """The hub's model of user ``name`` (admin flag, groups), asked with the service's own
    token (``client``'s); None if there is none. The hub out of reach or failing: a 502."""
    try:
        r = await client.get(f"{hub_api}/users/{quote(name, safe='')}")
    except httpx.HTTPError as e:
        raise BadRequest(f"cannot reach the hub: {e}", 502) from e
    if r.status_code == 404:
        return None
    if r.status_code != 200:
        raise BadRequest(f"the hub answered {r.status_code} for user {name!r}", 502)
    return r.json()


def has_scope(user: dict[str, Any], scope: str, target: str = "") -> bool:
    """Whether the token behind ``user`` (the hub's model for a token: its expanded scopes)
    carries ``scope`` unfiltered, or filtered to ``target`` (``"user=bob"``,
    ``"group=lab"``). Services decide from the token's scopes, as JupyterHub's own API does:
    an admin's token narrowed to one service's access scope carries no admin power."""
    scopes = user.get("scopes") or ()
    return scope in scopes or bool(target) and f"{scope}!{target}" in scopes


#: What a token must carry for a service to grant it an administrator's powers (the hub's
#: admin role has it; a token narrowed to a service's access scope does not).
ADMIN_SCOPE = "admin:users"


def acts_as_admin(user: dict[str, Any]) -> bool:
    """An admin user calling with a token that carries the admin scope."""
    return bool(user.get("admin")) and has_scope(user, ADMIN_SCOPE)


def scope_refusal(user: dict[str, Any], scope: str, action: str, target: str = "") -> str:
    """The 403 message for a token without ``scope``: names the scope and the caller."""
    filtered = f" (or {scope}!{target})" if target else ""
    return (
        f"{action} needs a token with the scope {scope!r}{filtered}; the token of "
        f"{user.get('name')!r} lacks it"
    )


def admin_refusal(user: dict[str, Any], action: str) -> str | None:
    """None if ``user`` may act as an admin (:func:`acts_as_admin`), else the 403 message:
    not an admin, or an admin whose token lacks :data:`ADMIN_SCOPE` (narrowed)."""
    if not user.get("admin"):
        return f"only admins may {action}; {user.get('name')!r} is not one"
    if not has_scope(user, ADMIN_SCOPE):
        return scope_refusal(user, ADMIN_SCOPE, f"to {action}, an admin")
    return None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    """Raises ValueError (binascii.Error) for what :func:`_b64` did not make."""
    return base64.urlsafe_b64decode(text.encode("ascii") + b"=" * (-len(text) % 4))


#: The scope a token needs to read a service's ``metrics`` (JupyterHub's; admins have it).
METRICS_SCOPE = "read:metrics"


async def metrics_caller(hub_auth: Any, request: Any) -> dict[str, Any]:
    """The hub's model of the caller of a service's ``metrics`` path (outside the
    middleware: Prometheus sends a token header, never a cookie), whose token must carry
    :data:`METRICS_SCOPE`; else BadRequest 401 (no or bad token), 403 (the scope), 502
    (the hub out of reach). ``hub_auth``: a JupyterHub ``HubAuth``; ``request``: anything
    with the ASGI ``scope``."""
    tok = _header_token(request.scope)
    if not tok:
        raise BadRequest(
            "metrics need 'Authorization: token <t>' with a token that has the scope "
            f"{METRICS_SCOPE!r} (admins' tokens have it)",
            401,
        )
    try:
        who = await hub_auth.user_for_token(tok, use_cache=True, sync=False)
    except Exception as e:
        raise BadRequest(f"cannot check the token with the hub: {e}", 502) from None
    if who is None:
        raise BadRequest("invalid or expired token", 401)
    if METRICS_SCOPE not in (who.get("scopes") or ()):
        raise BadRequest(scope_refusal(who, METRICS_SCOPE, "reading metrics"), 403)
    return who


def _header_token(scope: Scope) -> str:
    value = header(scope, b"authorization")
    kind, _, token = value.partition(" ")
    if kind.lower() in ("token", "bearer") and token.strip():
        return token.strip()
    return ""


def _own_origin(scope: Scope, origin: str) -> bool:
    """Whether the browser's ``Origin`` is the site it sent the request to: its host[:port]
    is the ``Host`` the browser used (the hub's proxy keeps it; a proxy in front may move it
    to ``X-Forwarded-Host``), its scheme http(s) and, where known, the forwarded scheme."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
        return False
    forwarded = header(scope, b"x-forwarded-proto").split(",")[0].strip()
    if forwarded in ("http", "https") and parts.scheme != forwarded:
        return False
    hosts = {header(scope, b"host"), header(scope, b"x-forwarded-host").split(",")[0].strip()}
    netloc = parts.netloc.lower()
    default = {"http": ":80", "https": ":443"}[parts.scheme]
    return any(h and h.lower().removesuffix(default) == netloc for h in hosts)


def _is_navigation(scope: Scope) -> bool:
    """Whether the browser loads the page as a document (its pages embed the XSRF value).
    A script's ``fetch()`` or a frame says otherwise in ``Sec-Fetch-Mode``/``-Dest``
    (browsers send them on secure contexts, localhost included), so a same-origin script
    cannot read the value from a fetched page; without these headers: as before."""
    mode = header(scope, b"sec-fetch-mode")
    dest = header(scope, b"sec-fetch-dest")
    return (not mode or mode == "navigate") and (not dest or dest == "document")


def _wants_html(scope: Scope) -> bool:
    return "text/html" in header(scope, b"accept")


def _scheme(scope: Scope) -> str:
    return header(scope, b"x-forwarded-proto") or scope.get("scheme", "http")
