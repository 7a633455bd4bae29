"""Project buckets: one shared bucket per project, read/write for its members only.

A project is a hub group with an allocation (:mod:`twinhub.services.projects`).  Its bucket
is ``project-<group>`` (made bucket-safe like home buckets).  Membership comes from the
hub's own database (groups are the hub's, read through its ORM: :mod:`.memberships`) at
every sync: whoever is no longer in the group loses the bucket at the next sync, which runs
before each spawn and, in the projects service, every
``TwinhubProjects.storage_sync_interval`` seconds; adding someone to the group gives them
access at their next spawn or sync.

The same sync freezes a bucket whose project used up its storage budget (the accounting
service's ``budget_states``: ``storage_gb`` at level 100): its members may then only read
and list it, until a raised budget (or objects an admin deleted) brings the level down again.
"""

from __future__ import annotations

from ..process.runtime import Runtime
from .options import settings
from .provisioners import ProjectAccess, provisioner


def sync_project_storage(rt: Runtime, last: ProjectAccess | None = None) -> ProjectAccess:
    """Create missing project buckets; rewrite identities (embedded) or the changed users'
    IAM policies (provisioner "iam") when memberships or frozen buckets changed.

    Returns the access now in force (pass it back as ``last`` next time).  With
    provisioner "none" nobody's rights are touched: the grants only name the buckets.
    """
    if not settings(rt).enabled:
        return last or ProjectAccess()
    return provisioner(rt).sync_projects(last)


__all__ = ["ProjectAccess", "sync_project_storage"]
