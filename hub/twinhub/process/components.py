"""What the supervisor needs to know to run one platform process."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Component:
    """One long-running process of the platform (proxy, hub, gateway, culler, ...).

    ``ready_url`` is polled (HTTP; any status below 500 counts as ready) unless ``ready`` is
    given, a callable returning True once the component serves.  ``env`` is added to a
    minimal environment; secrets go in files or env, never in ``argv``.
    """

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    ready_url: str | None = None
    ready: Callable[[], bool] | None = None
    cwd: Path | None = None
    # Started after these components are ready (honoured for background components; the
    # others start in list order, each once the previous one is ready).
    after: tuple[str, ...] = ()
    # Slow to start and needed by no other component's start: launched first, waited for
    # last, so its start-up overlaps the others'.
    background: bool = False
    # What asks it to stop (PostgreSQL: SIGINT is its "fast" shutdown, SIGTERM waits for
    # every client to leave).
    stop_signal: int = signal.SIGTERM
    # Run before each start after the first, once what the dead process left is killed
    # (PostgreSQL: remove its stale lock files).
    before_restart: Callable[[], None] | None = None
    # Run once a restarted component is ready again (the proxy: have the hub re-add routes).
    after_restart: Callable[[], None] | None = None
