"""Per-user S3 credentials, kept in ``storage_credentials``: names, rows and bucket helpers.

Who makes a user's key pair and rights is a provisioner (:mod:`.provisioners`); this module
holds what they share: the table's rows, bucket names, making a bucket, waiting for a key.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import string
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..db import session
from ..db.models import StorageCredential
from ..process.runtime import Runtime
from .connection import admin_client, client, endpoint
from .options import BUCKET_RE, StorageError

log = logging.getLogger("twinhub.objectstore")

_KEY_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class UserStorage:
    """One user's key pair (empty with provisioner "none") and private bucket."""

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


def new_keys() -> tuple[str, str]:
    """A fresh random (access key, secret key)."""
    access = "TH" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(18))
    return access, secrets.token_urlsafe(30)


def get_user(rt: Runtime, user: str) -> UserStorage | None:
    """``user``'s recorded storage, or None."""
    with session(rt.db_url) as s:
        row = s.get(StorageCredential, user)
        if row is None:
            return None
        return UserStorage(row.platform_user, row.access_key, row.secret_key, row.home_bucket)


def all_users(rt: Runtime) -> list[UserStorage]:
    """Every user's recorded storage, by name."""
    with session(rt.db_url) as s:
        rows = s.scalars(select(StorageCredential).order_by(StorageCredential.platform_user))
        return [
            UserStorage(r.platform_user, r.access_key, r.secret_key, r.home_bucket) for r in rows
        ]


def delete_row(rt: Runtime, user: str) -> bool:
    """Forget ``user``'s recorded keys; True if there were any."""
    with session(rt.db_url) as s:
        row = s.get(StorageCredential, user)
        if row is None:
            return False
        s.delete(row)
    return True


def create_row(rt: Runtime, user: str, prefix: str) -> UserStorage:
    """Record a new key pair and home bucket for ``user`` (or another process's, if first)."""
    access, secret = new_keys()
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


def wait_usable(rt: Runtime, creds: UserStorage, timeout: float) -> None:
    """Wait until the reloaded gateway accepts the new key (SIGHUP reload is asynchronous)."""
    # botocore takes ~0.2 s to import (see connection.client).
    from botocore.exceptions import ClientError

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
