"""twinhub.process.postgres: a real PostgreSQL 15 cluster, its access rules and its lifecycle."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from twinhub import db
from twinhub.process.postgres import PG_BIN, LocalPostgres, PostgresError
from twinhub.spawn import os_accounts

pytestmark = pytest.mark.skipif(
    not (PG_BIN / "initdb").exists(), reason="PostgreSQL 15 is not installed"
)


def connect_kwargs(url: str) -> dict:
    u = make_url(url)
    kw = {"user": u.username, "dbname": u.database, **dict(u.query)}
    if u.host:
        kw["host"], kw["port"] = u.host, u.port
    return kw


@pytest.fixture
def traversable_dir():
    base = Path(tempfile.mkdtemp(prefix="twinhub-pgt-", dir="/tmp"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_unix_cluster_is_private_and_password_protected(postgres_cluster, postgres_url):
    pg = postgres_cluster
    assert pg.is_running()
    assert "@/" in postgres_url and pg.password not in postgres_url  # no secret in the URL
    assert stat.S_IMODE(pg.passfile.stat().st_mode) == 0o600
    for d in (pg.run_dir, pg.data_dir):
        st = d.stat()
        assert stat.S_IMODE(st.st_mode) == 0o700
        if os.geteuid() == 0:
            assert st.st_uid == pg._uid  # owned by the postgres account
    hba = (pg.data_dir / "pg_hba.conf").read_text()
    assert "trust" not in hba.replace("never 'trust'", "")
    with db.engine(postgres_url).connect() as c:
        assert c.scalar(text("SHOW listen_addresses")) == ""  # no TCP at all
        assert c.scalar(text("SHOW password_encryption")) == "scram-sha-256"
        assert c.scalar(text("SELECT current_user")) == "twinhub"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", pg.port)) != 0
    kw = connect_kwargs(postgres_url)
    kw.pop("passfile")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**kw, password="wrong").close()
    with psycopg.connect(**kw, password=pg.password) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_tcp_cluster_uses_scram_on_loopback_and_survives_restart(traversable_dir):
    pg = LocalPostgres(traversable_dir / "pg", listen="tcp", settings={"fsync": "off"})
    try:
        pg.start()
        assert pg.url.startswith(f"postgresql+psycopg://twinhub@127.0.0.1:{pg.port}/twinhub?")
        kw = connect_kwargs(pg.url)
        kw.pop("passfile")
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(**kw, password="wrong").close()
        stored = pg._psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'twinhub'")
        assert stored.startswith("SCRAM-SHA-256$")
        db.upgrade(pg.url)
        os_accounts.record_os_account(pg.url, "alice", "twin-alice", 1234)
        db.dispose_engines()
        pg.stop()
        assert not pg.is_running()
        # A new object on the same directory finds port, password and data again.
        again = LocalPostgres(traversable_dir / "pg", listen="tcp")
        again.start()
        assert again.port == pg.port and again.password == pg.password
        assert [r.os_name for r in os_accounts.list_os_accounts(again.url)] == ["twin-alice"]
    finally:
        db.dispose_engines()
        pg.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as 'postgres'")
def test_unreachable_directory_is_refused_with_reason(tmp_path):
    # pytest's tmp_path lives under a 0700 directory: the postgres account cannot get in.
    with pytest.raises(PostgresError, match="cannot reach .*world-traversable"):
        LocalPostgres(tmp_path / "pg").start()


def test_bad_arguments_are_named(traversable_dir):
    with pytest.raises(ValueError, match="listen must be"):
        LocalPostgres(traversable_dir, listen="udp")
    with pytest.raises(ValueError, match="role 'Bad-Role'"):
        LocalPostgres(traversable_dir, role="Bad-Role")


def test_databases_are_created_and_dropped(postgres_cluster):
    url = postgres_cluster.create_database("scratch_db")
    assert postgres_cluster.create_database("scratch_db") == url  # idempotent
    with db.engine(url).connect() as c:
        assert c.scalar(text("SELECT current_database()")) == "scratch_db"
    db.dispose_engines()
    postgres_cluster.drop_database("scratch_db")
    with pytest.raises(db.DatabaseError, match="does not exist"):
        db.current_revision(url)
    with pytest.raises(ValueError, match="SQL identifier"):
        postgres_cluster.create_database("x; DROP")
