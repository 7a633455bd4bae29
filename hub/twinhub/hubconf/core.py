"""The platform's core components: the proxy, the hub and the idle culler.

:class:`CorePart`: ``components`` is what the supervisor starts; ``configure_hub`` is the
part of the JupyterHub configuration that ties the hub to them (external proxy, ports,
database, secrets, services and their roles).

In Kubernetes z2jh owns the hub's bind URLs, its own database, the proxy, the cookie
secret, the crypt key and the idle culler (its jupyterhub_config.py runs before
``twinhub.hub_config``): ``configure_hub`` then only migrates twinhub's own tables and
adds what is twinhub's (the face, the instance's environment), keeping z2jh's services
and roles.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from twinlab.contract import ENV_INSTANCE

from .. import db
from ..client.hubapi import CLI_SERVICE, resync_proxy_routes
from ..config import Twinhub
from ..plugin import Part, Say
from ..process.components import Component
from ..process.runtime import Runtime
from ..process.supervisor import TwinhubSupervisor, free_port, http_ready
from ..services.base import migrate
from .face import TwinhubFace, configure_face
from .handlers import TwinhubHubRequests

# What the hub process runs: every part's configure_hub (jupyterhub -f).
HUB_CONFIG_FILE = Path(__file__).parents[1] / "jupyterhub_config.py"
PROXY_PRELOAD = Path(__file__).with_name("proxy_preload.cjs")


def find_proxy() -> str:
    """configurable-http-proxy, installed by scripts/setup into the checkout's node_modules."""
    explicit = os.environ.get("TWINHUB_PROXY_COMMAND")
    if explicit:
        return explicit
    here = Path(__file__).resolve()
    for root in here.parents:
        candidate = root / "node_modules" / ".bin" / "configurable-http-proxy"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("configurable-http-proxy")
    if found:
        return found
    raise FileNotFoundError(
        "configurable-http-proxy not found: run scripts/setup (it installs it into ./node_modules)"
    )


def hub_db_url(rt: Runtime) -> str:
    return f"sqlite:///{rt.hub_dir / 'jupyterhub.sqlite'}"


