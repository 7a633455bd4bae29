"""Per-user S3 credentials: created on a user's first spawn, kept in ``storage_credentials``.

:func:`ensure_user` is what the hub (pre-spawn) and the Dask Gateway (cluster options) call;
it returns the user's :class:`UserStorage`, creating the key pair and the private bucket the
first time, through ``TwinhubObjectStore.provisioner``:

- ``seaweedfs`` (embedded store): an identity in identities.json, reloaded by SIGHUP;
- ``iam`` (external S3): an IAM user, key and policy (:mod:`twinhub.objectstore.iam`);
- ``none``: no keys at all; the user gets the endpoint and bucket names only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import secrets
import signal
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..db import session
from ..db.models import StorageCredential
from ..process.runtime import Runtime
from . import seaweed

log = logging.getLogger("twinhub.objectstore")

BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_KEY_ALPHABET = string.ascii_uppercase + string.digits


class StorageError(RuntimeError):
    """The object store cannot do what was asked; the message says what."""


@dataclass(frozen=True)
class UserStorage:
    user: str
    access_key: str
    secret_key: str
    home_bucket: str

    def __repr__(self) -> str:  # keeps the secret out of logs and tracebacks
        return f"UserStorage(user={self.user!r}, access_key={self.access_key!r}, home={self.home_bucket!r})"

    @property
    def has_keys(self) -> bool:
        """False with provisioner "none": the platform hands this user no key pair."""
        return bool(self.access_key and self.secret_key)


def safe_key(*parts: str) -> str:
    """Join object-key parts the platform builds, refusing '..', '.', empty and absolute parts.

    S3 keys are opaque strings, but tools map them onto paths (s3fs, the filer): a part
    that walks up must never reach another user's prefix.
    """
    out = []
    for part in parts:
        if not isinstance(part, str):
            raise ValueError(f"object key part {part!r} is not a string")
        for seg in part.split("/"):
            if seg in ("", ".", ".."):
                raise ValueError(
                    f"object key part {part!r} is empty, absolute or contains '.'/'..' segments"
                )
            if "\\" in seg or any(ord(ch) < 32 for ch in seg):
                raise ValueError(f"object key part {part!r} contains a backslash or control char")
        out.append(part)
    return "/".join(out)


def home_bucket_name(prefix: str, user: str) -> str:
    """``<prefix><user>`` when that is a valid S3 bucket name, else a readable, unique variant.

    JupyterHub names may hold characters buckets cannot ('_', '@', '.', upper case): those
    become '-' and a short hash of the real name keeps two such users apart.
    """
    if not user:
        raise ValueError("user name must not be empty")
    plain = f"{prefix}{user}"
    if BUCKET_RE.match(plain) and "--" not in plain:
        return plain
    digest = hashlib.sha256(user.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^a-z0-9]+", "-", user.lower()).strip("-")[: 63 - len(prefix) - 9]
    name = f"{prefix}{cleaned}-{digest}" if cleaned else f"{prefix}{digest}"
    if not BUCKET_RE.match(name):
        raise ValueError(f"cannot derive a bucket name from prefix {prefix!r} and user {user!r}")
    return name


def _new_keys() -> tuple[str, str]:
    access = "TH" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(18))
    return access, secrets.token_urlsafe(30)


def get_user(rt: Runtime, user: str) -> UserStorage | None:
    with session(rt.db_url) as s:
        row = s.get(StorageCredential, user)
        if row is None:
            return None
        return UserStorage(row.platform_user, row.access_key, row.secret_key, row.home_bucket)


def all_users(rt: Runtime) -> list[UserStorage]:
    with session(rt.db_url) as s:
        rows = s.scalars(select(StorageCredential).order_by(StorageCredential.platform_user))
        return [
            UserStorage(r.platform_user, r.access_key, r.secret_key, r.home_bucket) for r in rows
        ]


def forget_user(rt: Runtime, user: str) -> bool:
    """Revoke ``user``'s keys (the bucket and its objects stay); True if there were any."""
    from . import settings

    kind = settings(rt).provisioner_kind
    if kind == "iam":
        if get_user(rt, user) is None:
            return False
        from .iam import IamProvisioner

        # The service first: if it cannot revoke, the row (our record of the key) stays.
        IamProvisioner(rt).remove(user)
    with session(rt.db_url) as s:
        row = s.get(StorageCredential, user)
        if row is None:
            return False
        s.delete(row)
    if kind == "seaweedfs":
        with _lock(rt):
            sync_identities(rt, revoked=[user])
    return True


