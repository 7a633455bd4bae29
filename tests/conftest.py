"""Fixtures shared by the whole suite.

Fixture plugins (each a module with fixtures, listed here so every test sees them):
- ``tests.fixtures.postgres``: ``postgres_url``, a real PostgreSQL 15 cluster in a tmp dir.
- ``tests.fixtures.platforms``: ``personal_platform`` and ``multiuser_platform``, the real
  embedded platform (`twinhub up`) started once per mode for the whole session.
"""

import os
import shutil
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.platforms",
    "tests.fixtures.oidc",
]


SHARED_ROOT = Path("/var/lib/twinhub")


@pytest.fixture(scope="session", autouse=True)
def _remove_new_shared_dirs():
    """Platforms whose state dir other accounts cannot traverse keep their shared dir (and,
    as root, the STAC database) in /var/lib/twinhub/<id>: remove the ones this session made
    once every platform has stopped (this fixture is torn down last)."""
    before = set(SHARED_ROOT.iterdir()) if SHARED_ROOT.is_dir() else set()
    yield
    if SHARED_ROOT.is_dir():
        for d in set(SHARED_ROOT.iterdir()) - before:
            if not _in_use(d):
                shutil.rmtree(d, ignore_errors=True)


def _in_use(shared: Path) -> bool:
    """A platform of another, concurrent test session still runs its database there."""
    for pidfile in [*shared.glob("*/postmaster.pid"), *shared.glob("*/*/postmaster.pid")]:
        try:
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            continue
        return True
    return False


_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus) -> None:
    _exit_status.append(int(exitstatus))


def pytest_unconfigure(config) -> None:
    """Leave without running C library destructors once pytest has reported everything.

    The suite loads both libpq (psycopg: Debian's libldap 2.5) and the ecCodes wheel (eckit
    bundles its own libldap 2.4 and libsasl2); with both in one process, a libldap
    destructor frees foreign memory at exit and the interpreter dies with SIGSEGV after
    the last result, turning a green run red. The platform itself never loads both in one
    process (the sample data is built in a child process).
    """
    import os
    import sys

    if _exit_status and not os.environ.get("TWINHUB_TEST_NORMAL_EXIT"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
