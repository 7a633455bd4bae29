"""Put built sample data into the lake: objects into S3, then STAC records into pgstac.

Objects go first (an item is never visible before its data); all STAC records of one load
go in one transaction (a failed load leaves none).  Uploads skip objects already present
with the same size, so an interrupted load resumes cheaply.  The collection records which
seed it came from (``twinhub:seed``), which is how a restart knows there is nothing to do.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from twinlab.contract import FIELD_SEED

from ...objectstore import admin_client
from ...objectstore import settings as store_settings
from ...process.runtime import Runtime
from .database import connection
from .lake_settings import settings

SEED_COLLECTION = "climate-dt"
BATCH = 500


def _connect(rt: Runtime) -> psycopg.Connection:
    return psycopg.connect(connection(rt, settings(rt).database_url).libpq_dsn(), autocommit=False)


def loaded_seed(rt: Runtime) -> dict[str, Any] | None:
    """``{size, version}`` of the sample data in the STAC database, or None."""
    with _connect(rt) as db:
        row = db.execute(
            "SELECT content->%s FROM pgstac.collections WHERE id = %s",
            (FIELD_SEED, SEED_COLLECTION),
        ).fetchone()
    return row[0] if row and row[0] else None


def rebucket(obj: Any, bucket: str) -> Any:
    """Asset hrefs of a build name the bucket ``lake``: point them at ``bucket``."""
    if bucket == "lake":
        return obj
    text = json.dumps(obj).replace('"s3://lake/', f'"s3://{bucket}/')
    return json.loads(text)


def upload(rt: Runtime, objects: Iterable[tuple[str, Any]], say: Callable[[str], None]) -> int:
    """Copy (key, local path) pairs into the lake bucket; returns bytes sent."""
    bucket = store_settings(rt).lake_bucket
    s3 = admin_client(rt)
    have: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        have.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    todo = [(k, p) for k, p in objects if have.get(k) != p.stat().st_size]
    total = sum(p.stat().st_size for _, p in todo)
    sent = 0
    lock = threading.Lock()
    last = [time.monotonic()]

    def put(kp: tuple[str, Any]) -> None:
        nonlocal sent
        key, path = kp
        s3.upload_file(str(path), bucket, key)
        with lock:
            sent += path.stat().st_size
            if time.monotonic() - last[0] > 2:
                last[0] = time.monotonic()
                say(f"uploading {sent / 1e6:.0f}/{total / 1e6:.0f} MB")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, todo))
    return sent


def insert(
    rt: Runtime,
    collections: list[dict[str, Any]],
    items: Iterable[dict[str, Any]],
    say: Callable[[str], None] = print,
) -> int:
    """Upsert collections and items in one transaction; returns the number of items."""
    bucket = store_settings(rt).lake_bucket
    n = 0
    with _connect(rt) as db, db.transaction():
        for c in collections:
            db.execute(
                "SELECT pgstac.upsert_collection(%s::jsonb)", (json.dumps(rebucket(c, bucket)),)
            )
        for batch in _batches(items, BATCH):
            db.execute(
                "SELECT pgstac.upsert_items(%s::jsonb)",
                (json.dumps([rebucket(i, bucket) for i in batch]),),
            )
            n += len(batch)
            if n % (BATCH * 10) == 0:
                say(f"{n} items indexed")
    return n


def _batches(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_build(rt: Runtime, build: Any, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Load a :class:`~.seed.SeedBuild` (objects, then STAC records marked with the seed)."""
    t0 = time.monotonic()
    sent = upload(rt, build.objects(), say)
    mark = {"size": build.manifest["size"], "version": build.manifest["version"]}
    collections = [
        {**c, FIELD_SEED: mark} if c["id"] == SEED_COLLECTION else c for c in build.collections()
    ]
    n = insert(rt, collections, build.items(), say)
    return {"items": n, "bytes_uploaded": sent, "seconds": round(time.monotonic() - t0, 1), **mark}
