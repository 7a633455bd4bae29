"""The data lake service: a STAC API over the object store's data (EDEN's role in DestinE).

Components (embedded): ``stac-db`` (PostgreSQL + PostGIS + pgstac, see :mod:`.database`) and
``stac`` (stac-fastapi-pgstac wrapped by :mod:`.stac_app`: hub auth, input guards, owned
collections), registered with the hub at ``/services/stac/``.  On first start the sample
collection (:mod:`.seed`) is built (or taken from its cache) and loaded (:mod:`.loader`) in
the background while the platform is already usable.

Kubernetes: no ``stac-db`` component; pgstac lives in the chart's PostgreSQL, reached with
the ``db-url`` secret (:func:`kubernetes_database_url`), and the pod migrates it before
serving (:meth:`StacPart.prepare_pod`) as the database owner, which has no CREATEROLE
(:func:`migrate_pgstac_as_owner`).
"""

from __future__ import annotations

import os
import re
import signal
import threading
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import psycopg

from twinlab.contract import ENV_STAC_URL

from ...errors import PlatformError, StartError
from ...plugin import Say
from ...process.components import Component
from ...process.runtime import DB_URL_SECRET, Runtime
from ..base import PGSTAC_LOCK, AsgiService, migration_lock, running_public_url
from .database import (
    connection,
    initialize,
    local_cluster,
    migrate_external,
    prepare_local,
    server_argv,
)
from .lake_settings import SEED_SIZES, TwinhubDataLake, settings
from .seeding import seed_into, seed_state, start_seeding

SERVICE_NAME = "stac"
SERVICE_PREFIX = f"/services/{SERVICE_NAME}/"
DB_COMPONENT = "stac-db"
CONFIG_FILE = "run/stac-api.json"
#: The rolling cache's name: its package imports this one, not the other way round.
CACHE_SERVICE = "cache"


class StacPart(AsgiService):
    """The data lake's STAC API at /services/stac/, its database and sample data."""

    name = SERVICE_NAME
    settings = (TwinhubDataLake,)
    start_rank = 20
    factory = "twinhub.services.datalake.stac_app:create_app"
    health_path = "_mgmt/ping"
    uvicorn_options = ("--proxy-headers", "--forwarded-allow-ips", "127.0.0.1")
    url_env = ENV_STAC_URL
    # In $TWINHUB_SERVICES (the info endpoint's list) like every service a user may use.
    listed = True
    config_path = CONFIG_FILE

    def enabled(self, rt: Runtime) -> bool:
        return settings(rt).enabled

    def prepare_service(self, rt: Runtime, say: Say) -> None:
        """The database cluster's files (embedded)."""
        if settings(rt).embedded_db:
            prepare_local(rt, say)

    def service_config(self, rt: Runtime) -> dict[str, Any]:
        lake = settings(rt)
        return {
            "connection": connection(rt, lake.database_url).to_dict(),
            "prefix": self.prefix(),
            "max_page_size": lake.max_page_size,
            "max_body_bytes": lake.max_body_mb * 1024 * 1024,
            "title": lake.title,
            # Federated sources (with their secret headers: this file is 0600) and the
            # rolling cache's public prefix that remote assets are read through ("" when it
            # does not run: then remote items get no cache links and twinlab says why it
            # cannot open them).
            "sources": [s.to_dict() for s in lake.stac_sources()],
            "cache_url": running_public_url(rt, CACHE_SERVICE),
        }

    def extra_components(self, rt: Runtime) -> list[Component]:
        """The embedded database (``stac-db``); an external one is migrated here instead."""
        lake = settings(rt)
        if not lake.embedded_db:
            try:
                migrate_external(connection(rt, lake.database_url))
            except Exception as e:
                raise StartError(
                    f"cannot prepare the STAC database {lake.database_url}: {e}"
                ) from e
            return []
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

        return [
            Component(
                name=DB_COMPONENT,
                argv=server_argv(pg),
                ready=db_ready,
                background=True,
                stop_signal=signal.SIGINT,
                before_restart=pg.clear_stale_locks,
            )
        ]

    def prepare_pod(self, rt: Runtime, say: Say) -> None:
        """Kubernetes: the chart's database (no ``stac-db``), pgstac migrated before serving
        (what ``extra_components`` does for an external database embedded), one stac pod at
        a time under its own lock: twinhub's (the hub's start) does not wait for it."""
        url = kubernetes_database_url(rt)
        super().prepare_pod(rt, say)
        with migration_lock(rt.db_url, key=PGSTAC_LOCK, say=say):
            if rt.kubernetes and url:
                migrate_pgstac_as_owner(connection(rt, url).libpq_dsn())
            self.extra_components(rt)

    def after_up(self, rt: Runtime, say: Say) -> threading.Thread | None:
        return start_seeding(rt, say) if self.active(rt) else None

    def status_lines(self, rt: Runtime) -> list[str]:
        seed = seed_state(rt)
        if not seed:
            return []
        detail = seed.get("error") or (f"{seed['items']} items" if "items" in seed else "")
        return [f"sample data    {seed.get('status')} ({seed.get('size')}) {detail}".rstrip()]


