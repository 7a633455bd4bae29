"""Who may use which project bucket: projects (hub groups with an allocation), their
members, and the buckets themselves.

A project's bucket is ``project-<group>`` (made bucket-safe like home buckets).  Membership
is the hub's (its groups), read through JupyterHub's ORM at every sync: whoever is no longer
in the group loses the bucket at the next sync (see :mod:`.project_buckets`).

A project whose storage budget is used up (``storage_gb`` at level 100 in the accounting
service's ``budget_states`` table) has its bucket *frozen*: members keep reading and listing
it, none of them may write (:func:`frozen_buckets`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any

from sqlalchemy import Engine, column, create_engine, inspect, select, table
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from .. import db
from ..process.runtime import Runtime
from .connection import admin_client
from .credentials import home_bucket_name

PROJECT_BUCKET_PREFIX = "project-"
#: The accounting service's table of budget levels, read as a plain table: the object store
#: knows no service (twinhub.services.accounting.enforce writes it each tick).
BUDGET_STATES = table("budget_states", column("project"), column("budget"), column("level"))
STORAGE_BUDGET = "storage_gb"
#: The level (percent of the budget used, as the accounting service rounds it) that freezes.
FROZEN_LEVEL = 100
#: Keycloak group paths arrive as "projects:<name>": the bucket needs the name only.
_GROUP_PREFIX = "projects:"

log = logging.getLogger("twinhub.objectstore")


def project_bucket_name(project: str) -> str:
    """The bucket of ``project`` (a hub group name)."""
    name = project.removeprefix(_GROUP_PREFIX) or project
    return home_bucket_name(PROJECT_BUCKET_PREFIX, name)


def project_names(rt: Runtime) -> list[str]:
    """The projects (hub groups) of this platform: configured and added at run time."""
    # services.projects brings twinhub.auth and jupyterhub (~0.5 s): the object-store
    # component imports this package at start and never asks for projects.
    from ..services import projects

    if not projects.is_enabled(rt):
        return []
    return sorted(projects.ProjectCatalog.from_runtime(rt).allocations())


def memberships(rt: Runtime, groups: list[str]) -> dict[str, list[str]]:
    """{user: [group, ...]} for the given hub groups, from the hub's database (its ORM)."""
    if not groups:
        return {}
    # jupyterhub.orm takes ~0.3 s to import: the object-store component and the gateway
    # import this package at start and never ask for memberships.
    from jupyterhub import orm

    try:
        with Session(_hub_engine(db.default_hub_db_url(rt))) as s:
            rows = s.execute(
                select(orm.User.name, orm.Group.name)
                .select_from(orm.User)
                .join(orm.User.groups)
                .where(orm.Group.name.in_(groups))
            ).all()
    except Exception as e:  # no hub database yet (first start): nobody is a member
        if "no such table" in str(e):
            return {}
        raise
    out: dict[str, list[str]] = {}
    for user, group in rows:
        out.setdefault(user, []).append(group)
    return out


@functools.cache
def _hub_engine(url: str) -> Engine:
    """One engine per hub database, for its cache of compiled queries (the ORM query is
    compiled once, not at every spawn); no pool: a connection is opened per lookup and
    closed after it, as the hub's database file may be replaced between platforms."""
    return create_engine(url, poolclass=NullPool)


def project_grants(rt: Runtime) -> dict[str, list[str]]:
    """{user: [project bucket, ...]}: what each user's S3 identity may read and write."""
    names = project_names(rt)
    return {
        user: sorted(project_bucket_name(g) for g in groups)
        for user, groups in memberships(rt, names).items()
    }


def grants_or_none(rt: Runtime) -> dict[str, list[str]]:
    """:func:`project_grants`, or none at all when memberships are unreadable (never grant
    on doubt: without memberships, no project access)."""
    try:
        return project_grants(rt)
    except Exception as e:
        log.error("project memberships unreadable, no project bucket access: %s", e)
        return {}


def ensure_project_buckets(rt: Runtime, admin: Any = None) -> list[str]:
    """Create every project's bucket (idempotent); returns their names."""
    admin = admin or admin_client(rt)
    have = {b["Name"] for b in admin.list_buckets().get("Buckets", [])}
    buckets = [project_bucket_name(p) for p in project_names(rt)]
    for b in buckets:
        if b not in have:
            with contextlib.suppress(admin.exceptions.BucketAlreadyOwnedByYou):
                admin.create_bucket(Bucket=b)
                log.info("created project bucket %s", b)
    return buckets


def frozen_projects(rt: Runtime) -> set[str]:
    """Projects whose storage budget is used up (``storage_gb`` at level 100 in
    ``budget_states``); none when accounting never ran here (no such table)."""
    eng = db.engine(rt.db_url)
    with eng.connect() as conn:
        if not inspect(conn).has_table(BUDGET_STATES.name):
            return set()
        rows = conn.execute(
            select(BUDGET_STATES.c.project).where(
                BUDGET_STATES.c.budget == STORAGE_BUDGET, BUDGET_STATES.c.level >= FROZEN_LEVEL
            )
        ).scalars()
        return set(rows)


#: The frozen buckets last read per database: kept when a read fails, so a passing database
#: error neither thaws a full bucket nor freezes a healthy one.
_last_frozen: dict[str, frozenset[str]] = {}


def frozen_buckets(rt: Runtime) -> frozenset[str]:
    """The buckets of :func:`frozen_projects` (read and list only for their members)."""
    try:
        frozen = frozenset(project_bucket_name(p) for p in frozen_projects(rt))
    except Exception as e:
        frozen = _last_frozen.get(rt.db_url, frozenset())
        log.error("budget states unreadable, frozen project buckets kept as %s: %s", frozen, e)
        return frozen
    _last_frozen[rt.db_url] = frozen
    return frozen
