"""Back up, then upgrade, the databases of a state directory made by an older twinhub.

Run by the supervisor before any component starts, so nothing writes while we copy.  Both
databases are copied together into one ``<state>/backups/<UTC timestamp>/`` whenever either
needs a migration, so a restore puts back a consistent pair.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import URL, make_url

from .schema import current_revision, head_revision, redacted, upgrade

log = logging.getLogger("twinhub.db")


@dataclass
class UpgradeReport:
    """What :func:`backup_and_upgrade` did; iterating yields one human-readable line per step."""

    own: tuple[str | None, str]
    hub: tuple[str | None, str | None] | None = None  # None: no hub database yet
    backup_dir: Path | None = None
    backups: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[str]:
        return iter(self.lines)


def default_hub_db_url(rt) -> str:
    """The hub database URL the hub process uses (``c.JupyterHub.db_url``, else the default)."""
    configured = rt.config.get("JupyterHub", {}).get("db_url", "")
    return configured or f"sqlite:///{rt.hub_dir / 'jupyterhub.sqlite'}"


def _sqlite_file(db_url: str) -> Path | None:
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _create_private(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def backup_sqlite(src: Path, dest: Path) -> Path:
    """Consistent copy of a SQLite file through SQLite's online backup API (not a raw copy,
    which could catch a half-written page)."""
    _create_private(dest)
    with (
        sqlite3.connect(f"file:{src}?mode=ro", uri=True) as s,
        sqlite3.connect(dest) as d,
    ):
        s.backup(d)
    s.close()
    d.close()
    return dest


def pg_env(url: URL) -> dict[str, str]:
    """libpq environment for ``url``: keeps the password out of command lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    q = url.query
    host = q.get("host") or url.host
    pairs = {
        "PGHOST": host,
        "PGPORT": q.get("port") or (str(url.port) if url.port else None),
        "PGUSER": url.username,
        "PGPASSWORD": url.password,
        "PGDATABASE": url.database,
        "PGPASSFILE": q.get("passfile"),
        "PGSSLMODE": q.get("sslmode"),
    }
    env.update({k: str(v) for k, v in pairs.items() if v})
    return env


def backup_postgres(db_url: str, dest: Path) -> tuple[Path | None, str]:
    """``pg_dump -Fc`` of the database into ``dest``; (None, why) when it cannot be done."""
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        return None, "pg_dump is not installed (Debian: postgresql-client)"
    _create_private(dest)
    r = subprocess.run(
        [pg_dump, "--format=custom", "--file", str(dest)],
        env=pg_env(make_url(db_url)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        dest.unlink(missing_ok=True)
        return None, f"pg_dump failed: {r.stderr.strip()[-500:]}"
    return dest, ""


def _backup(db_url: str, dest_dir: Path, stem: str, report: UpgradeReport) -> None:
    sqlite_file = _sqlite_file(db_url)
    backend = make_url(db_url).get_backend_name()
    if sqlite_file is not None:
        if not sqlite_file.exists():
            return
        report.backups.append(backup_sqlite(sqlite_file, dest_dir / sqlite_file.name))
    elif backend == "postgresql":
        path, why = backup_postgres(db_url, dest_dir / f"{stem}.pgdump")
        if path:
            report.backups.append(path)
        else:
            report.skipped.append(f"{stem} ({redacted(db_url)}) not backed up: {why}")
    else:
        report.skipped.append(
            f"{stem} ({redacted(db_url)}) not backed up: no backup method for {backend}; "
            "back it up yourself before upgrading"
        )


def _hub_head() -> str:
    from jupyterhub import dbutil

    return ScriptDirectory(dbutil.ALEMBIC_DIR).get_heads()[0]


def hub_revision(hub_db_url: str) -> tuple[bool, str | None]:
    """(exists, revision) of a JupyterHub database: exists is False when it has no hub tables."""
    from jupyterhub import orm

    sqlite_file = _sqlite_file(hub_db_url)
    if sqlite_file is not None and not sqlite_file.exists():
        return False, None
    eng = create_engine(hub_db_url)
    try:
        tables = set(inspect(eng).get_table_names())
        if not tables & set(orm.Base.metadata.tables):
            return False, None
        with eng.connect() as conn:
            return True, MigrationContext.configure(conn).get_current_revision()
    finally:
        eng.dispose()


@contextmanager
def _alembic_on_path() -> Iterator[None]:
    # jupyterhub.dbutil.upgrade runs the `alembic` command; the supervisor may run from a
    # venv that is not on PATH.
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), old])
    try:
        yield
    finally:
        os.environ["PATH"] = old


def upgrade_hub_db(hub_db_url: str) -> tuple[str | None, str | None]:
    """``jupyterhub upgrade-db`` for ``hub_db_url`` (no backup here: done by the caller)."""
    from jupyterhub import dbutil

    _, before = hub_revision(hub_db_url)
    with _alembic_on_path():
        dbutil.upgrade_if_needed(hub_db_url, backup=False, log=log)
    _, after = hub_revision(hub_db_url)
    return before, after


def backup_and_upgrade(rt, hub_db_url: str | None = None) -> UpgradeReport:
    """Back up and migrate twinhub's own database and the hub's, as needed.

    Returns an :class:`UpgradeReport`; iterate it for lines to print.  A fresh state
    directory needs no backup: its own tables are created, the hub creates its own.
    """
    own_url = rt.db_url
    hub_url = hub_db_url or default_hub_db_url(rt)
    head = head_revision()
    own_before = current_revision(own_url)
    own_needs = own_before != head
    hub_exists, hub_before = hub_revision(hub_url)
    hub_head = _hub_head()
    hub_needs = hub_exists and hub_before != hub_head

    report = UpgradeReport(own=(own_before, head))
    if (own_needs and own_before is not None) or hub_needs:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        root = rt.path("backups")
        root.mkdir(mode=0o700, exist_ok=True)
        dest = root / stamp
        n = 1
        while dest.exists():
            dest, n = root / f"{stamp}.{n}", n + 1
        dest.mkdir(mode=0o700)
        report.backup_dir = dest
        _backup(own_url, dest, "twinhub", report)
        _backup(hub_url, dest, "jupyterhub", report)
        names = ", ".join(p.name for p in report.backups) or "nothing"
        report.lines.append(f"backed up {names} to {dest}")
        report.lines.extend(report.skipped)

    before, after = upgrade(own_url)
    report.own = (before, after)
    if before is None:
        report.lines.append(f"created twinhub tables at revision {after}")
    elif before != after:
        report.lines.append(f"upgraded twinhub tables {before} -> {after}")
    else:
        report.lines.append(f"twinhub tables up to date ({after})")

    if not hub_exists:
        report.lines.append("hub database not created yet (the hub creates it)")
    elif hub_needs:
        log.info("upgrading hub database %s", redacted(hub_url))
        report.hub = upgrade_hub_db(hub_url)
        report.lines.append(f"upgraded hub database {report.hub[0]} -> {report.hub[1]}")
    else:
        report.hub = (hub_before, hub_before)
        report.lines.append(f"hub database up to date ({hub_before})")
    return report