PASSFILE = "run/pgstac.pgpass"
PGSTAC_ROLES = ("pgstac_admin", "pgstac_read", "pgstac_ingest")

#: The role statements every pypgstac migration file repeats, and what runs instead for an
#: owner without CREATEROLE: the chart's bootstrap (superuser) already did each of them.
_SEARCH_PATH = (
    r"^\s*ALTER\s+ROLE\s+pgstac_(admin|read|ingest)\s+SET\s+SEARCH_PATH\s+TO\s+pgstac,\s*public\s*;"
)
_ROLE_STATEMENTS = (
    # Inside a DO block: PL/pgSQL's empty statement keeps the block valid.
    (re.compile(r"\bCREATE\s+ROLE\s+pgstac_(admin|read|ingest)\s*;", re.I), "NULL;"),
    (re.compile(_SEARCH_PATH, re.I | re.M), ""),
    (re.compile(r"^\s*GRANT\s+pgstac_admin\s+TO\s+current_user\s*;", re.I | re.M), ""),
    (re.compile(r"^\s*GRANT\s+pgstac_read\s+TO\s+pgstac_ingest\s*;", re.I | re.M), ""),
)
#: A role statement left over: a pypgstac release doing more with roles than the above.
_ROLE_LEFT = re.compile(r"\b(CREATE|ALTER|DROP)\s+ROLE\b|\bGRANT\s+pgstac_\w+\s+TO\b", re.I)

#: What the owner must have been given (helm/twinhub/templates/database.yaml's bootstrap;
#: docs/kubernetes.md for an external PostgreSQL): one row per pgstac role.
_BOOTSTRAP_CHECK = """
SELECT r.rolname,
       pg_has_role(current_user, r.oid, 'MEMBER'),
       EXISTS (SELECT FROM pg_db_role_setting s WHERE s.setrole = r.oid AND s.setdatabase = 0
               AND 'search_path=pgstac, public' = ANY (s.setconfig)),
       r.rolname <> 'pgstac_ingest' OR pg_has_role(r.oid, 'pgstac_read', 'MEMBER')
FROM pg_roles r WHERE r.rolname = ANY (%s)
"""


def without_role_statements(sql: str) -> str:
    """A pypgstac migration file's SQL without the role statements the bootstrap did;
    refused when any other role statement remains (never silently skipped)."""
    for pattern, replacement in _ROLE_STATEMENTS:
        sql = pattern.sub(replacement, sql)
    left = _ROLE_LEFT.search(sql)
    if left:
        line = sql[sql.rfind("\n", 0, left.start()) + 1 : sql.find("\n", left.end())]
        raise StartError(
            f"pgstac's migration has a role statement twinhub does not know ({line.strip()!r}): "
            "its database owner has no CREATEROLE; run this migration as a superuser"
        )
    return sql


