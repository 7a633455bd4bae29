"""The STAC database: pgstac on PostgreSQL + PostGIS.

Embedded: a private cluster (:class:`twinhub.process.postgres.LocalPostgres`, unix socket only, in a
0700 directory of the server account; SCRAM for the platform role) that the supervisor runs
in the foreground as the component ``stac-db``.  pgstac's schema is installed by
``pypgstac migrate`` as the cluster's superuser (PostGIS and pgstac's roles need one); the
platform role, which the STAC API and the loader use, only gets ``pgstac_ingest``.

Elsewhere (Kubernetes, a managed database): ``TwinhubDataLake.database_url`` names it and
the platform only migrates.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import psycopg

from ...process.postgres import LocalPostgres, PostgresError
from ...process.runtime import Runtime
from .search_text import install_sql

DBNAME = "stac"
EXTENSIONS = ("postgis", "btree_gist", "unaccent")


@dataclass
class Connection:
    """How the platform role reaches the STAC database (no password: see ``passfile``)."""

    host: str  # a socket directory or an address
    port: int
    user: str
    dbname: str
    passfile: str

    def password(self) -> str:
        for line in Path(self.passfile).read_text().splitlines():
            parts = line.split(":", 4)
            if len(parts) == 5 and parts[3] in ("*", self.user):
                return parts[4]
        raise PostgresError(f"no password for {self.user} in {self.passfile}")

    def libpq_dsn(self) -> str:
        """A libpq/psycopg DSN (the password stays in the passfile)."""
        # make_conninfo quotes values as libpq wants (a user name with a space or a quote).
        return psycopg.conninfo.make_conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=self.dbname,
            passfile=self.passfile,
        )

    def asyncpg_dsn(self) -> str:
        """asyncpg has no passfile support: the DSN carries the password (never logged)."""
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password(), safe='')}@/"
            f"{self.dbname}?host={quote(self.host, safe='')}&port={self.port}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def cluster_dir(rt: Runtime) -> Path:
    """Where the embedded cluster lives.

    As root the server runs as the ``postgres`` account, which must traverse the path: the
    world-traversable shared dir then (data and socket dirs stay 0700 inside it).
    """
    if os.geteuid() == 0:
        return rt.shared_dir / "stac-db"
    return rt.path("stac-db")


def local_cluster(rt: Runtime) -> LocalPostgres:
    return LocalPostgres(cluster_dir(rt), listen="unix", role="twinhub", dbname=DBNAME)


def connection(rt: Runtime, database_url: str = "") -> Connection:
    """The platform role's connection, embedded or from ``database_url``."""
    if database_url:
        return _from_url(database_url)
    pg = local_cluster(rt)
    return Connection(str(pg.run_dir), pg.port, pg.role, DBNAME, str(pg.passfile))


def _from_url(url: str) -> Connection:
    u = urlsplit(url)
    if u.scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ValueError(f"TwinhubDataLake.database_url must be a postgresql:// URL, got {url!r}")
    q = {k: v[0] for k, v in parse_qs(u.query).items()}
    passfile = q.get("passfile", "")
    if not passfile:
        raise ValueError(
            "TwinhubDataLake.database_url must name a libpq password file (?passfile=...): "
            "passwords never go into URLs or runtime.json"
        )
    return Connection(
        host=q.get("host", u.hostname or "127.0.0.1"),
        port=int(q.get("port", u.port or 5432)),
        user=unquote(u.username) if u.username else "twinhub",
        dbname=(u.path or "/stac").lstrip("/") or DBNAME,
        passfile=passfile,
    )


def prepare_local(rt: Runtime, say=print) -> LocalPostgres:
    """initdb (first run) and the config files; the supervisor then runs the server."""
    pg = local_cluster(rt)
    if os.geteuid() == 0:
        shared = rt.shared_dir
        shared.mkdir(parents=True, exist_ok=True)
        shared.chmod(0o755)
    first = not (pg.data_dir / "PG_VERSION").exists()
    if first:
        say("  stac-db        creating the PostgreSQL cluster (first run)...")
    pg.init()
    return pg


def server_argv(pg: LocalPostgres) -> list[str]:
    """The server in the foreground, as its own account (setpriv execs: signals reach it)."""
    exe = str(pg.bin_dir / "postgres")
    argv = [exe, "-D", str(pg.data_dir), "-k", str(pg.run_dir)]
    if os.geteuid() == 0:
        return ["setpriv", f"--reuid={pg._uid}", f"--regid={pg._gid}", "--init-groups", *argv]
    return argv


def initialize(rt: Runtime, pg: LocalPostgres) -> None:
    """Once the server runs: role, database, extensions, pgstac schema, grants."""
    pg._ensure_role()
    pg.create_database(DBNAME)
    pg._psql("".join(f"CREATE EXTENSION IF NOT EXISTS {e};\n" for e in EXTENSIONS), DBNAME)
    dsn = f"postgresql:///{DBNAME}?host={pg.run_dir}&port={pg.port}&user={pg.os_user}"
    migrate = [sys.executable, "-m", "pypgstac.pypgstac", "migrate", "--dsn", dsn]
    argv = ["runuser", "-u", pg.os_user, "--", *migrate] if os.geteuid() == 0 else migrate
    r = subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=300)
    if r.returncode != 0:
        raise PostgresError(f"pypgstac migrate failed: {(r.stderr or r.stdout).strip()[-800:]}")
    pg._psql(f"GRANT pgstac_ingest TO {pg.role};\n", DBNAME)
    pg._psql(install_sql(), DBNAME)  # free text's search text (its trigger, index, backfill)


def migrate_external(conn: Connection) -> None:
    """pgstac's schema in an external database (its role must be allowed to migrate)."""
    # Here, not at the top: every process that lists the parts imports this module, and
    # only an external database's migration needs pypgstac.
    from pypgstac.db import PgstacDB
    from pypgstac.migrate import Migrate

    with PgstacDB(dsn=conn.libpq_dsn()) as db:
        Migrate(db).run_migration()
    with psycopg.connect(conn.libpq_dsn(), autocommit=True) as db:
        db.execute(install_sql())  # free text's search text (its trigger, backfill)
