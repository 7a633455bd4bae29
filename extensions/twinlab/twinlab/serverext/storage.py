"""The ``storage`` key of ``/twinlab/api/info``: where this user's S3 storage is.

The hub puts ``TWINHUB_STORAGE`` (JSON: endpoint, lake_bucket, home_bucket) in the server's
environment (twinhub.objectstore), and ``credentials``: ``per-user`` (this user's own keys are in
the environment) or ``none`` (the store gives no per-user keys); keys are never reported here.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twinlab.serverext.info import info_provider

FIELDS = ("endpoint", "lake_bucket", "home_bucket", "credentials")


@info_provider("storage")
def _storage() -> dict[str, Any] | None:
    raw = os.environ.get("TWINHUB_STORAGE")
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return {"error": "TWINHUB_STORAGE is not valid JSON"}
    if not isinstance(doc, dict):
        return {"error": "TWINHUB_STORAGE is not a JSON object"}
    return {k: doc.get(k) for k in FIELDS}
