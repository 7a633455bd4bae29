"""Where the object store is and how the platform talks to it: endpoint, admin key, clients."""

from __future__ import annotations

from typing import Any

from ..process.runtime import Runtime
from . import seaweed
from .options import REGION, StorageError, settings


def endpoint(rt: Runtime) -> str:
    """The S3 endpoint URL users and the platform use (the embedded store's, or the external)."""
    store = settings(rt)
    if not store.embedded:
        return store.endpoint_url.rstrip("/")
    return f"http://127.0.0.1:{rt.ports[seaweed.PORT_KEYS['s3']]}"


def admin_keys(rt: Runtime) -> tuple[str, str]:
    """The platform's own key pair: configured, or generated for the embedded store."""
    store = settings(rt)
    if store.admin_access_key and store.admin_secret_key:
        return store.admin_access_key, store.admin_secret_key
    if not store.embedded:
        raise StorageError(
            "TwinhubObjectStore.endpoint_url is set: admin_access_key and admin_secret_key "
            "must be set too"
        )
    return "THADMIN" + rt.secret("objectstore-admin-access", 7).upper(), rt.secret(
        "objectstore-admin-secret"
    )


def client(rt: Runtime, access_key: str, secret_key: str) -> Any:
    """A boto3 S3 client on the store (path-style, short timeouts, few retries)."""
    # boto3 takes ~0.3 s to import: the hub and the gateway import this package at start
    # and most of their processes never make a client.
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint(rt),
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=3,
            read_timeout=30,
            retries={"max_attempts": 2},
        ),
    )


def admin_client(rt: Runtime) -> Any:
    """An S3 client with the platform's admin key."""
    return client(rt, *admin_keys(rt))


def has_admin_keys(rt: Runtime) -> bool:
    """Whether the platform holds an admin key (always when embedded)."""
    store = settings(rt)
    return store.embedded or bool(store.admin_access_key and store.admin_secret_key)
