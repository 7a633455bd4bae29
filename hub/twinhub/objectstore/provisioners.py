"""Who makes each user's S3 key pair and rights: one class per ``TwinhubObjectStore.provisioner``.

Chosen by name like dask-gateway's backends (:func:`provisioner`):

- ``seaweedfs`` (embedded store): an identity in identities.json, reloaded by SIGHUP;
- ``iam`` (external S3): an IAM user, key and policy (:mod:`twinhub.objectstore.iam`);
- ``none``: no keys at all; the user gets the endpoint and bucket names only.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..process.runtime import Runtime
from . import iam, seaweed
from .connection import admin_client, admin_keys, has_admin_keys
from .credentials import (
    UserStorage,
    all_users,
    create_row,
    delete_row,
    ensure_bucket,
    get_user,
    home_bucket_name,
    new_keys,
    wait_usable,
)
from .memberships import ensure_project_buckets, frozen_buckets, grants_or_none, project_grants
from .options import settings

log = logging.getLogger("twinhub.objectstore")


@dataclass(frozen=True)
class ProjectAccess:
    """Project bucket rights in force: who may use which bucket, and which buckets are
    frozen (over their project's storage budget: members read and list only)."""

    grants: dict[str, list[str]] = field(default_factory=dict)  # {user: [bucket, ...]}
    frozen: frozenset[str] = frozenset()


class Provisioner:
    """The operations every provisioner has; subclasses say how (see the module doc)."""

    #: The ``TwinhubObjectStore.provisioner`` value that picks this class.
    name = ""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.store = settings(rt)

    def ensure_user(self, user: str, timeout: float) -> UserStorage:
        """The user's storage, created on first call: keys, rights, private bucket."""
        existing = get_user(self.rt, user)
        return existing if existing is not None else self.create_user(user, timeout)

    def create_user(self, user: str, timeout: float) -> UserStorage:
        """Make and record ``user``'s keys, rights and bucket (nothing recorded yet)."""
        raise NotImplementedError

    def forget_user(self, user: str) -> bool:
        """Revoke ``user``'s keys (the bucket and its objects stay); True if there were any."""
        return delete_row(self.rt, user)

    def sync_projects(self, last: ProjectAccess | None) -> ProjectAccess:
        """Create missing project buckets and, when memberships or frozen buckets changed
        since ``last``, rewrite the members' rights; returns the access now in force."""
        ensure_project_buckets(self.rt)
        now = ProjectAccess(project_grants(self.rt), frozen_buckets(self.rt))
        if now != last:
            self.grant_projects(now, last)
            log.info(
                "project storage access updated: %s; read-only (over budget): %s",
                now.grants,
                sorted(now.frozen),
            )
        return now

    def grant_projects(self, now: ProjectAccess, last: ProjectAccess | None) -> None:
        """Give every user the rights on exactly their project buckets (``now``), which
        changed since ``last``."""


class SeaweedfsProvisioner(Provisioner):
    """The embedded store: identities.json, written from the database, reloaded by SIGHUP."""

    name = "seaweedfs"

    def create_user(self, user: str, timeout: float) -> UserStorage:
        with lock(self.rt):
            creds = get_user(self.rt, user) or create_row(
                self.rt, user, self.store.home_bucket_prefix
            )
            admin = admin_client(self.rt)
            with contextlib.suppress(admin.exceptions.BucketAlreadyOwnedByYou):
                admin.create_bucket(Bucket=creds.home_bucket)
            sync_identities(self.rt)
        wait_usable(self.rt, creds, timeout)
        return creds

    def forget_user(self, user: str) -> bool:
        if not delete_row(self.rt, user):
            return False
        with lock(self.rt):
            sync_identities(self.rt, revoked=[user])
        return True

    def grant_projects(self, now: ProjectAccess, last: ProjectAccess | None) -> None:
        with lock(self.rt):
            sync_identities(self.rt)


class IamProvisioner(Provisioner):
    """An external S3 service's IAM API: an IAM user, key and inline policy per user."""

    name = "iam"

    def create_user(self, user: str, timeout: float) -> UserStorage:
        ensure_bucket(self.rt, self.store.lake_bucket)
        creds = iam.provision(
            self.rt, user, grants_or_none(self.rt).get(user, []), frozen_buckets(self.rt)
        )
        # AWS IAM is eventually consistent: a new key may take seconds to be accepted.
        wait_usable(self.rt, creds, max(timeout, self.store.key_propagation_timeout))
        return creds

    def forget_user(self, user: str) -> bool:
        if get_user(self.rt, user) is None:
            return False
        # The service first: if it cannot revoke, the row (our record of the key) stays.
        iam.IamUsers(self.rt).remove(user)
        return delete_row(self.rt, user)

    def grant_projects(self, now: ProjectAccess, last: ProjectAccess | None) -> None:
        iam.sync_policies(
            self.rt,
            now.grants,
            last.grants if last else None,
            now.frozen,
            last.frozen if last else (),
        )


class KeylessProvisioner(Provisioner):
    """No per-user keys: users get the endpoint and bucket names and bring their own keys."""

    name = "none"

    def ensure_user(self, user: str, timeout: float) -> UserStorage:
        """Bucket names only.  The buckets are made when the platform has an admin key;
        without one the operator makes them (and grants access) themselves."""
        creds = UserStorage(user, "", "", home_bucket_name(self.store.home_bucket_prefix, user))
        if has_admin_keys(self.rt):
            ensure_bucket(self.rt, self.store.lake_bucket)
            ensure_bucket(self.rt, creds.home_bucket)
        return creds

    def sync_projects(self, last: ProjectAccess | None) -> ProjectAccess:
        """Nobody's rights are touched: the grants only name the buckets, made when the
        platform has an admin key (so nothing is frozen either: the operator's keys rule)."""
        if has_admin_keys(self.rt):
            ensure_project_buckets(self.rt)
        return ProjectAccess(project_grants(self.rt))


#: ``TwinhubObjectStore.provisioner`` (as in force, "auto" resolved) -> its class.
PROVISIONERS: dict[str, type[Provisioner]] = {
    cls.name: cls for cls in (SeaweedfsProvisioner, IamProvisioner, KeylessProvisioner)
}


def provisioner(rt: Runtime) -> Provisioner:
    """The provisioner in force; a StorageError names the fix when it cannot work here."""
    return PROVISIONERS[settings(rt).provisioner_kind](rt)


# -- the embedded store's identities file ------------------------------------------------------
def sync_identities(rt: Runtime, revoked: list[str] | tuple[str, ...] = ()) -> None:
    """Rewrite identities.json from the database and make the S3 gateway reload it.

    A reload merges identities by name and never drops one that left the file (seen with
    weed 4.48), so each ``revoked`` user gets, for this reload, an identity of the same name
    with a fresh random key and no rights: that replaces (and kills) the old key.
    """
    doc = seaweed.identities(
        admin_keys(rt),
        [(u.user, u.access_key, u.secret_key, u.home_bucket) for u in all_users(rt)],
        settings(rt).lake_bucket,
        grants_or_none(rt),
        frozen_buckets(rt),
    )
    for user in revoked:
        access, secret = new_keys()
        doc["identities"].append(
            {
                "name": f"user-{user}",
                "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": [],
            }
        )
    seaweed.write_identities(rt, doc)
    pid = _component_pid(rt)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)


def _component_pid(rt: Runtime) -> int | None:
    """The running ``object-store`` process, or None (a stale pid file's pid may be reused:
    only a process whose command line is ours gets the SIGHUP)."""
    try:
        pid = int(rt.path("run", "object-store.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"twinhub.objectstore.run" in cmdline else None


@contextlib.contextmanager
def lock(rt: Runtime) -> Iterator[None]:
    """One writer of identities.json at a time, across the hub and gateway processes."""
    path = seaweed.conf_dir(rt) / "identities.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def ensure_user(rt: Runtime, user: str, timeout: float = 15.0) -> UserStorage:
    """The user's storage, created on first call: keys, identity, private bucket (what the
    hub calls before a spawn and the Dask Gateway for a cluster's options)."""
    return provisioner(rt).ensure_user(user, timeout)


def forget_user(rt: Runtime, user: str) -> bool:
    """Revoke ``user``'s keys (the bucket and its objects stay); True if there were any."""
    return provisioner(rt).forget_user(user)
