"""The ``storage`` key of ``/twinlab/api/info``: where this user's S3 storage is.

The hub puts ``TWINHUB_STORAGE`` (JSON: endpoint, lake_bucket, home_bucket) in the server's
environment (twinhub.objectstore), and ``credentials``: ``per-user`` (this user's own keys are in
the environment) or ``none`` (the store gives no per-user keys); keys are never reported here.
"""

from __future__ import annotations

from typing import Any

from twinlab import environment
from twinlab.serverext.info import info_provider

FIELDS = ("endpoint", "lake_bucket", "home_bucket", "credentials")


@info_provider("storage")
def _storage() -> dict[str, Any] | None:
    if not environment.has_storage():
        return None
    try:
        doc = environment.storage()
    except environment.SettingError as e:
        return {"error": str(e)}
    return {k: doc.get(k) for k in FIELDS}
