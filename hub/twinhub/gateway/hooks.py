"""Hub-side hook: a user's Dask clusters stop when that user's last server stops.

Runs inside the hub process (``Spawner.post_stop_hook``).  The gateway only lets a cluster's
owner stop it, so the hub mints a short-lived token *for the user*, limited to the gateway's
access scope, uses it to list and stop the user's clusters, and deletes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

log = logging.getLogger("twinhub.gateway")
STOP_WAIT = 30.0  # seconds to wait for clusters to report stopped


async def stop_user_clusters(gateway: str, token: str, wait: float = STOP_WAIT) -> list[str]:
    """Stop every pending/running cluster the token's user owns, except processing jobs'
    clusters; return their names."""
    client = AsyncHTTPClient()
    headers = {"Authorization": f"jupyterhub {token}"}

    async def active() -> list[str]:
        r = await client.fetch(
            f"{gateway}/api/v1/clusters/?status=PENDING,RUNNING,STOPPING", headers=headers
        )
        clusters = json.loads(r.body)
        # Clusters of processing jobs (their ``job`` option) run without a server: they end
        # with their job (dismissed, failed or done), not with the user's last server.
        return [
            name
            for name, model in clusters.items()
            if not ((model or {}).get("options") or {}).get("job")
        ]

    names = await active()
    for name in names:
        try:
            await client.fetch(
                f"{gateway}/api/v1/clusters/{name}", method="DELETE", headers=headers
            )
        except HTTPClientError as e:
            if e.code != 404:
                raise
    # Wait (bounded) so that "server stopped" really means "its clusters are gone".
    deadline = asyncio.get_running_loop().time() + wait
    remaining = names
    while remaining and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.5)
        remaining = [n for n in await active() if n in names]
    if remaining:
        log.warning("Dask clusters still stopping after %.0f s: %s", wait, remaining)
    return names


def make_post_stop_hook(gateway: str, scope: str) -> Callable[[Any], Awaitable[None]]:
    """The hub's ``Spawner.post_stop_hook``: stop the user's clusters at ``gateway`` with a
    short-lived token limited to ``scope`` (the gateway's access scope)."""

    async def post_stop_hook(spawner: Any) -> None:
        user = spawner.user
        # Clusters belong to the user, not to one server: keep them while another runs.
        others = [s for name, s in user.spawners.items() if name != spawner.name and s.active]
        if others:
            return
        token = user.new_api_token(
            scopes=[scope], expires_in=300, note="twinhub: stop Dask clusters"
        )
        try:
            names = await stop_user_clusters(gateway, token)
            if names:
                spawner.log.info("Stopped Dask clusters of %s: %s", user.name, names)
        except OSError as e:
            # A gateway that is down (e.g. at platform shutdown) has no clusters to leak.
            spawner.log.warning(
                "Dask gateway unreachable, no clusters stopped for %s: %s", user.name, e
            )
        except Exception:
            # Never fail the server stop because of the gateway.
            spawner.log.exception("Could not stop the Dask clusters of %s", user.name)
        finally:
            # jupyterhub.orm takes ~0.4 s to import: `twinhub up` and the gateway process
            # import this package and never run the hook (the hub has it loaded).
            from jupyterhub import orm

            orm_token = orm.APIToken.find(user.db, token)
            if orm_token is not None:
                user.db.delete(orm_token)
                user.db.commit()

    return post_stop_hook
