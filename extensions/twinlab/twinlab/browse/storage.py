"""The user's buckets, seen with the user's own S3 keys (so the object store enforces who
may read what, beside the checks here).

Buckets offered: the home bucket, the lake and the project buckets the hub listed in
``$TWINHUB_STORAGE`` (``home_bucket``, ``lake_bucket``, ``project_buckets``).  Any other
name is "unknown" (404) even if the keys could reach it: the page browses only these.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import quote

from twinlab import environment
from twinlab.datalake.config import DatalakeError, s3_options, storage

#: The most keys one listing returns (S3's own maximum page).
MAX_LIST = 1000
#: Seconds a presigned download URL stays valid.
PRESIGN_SECONDS = 300
#: Default upload size cap (bytes); ``$TWINLAB_UPLOAD_MAX_BYTES`` overrides it.
UPLOAD_MAX_BYTES = 64 << 20
#: Parts (8 MiB each) of one upload sent at once.
UPLOAD_THREADS = 2
#: S3 keys are at most 1024 bytes (UTF-8).
MAX_KEY_BYTES = 1024
#: C0 and C1 control characters (C1: U+0080..U+009F, invisible in most terminals too).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class StorageError(Exception):
    """A request the storage API refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def upload_limit() -> int:
    """The upload size cap: ``$TWINLAB_UPLOAD_MAX_BYTES`` or :data:`UPLOAD_MAX_BYTES`."""
    return environment.integer(environment.ENV_UPLOAD_MAX_BYTES, UPLOAD_MAX_BYTES)


def buckets() -> list[dict[str, str]]:
    """``[{"name", "kind"}]``: home first, then the lake, then project buckets."""
    try:
        doc = storage()
    except DatalakeError as e:
        raise StorageError(503, str(e)) from None
    out: list[dict[str, str]] = []
    if doc.get("home_bucket"):
        out.append({"name": str(doc["home_bucket"]), "kind": "home"})
    if doc.get("lake_bucket"):
        out.append({"name": str(doc["lake_bucket"]), "kind": "lake"})
    for name in doc.get("project_buckets") or []:
        out.append({"name": str(name), "kind": "project"})
    return out


def check_bucket(name: str | None) -> str:
    if not name:
        raise StorageError(400, "bucket is required")
    if name not in {b["name"] for b in buckets()}:
        raise StorageError(404, f"unknown bucket {name!r}: not one of this user's buckets")
    return name


def check_key(key: str | None, what: str = "key", allow_empty: bool = False) -> str:
    """An object key: no ``..``, ``.`` or empty segment (``a//b``, a trailing ``/``: the
    page could not show or reach such objects as files), no control characters, no leading
    ``/``, at most 1024 bytes."""
    return _check_path(key, what, allow_empty, folder=False)


def check_prefix(prefix: str | None) -> str:
    """A listing prefix: like a key, but empty (the bucket's top) or ending in ``/``."""
    return _check_path(prefix, "prefix", True, folder=True)


def _check_path(key: str | None, what: str, allow_empty: bool, folder: bool) -> str:
    if key is None or key == "":
        if allow_empty:
            return ""
        raise StorageError(400, f"{what} is required")
    if _CONTROL.search(key):
        raise StorageError(400, f"{what} {key!r} contains control characters")
    if key.startswith("/"):
        raise StorageError(400, f"{what} {key!r} must not start with '/'")
    parts = key.split("/")
    if folder and parts[-1] == "":  # "a/b/": a folder's prefix
        parts = parts[:-1]
    if any(part in ("..", ".") for part in parts):
        raise StorageError(400, f"{what} {key!r} has a '.' or '..' segment")
    if "" in parts:
        where = "has an empty segment ('//')" if "//" in key else "ends in '/'"
        raise StorageError(400, f"{what} {key!r} {where}")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise StorageError(400, f"{what} is longer than {MAX_KEY_BYTES} bytes")
    return key


def check_limit(raw: str | None, default: int = 200) -> int:
    if raw is None or raw == "":
        return default
    try:
        n = int(raw)
    except ValueError:
        raise StorageError(400, f"limit {raw!r} is not an integer") from None
    if not 1 <= n <= MAX_LIST:
        raise StorageError(400, f"limit {n} outside 1..{MAX_LIST}")
    return n


@functools.cache
def client() -> Any:
    """A boto3 S3 client with the user's keys (from the environment) and the platform's
    endpoint (``twinlab.datalake.config.s3_options``); one per process (boto3 clients are
    thread-safe, and making one costs tens of milliseconds)."""
    # start-up cost: boto3 loads when the page first lists or reads, not at server start
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=s3_options().get("endpoint_url"),
        config=Config(signature_version="s3v4", retries={"max_attempts": 2}),
    )


