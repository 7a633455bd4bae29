"""The resolved, running platform as every process of it sees it.

The supervisor (``twinhub up``) resolves configuration (config file + CLI flags), allocates
ports and writes them to ``<state>/run/runtime.json``; the hub process (``jupyterhub -f
twinhub/jupyterhub_config.py``) and services read the same file back through :class:`Runtime`.
Secrets never travel in that file or on command lines: :meth:`Runtime.secret` reads (or
creates) one 0600 file per secret under ``<state>/secrets``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlets.config import Config

RUNTIME_FILE = "run/runtime.json"


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
        return url or f"sqlite:///{self.path('twinhub.sqlite')}"

    # -- network ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Public base URL (through the proxy), ending in '/'."""
        if self.public_url:
            return self.public_url.rstrip("/") + "/"
        host = self.ip if self.ip not in ("0.0.0.0", "") else "127.0.0.1"
        return f"http://{host}:{self.ports['public']}/"

    @property
    def local_url(self) -> str:
        """Base URL of the proxy on loopback, for the platform's own calls."""
        return f"http://127.0.0.1:{self.ports['public']}/"

    @property
    def hub_api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['hub']}/hub/api"

    # -- secrets ------------------------------------------------------------------------
    def secret(self, name: str, nbytes: int = 32) -> str:
        """Read secret ``name``, creating it (random hex, mode 0600) on first use."""
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
        return cls(
            state_dir=state_dir,
            config=Config(data.get("config", {})),
            ports={k: int(v) for k, v in data.get("ports", {}).items()},
            mode=data.get("mode", "personal"),
            ip=data.get("ip", "127.0.0.1"),
            public_url=data.get("public_url", ""),
            instance_id=data.get("instance_id", ""),
        )

    @staticmethod
    def make_instance_id(state_dir: Path) -> str:
        return hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:10]
