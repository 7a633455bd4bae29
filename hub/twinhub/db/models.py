"""twinhub's own tables (SQLAlchemy 2 declarative models).

Every table of twinhub is here (as JupyterHub keeps all of its own in ``orm.py``); the code
that reads and writes a table lives with its concern. Adding a table: define its model here, then add a
migration under ``migrations/versions/`` whose ``down_revision`` is the current head (see
docs/accounts.md, "Adding a table").  Models describe the *newest* schema; migrations are how
an existing database gets there, so never edit a migration that has been released.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names: SQLite can only change constraints through Alembic's batch
# mode, which needs to find them by name; PostgreSQL gets the same names.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_account_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class LocalAccount(Base):
    """A platform account of the embedded authenticator (one row per user name)."""

    __tablename__ = "local_accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Stable identifier that survives renames; what later tables (allocations, accounting)
    # should reference instead of the user name.
    account_id: Mapped[str] = mapped_column(
        String(32), unique=True, nullable=False, default=new_account_id
    )
    username: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    # argon2id encoded hash (algorithm, parameters and salt included); never the password.
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    is_admin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    approved: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow
    )

    def __repr__(self) -> str:
        state = "approved" if self.approved else "pending"
        return f"<LocalAccount {self.username} {state}{' admin' if self.is_admin else ''}>"


class OsAccount(Base):
    """The OS account a platform user runs as in multi-user mode."""

    __tablename__ = "os_accounts"

    platform_user: Mapped[str] = mapped_column(String(255), primary_key=True)
    os_name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    uid: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )


class PlatformMeta(Base):
    """Key/value facts about the platform instance (schema and platform version, ...)."""

    __tablename__ = "platform_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow
    )


class OidcIdentity(Base):
    """One OpenID Connect identity and the platform user name it owns."""

    __tablename__ = "oidc_identities"

    issuer: Mapped[str] = mapped_column(String(512), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    username: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    # What the provider called the user at their latest login (renames are visible here).
    provider_username: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    last_login_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow
    )


class StorageCredential(Base):
    """A platform user's object-store identity: access key, secret key, private bucket."""

    __tablename__ = "storage_credentials"

    platform_user: Mapped[str] = mapped_column(String(255), primary_key=True)
    access_key: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    # The object store needs the secret itself to check signatures (SigV4 is symmetric), so
    # it is kept as is; this database file is 0600 and the value never goes to a log.
    secret_key: Mapped[str] = mapped_column(String(128), nullable=False)
    home_bucket: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )

    def __repr__(self) -> str:  # never the secret
        return f"<StorageCredential {self.platform_user} {self.access_key} {self.home_bucket}>"


class ProjectAllocation(Base):
    """An admin's allocation for one project (a hub group), winning over configuration."""

    __tablename__ = "project_allocations"

    project: Mapped[str] = mapped_column(String(255), primary_key=True)
    # The validated allocation (twinhub.services.projects.allocations.validate_allocation), all keys present.
    allocation: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    updated_by: Mapped[str] = mapped_column(String(255), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow
    )


# -- accounting (issue 12; services/accounting/store.py writes, query.py reads) ---------------

#: 64-bit ids on PostgreSQL (raw records run into billions over the years); SQLite's
#: autoincrementing rowid must be spelled INTEGER.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UsageSource(Base):
    """Something usage is charged for (a server run, a cluster, a job, a bucket, a home dir).

    Written only by trusted processes (hub, gateway, the accounting service), never from
    a user's environment: ``user`` and ``project`` here decide who pays.
    """

    __tablename__ = "usage_sources"
    # A project's members (query.usage by_member) are the users of its sources.
    __table_args__ = (Index("ix_usage_sources_project", "project"),)

    source_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    user: Mapped[str] = mapped_column(String(255), nullable=False)
    # None: charged to no project's budget (a home bucket), still shown to its user.
    project: Mapped[str | None] = mapped_column(String(255), nullable=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Where the meter reads it (cgroup paths, uid, pid, pod): the charge file's content.
    probe: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The meter read it one last time after it ended (its cgroup may then go).
    final_read: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )


