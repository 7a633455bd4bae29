"""What removing a platform user takes away besides their hub account."""

from __future__ import annotations

import logging

from .. import objectstore
from ..process.runtime import Runtime

log = logging.getLogger(__name__)


def revoke_platform_access(name: str) -> None:
    """Revoke ``name``'s object-store keys (their bucket and its objects stay).

    Called by every twinhub authenticator's ``delete_user``, in the hub process.
    """
    try:
        rt = Runtime.load()
    except (KeyError, FileNotFoundError):
        # A hub started outside `twinhub up` (some tests): there is no platform to revoke from.
        log.warning("no twinhub runtime here: platform access of %s not revoked", name)
        return
    if objectstore.settings(rt).enabled and objectstore.forget_user(rt, name):
        log.info("revoked object-store keys of %s", name)
