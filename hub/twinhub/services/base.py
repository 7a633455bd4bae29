"""What every hub service (an ASGI app under uvicorn, registered with the hub) shares.

A service subclasses :class:`AsgiService` and says what is its own: its name, settings
class, app factory and hooks. The base gives it a port (in ``plan``), its URLs, the uvicorn
component, its config file (written 0600 by ``twinhub up``, read back by the service's
process with :func:`twinhub.services.service_config.read_service_config`), its registration
with the hub (API token, access scope for every user and user server, the servers'
environment) and its status. A minimal service::

    class TwinhubNotes(Configurable):
        enabled = Bool(True, help="Run the notes service.").tag(config=True)

    class NotesPart(AsgiService):
        name = "notes"                                   # at /services/notes/
        settings = (TwinhubNotes,)
        factory = "twinhub.services.notes.app:create_app"

        config_path = "run/notes.json"                   # optional: a 0600 config file

        def enabled(self, rt):
            return TwinhubNotes(config=rt.config).enabled

        def service_config(self, rt):
            return {"prefix": self.prefix()}

and one line in :data:`twinhub.parts.PARTS`. Its app (``app.py``)::

    def create_app(config=None):
        cfg = config or read_service_config(NotesPart.config_env())
        app = NotesApp(cfg)                              # answers ``health`` unauthenticated
        authed = HubAuthMiddleware(app, prefix=cfg["prefix"], public_paths=("health",))
        return RequestLimitsMiddleware(authed)

In Kubernetes (``rt.kubernetes``) the same part runs in its own pod: ``twinhub service run
<name>`` calls :meth:`AsgiService.serve` (migrations, ``prepare``, then uvicorn on
0.0.0.0), and the hub registers it at its in-cluster address (``rt.service_urls``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from starlette.responses import JSONResponse, Response

from .. import db
from ..errors import PlatformError
from ..plugin import Part, Say
from ..process.components import Component
from ..process.ports import PLATFORM_PORTS, pick_port
from ..process.runtime import Runtime
from ..process.supervisor import http_ok
from .asgi import error_body
from .registration import grant_access, register_service, service_environment, uvicorn_argv
from .service_config import write_service_config


class AsgiService(Part):
    """A hub service at ``/services/<name>/`` (see the module's docstring).

    Class attributes say what differs between services; hooks (:meth:`enabled`,
    :meth:`service_config`, :meth:`prepare_service`, :meth:`extra_components`,
    :meth:`configure_service`) add what is a service's own.
    """

    #: ``module:function`` uvicorn builds the app with (``--factory``).
    factory: ClassVar[str] = ""
    #: Path under the service's prefix that answers 200 once it is up (no authentication).
    health_path: ClassVar[str] = "health"
    #: Extra uvicorn options.
    uvicorn_options: ClassVar[tuple[str, ...]] = ()
    #: The variable (:mod:`twinlab.contract`) telling user servers the public URL; "": none.
    url_env: ClassVar[str] = ""
    #: Listed in the servers' ``$TWINHUB_SERVICES`` (``c.TwinhubSpawner.services``).
    listed: ClassVar[bool] = False
    #: Scopes of the service's own token (a role ``<name>-service``); (): none.
    scopes: ClassVar[tuple[str, ...]] = ()
    #: Its config file under the state dir (:meth:`service_config` says what it holds); "":
    #: it has none.
    config_path: ClassVar[str] = ""

    # -- names ---------------------------------------------------------------------------
    @classmethod
    def prefix(cls) -> str:
        """``/services/<name>/``, where the proxy routes it."""
        return f"/services/{cls.name}/"

    @classmethod
    def secret_name(cls) -> str:
        """The :meth:`Runtime.secret` holding its hub API token."""
        return f"service-{cls.name}"

    @classmethod
    def config_env(cls) -> str:
        """The variable naming its config file in its process (``TWINHUB_<NAME>_CONFIG``)."""
        return f"TWINHUB_{cls.name.upper()}_CONFIG"

    def config_file(self, rt: Runtime) -> Path:
        return rt.path(self.config_path)

    def port(self, rt: Runtime) -> int:
        return rt.ports[self.name]

    def base_url(self, rt: Runtime) -> str:
        """Where the hub reaches it, straight: loopback, or its in-cluster Service."""
        if rt.kubernetes:
            return rt.service_url(self.name).rstrip("/")
        return f"http://127.0.0.1:{self.port(rt)}"

    def api_url(self, rt: Runtime) -> str:
        """The service straight, not through the proxy (the platform's own calls)."""
        return self.base_url(rt) + self.prefix()

    def public_url(self, rt: Runtime) -> str:
        """The service through the proxy on loopback (what user servers use)."""
        return public_url(rt, self.name)

    # -- what a service says about itself --------------------------------------------------
    def enabled(self, rt: Runtime) -> bool:
        """Whether the configuration has the service on (read by ``plan`` and ``active``)."""
        return True

    def active(self, rt: Runtime) -> bool:
        """On in this run: enabled in the configuration (runtime.json's, in every process)
        and given a port by ``plan``. Both: a restart may take an earlier run's ports, a
        service since switched off among them."""
        return self.enabled(rt) and self.name in rt.ports

    def service_config(self, rt: Runtime) -> dict[str, Any]:
        """What its process reads from its config file (with ``config_path``)."""
        return {"prefix": self.prefix()}

    def prepare_service(self, rt: Runtime, say: Say) -> None:
        """Before the config file is written (checks, files, databases)."""

    def extra_components(self, rt: Runtime) -> list[Component]:
        """Components of its own, started before the service (which waits for them)."""
        return []

    def configure_service(self, c: Any, rt: Runtime) -> None:
        """Its share of the hub's configuration beyond registration."""

    def prepare_pod(self, rt: Runtime, say: Say) -> None:
        """Kubernetes, in its own pod before serving: what ``twinhub up`` does for it
        embedded (``prepare``; a service whose extra components prepare more adds that)."""
        self.prepare(rt, say)

    # -- Kubernetes: the service's own pod --------------------------------------------------
    def serve(self, rt: Runtime, say: Say = print) -> None:
        """``twinhub service run <name>``: migrate twinhub's tables, :meth:`prepare_pod`,
        then become uvicorn on 0.0.0.0 (exec: the pod's signals reach the server). Only in
        a chart's pod: embedded services listen on loopback, started by ``twinhub up``."""
        if not rt.kubernetes:
            raise PlatformError(
                f"twinhub service run is for the Helm chart's pods (deployment 'kubernetes'); "
                f"the runtime in {rt.state_dir} is {rt.deployment!r}, whose services "
                "twinhub up starts"
            )
        if not self.active(rt):
            raise PlatformError(
                f"service {self.name!r} is not enabled in this deployment's runtime.json "
                f"(enabled services: {', '.join(sorted(rt.ports)) or 'none'})"
            )
        if not os.access(rt.run_dir, os.W_OK):
            # The container runtime makes run/ (root's) for the ConfigMap's file mount
            # unless a volume is mounted there: config files and state go there.
            raise PlatformError(
                f"{rt.run_dir} is not writable by this process (uid {os.geteuid()}): mount "
                "an emptyDir at that path (the chart's twinhub.runtimeVolumeMounts does)"
            )
        self.prepare_to_serve(rt, say)
        env = service_environment(rt, self.name, rt.secret(self.secret_name()))
        if self.config_path:
            env[self.config_env()] = str(self.config_file(rt))
        argv = uvicorn_argv(
            self.factory, self.port(rt), *pod_options(self.uvicorn_options), host="0.0.0.0"
        )
        say(f"{self.name}: serving {self.prefix()} on 0.0.0.0:{self.port(rt)}")
        sys.stdout.flush()
        os.execve(argv[0], argv, {**os.environ, **env})

    def prepare_to_serve(self, rt: Runtime, say: Say = print) -> None:
        """What a service pod does before serving: migrate twinhub's tables (one pod at a
        time: a new release, or replicas > 1, starts several at once on one database), then
        :meth:`prepare_pod` outside that lock, so the hub's start never waits on a
        service's own (stac: pgstac's, under :data:`PGSTAC_LOCK`)."""
        say(f"{self.name}: {migrate(rt, say=say)}")
        self.prepare_pod(rt, say)

    # -- the Part hooks ----------------------------------------------------------------------
    def plan(self, rt: Runtime) -> None:
        if self.enabled(rt):
            rt.ports[self.name] = pick_port(PLATFORM_PORTS)

    def prepare(self, rt: Runtime, say: Say = print) -> None:
        if not self.active(rt):
            return
        self.prepare_service(rt, say)
        if self.config_path:
            write_service_config(self.config_file(rt), self.service_config(rt))

    def components(self, rt: Runtime) -> list[Component]:
        if not self.active(rt):
            return []
        before = self.extra_components(rt)
        env = service_environment(rt, self.name, rt.secret(self.secret_name()))
        if self.config_path:
            env[self.config_env()] = str(self.config_file(rt))
        service = Component(
            name=self.name,
            argv=uvicorn_argv(self.factory, self.port(rt), *self.uvicorn_options),
            env=env,
            port=self.port(rt),
            ready=functools.partial(http_ok, self.api_url(rt) + self.health_path),
            # Its start-up overlaps the others' (it waits only for its own components).
            background=True,
            after=tuple(c.name for c in before),
        )
        return [*before, service]

    def configure_hub(self, c: Any, rt: Runtime) -> None:
        """Register the service, let every user (and server) reach it, give its token its
        scopes, tell servers where it is; then :meth:`configure_service`."""
        if not self.active(rt):
            return
        register_service(c, self.name, self.base_url(rt), rt.secret(self.secret_name()))
        grant_access(c, self.name)
        if self.scopes:
            roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
            roles.append(
                {
                    "name": f"{self.name}-service",
                    "scopes": list(self.scopes),
                    "services": [self.name],
                }
            )
            c.JupyterHub.load_roles = roles
        if self.url_env:
            c.Spawner.environment.update({self.url_env: self.public_url(rt)})
        self.configure_service(c, rt)
        if self.listed:
            c.TwinhubSpawner.services.update({self.name: rt.url + self.prefix().lstrip("/")})


def platform_name(rt: Runtime) -> str:
    """The platform's name (``c.TwinhubFace.platform_name``, default "twinhub") for a
    service's own pages, read from the configuration: services do not import the hub's face
    (:mod:`twinhub.hubconf.face`), which is the hub process's."""
    section = rt.config.get("TwinhubFace") or {}
    return str(section.get("platform_name") or "twinhub")


def static_file(directory: Path, files: Mapping[str, str], name: str, csp: str) -> Response:
    """A service's static file ``name`` from ``directory``, if ``files`` (a fixed table:
    name -> media type, so no request path reaches the file system) lists it, else a JSON
    404; cached an hour, never sniffed, with the pages' ``csp``."""
    media = files.get(name)
    if media is None:
        return JSONResponse(error_body(404, f"no static file {name[:100]!r}"), 404)
    return Response(
        (directory / name).read_bytes(),
        media_type=media,
        headers={
            "Cache-Control": "public, max-age=3600",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": csp,
        },
    )


def public_url(rt: Runtime, name: str) -> str:
    """Service ``name`` through the proxy on loopback."""
    return rt.local_url + f"services/{name}/"


def running_public_url(rt: Runtime, name: str) -> str:
    """:func:`public_url` of service ``name`` if it runs in this run, else ""."""
    return public_url(rt, name) if name in rt.ports else ""


def pod_options(options: tuple[str, ...]) -> list[str]:
    """uvicorn options for a pod: the proxy is another pod, so forwarded headers are
    trusted from any address (NetworkPolicies decide who reaches the pod) rather than
    loopback's."""
    out = list(options)
    for i, opt in enumerate(out[:-1]):
        if opt == "--forwarded-allow-ips":
            out[i + 1] = "*"
    return out


#: PostgreSQL advisory lock key held while twinhub's tables are migrated: the hub and
#: every service pod migrate at start, so a new release's pods take turns.
MIGRATION_LOCK = 0x7477696E  # "twin"
#: Its sibling held by stac pods while pgstac's schema is migrated (possibly long): apart
#: from :data:`MIGRATION_LOCK`, so the hub's config load does not wait for it.
PGSTAC_LOCK = MIGRATION_LOCK + 1

#: How long a pod waits for its database (CNPG's cluster bootstraps while the release's
#: pods start) before it stops with an error, and how often it says it is waiting.
DB_WAIT_SECONDS = 120.0
DB_WAIT_NOTICE_SECONDS = 10.0


def _reason(e: Exception) -> str:
    """The driver's first line (psycopg's names host and port, never the password)."""
    lines = str(getattr(e, "orig", None) or e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def database_error(url: str, e: Exception) -> PlatformError:
    """One line naming the database (its password masked) and the driver's reason: a
    traceback in a pod's log helps nobody, and SQLAlchemy's text quotes statements."""
    return PlatformError(f"database {db.redacted(url)}: {_reason(e)}")


def _connect_and_lock(url: str, key: int, wait: float, say: Say) -> Connection:
    """A connection holding advisory lock ``key``, retried while the server refuses
    connections (not while another pod holds the lock: that is waited for, unbounded)."""
    start = next_notice = time.monotonic()
    while True:
        try:
            conn = db.engine(url).connect()
        except db.DatabaseError as e:
            raise PlatformError(str(e)) from None
        except OperationalError as e:
            now = time.monotonic()
            if now - start >= wait:
                raise database_error(url, e) from None
            if now >= next_notice:
                say(f"waiting for the database {db.redacted(url)} ({now - start:.0f} of "
                    f"{wait:.0f} s): {_reason(e)}")  # fmt: skip
                next_notice = now + DB_WAIT_NOTICE_SECONDS
            time.sleep(min(1.0, wait - (now - start)))
            continue
        try:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            # The lock is the session's; no transaction stays open (idle) while it is held.
            conn.commit()
        except SQLAlchemyError as e:
            conn.close()
            raise database_error(url, e) from None
        return conn


@contextlib.contextmanager
def migration_lock(
    url: str, *, key: int = MIGRATION_LOCK, wait: float = DB_WAIT_SECONDS, say: Say = print
) -> Iterator[None]:
    """Hold advisory lock ``key`` on PostgreSQL ``url`` (a session lock: released if the
    process dies), waiting up to ``wait`` seconds for the server to accept connections;
    nothing to hold on SQLite (one embedded platform)."""
    if not url.startswith("postgresql"):
        yield
        return
    conn = _connect_and_lock(url, key, wait, say)
    with conn:
        try:
            yield
        finally:
            # A broken connection must not hide the error that broke it; closing the
            # session releases the lock anyway.
            with contextlib.suppress(SQLAlchemyError):
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()


def migrate(rt: Runtime, *, wait: float = DB_WAIT_SECONDS, say: Say = print) -> str:
    """Bring twinhub's own tables (``rt.db_url``) to the newest revision; in Kubernetes one
    process at a time (:func:`migration_lock`), after waiting up to ``wait`` seconds for
    the database. Returns a line saying what happened."""
    url = rt.db_url
    try:
        with migration_lock(url, wait=wait, say=say):
            before, after = db.upgrade(url)
    except db.DatabaseError as e:
        raise PlatformError(str(e)) from None
    except SQLAlchemyError as e:
        raise database_error(url, e) from None
    if before == after:
        return f"database {db.redacted(url)} at {after}"
    return f"database {db.redacted(url)} migrated {before or 'empty'} -> {after}"


async def keep_running(
    name: str, run: Callable[[], Awaitable[Any]], pause: float, log: logging.Logger
) -> None:
    """Run a service's background task ``run`` (a loop, or one job); if it raises, log it
    on ``log`` and start it again after ``pause`` seconds. Returns once ``run`` returns;
    cancelled at shutdown."""
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s failed; again in %.0f s", name, pause)
        await asyncio.sleep(pause)
