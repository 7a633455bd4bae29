"""The desk's Prometheus metrics (``/services/desk/metrics``, tokens with read:metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

#: The desk's own registry (not the process-global one: tests build several apps).
REGISTRY = CollectorRegistry(auto_describe=True)

TICKETS = Gauge(
    "twinhub_desk_tickets",
    "Support tickets by state (open: waiting for staff; answered: waiting for the owner; "
    "closed), read from the database at each scrape.",
    ["state"],
    registry=REGISTRY,
)
MAILS = Counter(
    "twinhub_desk_mails",
    "Notification mails handed to the SMTP server or written to the Maildir (sent), given "
    "up on (failed: logged with the reason), or dropped because max_pending_mails were "
    "already waiting (dropped).",
    ["outcome"],
    registry=REGISTRY,
)
