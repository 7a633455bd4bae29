"""A job's outputs in its user's bucket: where they go, how much they weigh, their removal.

Every job writes under ``s3://<the user's home bucket>/processing/<job id>/``. Sizing and
removal use the *user's own* S3 keys (what their servers and clusters hold), never the
platform's admin key: a wrong prefix can reach nothing but that user's own objects, and the
prefix is checked to be a job prefix of that user's bucket before anything is removed.
boto3 blocks: each call runs in a thread.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from ...objectstore import (
    admin_client,
    client,
    ensure_user,
    get_user,
    has_admin_keys,
    home_bucket_name,
)
from ...objectstore import settings as store_settings
from ...process.runtime import Runtime

#: The folder of a user's bucket holding job outputs, one sub-folder per job.
FOLDER = "processing"
#: Job ids (uuid4 hex; tests use shorter ones): what may follow ``processing/``.
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Keys per DeleteObjects request (S3's maximum).
_BATCH = 1000


def home_bucket(rt: Runtime, user: str) -> str:
    """``user``'s private bucket: the recorded one, else the name it will get."""
    recorded = get_user(rt, user)
    if recorded is not None:
        return recorded.home_bucket
    return home_bucket_name(store_settings(rt).home_bucket_prefix, user)


def output_prefix(rt: Runtime, user: str, job_id: str) -> str:
    """``s3://<home bucket>/processing/<job id>/``. ValueError for a job id that is not one."""
    if not JOB_ID.fullmatch(job_id or ""):
        raise ValueError(f"not a job id: {job_id!r}")
    return f"s3://{home_bucket(rt, user)}/{FOLDER}/{job_id}/"


def split_prefix(rt: Runtime, user: str, prefix: str) -> tuple[str, str]:
    """(bucket, key prefix) of a job prefix of ``user``; ValueError for anything else (another
    bucket, a prefix that is not ``processing/<job id>/``)."""
    m = re.fullmatch(r"s3://([^/]+)/(" + FOLDER + r"/([^/]+)/)", prefix or "")
    if m is None or not JOB_ID.fullmatch(m.group(3)):
        raise ValueError(f"not a job output prefix: {prefix!r}")
    bucket = home_bucket(rt, user)
    if m.group(1) != bucket:
        raise ValueError(f"{prefix!r} is not in {user}'s bucket {bucket}")
    return bucket, m.group(2)


def _client(rt: Runtime, user: str) -> Any:
    creds = ensure_user(rt, user)
    if creds.has_keys:
        return client(rt, creds.access_key, creds.secret_key)
    # Provisioner "none": users hold no keys; the platform's own (when it has one) reaches
    # what the job wrote with whatever credentials the deployment gave its workers.
    if has_admin_keys(rt):
        return admin_client(rt)
    raise ValueError(f"no S3 keys for {user} or the platform: outputs cannot be reached")


def _objects(c: Any, bucket: str, key_prefix: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key_prefix}
    try:
        while True:
            page = c.list_objects_v2(**kwargs)
            out += [(o["Key"], int(o.get("Size", 0))) for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return out
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
    except c.exceptions.NoSuchBucket:
        return out


def size_sync(rt: Runtime, user: str, prefix: str) -> int:
    """Bytes under the job prefix ``prefix`` of ``user`` (0 when nothing is there)."""
    bucket, key_prefix = split_prefix(rt, user, prefix)
    return sum(n for _, n in _objects(_client(rt, user), bucket, key_prefix))


def remove_sync(rt: Runtime, user: str, prefix: str) -> int:
    """Remove every object under the job prefix ``prefix`` of ``user``; how many."""
    bucket, key_prefix = split_prefix(rt, user, prefix)
    c = _client(rt, user)
    keys = [k for k, _ in _objects(c, bucket, key_prefix)]
    for i in range(0, len(keys), _BATCH):
        batch = [{"Key": k} for k in keys[i : i + _BATCH]]
        r = c.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        errors = r.get("Errors") or []
        if errors:
            first = errors[0]
            raise OSError(
                f"could not remove {len(errors)} object(s) under {prefix}: "
                f"{first.get('Key')}: {first.get('Message') or first.get('Code')}"
            )
    return len(keys)


async def size(rt: Runtime, user: str, prefix: str) -> int:
    """:func:`size_sync` in a thread."""
    return await asyncio.to_thread(size_sync, rt, user, prefix)


async def remove(rt: Runtime, user: str, prefix: str) -> int:
    """:func:`remove_sync` in a thread; ``""`` (no prefix yet) removes nothing."""
    if not prefix:
        return 0
    return await asyncio.to_thread(remove_sync, rt, user, prefix)
