"""Fixtures shared by the whole suite.

Fixture plugins (each a module with fixtures, listed here so every test sees them):
- ``tests.fixtures.postgres``: ``postgres_url``, a real PostgreSQL 15 cluster in a tmp dir.
- ``tests.fixtures.platforms``: ``personal_platform`` and ``multiuser_platform``, the real
  embedded platform (`twinhub up`) started once per mode for the whole session.
"""

import pytest

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.platforms",
    "tests.fixtures.oidc",
    "tests.fixtures.prometheus",
]


@pytest.fixture(scope="session", autouse=True)
def _remove_new_shared_dirs(tmp_path_factory):
    """Platforms whose state dir other accounts cannot traverse keep their shared dir (and,
    as root, the STAC database) in /var/lib/twinhub/<id>: remove those of the platforms this
    session started (their state dirs are under its basetemp) once every platform has
    stopped (this fixture is torn down last). Only this session's: another session on the
    same machine may be running its own platforms."""
    from tests.helpers.platform import purge_shared_dir

    base = tmp_path_factory.getbasetemp()
    yield
    for runtime in base.rglob("run/runtime.json"):
        purge_shared_dir(runtime.parent.parent)


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
