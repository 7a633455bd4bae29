"""Databases as older versions left them, for upgrade tests."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from jupyterhub import dbutil, orm

# JupyterHub 5.0's schema revision ("manage_roles"): an older hub database than 6.1's.
OLD_HUB_REVISION = "4621fec11365"


def make_old_hub_db(path: Path) -> str:
    """A hub database as JupyterHub creates it, taken back to JupyterHub 5.0's schema with
    JupyterHub's own migrations, holding one user."""
    url = f"sqlite:///{path}"
    s = orm.new_session_factory(url)()
    s.add(orm.User(name="alice"))
    s.commit()
    s.close()
    ini = path.parent / "alembic.ini"
    dbutil.write_alembic_ini(str(ini), url)
    alembic = str(Path(sys.executable).parent / "alembic")
    subprocess.run([alembic, "-c", str(ini), "downgrade", OLD_HUB_REVISION], check=True,
                   capture_output=True)  # fmt: skip
    ini.unlink()
    return url


def hub_rev(path: Path) -> str:
    with sqlite3.connect(path) as c:
        return c.execute("SELECT version_num FROM alembic_version").fetchone()[0]
