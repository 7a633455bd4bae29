"""Accounting: what users' processes really use, per user and project, with energy and CO2e.

- :class:`~.config.TwinhubAccounting` (``c.TwinhubAccounting.*``): interval, backends, energy
  model, grace before an over-budget server is stopped;
- the ``accounting`` component (:mod:`.app`, uvicorn), a hub service at
  ``/services/accounting/``: it runs the meter (:mod:`.meter`: backends -> readings ->
  :mod:`.store`) every ``interval``, then the budget checks (:mod:`.enforce`), and answers the
  usage API, ``metrics`` and ``health``;
- in the hub process (:meth:`AccountingPart.configure_service`): where the spawner writes the
  charge files of its servers (``spawn.charges``) and the hooks that refuse a spawn or stop a
  server whose project's budget is used up (:func:`.enforce.install`).

See docs/accounting.md.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from traitlets import TraitError

from twinlab.contract import ENV_ACCOUNTING_URL

from ...errors import StartError
from ...plugin import Say
from ...process.runtime import Runtime
from ...spawn import charges
from ..base import AsgiService
from . import enforce
from .config import TwinhubAccounting, is_enabled

SERVICE_NAME = "accounting"
SERVICE_PREFIX = f"/services/{SERVICE_NAME}/"


def charges_dir(rt: Runtime) -> Path:
    """Where the hub and the gateway write one charge file per source (root only)."""
    return rt.path(charges.CHARGES_DIR)


def settings(rt: Runtime) -> TwinhubAccounting:
    """The validated settings; a bad value stops ``twinhub up`` with a message naming it."""
    try:
        return TwinhubAccounting(config=rt.config)
    except (TraitError, ValueError) as e:
        raise StartError(f"bad accounting configuration: {e}") from None


class AccountingPart(AsgiService):
    """Metering, the usage API at /services/accounting/, and budgets held while running."""

    name = SERVICE_NAME
    settings = (TwinhubAccounting,)
    # After the projects service (its catalog is what budgets are read from).
    start_rank = 35
    factory = "twinhub.services.accounting.app:create_app"
    url_env = ENV_ACCOUNTING_URL
    listed = True
    # What the service's own token may do: read users (admin flag, groups: who is a member
    # of which project) and groups. It stops nothing itself (the hub's hooks do).
    scopes = ("read:users", "read:groups")

    def enabled(self, rt: Runtime) -> bool:
        return is_enabled(rt)

    def prepare_service(self, rt: Runtime, say: Say) -> None:
        """Check the settings; make the charge-file directory (0700: written by the hub and
        the gateway as root, read by the meter, never by users)."""
        s = settings(rt)
        if s.backend not in ("cgroup", "prometheus"):
            raise StartError(
                f"bad accounting configuration: TwinhubAccounting.backend {s.backend!r} is "
                "not one of 'cgroup', 'prometheus'"
            )
        if s.backend == "prometheus" and not s.prometheus_url.strip():
            raise StartError(
                "bad accounting configuration: TwinhubAccounting.backend is 'prometheus' but "
                "TwinhubAccounting.prometheus_url is empty; set it to the Prometheus that "
                "scrapes cAdvisor (e.g. http://prometheus-server.monitoring.svc), or use "
                "backend 'cgroup'"
            )
        charges.ensure_dir(charges_dir(rt)).parent.chmod(0o700)

    def status_lines(self, rt: Runtime) -> list[str]:
        """When the meter last ticked (asked of the running service: its memory)."""
        if not self.active(rt):
            return []
        try:
            with urllib.request.urlopen(self.api_url(rt) + "health", timeout=2) as r:
                meter = json.loads(r.read()).get("meter") or {}
        except (OSError, ValueError) as e:  # starting, or stopped: say so, do not fail
            return [f"accounting     not answering ({type(e).__name__})"]
        if not meter.get("last_tick"):
            return ["accounting     meter: no tick yet"]
        ago = max(0.0, time.time() - float(meter["last_tick"]))
        line = f"accounting     meter: last tick {ago:.0f} s ago, {meter.get('ticks', 0)} ticks"
        if meter.get("consecutive_failures"):
            line += f", failing: {meter.get('last_error')}"
        return [line]

    def configure_service(self, c: Any, rt: Runtime) -> None:
        """Tell the spawner where charge files go, and wrap the projects' spawn hooks with
        the budget checks (this part comes after ProjectsPart in PARTS: its hooks are set)."""
        c.TwinhubSpawner.accounting_dir = str(charges_dir(rt))
        enforce.install(c, settings(rt), rt)


__all__ = [
    "SERVICE_NAME",
    "SERVICE_PREFIX",
    "AccountingPart",
    "TwinhubAccounting",
    "charges_dir",
    "is_enabled",
    "settings",
]
