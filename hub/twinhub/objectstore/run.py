"""``python -m twinhub.objectstore.run``: the ``object-store`` component's process.

A thin parent of ``weed server`` so the platform stops it promptly and cleanly: weed's own
graceful stop waits for gRPC streams that never end (seen: still running minutes after
SIGTERM), so SIGTERM is passed on and, after a short grace, weed is killed (its volumes are
append-only; a killed weed loses nothing acknowledged).  SIGHUP is passed on too: it makes
the S3 gateway reload identities.json (new users' keys).  Leftover /tmp sockets go at exit.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

from ..runtime import Runtime
from . import seaweed, settings

STOP_GRACE = 3.0


def main() -> int:
    rt = Runtime.load()
    store = settings(rt)
    weed = store.weed_command()
    proc = subprocess.Popen(
        seaweed.argv(rt, weed, store.volume_size_limit_mb),
        cwd=seaweed.conf_dir(rt),  # weed reads ./security.toml
        stdin=subprocess.DEVNULL,
    )
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP:
            stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM if signum != signal.SIGHUP else signal.SIGHUP)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    deadline: float | None = None
    try:
        while proc.poll() is None:
            if stopping and deadline is None:
                deadline = time.monotonic() + STOP_GRACE
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for sock in seaweed.grpc_unix_sockets(rt):
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
    return 0 if stopping else proc.returncode


if __name__ == "__main__":
    sys.exit(main())
