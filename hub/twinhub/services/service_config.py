"""A service's JSON config file: written by ``twinhub up`` (0600 in a 0700 directory: it may
hold secrets, such as a database passfile's path or sources' headers), read back by the
service's own process, which finds it through an environment variable.

Standard library only: the service processes import it at start-up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_service_config(path: str | Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path``, readable by the platform's account only."""
    f = Path(path)
    f.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)


def read_service_config(env: str, path: str | None = None) -> dict[str, Any]:
    """The config file at ``path``, else at ``$env`` (what the supervisor sets for the
    service's process); RuntimeError if neither names one."""
    path = path or os.environ.get(env, "")
    if not path:
        raise RuntimeError(f"{env} is not set: it names the service's config file")
    with open(path) as f:
        return json.load(f)
