"""Per-user S3 keys on an external S3 service through the AWS IAM API (provisioner ``"iam"``).

One IAM user per platform user (``<iam_user_prefix><name>``), one access key, and one inline
policy (:data:`POLICY_NAME`) that names exactly the buckets the user may touch: the lake
(list, read), their home bucket and their project buckets (list, read, write, delete; list
and read only for a project over its storage budget, see ``memberships.frozen_buckets``).  The
platform's admin key makes the calls; it needs IAM rights on users, keys and user policies.

Spoken by AWS IAM, Ceph RGW (IAM API with accounts) and SeaweedFS's embedded IAM API
(``weed s3 -iam.readOnly=false``, ``weed server -s3.iam.readOnly=false``), which turns the
same policy documents into its own per-bucket actions (tested against weed 4.48).

Race safety without a shared lock (the hub and the Dask Gateway may be separate pods): the
database row is the single truth.  A process makes its key, then inserts the row; if another
process inserted first, the loser deletes the key it just made and uses the winner's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import IntegrityError

from ..db import session
from ..db.models import StorageCredential
from ..process.runtime import Runtime
from .connection import admin_keys, endpoint
from .credentials import UserStorage, all_users, ensure_bucket, get_user, home_bucket_name
from .options import REGION, StorageError, settings

log = logging.getLogger("twinhub.objectstore")

POLICY_NAME = "twinhub-storage"
# AWS counts an inline user policy's size without whitespace; more is refused by AWS (not by
# SeaweedFS or RGW), so a warning names the cause before AWS's terse LimitExceeded.
AWS_INLINE_POLICY_LIMIT = 2048
_IAM_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}$", re.ASCII)

# Only actions that both AWS and SeaweedFS 4.48 know: weed refuses a whole policy naming
# s3:ListBucketMultipartUploads or s3:ListMultipartUploadParts (MalformedPolicyDocument,
# "not a valid action"), so listing unfinished uploads is not granted; uploading in parts
# is (AWS: s3:PutObject covers Create/UploadPart/Complete).
LAKE_BUCKET_ACTIONS = ("s3:ListBucket", "s3:GetBucketLocation")
LAKE_OBJECT_ACTIONS = ("s3:GetObject",)
OWN_BUCKET_ACTIONS = ("s3:ListBucket", "s3:GetBucketLocation")
OWN_OBJECT_ACTIONS = (
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:GetObjectTagging",
    "s3:PutObjectTagging",
    "s3:DeleteObjectTagging",
)
#: Objects of a project bucket over its storage budget: read only.
FROZEN_OBJECT_ACTIONS = ("s3:GetObject", "s3:GetObjectTagging")


def iam_user_name(prefix: str, user: str) -> str:
    """``<prefix><user>`` when IAM accepts it (``[\\w+=,.@-]``, <= 64), else a readable
    variant with 8 hex of sha256(user), so two users never share an IAM user."""
    if not user:
        raise ValueError("user name must not be empty")
    plain = f"{prefix}{user}"
    if _IAM_NAME_RE.match(plain):
        return plain
    digest = hashlib.sha256(user.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^\w+=,.@-]+", "-", user, flags=re.ASCII).strip("-")
    name = f"{prefix}{cleaned[: 64 - len(prefix) - 9]}-{digest}" if cleaned else prefix + digest
    if not _IAM_NAME_RE.match(name):
        raise ValueError(f"cannot derive an IAM user name from prefix {prefix!r} and user {user!r}")
    return name


def _arn(bucket: str, objects: bool = False) -> str:
    return f"arn:aws:s3:::{bucket}" + ("/*" if objects else "")


def user_policy(
    lake: str, home: str, shared: Iterable[str] = (), frozen: Iterable[str] = ()
) -> dict:
    """The inline policy of one user: lake read/list, home and project buckets read/write,
    the project buckets in ``frozen`` (over their storage budget) read/list only.

    No ``s3:ListAllMyBuckets``: on AWS it would list every bucket of the account (other
    users' names); tools open ``s3://bucket/...`` without it.  Bucket creation is not granted.
    """
    own = [home, *sorted(set(shared) - {home})]
    over = set(frozen)
    read_only = [b for b in own if b in over and b != home]
    writable = [b for b in own if b not in read_only]
    doc: dict = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "LakeList",
                "Effect": "Allow",
                "Action": list(LAKE_BUCKET_ACTIONS),
                "Resource": [_arn(lake)],
            },
            {
                "Sid": "LakeRead",
                "Effect": "Allow",
                "Action": list(LAKE_OBJECT_ACTIONS),
                "Resource": [_arn(lake, objects=True)],
            },
            {
                "Sid": "OwnBuckets",
                "Effect": "Allow",
                "Action": list(OWN_BUCKET_ACTIONS),
                "Resource": [_arn(b) for b in own],
            },
            {
                "Sid": "OwnObjects",
                "Effect": "Allow",
                "Action": list(OWN_OBJECT_ACTIONS),
                "Resource": [_arn(b, objects=True) for b in writable],
            },
        ],
    }
    if read_only:
        doc["Statement"].append(
            {
                "Sid": "FrozenObjects",
                "Effect": "Allow",
                "Action": list(FROZEN_OBJECT_ACTIONS),
                "Resource": [_arn(b, objects=True) for b in read_only],
            }
        )
    return doc


def policy_json(doc: dict) -> str:
    """Compact JSON (what AWS measures against its 2048-character inline limit)."""
    return json.dumps(doc, separators=(",", ":"))


def _code(e: Exception) -> str:
    return getattr(e, "response", {}).get("Error", {}).get("Code", "")


class IamUsers:
    """Makes and revokes users' IAM users, keys and policies with the platform's admin key."""

    def __init__(self, rt: Runtime, iam_client: Any = None) -> None:
        self.rt = rt
        self.store = settings(rt)
        self.iam = iam_client or self._client()

    def _client(self) -> Any:
        # boto3 takes ~0.3 s to import (see connection.client).
        import boto3
        from botocore.config import Config

        url = self.store.iam_endpoint_url or endpoint(self.rt)
        if not self.store.iam_endpoint_url and _is_aws(url):
            url = None  # AWS IAM is its own global endpoint, never the S3 one: boto3 knows it
        access, secret = admin_keys(self.rt)
        return boto3.client(
            "iam",
            endpoint_url=url,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            region_name=REGION,
            config=Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 3}),
        )

    def name(self, user: str) -> str:
        return iam_user_name(self.store.iam_user_prefix, user)

    def put_policy(
        self, user: str, home: str, shared: Iterable[str] = (), frozen: Iterable[str] = ()
    ) -> None:
        doc = policy_json(user_policy(self.store.lake_bucket, home, shared, frozen))
        if len(doc) > AWS_INLINE_POLICY_LIMIT:
            log.warning(
                "storage policy of %s is %d characters: AWS IAM refuses inline policies over "
                "%d (too many project buckets)",
                user,
                len(doc),
                AWS_INLINE_POLICY_LIMIT,
            )
        try:
            self.iam.put_user_policy(
                UserName=self.name(user), PolicyName=POLICY_NAME, PolicyDocument=doc
            )
        except Exception as e:
            raise StorageError(f"IAM PutUserPolicy for {user} failed: {e}") from e

    def create(
        self, user: str, home: str, shared: Iterable[str] = (), frozen: Iterable[str] = ()
    ) -> tuple[str, str]:
        """IAM user (kept if there), policy, and a new access key; returns (access, secret)."""
        name = self.name(user)
        try:
            self.iam.create_user(UserName=name)
        except Exception as e:
            if _code(e) != "EntityAlreadyExists":
                raise StorageError(f"IAM CreateUser {name} failed: {e}") from e
        self.put_policy(user, home, shared, frozen)
        try:
            key = self.iam.create_access_key(UserName=name)["AccessKey"]
        except Exception as e:
            if _code(e) != "LimitExceeded":
                raise StorageError(f"IAM CreateAccessKey for {name} failed: {e}") from e
            # Keys of an attempt that died before its database row (AWS allows 2 per user):
            # the caller holds no row for this user, so none of them is in use.
            self._delete_keys(name)
            key = self.iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def delete_key(self, user: str, access_key: str) -> None:
        with contextlib.suppress(self.iam.exceptions.NoSuchEntityException):
            self.iam.delete_access_key(UserName=self.name(user), AccessKeyId=access_key)

    def _delete_keys(self, name: str, keep: str = "") -> int:
        keys = self.iam.list_access_keys(UserName=name).get("AccessKeyMetadata", [])
        gone = [k["AccessKeyId"] for k in keys if k["AccessKeyId"] != keep]
        for access in gone:
            self.iam.delete_access_key(UserName=name, AccessKeyId=access)
        return len(gone)

    def delete_other_keys(self, user: str, keep: str) -> int:
        """Delete every key of ``user``'s IAM user but ``keep`` (keys of an earlier
        installation or of a crashed attempt must not stay valid); returns how many."""
        try:
            return self._delete_keys(self.name(user), keep=keep)
        except Exception as e:
            raise StorageError(f"removing stale keys of {self.name(user)} failed: {e}") from e

    def remove(self, user: str) -> None:
        """Every key, the policy, then the IAM user (IAM refuses to delete a user with them)."""
        name = self.name(user)
        try:
            self._delete_keys(name)
            with contextlib.suppress(self.iam.exceptions.NoSuchEntityException):
                self.iam.delete_user_policy(UserName=name, PolicyName=POLICY_NAME)
            self.iam.delete_user(UserName=name)
        except Exception as e:
            if _code(e) == "NoSuchEntity":
                return  # never created, or removed already
            raise StorageError(f"revoking the IAM user {name} failed: {e}") from e


def _is_aws(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host == "amazonaws.com" or host.endswith(".amazonaws.com")


def provision(rt: Runtime, user: str, shared: list[str], frozen: Iterable[str] = ()) -> UserStorage:
    """Create ``user``'s home bucket, IAM user, policy and key, and record them (see module
    doc for races); returns the recorded storage, which may be another process's."""
    store = settings(rt)
    bucket = home_bucket_name(store.home_bucket_prefix, user)
    ensure_bucket(rt, bucket)
    prov = IamUsers(rt)
    access, secret = prov.create(user, bucket, shared, frozen)
    try:
        with session(rt.db_url) as s:
            s.add(
                StorageCredential(
                    platform_user=user, access_key=access, secret_key=secret, home_bucket=bucket
                )
            )
    except IntegrityError:
        prov.delete_key(user, access)
        existing = get_user(rt, user)
        if existing is None:
            raise StorageError(f"bucket {bucket!r} for {user!r} is taken by another user") from None
        return existing
    # Only the process whose row won may clear other keys: a racing loser deletes its own.
    stale = prov.delete_other_keys(user, keep=access)
    log.info(
        "IAM user %s with key %s for %s (%d stale key(s) deleted)",
        prov.name(user),
        access,
        user,
        stale,
    )
    return UserStorage(user, access, secret, bucket)


def sync_policies(
    rt: Runtime,
    grants: dict[str, list[str]],
    last: dict[str, list[str]] | None = None,
    frozen: Iterable[str] = (),
    last_frozen: Iterable[str] = (),
) -> list[str]:
    """Rewrite the policy of every user whose project buckets, or which of them are
    ``frozen`` (read-only), changed since ``last`` and ``last_frozen`` (all users when
    ``last`` is None); returns the users whose policy was written."""
    frozen, last_frozen = set(frozen), set(last_frozen)
    prov: IamUsers | None = None
    done = []
    for creds in all_users(rt):
        mine = sorted(grants.get(creds.user, []))
        if last is not None:
            before = sorted(last.get(creds.user, []))
            if before == mine and last_frozen & set(before) == frozen & set(mine):
                continue
        prov = prov or IamUsers(rt)
        prov.put_policy(creds.user, creds.home_bucket, mine, frozen & set(mine))
        done.append(creds.user)
    return done
