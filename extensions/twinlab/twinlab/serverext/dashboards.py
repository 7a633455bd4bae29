"""The Dask sidebar's dashboard proxy and dashboard check, for the platform's gateway only.

dask-labextension's own handlers (``dask/dashboard/<cluster id>/<path>`` and
``dask/dashboard-check/<url>``) forward to whatever host a cluster's dashboard link, or the
request, names, and drop the link's path: gateway dashboards
(``<gateway>/clusters/<name>/status``, owner-only, see ``twinhub.gateway.dashboard``) never
connected, and the check would fetch any URL a caller gives from the user's server.  These
replace them (registered before dask-labextension loads, so tornado matches them first):

- the proxy forwards HTTP and WebSockets (Bokeh) to ``<gateway>/clusters/<name>/<path>`` on the
  gateway the hub configured (``DASK_GATEWAY__ADDRESS``, loopback), never to a host from the
  request or the link; ``<name>`` comes from a cluster the sidebar manages (its id) whose link
  is on that gateway, and the server's token (``$JUPYTERHUB_API_TOKEN``) proves the owner;
- the check fetches ``individual-plots.json`` only for links on that gateway (public or
  loopback address), with the token; any other URL is answered "not a dashboard" unfetched.

Both keep the server's own authentication: only the server's owner reaches them.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from jupyter_server_proxy.handlers import ProxyHandler
from tornado import httpclient, web
from traitlets import Float, Unicode, default
from traitlets.config import Configurable

from twinlab import environment

#: dask-gateway names clusters with uuid4().hex; a little wider, but never '/', '.', '%'.
CLUSTER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: dask-labextension's cluster ids (uuid4 strings), as its own route spells them.
CLUSTER_ID = r"(?P<cluster_id>\w+-\w+-\w+-\w+-\w+)"
#: Characters of a request path forwarded as they are (RFC 3986 path characters).
PATH_SAFE = "/:@!$&'()*+,;=-._~"
#: Request headers never forwarded: the user's credentials for this server, and the host.
DROPPED_HEADERS = ("Cookie", "Authorization", "Host", "X-Xsrftoken", "X-Forwarded-For")


class TwinlabDaskDashboards(Configurable):
    """Where the Dask sidebar's dashboard proxy and check may go."""

    gateway_url = Unicode(
        help="The gateway as this server reaches it (its dashboards are <gateway_url>/clusters/"
        "<name>/): the only place the proxy and the check send requests. Default: "
        "$DASK_GATEWAY__ADDRESS, set by the hub."
    ).tag(config=True)
    public_url = Unicode(
        help="The gateway's address in the dashboard links clusters report (the hub's public "
        "URL + /services/dask-gateway). Links there are checked at gateway_url. Default: "
        "$DASK_GATEWAY__PUBLIC_ADDRESS, set by the hub."
    ).tag(config=True)
    check_timeout = Float(
        10.0, min=0.5, help="Seconds the dashboard check waits for the gateway."
    ).tag(config=True)

    @default("gateway_url")
    def _gateway_url(self) -> str:
        return environment.text("DASK_GATEWAY__ADDRESS").rstrip("/")

    @default("public_url")
    def _public_url(self) -> str:
        return environment.text("DASK_GATEWAY__PUBLIC_ADDRESS").rstrip("/")

    def cluster_of(self, link: str) -> str | None:
        """The cluster name of a dashboard link on this gateway (public or loopback address,
        or the public address's path alone); None for any other link."""
        link = link.split("?", 1)[0].split("#", 1)[0]
        parts = urlsplit(link)
        for base in (self.gateway_url, self.public_url):
            if not base:
                continue
            b = urlsplit(base)
            same_origin = (parts.scheme, parts.netloc) == (b.scheme, b.netloc)
            relative = not parts.scheme and not parts.netloc and base == self.public_url
            if not (same_origin or relative):
                continue
            rest = parts.path.removeprefix(b.path.rstrip("/") + "/clusters/")
            if rest == parts.path:
                continue
            name = rest.split("/", 1)[0]
            if CLUSTER_NAME.fullmatch(name):
                return name
        return None

    def upstream(self, name: str, path: str) -> str:
        """``<gateway_url>/clusters/<name><path>`` (name checked, path starting with '/')."""
        if not self.gateway_url or not CLUSTER_NAME.fullmatch(name) or not path.startswith("/"):
            raise web.HTTPError(404, "no gateway dashboard")
        # quoted enough for a valid request ('?' and '#' of the decoded path stay in the path)
        return f"{self.gateway_url}/clusters/{name}{quote(path, safe=PATH_SAFE)}"


