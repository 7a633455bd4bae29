"""Allocations changed by admins at run time (``project_allocations``, migration 0005).

Configuration (``TwinhubProjects.projects``) is the initial state; a row here replaces the
configured allocation of that project until an admin resets it (the row is deleted).  Both
the hub process (at each spawn) and the ``projects`` service read and write these rows, so
the table, not process memory, is the shared truth.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from sqlalchemy import select

from ...db.models import ProjectAllocation, utcnow
from ...db.schema import session


def overrides(db_url: str) -> dict[str, dict[str, Any]]:
    """Every project's run-time allocation: {project: {"allocation", "updated_by", "updated_at"}}."""
    with session(db_url) as s:
        return {
            r.project: {
                "allocation": dict(r.allocation),
                "updated_by": r.updated_by,
                # SQLite hands back naive datetimes; they were written in UTC.
                "updated_at": (
                    r.updated_at if r.updated_at.tzinfo else r.updated_at.replace(tzinfo=UTC)
                ).isoformat(),
            }
            for r in s.scalars(select(ProjectAllocation))
        }


def set_override(db_url: str, project: str, allocation: dict[str, Any], by: str) -> None:
    """Store ``allocation`` (already validated) for ``project``, replacing any earlier one."""
    with session(db_url) as s:
        row = s.get(ProjectAllocation, project)
        if row is None:
            s.add(ProjectAllocation(project=project, allocation=allocation, updated_by=by))
        else:
            row.allocation, row.updated_by, row.updated_at = allocation, by, utcnow()


def delete_override(db_url: str, project: str) -> bool:
    """Forget the run-time allocation of ``project``; False when there was none."""
    with session(db_url) as s:
        row = s.get(ProjectAllocation, project)
        if row is None:
            return False
        s.delete(row)
        return True
