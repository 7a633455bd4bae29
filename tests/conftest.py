"""Fixtures shared by the whole suite.

Fixture plugins (each a module with fixtures, listed here so every test sees them):
- ``tests.fixtures.postgres``: ``postgres_url``, a real PostgreSQL 15 cluster in a tmp dir.
- ``tests.fixtures.platforms``: ``personal_platform`` and ``multiuser_platform``, the real
  embedded platform (`twinhub up`) started once per mode for the whole session.
"""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.platforms",
    "tests.fixtures.oidc",
]
