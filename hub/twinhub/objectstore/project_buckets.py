"""Project buckets: one shared bucket per project, read/write for its members only.

A project is a hub group with an allocation (:mod:`twinhub.services.projects`).  Its bucket
is ``project-<group>`` (made bucket-safe like home buckets).  Membership comes from the
hub's own database (groups are the hub's), read at every sync: whoever is no longer in the
group loses the bucket at the next sync, which runs before each spawn and, in the projects
service, every ``TwinhubProjects.storage_sync_interval`` seconds; adding someone to the
group gives them access at their next spawn or sync.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from ..process.runtime import Runtime
from .credentials import home_bucket_name

PROJECT_BUCKET_PREFIX = "project-"
#: Keycloak group paths arrive as "projects:<name>": the bucket needs the name only.
_GROUP_PREFIX = "projects:"

log = logging.getLogger("twinhub.objectstore")


def project_bucket_name(project: str) -> str:
    name = project.removeprefix(_GROUP_PREFIX) or project
    return home_bucket_name(PROJECT_BUCKET_PREFIX, name)


def project_names(rt: Runtime) -> list[str]:
    """The projects (hub groups) of this platform: configured and added at run time."""
    from ..services import projects

    if not projects.is_enabled(rt):
        return []
    return sorted(projects.ProjectCatalog.from_runtime(rt).allocations())


def memberships(rt: Runtime, groups: list[str]) -> dict[str, list[str]]:
    """{user: [group, ...]} for the given hub groups, from the hub's database."""
    if not groups:
        return {}
    from sqlalchemy import bindparam, create_engine, text

    from ..hubconf.core import hub_db_url

    url = hub_db_url(rt)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT u.name, g.name FROM users u "
                    "JOIN user_group_map m ON m.user_id = u.id "
                    "JOIN groups g ON g.id = m.group_id WHERE g.name IN :names"
                ).bindparams(bindparam("names", expanding=True)),
                {"names": groups},
            ).all()
    except Exception as e:  # no hub database yet (first start): nobody is a member
        if "no such table" in str(e):
            return {}
        raise
    finally:
        engine.dispose()
    out: dict[str, list[str]] = {}
    for user, group in rows:
        out.setdefault(user, []).append(group)
    return out


def project_grants(rt: Runtime) -> dict[str, list[str]]:
    """{user: [project bucket, ...]}: what each user's S3 identity may read and write."""
    names = project_names(rt)
    return {
        user: sorted(project_bucket_name(g) for g in groups)
        for user, groups in memberships(rt, names).items()
    }


def ensure_project_buckets(rt: Runtime, admin: Any = None) -> list[str]:
    """Create every project's bucket (idempotent); returns their names."""
    from . import admin_client

    admin = admin or admin_client(rt)
    have = {b["Name"] for b in admin.list_buckets().get("Buckets", [])}
    buckets = [project_bucket_name(p) for p in project_names(rt)]
    for b in buckets:
        if b not in have:
            with contextlib.suppress(admin.exceptions.BucketAlreadyOwnedByYou):
                admin.create_bucket(Bucket=b)
                log.info("created project bucket %s", b)
    return buckets


def sync_project_storage(rt: Runtime, last: dict[str, list[str]] | None = None) -> dict:
    """Create missing project buckets; rewrite identities (embedded) or the changed users'
    IAM policies (provisioner "iam") when memberships changed.

    Returns the grants now in force (pass them back as ``last`` next time).  With
    provisioner "none" nobody's rights are touched: the grants only name the buckets.
    """
    from . import has_admin_keys, settings
    from .credentials import _lock, sync_identities

    store = settings(rt)
    if not store.enabled:
        return last or {}
    kind = store.provisioner_kind
    if kind == "none":
        if has_admin_keys(rt):
            ensure_project_buckets(rt)
        return project_grants(rt)
    ensure_project_buckets(rt)
    grants = project_grants(rt)
    if grants != last:
        if kind == "iam":
            from .iam import sync_policies

            sync_policies(rt, grants, last)
        else:
            with _lock(rt):
                sync_identities(rt)
        log.info("project storage access updated: %s", grants)
    return grants
