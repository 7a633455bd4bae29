"""The sign-on gateway: registered web services at ``/services/<slug>/``, behind the platform.

The hub routes ``/services/<slug>/`` of every integrated entry to the registry's own address
(hubservices.py); :class:`SsoGateway` answers there (http and websocket):

- the slug's route comes from the store (cached per ``store.generation``, at most a second
  stale): unknown → 404, suspended → 503;
- the caller is named by the signed cookie ``twinhub-sso-<slug>`` (set by ``sso``, sso.py,
  after the hub's own login) or by a hub API token in ``Authorization``; a browser without
  either is sent to ``/services/registry/sso``, anything else gets a 401;
- the entry's visibility decides with the user's groups fresh from the hub (the provider and
  admins always pass): else 403;
- upstream gets the request without the caller's credentials and without any identity-like
  header the client sent, and with ``X-Twinhub-User``/``X-Twinhub-Groups`` set by us; its
  answer comes back with platform cookies dropped, its own cookies and redirects kept under
  the prefix (the rules: gateway_rules.py, pure functions unit-tested on their own).

Every connection goes through the outbound guard (``allow_private`` as the admin set at
integration). sso.py serves ``/services/registry/sso``, where a logged-in browser gets the
signed cookie of one service.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import websockets
from jupyterhub.services.auth import HubOAuth
from websockets.asyncio.client import connect as ws_connect

from ... import outbound
from .. import hubauth
from ..asgi import (
    MAX_BODY_BYTES,
    BadRequest,
    Receive,
    Scope,
    Send,
    header,
    send_error,
)
from . import entry as entries
from . import metrics, store
from .context import RegistryContext
from .gateway_rules import (
    MAX_NEXT,
    SSO_COOKIE,
    downstream_headers,
    path_refusal,
    split_path,
    upstream_headers,
    upstream_url,
    verify_sso,
)
from .relay import deny_websocket, relay, stream_until_disconnect

log = logging.getLogger("twinhub.registry.gateway")

#: Seconds a route, a user's groups are kept before the store / the hub is asked again.
ROUTE_STALE_S = 1.0
USER_CACHE_S = 30.0
#: Cached routes (unknown slugs too) and users at most: anyone can ask for any slug.
MAX_CACHED = 4096
#: Upstream clients kept (one per origin and address rule; the least recently used is
#: closed beyond this) and the connections each may hold: one service's slow or abandoned
#: streams fill its own pool, never another service's.
MAX_CLIENTS = 256
CONNECTIONS_PER_UPSTREAM = 32


def _cookies(scope: Scope) -> dict[str, str]:
    jar = SimpleCookie()
    try:
        jar.load(header(scope, b"cookie"))
    except Exception:  # a malformed Cookie header (another app on the origin): no cookies
        return {}
    return {k: m.value for k, m in jar.items()}


def client_scheme(scope: Scope) -> str:
    """http or https as the client used it: the leftmost X-Forwarded-Proto (TLS may end
    before the hub's proxy, which appends its own), else the connection's."""
    fwd = header(scope, b"x-forwarded-proto").split(",")[0].strip().lower()
    if fwd in ("http", "https"):
        return fwd
    return "https" if scope.get("scheme") in ("https", "wss") else "http"


def _own_origin(scope: Scope) -> str:
    return f"{client_scheme(scope)}://{header(scope, b'host')}"


# -- the gateway -------------------------------------------------------------------------------
class SsoGateway:
    """ASGI app for ``/services/<slug>/...`` (see the module docstring)."""

    def __init__(self, ctx: RegistryContext, hub_auth: HubOAuth | None = None) -> None:
        self.ctx = ctx
        # HubOAuth reads the service's token and the hub's URL from the environment.
        self._hub_auth = hub_auth
        self._gen: str | None = None
        self._gen_at = 0.0
        self._routes: dict[str, dict[str, Any] | None] = {}
        self._users: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._clients: OrderedDict[tuple[str, bool], httpx.AsyncClient] = OrderedDict()
        self._closing: set[asyncio.Task] = set()
        # relayed websockets open now: in all, and per user (max_websockets[_per_user])
        self._ws_open = 0
        self._ws_by_user: dict[str, int] = {}
        # the sso endpoint shares its caches (sso.sso_router)
        ctx.extras.setdefault("gateway", self)

    @property
    def hub_auth(self) -> HubOAuth:
        # made at first use: HubOAuth reads the service's token and the hub's URL from
        # the environment, which apps built in tests do not have
        if self._hub_auth is None:
            self._hub_auth = HubOAuth(cache_max_age=60)
        return self._hub_auth

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()
        for t in list(self._closing):
            await t

    # -- lookups ---------------------------------------------------------------------------
    async def route(self, slug: str) -> dict[str, Any] | None:
        now = time.monotonic()
        if now - self._gen_at > ROUTE_STALE_S:
            gen = await asyncio.to_thread(store.generation, self.ctx.db_url)
            self._gen_at = now
            if gen != self._gen:
                self._gen, self._routes = gen, {}
        if slug not in self._routes:
            if len(self._routes) >= MAX_CACHED:
                self._routes.clear()
            self._routes[slug] = await asyncio.to_thread(store.route, self.ctx.db_url, slug)
        return self._routes[slug]

    async def hub_user(self, name: str) -> dict[str, Any] | None:
        """The hub's current model of ``name`` (groups, admin), kept ``USER_CACHE_S``."""
        now = time.monotonic()
        hit = self._users.get(name)
        if hit and now - hit[0] < USER_CACHE_S:
            return hit[1]
        assert self.ctx.hub is not None
        model = await hubauth.hub_user_model(self.ctx.hub, self.ctx.hub_api, name)
        if len(self._users) >= MAX_CACHED:
            self._users.clear()
        self._users[name] = (now, model)
        return model

    def client(self, upstream: str, allow_private: bool) -> httpx.AsyncClient:
        """The client (and connection pool) of ``upstream``'s origin under its address rule."""
        u = urlsplit(upstream)
        key = (f"{u.scheme}://{u.netloc}".lower(), allow_private)
        c = self._clients.get(key)
        if c is not None:
            self._clients.move_to_end(key)
            return c
        t = self.ctx.settings.gateway_timeout
        c = self._clients[key] = httpx.AsyncClient(
            transport=outbound.guarded_transport(
                allow_private=allow_private,
                limits=httpx.Limits(
                    max_connections=CONNECTIONS_PER_UPSTREAM, max_keepalive_connections=8
                ),
            ),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: it would connect unchecked
            # to the answer's head: asyncio's timeout in _http; then ``t`` between chunks
            # of a body (an idle stream ends, a long steady one goes on); a full pool
            # waits ``t`` too (504)
            timeout=httpx.Timeout(t),
        )
        while len(self._clients) > MAX_CLIENTS:
            _, old = self._clients.popitem(last=False)
            task = asyncio.ensure_future(old.aclose())  # its connections, closed
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return c

    # -- who may pass ------------------------------------------------------------------------
    async def identify(self, scope: Scope, slug: str) -> tuple[str, bool] | None:
        """(user name, whether the credential may act as an admin), or None: no
        credential. A bad token is a refusal (401), as is a cookie that no longer holds."""
        token = hubauth._header_token(scope)
        if token:
            if not hubauth._TOKEN.fullmatch(token):
                raise BadRequest("invalid token: not a JupyterHub API token", 401)
            try:
                model = await self.hub_auth.user_for_token(token, use_cache=True, sync=False)
            except Exception as e:
                raise BadRequest(f"cannot reach the hub to check the token: {e}", 502) from e
            if not model or model.get("kind", "user") != "user":
                raise BadRequest("invalid or expired token (a user's hub token is needed)", 401)
            if not self.hub_auth.check_scopes(self.hub_auth.access_scopes, model):
                need = " or ".join(sorted(self.hub_auth.access_scopes))
                raise BadRequest(f"the token of {model.get('name')!r} lacks the scope {need}", 403)
            return model["name"], entries.registry_admin(model)
        value = _cookies(scope).get(SSO_COOKIE + slug)
        name = verify_sso(self.ctx.sso_key, value, slug) if value else None
        if name is None:
            return None
        origin = header(scope, b"origin")
        if scope["type"] == "websocket" and origin and origin != _own_origin(scope):
            # browsers send the cookie with a websocket opened by any page of the site:
            # only the platform's own pages (and the service's) may use it
            raise BadRequest(f"websocket from another origin ({origin[:100]}) refused", 403)
        return name, True  # a browser session: the user's own, full powers

    async def authorize(
        self, scope: Scope, slug: str, route: dict[str, Any]
    ) -> tuple[str, list[str]] | None:
        """(user, groups) allowed to use ``route``; None: no credential. Refusals raise."""
        who = await self.identify(scope, slug)
        if who is None:
            return None
        return await self.allowed(who[0], who[1], slug, route)

    async def allowed(
        self, name: str, full: bool, slug: str, route: dict[str, Any]
    ) -> tuple[str, list[str]]:
        """(user, groups) if ``name`` may use ``route`` (its groups and admin flag fresh
        from the hub; ``full``: the credential may act as an admin); else BadRequest."""
        user = await self.hub_user(name)
        if user is None:
            raise BadRequest(f"user {name!r} no longer exists on the hub", 401)
        groups = sorted(user.get("groups") or [])
        visibility = (route.get("entry") or {}).get("visibility", "")
        # can_see decides for everyone but admins (decided here: the token's scopes, not
        # the model's, say whether a header token may act as one)
        viewer = {"name": name, "admin": False, "groups": groups, "scopes": [], "kind": "user"}
        if not (
            (full and user.get("admin"))
            or name == route.get("provider")
            or entries.can_see(visibility, viewer)
        ):
            raise BadRequest(
                f"{slug!r} is visible to {visibility!r} only; {name!r} is not allowed", 403
            )
        return name, groups

    # -- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        path = scope.get("path", "")
        parts = split_path(path)
        try:
            if parts is None:
                raise BadRequest(f"no service at {path[:200]!r}", 404)
            slug, rest = parts
            rest = _raw_rest(scope, slug, rest)
            if scope["type"] == "http" and not path.startswith(f"/services/{slug}/"):
                await _redirect(send, f"/services/{slug}/", scope.get("query_string", b""))
                return
            route = await self.route(slug)
            if route is None:
                raise BadRequest(f"no service {slug!r} is registered here", 404)
            if route.get("state") == "suspended":
                raise BadRequest(f"service {slug!r} is suspended by the platform's admins", 503)
            if not route.get("upstream"):
                raise BadRequest(f"service {slug!r} has no upstream address", 404)
            who = await self.authorize(scope, slug, route)
            if who is None:
                await self._no_credential(scope, send, slug, rest)
                return
        except BadRequest as e:
            metrics.GATEWAY_REQUESTS.labels(outcome="refused").inc()
            await self._refuse(scope, send, e)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send, slug, rest, route, who)
        else:
            await self._http(scope, receive, send, slug, rest, route, who)

    async def _refuse(self, scope: Scope, send: Send, e: BadRequest) -> None:
        if scope["type"] == "websocket":
            # before accept: uvicorn answers the handshake with a 403
            await send({"type": "websocket.close", "code": 1008, "reason": str(e)[:120]})
            return
        extra = [(b"www-authenticate", b'token realm="jupyterhub"')] if e.status == 401 else []
        await send_error(send, e.status, str(e), extra)

    async def _no_credential(self, scope: Scope, send: Send, slug: str, rest: str) -> None:
        metrics.GATEWAY_REQUESTS.labels(outcome="refused").inc()
        wants_html = "text/html" in header(scope, b"accept")
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") and wants_html:
            nxt = f"/services/{slug}/{rest}"
            if scope.get("query_string"):
                nxt += "?" + scope["query_string"].decode("latin-1")
            if len(nxt) > MAX_NEXT:  # not worth keeping: back to the service's root
                nxt = f"/services/{slug}/"
            await _redirect(send, self.ctx.prefix + "sso?next=" + quote(nxt, safe="/"))
            return
        await self._refuse(
            scope,
            send,
            BadRequest(
                "authentication required: send 'Authorization: token <JupyterHub API token>', "
                "or sign in with a browser",
                401,
            ),
        )

    def _headers(self, scope: Scope, slug: str, who: tuple[str, list[str]], ws: bool):
        client = scope.get("client") or ("", 0)
        return upstream_headers(
            scope.get("headers", []),
            user=who[0],
            groups=who[1],
            proto=client_scheme(scope),
            host=header(scope, b"host"),
            prefix=f"/services/{slug}",
            client=client[0] or "",
            websocket=ws,
        )

    async def _http(self, scope, receive, send, slug, rest, route, who) -> None:
        method = scope.get("method", "GET")
        headers = self._headers(scope, slug, who, ws=False)
        length = header(scope, b"content-length")
        chunked = "chunked" in header(scope, b"transfer-encoding").lower()
        if length and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            metrics.GATEWAY_REQUESTS.labels(outcome="refused").inc()
            await send_error(send, 413, f"request body over {MAX_BODY_BYTES} bytes (the limit)")
            return
        body = _body(receive) if chunked or (length and length != "0") else None
        url = upstream_url(route["upstream"], rest, scope.get("query_string", b""))
        client = self.client(route["upstream"], bool(route.get("allow_private")))
        t0 = time.monotonic()
        try:
            req = client.build_request(method, url, headers=headers, content=body)
            resp = await asyncio.wait_for(
                client.send(req, stream=True), self.ctx.settings.gateway_timeout
            )
        except outbound.OutboundRefused as e:
            metrics.OUTBOUND_REFUSED.labels(reason=e.reason).inc()
            log.warning("gateway to %r: %s", slug, e)  # the address stays in the log
            why = "unreachable" if e.reason in ("dns", "connect") else f"refused ({e.reason})"
            return await self._upstream_failed(
                send, 502, f"{slug!r} is {why} by the platform's outbound guard"
            )
        except (TimeoutError, httpx.TimeoutException):
            return await self._upstream_failed(
                send, 504, f"{slug!r} did not answer in {self.ctx.settings.gateway_timeout:g} s"
            )
        except _BodyTooLarge:
            return await self._upstream_failed(
                send, 413, f"request body over {MAX_BODY_BYTES} bytes (the limit)"
            )
        except httpx.HTTPError as e:
            return await self._upstream_failed(
                send, 502, f"cannot reach {slug!r}: {type(e).__name__}"
            )
        metrics.GATEWAY_SECONDS.observe(time.monotonic() - t0)
        metrics.GATEWAY_REQUESTS.labels(outcome=f"{resp.status_code // 100}xx").inc()
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": resp.status_code,
                    "headers": downstream_headers(
                        resp.headers.raw,
                        upstream=route["upstream"],
                        prefix=f"/services/{slug}/",
                        sandbox=bool(route.get("sandbox")),
                    ),
                }
            )
            # httpcore sent the whole request body before it read the answer's head: the
            # client's ``receive`` is free to watch now
            await stream_until_disconnect(resp, receive, send, self.ctx.settings.gateway_timeout)
        finally:
            await resp.aclose()  # also when the client left: the upstream connection goes

    async def _upstream_failed(self, send: Send, status: int, message: str) -> None:
        metrics.GATEWAY_REQUESTS.labels(outcome="refused").inc()
        log.warning("gateway: %s", message)
        await send_error(send, status, message)

    def _websocket_refusal(self, name: str) -> str | None:
        """Why one more websocket of ``name`` is refused now (a cap reached), else None."""
        s = self.ctx.settings
        if self._ws_open >= s.max_websockets:
            return f"the gateway relays {s.max_websockets} websockets already (its limit)"
        if self._ws_by_user.get(name, 0) >= s.max_websockets_per_user:
            return (
                f"{name!r} has {s.max_websockets_per_user} websockets open through the gateway "
                "(at most that many per user): close one first"
            )
        return None

    async def _websocket(self, scope, receive, send, slug, rest, route, who) -> None:
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        name = who[0]
        why = self._websocket_refusal(name)
        if why is not None:
            metrics.GATEWAY_REQUESTS.labels(outcome="refused").inc()
            log.warning("gateway websocket to %r refused: %s", slug, why)
            await deny_websocket(scope, send, 429, why)
            return
        # counted from here (no await between the check and the count: one event loop)
        self._ws_open += 1
        self._ws_by_user[name] = self._ws_by_user.get(name, 0) + 1
        try:
            await self._websocket_relayed(scope, receive, send, slug, rest, route, who)
        finally:
            self._ws_open -= 1
            left = self._ws_by_user.pop(name, 1) - 1
            if left > 0:
                self._ws_by_user[name] = left

    async def _websocket_relayed(self, scope, receive, send, slug, rest, route, who) -> None:
        base = urlsplit(route["upstream"])
        secure = base.scheme == "https"
        port = base.port or (443 if secure else 80)
        url = upstream_url(route["upstream"], rest, scope.get("query_string", b""))
        url = ("wss" if secure else "ws") + url[len(base.scheme) :]
        try:
            ip = await outbound.resolve_checked(
                base.hostname or "", port, allow_private=bool(route.get("allow_private"))
            )
            extra = {"server_hostname": base.hostname} if secure else {}
            upstream = await _NoRedirects(
                url,
                host=ip,
                port=port,
                proxy=None,
                additional_headers=self._headers(scope, slug, who, ws=True),
                user_agent_header=None,
                subprotocols=scope.get("subprotocols") or None,
                open_timeout=self.ctx.settings.gateway_timeout,
                max_size=MAX_BODY_BYTES,
                compression=None,
                **extra,
            )
        except outbound.OutboundRefused as e:
            metrics.OUTBOUND_REFUSED.labels(reason=e.reason).inc()
            log.warning("gateway websocket to %r refused: %s", slug, e)
            await send({"type": "websocket.close", "code": 1011, "reason": "refused upstream"})
            return
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as e:
            log.warning("gateway websocket to %r failed: %s", slug, e)
            metrics.GATEWAY_REQUESTS.labels(outcome="5xx").inc()
            await send({"type": "websocket.close", "code": 1011, "reason": "upstream failed"})
            return
        metrics.GATEWAY_REQUESTS.labels(outcome="1xx").inc()
        async with upstream:
            await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
            await relay(receive, send, upstream, self.ctx.settings.gateway_timeout)


class _NoRedirects(ws_connect):
    """websockets' client, following no redirect (the checked address is the only one)."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class _BodyTooLarge(Exception):
    pass


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    """The request's body as it arrives, at most MAX_BODY_BYTES."""
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise httpx.ReadError("the client went away")
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _BodyTooLarge()
        if chunk:
            yield chunk
        if not msg.get("more_body"):
            return


def _raw_rest(scope: Scope, slug: str, rest: str) -> str:
    """The path after ``/services/<slug>/`` as the client sent it (percent-escapes kept:
    an escaped ``/`` or ``?`` must reach upstream as it was)."""
    raw = (scope.get("raw_path") or b"").decode("latin-1")
    head = f"/services/{slug}/"
    # the slug itself escaped (no raw prefix): the decoded path, escaped again
    out = raw[len(head) :] if raw.startswith(head) else quote(rest, safe="/")
    why = path_refusal(out)
    if why:
        raise BadRequest(why)
    return out


async def _redirect(send: Send, location: str, query: bytes = b"") -> None:
    if query:
        location += "?" + query.decode("latin-1")
    await hubauth.send_redirect(send, location)
