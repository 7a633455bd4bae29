"""The data lake service: a STAC API over the object store's data (EDEN's role in DestinE).

Components (embedded): ``stac-db`` (PostgreSQL + PostGIS + pgstac, see :mod:`.database`) and
``stac`` (stac-fastapi-pgstac wrapped by :mod:`.stac_app`: hub auth, input guards, owned
collections), registered with the hub at ``/services/stac/``.  On first start the sample
collection (:mod:`.seed`) is built (or taken from its cache) and loaded (:mod:`.loader`) in
the background while the platform is already usable.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Integer, List, Unicode, validate
from traitlets.config import Configurable

from ...plugin import Part, Say
from ...process.components import Component
from ...process.runtime import Runtime
from ..registration import (
    grant_access,
    register_service,
    service_environment,
    uvicorn_argv,
    write_service_config,
)

SERVICE_NAME = "stac"
SERVICE_PREFIX = f"/services/{SERVICE_NAME}/"
SECRET_NAME = "service-stac"
DB_COMPONENT = "stac-db"
CONFIG_FILE = "run/stac-api.json"
SEED_SIZES = ("small", "medium", "large")


class TwinhubDataLake(Configurable):
    """The STAC API of the data lake, its database and the sample data loaded into it."""

    enabled = Bool(True, help="Run the STAC API service at /services/stac/.").tag(config=True)
    database_url = Unicode(
        "",
        help="PostgreSQL (with PostGIS) for pgstac, as postgresql://user@host:port/db?passfile=F "
        "(the password in a libpq password file, never in the URL). Empty: the platform runs "
        "its own cluster under the state dir (unix socket only).",
    ).tag(config=True)
    seed = Unicode(
        "small",
        help="Sample data loaded into the lake and the STAC API on first start: one of "
        "small, medium, large; empty for none. Built once into seed_cache_dir and reused.",
    ).tag(config=True)
    seed_cache_dir = Unicode(
        "",
        help="Where built sample data is kept between platforms. Empty: $TWINHUB_SEED_CACHE or "
        "~/.cache/twinhub/seed.",
    ).tag(config=True)
    max_page_size = Integer(
        1000,
        min=1,
        help="Largest 'limit' a search or item listing may ask for; more is refused with 400.",
    ).tag(config=True)
    max_body_mb = Integer(
        16, min=1, help="Largest request body (an item, a bulk insert) the API accepts, in MB."
    ).tag(config=True)
    title = Unicode("twinhub data lake", help="Title of the STAC API's landing page.").tag(
        config=True
    )
    sources = List(
        Dict(),
        help="Federated STAC sources searched together with the lake through /services/stac/: "
        "dicts with 'name', 'url' (a STAC API root, or a static catalogue's catalog.json), "
        "optional 'kind' ('api'/'static', guessed from the URL), 'collections' (exposed ids; "
        "default all), 'headers' (e.g. Authorization; sent only to the source's own origin, "
        "never to its asset_origins nor after a redirect to another origin; never shown to "
        "users), 'asset_origins' (other scheme://host:port assets may be fetched from) and "
        "'timeout' (seconds, default 5). `twinhub up --stac-source NAME=URL` adds one.",
    ).tag(config=True)

    @validate("seed")
    def _check_seed(self, proposal: Any) -> str:
        if proposal.value not in ("", *SEED_SIZES):
            raise ValueError(
                f"TwinhubDataLake.seed must be one of {', '.join(SEED_SIZES)} or empty, "
                f"got {proposal.value!r}"
            )
        return proposal.value

    @validate("sources")
    def _check_sources(self, proposal: Any) -> list:
        from .sources import make_sources

        make_sources(proposal.value)  # raises SourceError naming the bad field
        return proposal.value

    def stac_sources(self) -> list:
        """The configured sources as :class:`.sources.StacSource` objects."""
        from .sources import make_sources

        return make_sources(self.sources)

    @property
    def embedded_db(self) -> bool:
        return not self.database_url


def settings(rt: Runtime) -> TwinhubDataLake:
    return TwinhubDataLake(config=rt.config)


def port(rt: Runtime) -> int:
    return rt.ports[SERVICE_NAME]


def api_url(rt: Runtime) -> str:
    """The STAC API on loopback, straight to the service (the platform's own calls)."""
    return f"http://127.0.0.1:{port(rt)}{SERVICE_PREFIX}"


def public_api_url(rt: Runtime) -> str:
    """The STAC API through the proxy on loopback (what user servers use)."""
    return rt.local_url + SERVICE_PREFIX.lstrip("/")


def active(rt: Runtime) -> bool:
    return settings(rt).enabled and SERVICE_NAME in rt.ports


def allocate_ports(rt: Runtime) -> None:
    from ...process.ports import PLATFORM_PORTS, pick_port

    if settings(rt).enabled:
        rt.ports[SERVICE_NAME] = pick_port(PLATFORM_PORTS)


def prepare(rt: Runtime, say=print) -> None:
    """Before start: the database cluster's files (embedded) and the API's config file."""
    if not active(rt):
        return
    from .database import connection, prepare_local

    lake = settings(rt)
    if lake.embedded_db:
        prepare_local(rt, say)
    conn = connection(rt, lake.database_url)
    write_service_config(
        rt.path(CONFIG_FILE),
        {
            "connection": conn.to_dict(),
            "prefix": SERVICE_PREFIX,
            "max_page_size": lake.max_page_size,
            "max_body_bytes": lake.max_body_mb * 1024 * 1024,
            "title": lake.title,
            # Federated sources (with their secret headers: this file is 0600) and the
            # rolling cache's public prefix that remote assets are read through.
            "sources": [s.to_dict() for s in lake.stac_sources()],
            "cache_url": _cache_url(rt),
        },
    )


def _cache_url(rt: Runtime) -> str:
    """The rolling cache's public prefix, or "" when it does not run (then remote items
    get no cache links and twinlab says why it cannot open them)."""
    from .. import cache

    return cache.public_url(rt) if cache.active(rt) else ""


def components(rt: Runtime) -> list[Component]:
    if not active(rt):
        return []
    from ...errors import StartError
    from ...process.supervisor import http_ok
    from .database import initialize, local_cluster, migrate_external, server_argv

    lake = settings(rt)
    comps: list[Component] = []
    after: tuple[str, ...] = ()
    if lake.embedded_db:
        import signal

        pg = local_cluster(rt)
        initialized: list[bool] = []

        def db_ready() -> bool:
            # A real connection: a killed server's socket file is no sign of a live one.
            if not pg.accepting():
                return False
            if not initialized:
                try:
                    initialize(rt, pg)
                except Exception as e:
                    if "starting up" in str(e) or "shutting down" in str(e):
                        return False
                    raise StartError(f"{DB_COMPONENT}: {e}") from e
                initialized.append(True)
            return True

        comps.append(
            Component(
                name=DB_COMPONENT,
                argv=server_argv(pg),
                ready=db_ready,
                background=True,
                stop_signal=signal.SIGINT,
                before_restart=pg.clear_stale_locks,
            )
        )
        after = (DB_COMPONENT,)
    else:
        from .database import connection

        try:
            migrate_external(connection(rt, lake.database_url))
        except Exception as e:
            raise StartError(f"cannot prepare the STAC database {lake.database_url}: {e}") from e

    env = service_environment(rt, SERVICE_NAME, rt.secret(SECRET_NAME))
    env["TWINHUB_STAC_CONFIG"] = str(rt.path(CONFIG_FILE))
    comps.append(
        Component(
            name=SERVICE_NAME,
            argv=uvicorn_argv(
                "twinhub.services.datalake.stac_app:create_app",
                port(rt),
                "--proxy-headers",
                "--forwarded-allow-ips",
                "127.0.0.1",
            ),
            env=env,
            port=port(rt),
            ready=functools.partial(http_ok, api_url(rt) + "_mgmt/ping"),
            background=True,
            after=after,
        )
    )
    return comps


def configure_hub(c: Any, rt: Runtime) -> None:
    """Register the STAC API with the hub and tell user servers where it is."""
    if not active(rt):
        return
    register_service(c, SERVICE_NAME, f"http://127.0.0.1:{port(rt)}", rt.secret(SECRET_NAME))
    grant_access(c, SERVICE_NAME)
    c.Spawner.environment.update({"TWINHUB_STAC_URL": public_api_url(rt)})


def seed_state_path(rt: Runtime) -> Path:
    return rt.path("run", "seed.json")


def seed_state(rt: Runtime) -> dict[str, Any]:
    try:
        return json.loads(seed_state_path(rt).read_text())
    except (OSError, ValueError):
        return {}


def _write_seed_state(rt: Runtime, **state: Any) -> None:
    f = seed_state_path(rt)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps({**state, "time": time.time()}))
    tmp.replace(f)