class UsageCursor(Base):
    """The last value the store charged of one counter or gauge of one source."""

    __tablename__ = "usage_cursors"
    __table_args__ = (PrimaryKeyConstraint("source_id", "counter", name="pk_usage_cursors"),)

    source_id: Mapped[str] = mapped_column(String(255), nullable=False)
    # A resource ("cpu", "memory", ...) or "<resource>:energy_j" for a measured energy counter.
    counter: Mapped[str] = mapped_column(String(128), nullable=False)
    value: Mapped[float] = mapped_column(Float, nullable=False)
    read_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class UsageRecord(Base):
    """One interval of one resource of one source, in base units (raw, pruned after
    ``TwinhubAccounting.raw_retention_days``; roll-ups keep the sums)."""

    __tablename__ = "usage_records"
    __table_args__ = (
        # The idempotency key: a tick replayed after a crash inserts nothing new.
        UniqueConstraint("source_id", "resource", "start", name="uq_usage_records_source_id"),
        Index("ix_usage_records_user_start", "user", "start"),
        Index("ix_usage_records_project_start", "project", "start"),
        Index("ix_usage_records_end", "end"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source_id: Mapped[str] = mapped_column(String(255), nullable=False)
    user: Mapped[str] = mapped_column(String(255), nullable=False)
    project: Mapped[str | None] = mapped_column(String(255), nullable=True)
    source_kind: Mapped[str] = mapped_column(String(32), nullable=False)
    resource: Mapped[str] = mapped_column(String(32), nullable=False)
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    end: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # core-s (cpu), GiB-s (memory, storage), GPU-s (gpu), worker-s (dask_worker).
    quantity: Mapped[float] = mapped_column(Float, nullable=False)
    method: Mapped[str] = mapped_column(String(32), nullable=False)
    energy_j: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_method: Mapped[str] = mapped_column(String(16), nullable=False)
    co2e_g: Mapped[float | None] = mapped_column(Float, nullable=True)


class UsageRollup(Base):
    """Sums of records per scope and hour or day, what the usage API reads.

    ``scope_kind`` user (scope = user), project (scope = project) or member (scope =
    ``project + "\\x1f" + user``, so one project's members are one index range).
    ``methods``: bitmask of the measure and energy methods seen (store.METHOD_BITS).
    """

    __tablename__ = "usage_rollups"
    __table_args__ = (
        PrimaryKeyConstraint(
            "scope_kind", "scope", "step", "bucket_start", name="pk_usage_rollups"
        ),
    )

    scope_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    scope: Mapped[str] = mapped_column(String(511), nullable=False)
    step: Mapped[str] = mapped_column(String(8), nullable=False)
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    cpu_core_s: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    memory_gib_s: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    gpu_s: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    dask_worker_s: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    storage_gib_s: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    energy_j: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    co2e_g: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    methods: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class BudgetState(Base):
    """Where one budget of one project stands (written by the service each tick, read by the
    hub's spawn and running checks)."""

    __tablename__ = "budget_states"
    __table_args__ = (PrimaryKeyConstraint("project", "budget", name="pk_budget_states"),)

    project: Mapped[str] = mapped_column(String(255), nullable=False)
    budget: Mapped[str] = mapped_column(String(32), nullable=False)
    used: Mapped[float | None] = mapped_column(Float, nullable=True)
    limit: Mapped[float | None] = mapped_column(Float, nullable=True)
    fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    level: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # When level first reached 100 (the grace counts from here); None below 100.
    over_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )


class EnforcementEvent(Base):
    """A warning, refusal or stop because of a budget (shown to the user, logged)."""

    __tablename__ = "enforcement_events"
    __table_args__ = (Index("ix_enforcement_events_project_at", "project", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    user: Mapped[str | None] = mapped_column(String(255), nullable=True)
    server: Mapped[str | None] = mapped_column(String(255), nullable=True)
    cluster: Mapped[str | None] = mapped_column(String(255), nullable=True)
    project: Mapped[str] = mapped_column(String(255), nullable=False)
    budget: Mapped[str] = mapped_column(String(32), nullable=False)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)


# -- registry (issue 14; services/registry/store.py reads and writes) --------------------------


class RegistryRequest(Base):
    """One onboarding request of a provider, and the registry entry it becomes.

    The request's ``state`` walks the onboarding workflow (services/registry/workflow.py);
    an entry is published (in the catalogue, behind the platform's sign-on) while the
    request is ``integrated``. ``entry`` is the newest version (older ones: versions table).
    """

    __tablename__ = "registry_requests"
    __table_args__ = (
        Index("ix_registry_requests_slug", "slug"),
        # One live request per slug (rejected and retired ones free it): the database
        # decides a race between two submissions, not a check-then-insert.
        Index(
            "uq_registry_requests_live_slug",
            "slug",
            unique=True,
            sqlite_where=text("state NOT IN ('rejected', 'retired')"),
            postgresql_where=text("state NOT IN ('rejected', 'retired')"),
        ),
        Index("ix_registry_requests_state", "state"),
        Index("ix_registry_requests_provider", "provider"),
        Index("ix_registry_requests_updated", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), nullable=False)
    # The hub user who asked (the provider).
    provider: Mapped[str] = mapped_column(String(255), nullable=False)
    state: Mapped[str] = mapped_column(String(32), nullable=False)
    # The validated entry (services/registry/entry.py), newest version.
    entry: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    # What the service needs ({"project": ..., "cpu": ..., ...}) and what the provider plans.
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    activity: Mapped[str] = mapped_column(Text, nullable=False, default="")
    # The automated evaluation's findings: [{"check", "ok", "message"}...]; None: not yet run.
    findings: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    # Set at integration (admins): where /services/<slug>/ forwards to, and whether that
    # address may be private (loopback, link-local, RFC 1918...).
    upstream: Mapped[str | None] = mapped_column(Text, nullable=True)
    allow_private: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Set at integration: the gateway sends its pages with a CSP sandbox (an opaque origin:
    # its scripts cannot read the platform's pages), for services that work that way.
    sandbox: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )


class RegistryEvent(Base):
    """The audit trail of a request: every transition, comment, update and evaluation."""

    __tablename__ = "registry_events"
    __table_args__ = (Index("ix_registry_events_request_id", "request_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(32), nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    # A hub user's name, or "platform" (the automated evaluation).
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    # "transition", "comment", "update" or "evaluation".
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    from_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    to_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    comment: Mapped[str] = mapped_column(Text, nullable=False, default="")


class RegistryEntryVersion(Base):
    """Every version of an entry (version history): the request's entry at each change."""

    __tablename__ = "registry_entry_versions"
    __table_args__ = (
        PrimaryKeyConstraint("request_id", "version", name="pk_registry_entry_versions"),
    )

    request_id: Mapped[str] = mapped_column(String(32), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    entry: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class RegistryHealth(Base):
    """The last health check of an integrated entry's upstream (services/registry/health.py)."""

    __tablename__ = "registry_health"

    slug: Mapped[str] = mapped_column(String(64), primary_key=True)
    # "up", "down" or "unknown" (never checked, or checking refused by the outbound guard).
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    http_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str] = mapped_column(Text, nullable=False, default="")
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


# -- service desk (issue 14; services/desk/store.py reads and writes) --------------------------


class DeskTicket(Base):
    """A support ticket: its owner sees it, the support group sees all of them."""

    __tablename__ = "desk_tickets"
    __table_args__ = (
        Index("ix_desk_tickets_owner", "owner"),
        Index("ix_desk_tickets_state", "state"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(255), nullable=False)
    subject: Mapped[str] = mapped_column(String(200), nullable=False)
    # "open", "answered" or "closed".
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    # A registry entry's slug and/or a project (hub group) the ticket is about.
    service: Mapped[str | None] = mapped_column(String(64), nullable=True)
    project: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Where the owner's notifications go ("" : none).
    email: Mapped[str] = mapped_column(String(320), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )


class DeskMessage(Base):
    """One message of a ticket (the first is its body), by its owner or by support staff."""

    __tablename__ = "desk_messages"
    __table_args__ = (Index("ix_desk_messages_ticket_id", "ticket_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ticket_id: Mapped[int] = mapped_column(BigId, nullable=False)
    author: Mapped[str] = mapped_column(String(255), nullable=False)
    staff: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class DeskAttachment(Base):
    """A file attached to a ticket (bytes in the database: bounded by the desk's size cap)."""

    __tablename__ = "desk_attachments"
    __table_args__ = (Index("ix_desk_attachments_ticket_id", "ticket_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ticket_id: Mapped[int] = mapped_column(BigId, nullable=False)
    message_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    uploader: Mapped[str] = mapped_column(String(255), nullable=False)
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    content_type: Mapped[str] = mapped_column(String(127), nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


# -- processing (issue 16; services/processing/store.py reads and writes) ----------------------


class ProcessingJob(Base):
    """One execution of a process (OGC API - Processes job), from submission to its end.

    ``status`` keeps OGC's values (accepted, running, successful, failed, dismissed);
    ``stage`` is twinhub's own (queued, scheduling, fetching, processing, ingesting, done);
    ``stages`` records each stage's start, end and progress. ``runner`` says where the job's
    runner process (or pod) is, so a restarted service can adopt or resume it.
    """

    __tablename__ = "processing_jobs"
    __table_args__ = (
        Index("ix_processing_jobs_owner", "owner", "created_at"),
        Index("ix_processing_jobs_status", "status"),
        Index("ix_processing_jobs_project", "project", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), nullable=False)
    # The project (hub group) its cluster is charged to.
    project: Mapped[str] = mapped_column(String(255), nullable=False)
    process_id: Mapped[str] = mapped_column(String(64), nullable=False)
    # The process description's version at submission (user processes change).
    process_version: Mapped[str] = mapped_column(String(32), nullable=False, default="1")
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    # What the client asked for: {"outputs": {...}, "response": "document"|"raw"}.
    request: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    stage: Mapped[str] = mapped_column(String(16), nullable=False)
    # Overall progress 0..100, and each stage's {"started", "finished", "progress"}.
    progress: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    stages: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # sha256 of the runner's secret (the runner authenticates its reports with it).
    secret_hash: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    # The backend's handle of the runner ({"kind": "local", "pid", "started"} or a pod).
    runner: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The hub token minted for the runner (its id only, to revoke it at the end).
    token_id: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    # The Dask Gateway cluster the runner made (to stop it on dismiss / limits).
    cluster: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    # Where its outputs go: s3://<bucket>/<prefix>/ (removed when the job fails or is dismissed).
    output_prefix: Mapped[str] = mapped_column(Text, nullable=False, default="")
    output_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # The results document (OGC: output id -> inline value or {"href", "type"}).
    results: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Provenance: the STAC items read, and the STAC item the outputs were ingested as.
    source_items: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    stac_item: Mapped[str] = mapped_column(Text, nullable=False, default="")
    # Limits at submission (seconds, bytes): a later configuration change does not move them.
    wall_time: Mapped[float] = mapped_column(Float, nullable=False)
    max_output_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ProcessingLog(Base):
    """A job's log, line by line (the runner's reports and the service's own notes)."""

    __tablename__ = "processing_logs"
    __table_args__ = (Index("ix_processing_logs_job_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    stage: Mapped[str] = mapped_column(String(16), nullable=False)
    # "info", "warning", "error"; "service" lines are the platform's, not the runner's.
    level: Mapped[str] = mapped_column(String(16), nullable=False, default="info")
    source: Mapped[str] = mapped_column(String(16), nullable=False, default="runner")
    text: Mapped[str] = mapped_column(Text, nullable=False)


class UserProcess(Base):
    """A process a user registered from a notebook (``twinlab.processing.register``).

    ``visibility``: "private" (its owner only) or "project:<name>" (that project's
    members). ``code`` is the function, pickled by value (cloudpickle); it runs only as the
    user who executes it, on their own cluster.
    """

    __tablename__ = "processing_user_processes"
    __table_args__ = (Index("ix_processing_user_processes_owner", "owner"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), nullable=False)
    visibility: Mapped[str] = mapped_column(String(300), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    # The OGC process description (title, description, inputs, outputs, keywords).
    description: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    code: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    # The function's source text when it could be read (shown to who may run it).
    source: Mapped[str] = mapped_column(Text, nullable=False, default="")
    python: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
