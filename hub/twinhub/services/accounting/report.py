"""``twinhub usage``: usage read straight from twinhub's database, for operators (as root on
the platform's machine), as a table or JSON. The figures are the usage API's
(:mod:`.query`); without ``--user`` or ``--project``, one line per user and project."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from . import query, rollup
from .metrics import usage_totals

#: The usage API's figures and their units, in the order a table shows them.
FIGURES = (
    ("cpu_core_hours", "core-h"),
    ("memory_gib_hours", "GiB-h"),
    ("gpu_hours", "GPU-h"),
    ("dask_worker_hours", "worker-h"),
    ("storage_gib_days", "GiB-days"),
    ("energy_kwh", "kWh"),
    ("co2e_kg", "kg CO2e"),
)
_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([mhdw])")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 date/time (naive = UTC) or a time ago: ``30m``, ``12h``, ``7d``, ``2w``."""
    now = now or datetime.now(UTC)
    m = _AGO.fullmatch(value.strip())
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither an ISO 8601 date/time nor a time ago (30m, 12h, 7d, 2w)"
        ) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def everyone(
    db_url: str, start: datetime | None = None, end: datetime | None = None
) -> list[dict[str, Any]]:
    """Totals per (user, project) in the API's units (:func:`.metrics.usage_totals`: whole
    UTC days)."""
    out = []
    for row in usage_totals(db_url, start, end):
        figures = {key: row[col] / div for col, (key, div) in rollup.REPORTED.items()}
        out.append({"user": row["user"], "project": row["project"] or None, "totals": figures})
    return sorted(out, key=lambda r: (r["user"], r["project"] or ""))


def one(
    db_url: str,
    *,
    user: str | None,
    project: str | None,
    start: datetime | None,
    end: datetime | None,
    step: str | None,
    by_member: bool,
    allocations: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The usage API's answer for a user or a project (with the project's budgets)."""
    doc = query.usage(
        db_url, user=user, project=project, start=start, end=end, step=step, by_member=by_member
    )
    projects = [project] if project and project in allocations else []
    doc["budgets"] = query.budgets(db_url, allocations, projects)
    return doc


def _num(v: Any) -> str:
    return "" if v is None else f"{float(v):.4g}"


def table(doc: dict[str, Any]) -> str:
    """A usage answer (:func:`one`) as text."""
    who = f"user {doc['user']}" if doc.get("user") else f"project {doc.get('project')}"
    if doc.get("user") and doc.get("project"):
        who = f"user {doc['user']} in project {doc['project']}"
    lines = [f"{who}, {doc.get('start')} .. {doc.get('end')}", ""]
    methods = doc.get("methods") or {}
    totals = doc.get("totals") or {}
    lines.append(f"{'figure':<20} {'total':>12}  unit")
    for key, unit in FIGURES:
        lines.append(f"{key:<20} {_num(totals.get(key)):>12}  {unit}")
    if methods:
        lines += ["", "methods: " + "; ".join(f"{r}: {', '.join(m)}" for r, m in methods.items())]
    series = doc.get("series") or []
    if len(series) > 1:
        lines += ["", f"{'start':<26} " + " ".join(f"{k[:12]:>12}" for k, _ in FIGURES)]
        for row in series:
            lead = str(row.get("start"))[:25]
            if row.get("user") and not doc.get("user"):
                lead = f"{lead} {row['user']}"
            lines.append(f"{lead:<26} " + " ".join(f"{_num(row.get(k)):>12}" for k, _ in FIGURES))
    for project, budgets in (doc.get("budgets") or {}).items():
        lines.append("")
        for budget, b in budgets.items():
            pct = f"{100 * b['fraction']:.1f} %" if b.get("fraction") is not None else "-"
            lines.append(
                f"budget {project} {budget}: used {_num(b.get('used'))} of "
                f"{_num(b.get('limit'))} ({pct}, level {b.get('level')})"
            )
    return "\n".join(lines)


def everyone_table(rows: list[dict[str, Any]]) -> str:
    """:func:`everyone` as text: one line per user and project."""
    head = f"{'user':<20} {'project':<24} " + " ".join(f"{k[:12]:>12}" for k, _ in FIGURES)
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['user']:<20} {(r['project'] or '-'):<24} "
            + " ".join(f"{_num(r['totals'].get(k)):>12}" for k, _ in FIGURES)
        )
    if not rows:
        lines.append("(no usage recorded)")
    return "\n".join(lines)
