"""Alembic migrations of twinhub's own tables (run through :func:`twinhub.db.upgrade`)."""
