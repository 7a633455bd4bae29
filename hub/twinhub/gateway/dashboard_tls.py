"""Dask preload run in every gateway scheduler and worker: lock its HTTP server.

A scheduler's or worker's HTTP server (the dashboard, /info, /metrics...) listens on a
loopback port that any local account could connect to.  The backend configures it with the
cluster's TLS certificate (``distributed.scheduler.dashboard.tls.*``); distributed builds that
context with ``Purpose.CLIENT_AUTH``, which does *not* ask clients for a certificate.  Here we
require one signed by the cluster's own self-signed certificate, which only the cluster's
owner and the gateway hold.  Loaded by file path (``--preload /path/dashboard_tls.py``) so it
needs nothing but the standard library in the user's processes.
"""

from __future__ import annotations

import ssl


def dask_setup(server) -> None:  # noqa: ANN001  (a distributed Scheduler or Worker)
    http = getattr(server, "http_server", None)
    if http is None:
        return  # no HTTP server at all: nothing to protect
    ctx = getattr(http, "ssl_options", None)
    if not isinstance(ctx, ssl.SSLContext):
        # Fail closed: never serve an open dashboard.
        raise RuntimeError(
            "twinhub: the HTTP server of this Dask process is not TLS-protected; "
            "set distributed.scheduler.dashboard.tls.{cert,key,ca-file}"
        )
    ctx.verify_mode = ssl.CERT_REQUIRED
