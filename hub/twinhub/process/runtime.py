"""The resolved, running platform as every process of it sees it.

The supervisor (``twinhub up``) resolves configuration (config file + CLI flags), allocates
ports and writes them to ``<state>/run/runtime.json``; the hub process (``jupyterhub -f
twinhub/jupyterhub_config.py``) and services read the same file back through :class:`Runtime`.
Secrets never travel in that file or on command lines: :meth:`Runtime.secret` reads (or
creates) one 0600 file per secret under ``<state>/secrets``.

In Kubernetes (``deployment == "kubernetes"``) the chart renders runtime.json into a
ConfigMap and mounts the Secrets as files under ``<state>/secrets``: the same class reads
them, never creates one, and takes the hub's and the proxy's addresses from
``service_urls`` (the in-cluster Services) instead of loopback ports.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlets.config import Config

from ..errors import PlatformError

RUNTIME_FILE = "run/runtime.json"
DEPLOYMENTS = ("embedded", "kubernetes")
#: The secret file holding twinhub's database URI in Kubernetes (CNPG's ``uri``).
DB_URL_SECRET = "db-url"
#: Secret files that hold options of the configuration in Kubernetes (the chart keeps them
#: out of runtime.json): file -> (section, trait). Read into the loaded config only.
SECRET_OPTIONS = {
    "s3-access-key": ("TwinhubObjectStore", "admin_access_key"),
    "s3-secret-key": ("TwinhubObjectStore", "admin_secret_key"),
}


def world_reachable(path: str | Path) -> bool:
    """True when any OS account can traverse every directory down to ``path``."""
    p = Path(path).resolve()
    for part in [p, *p.parents]:
        try:
            mode = part.stat().st_mode
        except FileNotFoundError:
            continue
        if part.is_dir() and not mode & stat.S_IXOTH:
            return False
    return True


@dataclass
class Runtime:
    """Paths, ports, mode and secrets of one platform instance (one state directory)."""

    state_dir: Path
    config: Config = field(default_factory=Config)
    ports: dict[str, int] = field(default_factory=dict)
    mode: str = "personal"
    ip: str = "127.0.0.1"
    public_url: str = ""
    instance_id: str = ""
    #: "embedded" (``twinhub up``) or "kubernetes" (the Helm chart).
    deployment: str = "embedded"
    #: Kubernetes: in-cluster addresses ("hub_api", "proxy", each service, "dask-gateway"...).
    service_urls: dict[str, str] = field(default_factory=dict)

    @property
    def kubernetes(self) -> bool:
        return self.deployment == "kubernetes"

    def service_url(self, name: str) -> str:
        """The in-cluster address ``name`` in runtime.json's ``service_urls``."""
        try:
            return self.service_urls[name]
        except KeyError:
            raise PlatformError(
                f"runtime.json has no service_urls[{name!r}] (the chart's twinhub-runtime "
                f"ConfigMap; it has {sorted(self.service_urls)})"
            ) from None

    # -- layout -------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.state_dir.joinpath(*parts)

    @property
    def logs_dir(self) -> Path:
        return self.path("logs")

    @property
    def run_dir(self) -> Path:
        return self.path("run")

    @property
    def secrets_dir(self) -> Path:
        return self.path("secrets")

    @property
    def hub_dir(self) -> Path:
        return self.path("hub")

    @property
    def prefix(self) -> Path:
        """The Python environment the platform (and every user server) runs from."""
        return Path(sys.prefix)

    def bin(self, name: str) -> str:
        return str(self.prefix / "bin" / name)

    @property
    def shared_dir(self) -> Path:
        """World-traversable directory for what platform OS accounts must reach."""
        configured = self.config.get("Twinhub", {}).get("shared_dir", "")
        if configured:
            return Path(configured)
        if world_reachable(self.state_dir):
            return self.path("shared")
        return Path("/var/lib/twinhub") / self.instance_id

    @property
    def db_url(self) -> str:
        url = self.config.get("Twinhub", {}).get("db_url", "")
        if url:
            return url
        if self.kubernetes:
            return sqlalchemy_url(self.secret(DB_URL_SECRET))
        return f"sqlite:///{self.path('twinhub.sqlite')}"

    # -- network ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Public base URL (through the proxy), ending in '/'."""
        if self.public_url:
            return self.public_url.rstrip("/") + "/"
        if self.kubernetes:
            return self.local_url
        host = self.ip if self.ip not in ("0.0.0.0", "") else "127.0.0.1"
        return f"http://{host}:{self.ports['public']}/"

    @property
    def local_url(self) -> str:
        """Base URL of the proxy on loopback (Kubernetes: its in-cluster Service), for the
        platform's own calls."""
        if self.kubernetes:
            return self.service_url("proxy").rstrip("/") + "/"
        return f"http://127.0.0.1:{self.ports['public']}/"

    @property
    def hub_api_url(self) -> str:
        if self.kubernetes:
            return self.service_url("hub_api").rstrip("/")
        return f"http://127.0.0.1:{self.ports['hub']}/hub/api"

    # -- secrets ------------------------------------------------------------------------
    def secret(self, name: str, nbytes: int = 32) -> str:
        """Read secret ``name``, creating it (random hex, mode 0600) on first use; in
        Kubernetes only read it (the chart's Secrets, mounted read-only)."""
        if self.kubernetes:
            return self._mounted_secret(name)
        d = self.secrets_dir
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        f = d / name
        if not f.exists():
            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(nbytes))
        return f.read_text().strip()

    def secret_path(self, name: str) -> Path:
        self.secret(name)
        return self.secrets_dir / name

    def _mounted_secret(self, name: str) -> str:
        f = self.secrets_dir / name
        try:
            value = f.read_text().strip()
        except FileNotFoundError:
            value = ""
        if not value:
            raise PlatformError(
                f"secret {name!r} is missing: {f} is not mounted or empty. Add the key "
                f"{name!r} to the Secret the chart mounts there (twinhub-secrets, or "
                "twinhub.existingSecret), then restart the pod"
            )
        return value

    # -- persistence ----------------------------------------------------------------------
    def save(self) -> Path:
        f = self.path(RUNTIME_FILE)
        f.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data: dict[str, Any] = {
            "state_dir": str(self.state_dir),
            "config": json.loads(json.dumps(self.config, default=str)),
            "ports": self.ports,
            "mode": self.mode,
            "ip": self.ip,
            "public_url": self.public_url,
            "instance_id": self.instance_id,
        }
        if self.kubernetes:
            # Only what the chart's runtime.json has: the embedded file stays as it was.
            data["deployment"] = self.deployment
            data["service_urls"] = self.service_urls
            for section, trait in SECRET_OPTIONS.values():
                # Read from secret files at load: never written back.
                data["config"].get(section, {}).pop(trait, None)
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.chmod(0o600)
        tmp.replace(f)
        return f

    @classmethod
    def load(cls, state_dir: str | Path | None = None) -> Runtime:
        """Load the runtime of a started platform (default: ``$TWINHUB_STATE``)."""
        state_dir = Path(state_dir or os.environ["TWINHUB_STATE"]).resolve()
        data = json.loads((state_dir / RUNTIME_FILE).read_text())
        deployment = data.get("deployment", "embedded")
        if deployment not in DEPLOYMENTS:
            raise PlatformError(
                f"{state_dir / RUNTIME_FILE}: deployment {deployment!r} is not one of "
                f"{', '.join(DEPLOYMENTS)}"
            )
        rt = cls(
            state_dir=state_dir,
            config=Config(data.get("config", {})),
            ports={k: int(v) for k, v in data.get("ports", {}).items()},
            mode=data.get("mode", "personal"),
            ip=data.get("ip", "127.0.0.1"),
            public_url=data.get("public_url", ""),
            instance_id=data.get("instance_id", ""),
            deployment=deployment,
            service_urls={k: str(v) for k, v in data.get("service_urls", {}).items()},
        )
        if rt.kubernetes:
            rt._read_secret_options()
        return rt

    def _read_secret_options(self) -> None:
        """Kubernetes: options the chart keeps in Secrets (files), unless runtime.json sets
        them; an absent file leaves the option unset (the part that needs it says so)."""
        for name, (section, trait) in SECRET_OPTIONS.items():
            f = self.secrets_dir / name
            if trait in self.config.get(section, {}) or not f.is_file():
                continue
            value = f.read_text().strip()
            if value:
                self.config[section][trait] = value

    @staticmethod
    def make_instance_id(state_dir: Path) -> str:
        return hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:10]


def sqlalchemy_url(uri: str) -> str:
    """A libpq-style ``postgresql://`` URI (CNPG's ``uri``) as SQLAlchemy's URL for psycopg 3,
    the driver twinhub installs; other URLs unchanged."""
    return re.sub(r"^(postgres|postgresql)://", "postgresql+psycopg://", uri.strip())
