"""Register an external service with the hub and let every user (and user server) reach it."""

from __future__ import annotations

import sys
from typing import Any

from twinlab.contract import ENV_HUB_API_URL, ENV_HUB_TOKEN

#: JupyterHub's own default scopes of a server's token ($JUPYTERHUB_API_TOKEN).
DEFAULT_SERVER_SCOPES = ["users:activity!user", "access:servers!server"]


def access_scope(name: str) -> str:
    return f"access:services!service={name}"


def register_service(c: Any, name: str, url: str, api_token: str, **extra: Any) -> None:
    """Add (or replace) service ``name`` in ``c.JupyterHub.services``.

    Browser login to the platform's own services needs no consent page (``oauth_no_confirm``).
    """
    services = list(c.JupyterHub.services) if "services" in c.JupyterHub else []
    services = [s for s in services if s.get("name") != name]
    services.append(
        {
            "name": name,
            "url": url,
            "api_token": api_token,
            "oauth_no_confirm": True,
            "display": False,
            **extra,
        }
    )
    c.JupyterHub.services = services


def grant_access(c: Any, name: str) -> None:
    """Give every user, and every user server's token, access to service ``name``."""
    scope = access_scope(name)
    roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
    for role in roles:
        if role.get("name") == "user":
            scopes = role.setdefault("scopes", ["self"])
            if scope not in scopes:
                scopes.append(scope)
            break
    else:
        roles.append({"name": "user", "scopes": ["self", scope]})
    c.JupyterHub.load_roles = roles

    existing = c.Spawner.server_token_scopes if "server_token_scopes" in c.Spawner else None
    if callable(existing):
        inner = existing

        def _scopes(spawner: Any) -> list[str]:
            return sorted(set(inner(spawner)) | {scope})

        c.Spawner.server_token_scopes = _scopes
    else:
        base = list(existing) if existing else list(DEFAULT_SERVER_SCOPES)
        c.Spawner.server_token_scopes = sorted(set(base) | {scope})


def service_environment(rt: Any, name: str, api_token: str) -> dict[str, str]:
    """What ``HubOAuth`` in a supervisor-started service reads from its environment."""
    prefix = f"/services/{name}/"
    return {
        "JUPYTERHUB_SERVICE_NAME": name,
        ENV_HUB_TOKEN: api_token,
        ENV_HUB_API_URL: rt.hub_api_url,
        "JUPYTERHUB_CLIENT_ID": f"service-{name}",
        "JUPYTERHUB_SERVICE_PREFIX": prefix,
        "JUPYTERHUB_BASE_URL": "/",
        # Relative: the browser stays on whatever host it reached the proxy by.
        "JUPYTERHUB_OAUTH_CALLBACK_URL": prefix + "oauth_callback",
        "JUPYTERHUB_HOST": "",
    }


#: Seconds uvicorn keeps an idle connection. The proxy (configurable-http-proxy) keeps its
#: upstream connections alive with no idle limit of its own: each time uvicorn closes one,
#: a request the proxy sends on it at that moment fails ("socket hang up", a 503 to the
#: user). Longer than uvicorn's 5 s default makes those closes rare.
KEEP_ALIVE_S = 300
#: Bytes of request line + headers uvicorn (h11) reads before refusing with a bare 400 and
#: a closed connection; above the request-limits layer's cap (twinhub.services.asgi,
#: 32 KiB) so that the layer answers first, with a JSON 431.
MAX_HEAD_BYTES = 64 * 1024


def uvicorn_argv(factory: str, port: int, *extra: str, host: str = "127.0.0.1") -> list[str]:
    """The command of a service's ASGI process: ``factory`` (``module:function``) under
    uvicorn (h11) on ``host`` (loopback; a pod's every address in Kubernetes), quiet, with
    no Server header; ``extra`` uvicorn options."""
    return [
        sys.executable, "-m", "uvicorn", "--factory", factory,
        "--host", host, "--port", str(port),
        "--http", "h11", "--h11-max-incomplete-event-size", str(MAX_HEAD_BYTES),
        "--timeout-keep-alive", str(KEEP_ALIVE_S),
        *extra,
        "--no-server-header", "--log-level", "warning",
    ]  # fmt: skip
