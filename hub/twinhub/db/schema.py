"""Engines, sessions and Alembic migrations of twinhub's own database."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .. import __version__
from .models import PlatformMeta, utcnow

# Not Alembic's default ``alembic_version``: that one is JupyterHub's when both share a database.
VERSION_TABLE = "twinhub_alembic_version"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def iso(d: datetime | None) -> str | None:
    """UTC ISO 8601 with its offset (SQLite hands back naive datetimes: they were stored as
    UTC), so every API answers one format whatever the backend."""
    if d is None:
        return None
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


class DatabaseError(RuntimeError):
    """The database cannot be used as asked (bad URL, unreachable, wrong schema revision)."""


def redacted(db_url: str) -> str:
    """``db_url`` with any password masked, for messages and logs."""
    try:
        return make_url(db_url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


def _scheme(db_url: str) -> str:
    """What an unparseable ``db_url`` may say about itself: its scheme, never the rest."""
    scheme, sep, _ = db_url.partition("://")
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,40}", scheme):
        return f"scheme {scheme!r}"
    return "no scheme"


def _prepare_sqlite_file(db_url: str) -> None:
    url = make_url(db_url)
    path = url.database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    f = Path(path)
    if not f.parent.is_dir():
        raise DatabaseError(
            f"cannot create SQLite database {f}: directory {f.parent} does not exist"
        )
    if not f.exists():
        # Password hashes live here: readable by the platform account only.
        os.close(os.open(f, os.O_WRONLY | os.O_CREAT, 0o600))


def engine(db_url: str) -> Engine:
    """The (cached, one per URL) engine for ``db_url``."""
    with _lock:
        eng = _engines.get(db_url)
        if eng is not None:
            return eng
        try:
            url = make_url(db_url)
        except (ArgumentError, ValueError):
            # Neither the URL nor the parser's message (which may quote it): a db_url read
            # from a Kubernetes Secret carries its password, and this goes to the pod's log.
            raise DatabaseError(
                f"db_url ({_scheme(db_url)}) is not a valid SQLAlchemy URL: expected "
                "dialect[+driver]://user:password@host[:port]/database"
            ) from None
        kwargs: dict = {"pool_pre_ping": True}
        if url.get_backend_name() == "sqlite":
            _prepare_sqlite_file(db_url)
            # The hub process and the CLI may write at once: wait for the lock, don't fail.
            kwargs["connect_args"] = {"timeout": 30}
        try:
            eng = create_engine(url, **kwargs)
        except (ArgumentError, ImportError) as e:
            raise DatabaseError(f"cannot use db_url {redacted(db_url)}: {e}") from e
        if url.get_backend_name() == "sqlite":
            event.listen(eng, "connect", _sqlite_pragmas)
        _engines[db_url] = eng
        return eng


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def dispose_engines() -> None:
    """Close every pooled connection (tests, and before copying database files)."""
    with _lock:
        for eng in _engines.values():
            eng.dispose()
        _engines.clear()


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    """The newest migration revision this version of twinhub knows."""
    heads = ScriptDirectory.from_config(_alembic_config()).get_heads()
    if len(heads) != 1:
        # Two migrations with the same down_revision: a merge migration is missing.
        raise DatabaseError(f"twinhub migrations have {len(heads)} heads {heads}; expected one")
    return heads[0]


def current_revision(db_url: str) -> str | None:
    """The revision ``db_url`` is at; None for a database twinhub never touched."""
    try:
        with engine(db_url).connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return ctx.get_current_revision()
    except OperationalError as e:
        raise DatabaseError(f"cannot reach database {redacted(db_url)}: {e.orig}") from e


def upgrade(db_url: str, revision: str = "head") -> tuple[str | None, str]:
    """Apply migrations up to ``revision`` (default: the newest); returns (from, to) revisions.

    Idempotent: a database already at ``revision`` is left alone.
    """
    cfg = _alembic_config()
    before = current_revision(db_url)
    try:
        with engine(db_url).begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except OperationalError as e:
        raise DatabaseError(f"migrating {redacted(db_url)} failed: {e.orig}") from e
    after = current_revision(db_url)
    if after is None:  # pragma: no cover - alembic always stamps
        raise DatabaseError(f"migrating {redacted(db_url)} left no revision")
    if after != before:
        with session(db_url) as s:
            for key, value in (("schema_revision", after), ("platform_version", __version__)):
                row = s.get(PlatformMeta, key)
                if row is None:
                    s.add(PlatformMeta(key=key, value=value))
                else:
                    row.value, row.updated_at = value, utcnow()
    return before, after


def check_schema(db_url: str) -> None:
    """Raise DatabaseError unless ``db_url`` is at the newest revision."""
    cur, head = current_revision(db_url), head_revision()
    if cur != head:
        raise DatabaseError(
            f"twinhub database {redacted(db_url)} is at revision {cur or 'none (empty)'}, "
            f"this version needs {head}: `twinhub up` upgrades it (after a backup)"
        )


@contextmanager
def session(db_url: str) -> Iterator[Session]:
    """A session on ``db_url``: committed when the block ends, rolled back on error."""
    maker = sessionmaker(engine(db_url), expire_on_commit=False)
    with maker() as s:
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
