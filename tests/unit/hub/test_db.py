"""twinhub.db on real SQLite files and a real PostgreSQL 15 cluster."""

from __future__ import annotations

import stat
from datetime import datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from twinhub import __version__, db
from twinhub.db.schema import VERSION_TABLE
from twinhub.spawn import os_accounts


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    return request.getfixturevalue("postgres_db")


def tables(url: str) -> set[str]:
    return set(inspect(db.engine(url)).get_table_names())


def test_fresh_database_is_created_at_head(db_url):
    assert db.current_revision(db_url) is None
    before, after = db.upgrade(db_url)
    assert (before, after) == (None, db.head_revision())
    assert {"local_accounts", "os_accounts", "platform_meta", VERSION_TABLE} <= tables(db_url)
    # JupyterHub's version table name stays free for a hub sharing this database.
    assert "alembic_version" not in tables(db_url)
    with db.session(db_url) as s:
        meta = {m.key: m.value for m in s.scalars(select(db.PlatformMeta))}
    assert meta == {"schema_revision": after, "platform_version": __version__}
    # Idempotent: a second run changes nothing.
    assert db.upgrade(db_url) == (after, after)
    db.check_schema(db_url)


def test_models_match_migrations(db_url):
    """A model changed without a migration (or the reverse) fails here."""
    db.upgrade(db_url)
    with db.engine(db_url).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        diff = compare_metadata(ctx, db.Base.metadata)
    assert diff == []


def test_upgrade_from_older_revision_keeps_data(db_url):
    db.upgrade(db_url, "0001_local_accounts")
    assert "os_accounts" not in tables(db_url)
    with pytest.raises(db.DatabaseError, match="0001_local_accounts.*twinhub up"):
        db.check_schema(db_url)
    with db.session(db_url) as s:
        s.add(db.LocalAccount(username="alice", password_hash="x", approved=True))
    assert db.upgrade(db_url) == ("0001_local_accounts", db.head_revision())
    with db.session(db_url) as s:
        alice = s.scalar(select(db.LocalAccount).where(db.LocalAccount.username == "alice"))
        assert alice.approved and len(alice.account_id) == 32
        assert s.get(db.PlatformMeta, "schema_revision").value == db.head_revision()
    os_accounts.record_os_account(db_url, "alice", "twin-alice", 2001)
    assert [r.os_name for r in os_accounts.list_os_accounts(db_url)] == ["twin-alice"]


def test_os_accounts_record_list_forget(db_url):
    db.upgrade(db_url)
    rec = os_accounts.record_os_account(db_url, "bob", "twin-bob", 3001)
    assert (rec.platform_user, rec.os_name, rec.uid) == ("bob", "twin-bob", 3001)
    assert isinstance(rec.created_at, datetime)
    os_accounts.record_os_account(db_url, "alice", "twin-alice", 3002)
    # Re-recording updates the uid (account re-created), keeps one row.
    os_accounts.record_os_account(db_url, "bob", "twin-bob", 3003)
    assert [(r.platform_user, r.uid) for r in os_accounts.list_os_accounts(db_url)] == [
        ("alice", 3002),
        ("bob", 3003),
    ]
    with pytest.raises(ValueError, match="twin-alice.*another platform user"):
        os_accounts.record_os_account(db_url, "mallory", "twin-alice", 3004)
    with pytest.raises(ValueError, match="uid"):
        os_accounts.record_os_account(db_url, "carol", "twin-carol", -1)
    assert os_accounts.get_os_account(db_url, "mallory") is None
    assert os_accounts.forget_os_account(db_url, "bob") is True
    assert os_accounts.forget_os_account(db_url, "bob") is False
    assert [r.platform_user for r in os_accounts.list_os_accounts(db_url)] == ["alice"]


def test_session_rolls_back_on_error(db_url):
    db.upgrade(db_url)
    with pytest.raises(RuntimeError), db.session(db_url) as s:
        s.add(db.PlatformMeta(key="k", value="v"))
        s.flush()
        raise RuntimeError("boom")
    with db.session(db_url) as s:
        assert s.get(db.PlatformMeta, "k") is None


def test_sqlite_file_is_private(tmp_path):
    url = f"sqlite:///{tmp_path / 'own.sqlite'}"
    db.upgrade(url)
    assert stat.S_IMODE((tmp_path / "own.sqlite").stat().st_mode) == 0o600


def test_bad_urls_are_named(tmp_path):
    with pytest.raises(db.DatabaseError, match="not a valid SQLAlchemy URL"):
        db.engine("not a url")
    with pytest.raises(db.DatabaseError, match="directory .*missing.* does not exist"):
        db.upgrade(f"sqlite:///{tmp_path / 'missing' / 'x.sqlite'}")


def test_unreachable_postgres_is_reported_without_password():
    url = "postgresql+psycopg://u:s3cret@127.0.0.1:1/nodb?connect_timeout=2"
    with pytest.raises(db.DatabaseError, match="cannot reach database") as e:
        db.current_revision(url)
    assert "s3cret" not in str(e.value)


def test_postgres_tables_live_beside_jupyterhub_version_table(postgres_db):
    """twinhub's tables may share a database with the hub's: versions must not collide."""
    with db.engine(postgres_db).begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num varchar(32) primary key)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('f460b0348206')"))
    assert db.upgrade(postgres_db) == (None, db.head_revision())
    with db.engine(postgres_db).connect() as conn:
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == "f460b0348206"