def migrate_pgstac_as_owner(dsn: str) -> None:
    """Kubernetes: pgstac's migrations as the database owner, which holds no CREATEROLE
    (with it, PostgreSQL 15 lets a role grant itself any role: pg_execute_server_program,
    Keycloak's). The bootstrap made pgstac's roles and gave them to the owner; the
    migration files' role statements (which need CREATEROLE even when they change
    nothing) are left out. An owner with CREATEROLE or superuser migrates unchanged
    (``extra_components``)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            if row and row[0]:
                return
            rows = conn.execute(_BOOTSTRAP_CHECK, [list(PGSTAC_ROLES)]).fetchall()
    except psycopg.Error as e:
        raise StartError(f"cannot check the STAC database's roles: {e}") from None
    done = {name for name, member, path, ingest in rows if member and path and ingest}
    missing = [r for r in PGSTAC_ROLES if r not in done]
    if missing:
        raise StartError(
            f"the database owner lacks pgstac's roles {', '.join(missing)} (each made, with "
            "search_path pgstac, public, pgstac_read granted to pgstac_ingest, and all three "
            "granted to the owner): the chart's CNPG bootstrap does this; on an external "
            "PostgreSQL a superuser must (docs/kubernetes.md)"
        )
    # Here, not at the top: only a migration needs pypgstac (see database.migrate_external).
    from pypgstac import migrate as pgstac_migrate
    from pypgstac.db import PgstacDB

    # pypgstac offers no hook for the SQL it runs: its file reader is swapped for this
    # call (pod start-up, one thread), so its own checks and queue handling still apply.
    read = pgstac_migrate.get_sql
    pgstac_migrate.get_sql = lambda f: without_role_statements(read(f))
    try:
        with PgstacDB(dsn=dsn) as db:
            pgstac_migrate.Migrate(db).run_migration()
    except StartError:
        raise
    except Exception as e:
        raise StartError(f"cannot migrate pgstac: {e}") from e
    finally:
        pgstac_migrate.get_sql = read


def kubernetes_database_url(rt: Runtime) -> str:
    """Kubernetes, unless ``TwinhubDataLake.database_url`` is set: pgstac in the database of
    the ``db-url`` secret (a ``postgresql://user:password@host:port/db`` URI). The password
    goes into a 0600 libpq passfile in the pod's state dir, never into the URL; the URL is
    set in this process's configuration (what the service's config file is made from)."""
    lake = rt.config.TwinhubDataLake
    if lake.get("database_url") or not rt.kubernetes:
        return lake.get("database_url", "")
    u = urlsplit(rt.secret(DB_URL_SECRET))
    query = {k: v[0] for k, v in parse_qs(u.query).items()}
    # A host (CNPG: twinhub-db-rw.<ns>) or, in libpq's query form, a socket directory.
    host = u.hostname or query.get("host", "")
    port = u.port or int(query.get("port", 5432))
    # Decoded once: the passfile's user must be the one the URL connects as.
    user = unquote(u.username or "")
    password = unquote(u.password or "")
    if not (host and user and password) or any(ch in password for ch in ":\\\n") or "\n" in user:
        raise PlatformError(
            f"secret {DB_URL_SECRET!r} must be postgresql://user:password@host:port/db with a "
            "password of no ':', '\\' or newline (pgstac reads it from a libpq passfile)"
        )
    f = rt.path(PASSFILE)
    f.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        # libpq's passfile format: a backslash escapes ':' and itself within a field.
        escaped = user.replace("\\", "\\\\").replace(":", "\\:")
        fh.write(f"*:*:*:{escaped}:{password}\n")
    dbname = u.path.lstrip("/") or "app"
    where = urlencode({"host": host, "port": port, "passfile": str(f)})
    lake.database_url = f"postgresql://{quote(user, safe='')}@/{dbname}?{where}"
    return lake.database_url


__all__ = [
    "SEED_SIZES",
    "SERVICE_NAME",
    "SERVICE_PREFIX",
    "StacPart",
    "TwinhubDataLake",
    "seed_into",
    "seed_state",
    "settings",
]