def _s3_error(e: Exception, what: str) -> StorageError:
    """A botocore ClientError as the matching HTTP answer."""
    code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
    if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
        return StorageError(404, f"{what}: not found")
    if code in ("403", "AccessDenied", "AllAccessDisabled"):
        return StorageError(403, f"{what}: the object store denied access")
    return StorageError(502, f"{what}: object store error {code or type(e).__name__}")


@contextlib.contextmanager
def s3_call(what: str) -> Iterator[None]:
    """S3 errors as :class:`StorageError`: the object store's answers (ClientError) and
    botocore's own failures (no credentials, no endpoint, a bad endpoint URL...), which
    would otherwise be an "Unhandled error" 500 with no message."""
    # start-up cost: boto3 loads when the page first lists or reads, not at server start
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    try:
        yield
    except ClientError as e:
        raise _s3_error(e, what) from None
    except (NoCredentialsError, PartialCredentialsError):
        raise StorageError(
            503, f"{what}: this server has no S3 credentials (AWS_ACCESS_KEY_ID/SECRET)"
        ) from None
    except EndpointConnectionError as e:
        raise StorageError(503, f"{what}: cannot reach the object store: {e}") from None
    except (BotoCoreError, Boto3Error) as e:
        raise StorageError(502, f"{what}: object store client error: {e}") from None


def list_objects(
    bucket: str, prefix: str = "", limit: int = 200, token: str | None = None
) -> dict[str, Any]:
    """One page of ``bucket`` under ``prefix``: folders (common prefixes) and objects."""
    kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/", "MaxKeys": limit}
    if token:
        kw["ContinuationToken"] = token
    with s3_call(f"list {bucket}/{prefix}"):
        page = client().list_objects_v2(**kw)
    return {
        "bucket": bucket,
        "prefix": prefix,
        "folders": [p["Prefix"] for p in page.get("CommonPrefixes", [])],
        "objects": [
            {
                "key": o["Key"],
                "size": o["Size"],
                "last_modified": o["LastModified"].isoformat(),
            }
            for o in page.get("Contents", [])
        ],
        "next_token": page.get("NextContinuationToken"),
    }


def stat(bucket: str, key: str) -> dict[str, Any]:
    with s3_call(f"{bucket}/{key}"):
        head = client().head_object(Bucket=bucket, Key=key)
    return {
        "bucket": bucket,
        "key": key,
        "size": head["ContentLength"],
        "last_modified": head["LastModified"].isoformat(),
        "etag": str(head.get("ETag", "")).strip('"'),
        "content_type": head.get("ContentType", ""),
    }


def presign(bucket: str, key: str) -> dict[str, Any]:
    """A GET URL for ``bucket/key`` valid :data:`PRESIGN_SECONDS`; 404 if there is none."""
    stat(bucket, key)  # a URL to nothing would only fail later, in the browser
    # the object store is another origin: browsers ignore <a download> there, so the
    # response itself says "attachment" (S3's response-content-disposition override)
    name = quote(key.rsplit("/", 1)[-1], safe="")
    params = {
        "Bucket": bucket,
        "Key": key,
        "ResponseContentDisposition": f"attachment; filename*=UTF-8''{name}",
    }
    with s3_call(f"{bucket}/{key}"):
        url = client().generate_presigned_url(
            "get_object", Params=params, ExpiresIn=PRESIGN_SECONDS
        )
    return {"url": url, "expires_in": PRESIGN_SECONDS}


def upload(
    bucket: str, key: str, body: IO[bytes], size: int, content_type: str = ""
) -> dict[str, Any]:
    """``body`` (a binary file, read from its start; ``size`` bytes) as ``bucket/key``;
    boto3's managed transfer sends big files in parts, never all in memory."""
    from boto3.s3.transfer import TransferConfig  # start-up cost (see client)

    extra = {"ContentType": content_type} if content_type else None
    # parts in memory at once: boto3's defaults (10 threads, 10 parts read ahead, 8 MiB
    # each) would hold up to 80 MiB of every upload
    config = TransferConfig(max_concurrency=UPLOAD_THREADS)
    config.max_in_memory_upload_chunks = UPLOAD_THREADS  # s3transfer's, not in boto3's init
    body.seek(0)
    with s3_call(f"upload {bucket}/{key}"):
        client().upload_fileobj(body, bucket, key, ExtraArgs=extra, Config=config)
    return {"bucket": bucket, "key": key, "size": size}