def _proxy_authorized(port: int, token: str) -> bool:
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/routes", headers={"Authorization": f"token {token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class CorePart(Part):
    """The proxy, the hub and the idle culler; the databases' backup and upgrade."""

    name = "core"
    settings = (Twinhub, TwinhubSupervisor, TwinhubHubRequests, TwinhubFace)

    def plan(self, rt: Runtime) -> None:
        for name in ("proxy_api", "hub"):
            rt.ports[name] = free_port()

    def prepare(self, rt: Runtime, say: Say) -> None:
        say("  databases      checking...")
        for line in db.backup_and_upgrade(rt, hub_db_url=hub_db_url(rt)):
            say(f"  databases      {line}")

    def components(self, rt: Runtime) -> list[Component]:
        proxy_token = rt.secret("proxy-auth-token")
        p = rt.ports
        proxy = Component(
            name="proxy",
            argv=[
                find_proxy(),
                "--ip",
                rt.ip,
                "--port",
                str(p["public"]),
                "--api-ip",
                "127.0.0.1",
                "--api-port",
                str(p["proxy_api"]),
                "--default-target",
                f"http://127.0.0.1:{p['hub']}",
                "--error-target",
                f"http://127.0.0.1:{p['hub']}/hub/error",
                "--log-level",
                "warn",
            ],
            env={
                "CONFIGPROXY_AUTH_TOKEN": proxy_token,
                # JSON 4xx answers and a lingering close for requests node refuses before routing
                # (headers over node's 16 KiB: 431), so clients get a status, not a reset.
                "NODE_OPTIONS": f'--require "{PROXY_PRELOAD}"',
            },
            port=p["public"],
            ready_url=f"http://127.0.0.1:{p['proxy_api']}/api/routes",
            ready=lambda: (
                http_ready(f"http://127.0.0.1:{p['proxy_api']}/api/routes")
                and _proxy_authorized(p["proxy_api"], proxy_token)
            ),
            # A restarted proxy knows only its default route (the hub): have the hub add every
            # server's and service's route now rather than at its next periodic check (minutes).
            after_restart=lambda: resync_proxy_routes(rt),
        )
        hub = Component(
            name="hub",
            argv=[rt.bin("jupyterhub"), "-f", str(HUB_CONFIG_FILE)],
            cwd=rt.hub_dir,
            port=p["hub"],
            ready_url=f"{rt.hub_api_url}/",
        )
        culler = Component(
            name="idle-culler",
            argv=[
                rt.bin("python"),
                "-m",
                "jupyterhub_idle_culler",
                f"--timeout={int(rt.config.get('Twinhub', {}).get('idle_timeout', 3600))}",
                "--cull-every=60",
            ],
            env={
                "JUPYTERHUB_API_TOKEN": rt.secret("service-idle-culler"),
                "JUPYTERHUB_API_URL": rt.hub_api_url,
            },
        )
        return [proxy, hub, culler]

    def configure_hub(self, c: Any, rt: Runtime) -> None:
        if rt.kubernetes:
            self.configure_kubernetes(c, rt)
            return
        p = rt.ports
        c.JupyterHub.bind_url = rt.url
        c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{p['hub']}"
        c.JupyterHub.db_url = hub_db_url(rt)
        c.JupyterHub.cookie_secret_file = str(rt.secret_path("cookie-secret"))
        c.JupyterHub.pid_file = str(rt.run_dir / "jupyterhub.pid")
        # A hub restarted by the supervisor finds its servers still running (their pids are in
        # the spawners' state); `twinhub down` stops them through the API first (platform.py).
        c.JupyterHub.cleanup_servers = False
        c.JupyterHub.cleanup_proxy = True
        c.ConfigurableHTTPProxy.should_start = False
        c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{p['proxy_api']}"
        c.ConfigurableHTTPProxy.auth_token = rt.secret("proxy-auth-token")
        c.CryptKeeper.keys = [bytes.fromhex(rt.secret("crypt-key"))]

        # Plain lists (not traitlets' lazy values): later modules read and extend them.
        c.JupyterHub.services = list(
            [
                {"name": "idle-culler", "api_token": rt.secret("service-idle-culler")},
                # admin: JupyterHub lets only admins make or change admins
                # (`twinhub user add --admin`); the CLI runs as the platform's own account.
                {
                    "name": CLI_SERVICE,
                    "api_token": rt.secret("service-twinhub-cli"),
                    "admin": True,
                },
            ]
        )
        c.JupyterHub.load_roles = list(
            [
                {
                    "name": "idle-culler",
                    "scopes": [
                        "list:users",
                        "read:users:activity",
                        "read:servers",
                        "delete:servers",
                    ],
                    "services": ["idle-culler"],
                },
                {
                    # What `twinhub user ...` needs: manage users, groups and tokens; and the
                    # supervisor: re-sync a restarted proxy's routes (proxy), stop every server
                    # at `twinhub down` and tell servers from orphans (admin:server_state: pids).
                    "name": "twinhub-cli",
                    "scopes": [
                        "admin:users",
                        "admin:groups",
                        "admin:servers",
                        "admin:server_state",
                        "tokens",
                        "read:hub",
                        "proxy",
                    ],
                    "services": [CLI_SERVICE],
                },
            ]
        )
        configure_face(c, rt)
        # Every process started for this instance is findable for orphan cleanup.
        c.Spawner.environment.update({ENV_INSTANCE: rt.instance_id})

    def configure_kubernetes(self, c: Any, rt: Runtime) -> None:
        """The hub's share under z2jh: twinhub's tables migrated (the auth and spawn hooks
        read them from the first request on), z2jh's services and roles kept as plain lists
        (later parts read and extend them)."""
        print(f"twinhub: {migrate(rt)}", flush=True)
        c.JupyterHub.services = list(c.JupyterHub.services) if "services" in c.JupyterHub else []
        c.JupyterHub.load_roles = (
            list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
        )
        configure_face(c, rt)
        c.Spawner.environment.update({ENV_INSTANCE: rt.instance_id})