def seed_into(rt: Runtime, size: str, say=print) -> dict[str, Any]:
    """Build (or reuse) the ``size`` sample data and load it into this running platform.

    The build runs in a child process (see :mod:`.seed.__main__` for why); this process
    then only reads the finished build and loads it.
    """
    import subprocess

    from .loader import load_build
    from .seed import build

    lake = settings(rt)
    cache = Path(lake.seed_cache_dir) if lake.seed_cache_dir else None
    _write_seed_state(rt, status="building", size=size)
    argv = [sys.executable, "-m", "twinhub.services.datalake.seed", "--size", size]
    if cache:
        argv += ["--cache-dir", str(cache)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail = (tail + [line])[-10:]
        say(line)
    if proc.wait() != 0:
        raise RuntimeError(f"building the sample data failed: {' | '.join(tail)}")
    b = build(size, cache_dir=cache, progress=lambda _m: None)  # the finished build
    _write_seed_state(rt, status="loading", size=size)
    result = load_build(rt, b, say)
    _write_seed_state(rt, status="ready", **result)
    return result


def start_seeding(rt: Runtime, say=print) -> threading.Thread | None:
    """Load the configured sample data in the background unless it is already there."""
    if not active(rt):
        return None
    size = settings(rt).seed
    if not size:
        return None

    def note(msg: str) -> None:
        say(f"  data lake      {msg}")

    def run() -> None:
        try:
            from .loader import loaded_seed
            from .seed import SEED_VERSION

            have = loaded_seed(rt)
            if have and have.get("size") == size and have.get("version") == SEED_VERSION:
                _write_seed_state(rt, status="ready", **have)
                note(f"sample data ({size}) already loaded")
                return
            note(f"loading sample data ({size}) in the background...")
            r = seed_into(rt, size, note)
            note(f"sample data ({size}) ready: {r['items']} items in {r['seconds']} s")
        except Exception as e:  # the platform stays up; status says what went wrong
            _write_seed_state(rt, status="failed", size=size, error=str(e))
            note(f"loading the sample data failed: {e}")

    t = threading.Thread(target=run, name="sample data loading", daemon=True)
    t.start()
    return t


__all__ = [
    "SERVICE_NAME",
    "SERVICE_PREFIX",
    "TwinhubDataLake",
    "active",
    "allocate_ports",
    "api_url",
    "components",
    "configure_hub",
    "prepare",
    "public_api_url",
    "seed_into",
    "seed_state",
    "settings",
    "start_seeding",
]


class StacPart(Part):
    """The data lake's STAC API at /services/stac/, its database and sample data."""

    name = SERVICE_NAME
    settings = (TwinhubDataLake,)
    start_rank = 20

    def plan(self, rt: Runtime) -> None:
        allocate_ports(rt)

    def prepare(self, rt: Runtime, say: Say) -> None:
        prepare(rt, say)

    def components(self, rt: Runtime) -> list[Component]:
        return components(rt)

    def after_up(self, rt: Runtime, say: Say) -> threading.Thread | None:
        return start_seeding(rt, say)

    def configure_hub(self, c: Any, rt: Runtime) -> None:
        configure_hub(c, rt)

    def status_lines(self, rt: Runtime) -> list[str]:
        seed = seed_state(rt)
        if not seed:
            return []
        detail = seed.get("error") or (f"{seed['items']} items" if "items" in seed else "")
        return [f"sample data    {seed.get('status')} ({seed.get('size')}) {detail}".rstrip()]
