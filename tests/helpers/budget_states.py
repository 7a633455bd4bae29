"""Writing a project's budget level straight into accounting's table ``budget_states`` (model
:class:`twinhub.db.models.BudgetState`), as the accounting service's enforcement does each
tick, for tests of what reads it (the object store's freeze of a project bucket over its
storage budget)."""

from __future__ import annotations

from datetime import UTC, datetime

from twinhub import db
from twinhub.db.models import BudgetState


def set_level(
    db_url: str, project: str, budget: str, level: int, used: float = 0.0, limit: float = 1.0
) -> None:
    """Replace ``project``'s state of ``budget`` with ``level`` (0/80/95/100)."""
    now = datetime.now(UTC)
    with db.session(db_url) as s:
        s.merge(
            BudgetState(
                project=project,
                budget=budget,
                level=level,
                used=used,
                limit=limit,
                fraction=used / limit if limit else None,
                over_since=now if level >= 100 else None,
                updated_at=now,
            )
        )


def clear(db_url: str, project: str) -> None:
    """Forget every budget state of ``project``."""
    with db.session(db_url) as s:
        s.query(BudgetState).filter(BudgetState.project == project).delete()