def token_header() -> dict[str, str]:
    token = environment.hub_token()
    if not token:
        raise web.HTTPError(503, "this server has no hub token for the gateway's dashboards")
    return {"Authorization": f"token {token}"}


def sidebar_cluster_name(cluster_id: str, dashboards: TwinlabDaskDashboards) -> str:
    """The gateway cluster behind one of the sidebar's clusters (404 if none)."""
    # dask-labextension's manager imports dask.distributed: its handlers (loaded after the
    # server's start, twinlab.serverext.deferred) have imported it before any request here
    from dask_labextension.manager import manager

    model = manager.get_cluster(cluster_id)
    name = dashboards.cluster_of(model.get("dashboard_link") or "") if model else None
    if name is None:
        raise web.HTTPError(404, f"no Dask cluster {cluster_id} with a gateway dashboard")
    return name


class GatewayDashboardHandler(ProxyHandler):
    """``dask/dashboard/<cluster id>/<path>`` -> ``<gateway>/clusters/<name>/<path>``, HTTP
    and WebSocket, with the server's hub token (authentication: ProxyHandler.prepare)."""

    def initialize(self, dashboards: TwinlabDaskDashboards) -> None:
        self.dashboards = dashboards
        gw = urlsplit(dashboards.gateway_url)
        self.gw_host = gw.hostname or ""
        self.gw_port = gw.port or (443 if gw.scheme == "https" else 80)
        self.gw_tls = gw.scheme == "https"
        # ProxyHandler's own guard: the gateway's host is the only one it may reach
        self.host_allowlist = [self.gw_host] if self.gw_host else []
        self.cluster_id = ""
        self.target = ""

    def _resolve(self, cluster_id: str, proxied_path: str) -> tuple[str, int, str]:
        path = proxied_path or "/"
        if not path.startswith("/") or any(s in ("..", ".") for s in unquote(path).split("/")):
            raise web.HTTPError(404, "no such dashboard page")
        self.cluster_id = cluster_id
        self.target = self.dashboards.upstream(
            sidebar_cluster_name(cluster_id, self.dashboards), path
        )
        return self.gw_host, self.gw_port, path

    def get_client_uri(self, protocol: str, host: str, port: int, proxied_path: str) -> str:
        # Always the gateway's dashboard of the cluster (_resolve), never host/port/path alone.
        scheme = {"http": "https", "ws": "wss"}[protocol] if self.gw_tls else protocol
        uri = scheme + self.target[self.target.index("://") :]
        return uri + (f"?{self.request.query}" if self.request.query else "")

    def proxy_request_headers(self) -> Any:
        headers = self.request.headers.copy()
        for h in DROPPED_HEADERS:
            headers.pop(h, None)
        headers.update(token_header())
        return headers

    def _rewrite_location_header(self, location: str, *args: Any) -> str:
        # The gateway's redirects name its own public path: send the browser back through here.
        gw_path = urlsplit(self.dashboards.public_url).path.rstrip("/")
        name = self.target.split("/clusters/", 1)[1].split("/", 1)[0]
        prefix = f"{gw_path}/clusters/{name}"
        path = urlsplit(location).path
        if path == prefix or path.startswith(prefix + "/"):
            here = url_path_join(self.base_url, "dask/dashboard", self.cluster_id)
            return here + location[location.index(prefix) + len(prefix) :]
        return location

    async def http_get(self, cluster_id: str, proxied_path: str = "") -> Any:
        return await self.proxy(cluster_id, proxied_path)

    async def head(self, cluster_id: str, proxied_path: str = "") -> Any:
        return await self.proxy(cluster_id, proxied_path)

    async def open(self, cluster_id: str, proxied_path: str = "") -> Any:
        host, port, path = self._resolve(cluster_id, proxied_path)
        return await self.proxy_open(host, port, path)

    async def proxy(self, cluster_id: str, proxied_path: str) -> Any:  # type: ignore[override]
        host, port, path = self._resolve(cluster_id, proxied_path)
        return await super().proxy(host, port, path)

    # Dashboards are read with GET (pages, JSON) and Bokeh's websocket: other methods are not
    # forwarded, so that no cross-site form reaches a dashboard with the server's token
    # (ProxyHandler leaves XSRF checks to the proxied app).
    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise web.HTTPError(405, "Dask dashboards are read-only through this server")

    post = put = delete = patch = options = _read_only  # type: ignore[assignment]


