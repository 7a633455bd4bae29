"""backup_and_upgrade on state directories made by older versions (real files, real
JupyterHub migrations, real pg_dump)."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from jupyterhub import orm
from sqlalchemy import create_engine, text
from traitlets.config import Config

from tests.helpers.databases import OLD_HUB_REVISION, hub_rev, make_old_hub_db
from twinhub import db
from twinhub.process.runtime import Runtime


def make_state(tmp_path: Path, db_url: str = "") -> Runtime:
    state = tmp_path / "state"
    for d in ("hub", "backups"):
        (state / d).mkdir(parents=True, mode=0o700)
    cfg = Config({"Twinhub": {"db_url": db_url}}) if db_url else Config()
    return Runtime(state_dir=state, config=cfg)


def test_fresh_state_dir_needs_no_backup(tmp_path):
    rt = make_state(tmp_path)
    report = db.backup_and_upgrade(rt)
    assert report.own == (None, db.head_revision())
    assert report.backup_dir is None and report.hub is None
    assert list(rt.path("backups").iterdir()) == []
    lines = list(report)
    assert any("created twinhub tables" in line for line in lines)
    assert any("hub database not created yet" in line for line in lines)
    # Second start: nothing to do, still no backup.
    again = db.backup_and_upgrade(rt)
    assert again.backup_dir is None
    assert any("up to date" in line for line in again)


def test_old_state_dir_is_backed_up_then_upgraded(tmp_path):
    rt = make_state(tmp_path)
    own_file = rt.path("twinhub.sqlite")
    hub_file = rt.hub_dir / "jupyterhub.sqlite"
    # twinhub tables at the first revision, with an account in them.
    db.upgrade(rt.db_url, "0001_local_accounts")
    with db.session(rt.db_url) as s:
        s.add(db.LocalAccount(username="alice", password_hash="h", approved=True))
    make_old_hub_db(hub_file)
    assert hub_rev(hub_file) == OLD_HUB_REVISION

    report = db.backup_and_upgrade(rt)

    # (a) both databases copied, as they were, into one timestamped directory
    assert report.backup_dir is not None and report.backup_dir.parent == rt.path("backups")
    assert sorted(p.name for p in report.backups) == ["jupyterhub.sqlite", "twinhub.sqlite"]
    assert (report.backup_dir.stat().st_mode & 0o777) == 0o700
    backup_own = report.backup_dir / "twinhub.sqlite"
    assert (backup_own.stat().st_mode & 0o777) == 0o600
    with sqlite3.connect(backup_own) as c:
        assert c.execute("SELECT version_num FROM twinhub_alembic_version").fetchone() == (
            "0001_local_accounts",
        )
        assert c.execute("SELECT username FROM local_accounts").fetchall() == [("alice",)]
    assert hub_rev(report.backup_dir / "jupyterhub.sqlite") == OLD_HUB_REVISION
    # (b) own tables at head, data kept
    assert report.own == ("0001_local_accounts", db.head_revision())
    with sqlite3.connect(own_file) as c:
        assert c.execute("SELECT username FROM local_accounts").fetchall() == [("alice",)]
        assert "os_accounts" in {r[0] for r in c.execute("SELECT name FROM sqlite_master")}
    # (c) hub database at JupyterHub 6.1's head, data kept, and JupyterHub accepts it
    eng = create_engine(f"sqlite:///{hub_file}")
    orm.check_db_revision(eng)  # raises DatabaseSchemaMismatch unless at JupyterHub's head
    with eng.connect() as c:
        assert c.execute(text("SELECT name FROM users")).fetchall() == [("alice",)]
    eng.dispose()
    assert report.hub[0] == OLD_HUB_REVISION and report.hub[1] == hub_rev(hub_file)
    text_lines = "\n".join(report)
    assert "backed up" in text_lines and str(report.backup_dir) in text_lines
    assert "upgraded hub database" in text_lines


def test_hub_db_alone_needing_upgrade_is_backed_up(tmp_path):
    rt = make_state(tmp_path)
    db.upgrade(rt.db_url)
    make_old_hub_db(rt.hub_dir / "jupyterhub.sqlite")
    report = db.backup_and_upgrade(rt)
    assert {p.name for p in report.backups} == {"twinhub.sqlite", "jupyterhub.sqlite"}
    assert report.own[0] == report.own[1]


def test_postgres_own_tables_are_dumped(tmp_path, postgres_db):
    rt = make_state(tmp_path, postgres_db)
    db.upgrade(postgres_db, "0001_local_accounts")
    with db.session(postgres_db) as s:
        s.add(db.LocalAccount(username="bob", password_hash="h", approved=False))
    report = db.backup_and_upgrade(rt)
    dump = report.backup_dir / "twinhub.pgdump"
    assert report.backups == [dump] and report.skipped == []
    listing = subprocess.run(
        ["pg_restore", "--list", str(dump)], capture_output=True, text=True, check=True
    ).stdout
    assert "TABLE public local_accounts" in listing
    assert "os_accounts" not in listing  # dumped before the upgrade
    assert report.own == ("0001_local_accounts", db.head_revision())


def test_postgres_backup_skipped_says_why(tmp_path, postgres_db, monkeypatch):
    rt = make_state(tmp_path, postgres_db)
    db.upgrade(postgres_db, "0001_local_accounts")
    # A machine without PostgreSQL client tools: pg_dump is not on PATH.
    monkeypatch.setenv("PATH", str(tmp_path))
    report = db.backup_and_upgrade(rt)
    assert report.backups == []
    assert len(report.skipped) == 1 and "pg_dump is not installed" in report.skipped[0]
    assert "pg_dump is not installed" in "\n".join(report)
    assert report.own[1] == db.head_revision()


@pytest.mark.parametrize("configured", [True, False])
def test_hub_db_url_follows_jupyterhub_config(tmp_path, configured):
    rt = make_state(tmp_path)
    other = tmp_path / "elsewhere.sqlite"
    if configured:
        rt.config.JupyterHub.db_url = f"sqlite:///{other}"
    expected = other if configured else rt.hub_dir / "jupyterhub.sqlite"
    assert db.default_hub_db_url(rt) == f"sqlite:///{expected}"
