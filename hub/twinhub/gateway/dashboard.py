"""Cluster dashboards behind hub login, for the cluster's owner only.

Upstream dask-gateway routes ``/clusters/<name>/`` straight to the scheduler's dashboard with
no authentication at all.  Here the gateway's own aiohttp app serves that path instead:

1. who is asking: a JupyterHub token (``Authorization: jupyterhub|token <t>``), or a session
   cookie set after JupyterHub OAuth (browsers are redirected to the hub's authorize page);
2. the cluster must belong to that user (anything else is a 404, revealing nothing); the
   Dask sidebar comes through the user's server with the server's token
   (``twinlab.serverext.dashboards``), like any client;
3. the request (HTTP or WebSocket, for Bokeh) is forwarded to the scheduler's dashboard over
   TLS with the cluster's client certificate -- the only way in, see ``dashboard_tls.py``.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from dask_gateway_server.auth import UserCache
from dask_gateway_server.models import User

SESSION_COOKIE = "twinhub-dask-dashboard"
STATE_COOKIE = "twinhub-dask-oauth-state"
SESSION_MAX_AGE = 3600
STATE_MAX_AGE = 600
HOP_HEADERS = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
    "authorization", "cookie", "accept-encoding",
}  # fmt: skip


class DashboardProxy:
    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.prefix = backend.proxy.prefix  # browser-facing path prefix
        self.sessions = UserCache(max_age=SESSION_MAX_AGE)
        self.states: dict[str, tuple[str, float]] = {}
        self.session: aiohttp.ClientSession | None = None
        self._ssl: dict[str, ssl.SSLContext] = {}

    @property
    def client_id(self) -> str:
        return f"service-{self.backend.service_name}"

    @property
    def redirect_uri(self) -> str:
        # Relative, as JupyterHub registers it for a service behind its proxy.
        return f"{self.prefix}/oauth_callback"

    def http(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(auto_decompress=False)
        return self.session

    async def close(self, app: Any = None) -> None:
        if self.session is not None:
            await self.session.close()

    # -- who is asking ----------------------------------------------------------------------
    async def user_for(self, request: web.Request) -> User | None:
        auth = request.headers.get("Authorization", "")
        kind, _, token = auth.partition(" ")
        if token and kind.lower() in ("jupyterhub", "token"):
            # The gateway's JupyterHubAuthenticator checks the token and its service scope.
            authenticator = request.app["authenticator"]
            headers = {"Authorization": f"jupyterhub {token}"}
            fake = request.clone(headers={**request.headers, **headers})
            try:
                user = await authenticator.authenticate(fake)
            except web.HTTPUnauthorized:
                return None
            return user[0] if isinstance(user, tuple) else user
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            return self.sessions.get(cookie)
        return None

    def login_redirect(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        self.states = {k: v for k, v in self.states.items() if v[1] > now}
        state = secrets.token_urlsafe(24)
        self.states[state] = (self.prefix + request.path_qs, now + STATE_MAX_AGE)
        query = urlencode(
            {
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "response_type": "code",
                "state": state,
            }
        )
        resp = web.HTTPFound(f"{self.backend.hub_login_url}?{query}")
        resp.set_cookie(
            STATE_COOKIE, state, path=self.prefix + "/", httponly=True, samesite="Lax",
            max_age=STATE_MAX_AGE,
        )  # fmt: skip
        return resp

    async def oauth_callback(self, request: web.Request) -> web.Response:
        state = request.query.get("state", "")
        code = request.query.get("code", "")
        entry = self.states.pop(state, None)
        if not code or entry is None or request.cookies.get(STATE_COOKIE) != state:
            raise web.HTTPForbidden(reason="OAuth state mismatch: open the dashboard link again")
        next_url = entry[0]
        authenticator = request.app["authenticator"]
        api = self.backend.hub_api_url
        data = {
            "client_id": self.client_id,
            "client_secret": authenticator.jupyterhub_api_token,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
        }
        async with self.http().post(f"{api}/oauth2/token", data=data) as r:
            if r.status != 200:
                raise web.HTTPForbidden(reason=f"hub refused the OAuth code ({r.status})")
            access_token = (await r.json())["access_token"]
        async with self.http().get(
            f"{api}/user", headers={"Authorization": f"token {access_token}"}
        ) as r:
            if r.status != 200:
                raise web.HTTPForbidden(reason="hub refused the OAuth token")
            model = await r.json()
        if model.get("kind") != "user":
            raise web.HTTPForbidden(reason="dashboards are for users only")
        cookie = self.sessions.put(User(model["name"], groups=model.get("groups", [])))
        resp = web.HTTPFound(next_url)
        resp.set_cookie(
            SESSION_COOKIE, cookie, path=self.prefix + "/clusters/", httponly=True,
            samesite="Lax", max_age=SESSION_MAX_AGE,
        )  # fmt: skip
        resp.del_cookie(STATE_COOKIE, path=self.prefix + "/")
        return resp

    # -- forwarding ---------------------------------------------------------------------------
    def ssl_for(self, cluster: Any) -> ssl.SSLContext:
        ctx = self._ssl.get(cluster.name)
        if ctx is None:
            cert, key = self.backend.get_tls_paths(cluster)
            ctx = ssl.create_default_context(cafile=cert)
            # The cluster's self-signed certificate is the only CA trusted; its names are the
            # cluster name and 'dask-internal', not 127.0.0.1.
            ctx.check_hostname = False
            ctx.load_cert_chain(cert, key)
            self._ssl = {k: v for k, v in self._ssl.items() if k in self.backend.db.name_to_cluster}
            self._ssl[cluster.name] = ctx
        return ctx

    async def handle(self, request: web.Request) -> web.StreamResponse:
        user = await self.user_for(request)
        name = request.match_info["cluster_name"]
        if user is None:
            accepts_html = "text/html" in request.headers.get("Accept", "")
            if request.method == "GET" and accepts_html:
                return self.login_redirect(request)
            raise web.HTTPUnauthorized(reason="log in to the hub to see this dashboard")
        cluster = self.backend.db.get_cluster(name)
        # Other users' clusters look exactly like missing ones.
        if cluster is None or cluster.username != user.name or not cluster.dashboard_address:
            raise web.HTTPNotFound(reason=f"no running cluster {name} of yours")
        return await self.forward(request, cluster, request.match_info["tail"] or "/")

    async def forward(self, request: web.Request, cluster: Any, tail: str) -> web.StreamResponse:
        name = cluster.name
        base = cluster.dashboard_address.replace("http://", "https://", 1)
        target = base + tail + (f"?{request.query_string}" if request.query_string else "")
        sslctx = self.ssl_for(cluster)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.websocket(request, target.replace("https://", "wss://", 1), sslctx)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        body = await request.read()
        async with self.http().request(
            request.method, target, headers=headers, data=body or None, ssl=sslctx,
            allow_redirects=False,
        ) as up:  # fmt: skip
            out_headers = {
                k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS | {"set-cookie"}
            }
            loc = out_headers.get("Location")
            if loc and loc.startswith("/"):
                out_headers["Location"] = f"{self.prefix}/clusters/{name}{loc}"
            resp = web.StreamResponse(status=up.status, headers=out_headers)
            await resp.prepare(request)
            async for chunk in up.content.iter_chunked(65536):
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def websocket(self, request: web.Request, target: str, sslctx: Any) -> web.StreamResponse:
        protocols = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p
        ]
        down = web.WebSocketResponse(protocols=protocols, max_msg_size=0)
        await down.prepare(request)
        async with self.http().ws_connect(
            target, ssl=sslctx, protocols=protocols, max_msg_size=0
        ) as up:

            async def pump(src: Any, dst: Any) -> None:
                async for msg in src:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        await dst.send_str(msg.data)
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        await dst.send_bytes(msg.data)
                    else:
                        break

            tasks = [asyncio.ensure_future(pump(down, up)), asyncio.ensure_future(pump(up, down))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()
        await down.close()
        return down


def add_dashboard_routes(app: web.Application, backend: Any) -> DashboardProxy:
    proxy = DashboardProxy(backend)
    app.router.add_route("*", r"/clusters/{cluster_name}{tail:(/.*)?}", proxy.handle)
    app.router.add_get("/oauth_callback", proxy.oauth_callback)
    app.on_cleanup.append(proxy.close)
    return proxy