def _create_row(rt: Runtime, user: str, prefix: str) -> UserStorage:
    access, secret = _new_keys()
    bucket = home_bucket_name(prefix, user)
    try:
        with session(rt.db_url) as s:
            s.add(
                StorageCredential(
                    platform_user=user, access_key=access, secret_key=secret, home_bucket=bucket
                )
            )
    except IntegrityError:
        # Another process created them first (hub and gateway race): use theirs.
        existing = get_user(rt, user)
        if existing is None:
            raise StorageError(f"bucket {bucket!r} for {user!r} is taken by another user") from None
        return existing
    return UserStorage(user, access, secret, bucket)


def sync_identities(rt: Runtime, revoked: list[str] | tuple[str, ...] = ()) -> None:
    """Rewrite identities.json from the database and make the S3 gateway reload it.

    A reload merges identities by name and never drops one that left the file (seen with
    weed 4.48), so each ``revoked`` user gets, for this reload, an identity of the same name
    with a fresh random key and no rights: that replaces (and kills) the old key.
    """
    from . import admin_keys, settings
    from .project_buckets import project_grants

    store = settings(rt)
    try:
        shared = project_grants(rt)
    except Exception as e:  # never grant on doubt: without memberships, no project access
        log.error("project memberships unreadable, no project bucket access: %s", e)
        shared = {}
    doc = seaweed.identities(
        admin_keys(rt),
        [(u.user, u.access_key, u.secret_key, u.home_bucket) for u in all_users(rt)],
        store.lake_bucket,
        shared,
    )
    for user in revoked:
        access, secret = _new_keys()
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
def _lock(rt: Runtime):
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
    """The user's storage, created on first call: keys, identity, private bucket."""
    from . import admin_client, settings

    store = settings(rt)
    kind = store.provisioner_kind  # refuses a provisioner that cannot work here, naming why
    if kind == "none":
        return _keyless(rt, user)
    existing = get_user(rt, user)
    if existing is not None:
        return existing
    if kind == "iam":
        from .iam import provision

        ensure_bucket(rt, store.lake_bucket)
        creds = provision(rt, user, _grants_of(rt, user))
        # AWS IAM is eventually consistent: a new key may take seconds to be accepted.
        _wait_usable(rt, creds, max(timeout, store.key_propagation_timeout))
        return creds
    with _lock(rt):
        creds = get_user(rt, user) or _create_row(rt, user, store.home_bucket_prefix)
        admin = admin_client(rt)
        with contextlib.suppress(admin.exceptions.BucketAlreadyOwnedByYou):
            admin.create_bucket(Bucket=creds.home_bucket)
        sync_identities(rt)
    _wait_usable(rt, creds, timeout)
    return creds


def _wait_usable(rt: Runtime, creds: UserStorage, timeout: float) -> None:
    """Wait until the reloaded gateway accepts the new key (SIGHUP reload is asynchronous)."""
    from botocore.exceptions import ClientError

    from . import client

    c = client(rt, creds.access_key, creds.secret_key)
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            c.head_bucket(Bucket=creds.home_bucket)
            return
        except ClientError as e:
            last = e.response.get("Error", {}).get("Code")
        time.sleep(0.05)
    raise StorageError(
        f"the object store did not accept {creds.user}'s new key within {timeout:.0f} s "
        f"(last answer: {last})"
    )


_made_buckets: set[tuple[str, str]] = set()


def ensure_bucket(rt: Runtime, bucket: str) -> None:
    """Create ``bucket`` with the admin key unless this process saw it made already."""
    from . import admin_client, endpoint

    key = (endpoint(rt), bucket)
    if key in _made_buckets:
        return
    admin = admin_client(rt)
    try:
        admin.create_bucket(Bucket=bucket)
        log.info("created bucket %s", bucket)
    except admin.exceptions.BucketAlreadyOwnedByYou:
        pass
    except admin.exceptions.BucketAlreadyExists:
        # S3 bucket names are global on AWS: someone else's bucket must not become ours.
        raise StorageError(
            f"bucket {bucket!r} exists and belongs to someone else: choose another "
            "TwinhubObjectStore.lake_bucket / home_bucket_prefix"
        ) from None
    _made_buckets.add(key)


def _grants_of(rt: Runtime, user: str) -> list[str]:
    """``user``'s project buckets; none when memberships are unreadable (never on doubt)."""
    from .project_buckets import project_grants

    try:
        return project_grants(rt).get(user, [])
    except Exception as e:
        log.error("project memberships unreadable, no project bucket access: %s", e)
        return []


def _keyless(rt: Runtime, user: str) -> UserStorage:
    """Provisioner "none": bucket names only.  The buckets are made when the platform has
    an admin key; without one the operator makes them (and grants access) themselves."""
    from . import has_admin_keys, settings

    store = settings(rt)
    creds = UserStorage(user, "", "", home_bucket_name(store.home_bucket_prefix, user))
    if has_admin_keys(rt):
        ensure_bucket(rt, store.lake_bucket)
        ensure_bucket(rt, creds.home_bucket)
    return creds