class GatewayDashboardCheckHandler(APIHandler):
    """``dask/dashboard-check/<url>``: is ``url`` a running dashboard of the platform's gateway?

    Always 200 with ``{"url", "isActive", "plots"}`` as the sidebar expects; ``isActive`` is
    false, with a ``reason`` and nothing fetched, for a URL anywhere else."""

    def initialize(self, dashboards: TwinlabDaskDashboards) -> None:
        self.dashboards = dashboards

    @web.authenticated
    async def get(self, url: str) -> None:
        url = unquote(url).split("?", 1)[0]
        url = url.removesuffix("/status").rstrip("/")
        answer: dict[str, Any] = {"url": url, "isActive": False, "plots": {}}
        name = self.dashboards.cluster_of(url)
        if name is None:
            answer["reason"] = "not a dashboard of this platform's Dask Gateway: not checked"
            self.finish(json.dumps(answer))
            return
        request = httpclient.HTTPRequest(
            self.dashboards.upstream(name, "/individual-plots.json"),
            headers=token_header(),
            follow_redirects=False,
            request_timeout=self.dashboards.check_timeout,
        )
        try:
            response = await httpclient.AsyncHTTPClient().fetch(request)
            plots = json.loads(response.body)
        except (httpclient.HTTPError, OSError, ValueError) as e:
            self.log.debug("twinlab: dashboard of cluster %s not active: %s", name, e)
            answer["reason"] = f"cluster {name} has no running dashboard of yours"
        else:
            if isinstance(plots, dict):
                answer.update(isActive=True, effectiveUrl=None, plots=plots)
        self.finish(json.dumps(answer))


def handlers(base_url: str, config: Any) -> list[tuple[str, type, dict[str, Any]]]:
    """The two routes (dask-labextension's own patterns, or wider)."""
    kwargs = {"dashboards": TwinlabDaskDashboards(config=config)}
    return [
        (
            url_path_join(base_url, f"dask/dashboard/{CLUSTER_ID}(?P<proxied_path>.*)"),
            GatewayDashboardHandler,
            kwargs,
        ),
        (
            url_path_join(base_url, "dask/dashboard-check/(?P<url>.+)"),
            GatewayDashboardCheckHandler,
            kwargs,
        ),
    ]


def register(serverapp: Any) -> None:
    """Add the routes ahead of every other host rule of the server, dask-labextension's
    included whenever it was loaded: tornado serves a request with the first rule matching."""
    web_app = serverapp.web_app
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"], serverapp.config))
    # add_handlers inserts before the server's own catch-all rule (the last): move it first
    rules = web_app.default_router.rules
    rules.insert(0, rules.pop(-2))
    serverapp.log.info(
        "twinlab: Dask dashboards proxied to %s only",
        TwinlabDaskDashboards(config=serverapp.config).gateway_url or "(no gateway)",
    )
