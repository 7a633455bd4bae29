"""`twinhub up` end to end on its databases: PostgreSQL by URL, and an older state dir."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import create_engine, text

from tests.helpers.databases import OLD_HUB_REVISION, hub_rev, make_old_hub_db
from tests.helpers.platform import Platform, twinhub_cli
from twinhub import db
from twinhub.auth.passwords import hash_password

pytestmark = pytest.mark.integration


def test_own_tables_in_postgresql_by_url(tmp_path, postgres_db):
    state = tmp_path / "state"
    p = Platform.start(state, mode="personal", extra=["--db-url", postgres_db])
    try:
        password = p.add_user("pgal")
        p.login_session("pgal", password)  # the hub checks the password stored in PostgreSQL
        eng = create_engine(postgres_db)
        with eng.connect() as c:
            names = {r[0] for r in c.execute(text("SELECT username FROM local_accounts"))}
        eng.dispose()
        assert {"admin", "pgal"} <= names
        assert not (state / "twinhub.sqlite").exists()
    finally:
        p.stop()
        twinhub_cli("down", "--state", str(state))


def test_older_state_dir_is_backed_up_and_upgraded_on_start(tmp_path):
    state = tmp_path / "state"
    (state / "hub").mkdir(parents=True)
    own_url = f"sqlite:///{state / 'twinhub.sqlite'}"
    # What an older twinhub left: its own tables at the first revision, with an account,
    # and a hub database at JupyterHub 5.0's schema.
    db.upgrade(own_url, "0001_local_accounts")
    eng = create_engine(own_url)
    with eng.begin() as c:
        c.execute(
            text(
                "INSERT INTO local_accounts (account_id, username, password_hash, is_admin, "
                "approved, created_at, updated_at) VALUES ('acc-old-1', 'oldtimer', :h, 0, 1, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"h": hash_password("long-enough-password-1")},
        )
    eng.dispose()
    db.dispose_engines()
    make_old_hub_db(state / "hub" / "jupyterhub.sqlite")

    p = Platform.start(state, mode="personal")
    try:
        out = "\n".join(p.output)
        assert "backed up" in out and "upgraded hub database" in out
        backups = list((state / "backups").iterdir())
        assert len(backups) == 1
        assert hub_rev(backups[0] / "jupyterhub.sqlite") == OLD_HUB_REVISION
        with sqlite3.connect(backups[0] / "twinhub.sqlite") as c:
            assert c.execute("SELECT username FROM local_accounts").fetchall() == [("oldtimer",)]
        # The old account still logs in; the old hub user is still there.
        p.login_session("oldtimer", "long-enough-password-1")
        assert p.api("GET", "/users/alice", user="admin").status_code == 200
    finally:
        p.stop()
        twinhub_cli("down", "--state", str(state))
