"""What the desk's routes share: the caller (:class:`Caller`), the service's state
(:class:`Desk`: settings, the hub client, caches, the mailer) and the notices it sends.
Apart from ``app.py`` so that the page (``pages.py``) and the API share it without importing
each other."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import Request

from ...process.runtime import Runtime
from ..asgi import BadRequest
from ..hubauth import acts_as_admin, hub_user_model
from ..projects.catalog import ProjectCatalog
from ..registry.entry import can_see
from . import MAILDIR, SERVICE_PREFIX, TwinhubDesk, store
from .mail import Mailer, notices

log = logging.getLogger("twinhub.desk")

#: How long the hub's answers (a user's groups, the support group's members, the projects)
#: are reused: a change in the hub counts within this time.
HUB_TTL = 30.0
CACHE_MAX = 4096


class Caller:
    """Who is calling: the hub's user model (fresh groups and admin flag) and the token's."""

    def __init__(self, token_model: dict[str, Any], model: dict[str, Any], group: str) -> None:
        self.name: str = model["name"]
        self.groups: frozenset[str] = frozenset(model.get("groups") or ())
        # Admin power comes from the token (as in the hub's own API) with the hub's flag.
        self.user = {**token_model, "admin": bool(model.get("admin")), "groups": list(self.groups)}
        self.staff = group in self.groups or acts_as_admin(self.user)

    @property
    def viewer(self) -> str | None:
        """Whose tickets the caller sees: None (staff) = everybody's."""
        return None if self.staff else self.name

    def caps(self, settings: TwinhubDesk) -> store.Caps | None:
        """The caller's per-user caps; None for staff (answering many users is their job)."""
        if self.staff:
            return None
        return store.Caps(
            open_tickets=settings.max_open_tickets,
            tickets_per_hour=settings.max_tickets_per_hour,
            attachment_bytes=settings.max_user_attachment_bytes,
            messages_per_hour=settings.max_messages_per_hour,
        )


class TtlCache:
    """Values by key, each reused for ``ttl`` seconds, at most ``size`` (oldest go first)."""

    def __init__(self, ttl: float, size: int = CACHE_MAX) -> None:
        self.ttl, self.size = ttl, size
        self._items: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> tuple[bool, Any]:
        item = self._items.get(key)
        if item is None or item[0] <= time.monotonic():
            return False, None
        return True, item[1]

    def put(self, key: str, value: Any) -> None:
        self._items.pop(key, None)
        while len(self._items) >= self.size:
            self._items.pop(next(iter(self._items)))
        self._items[key] = (time.monotonic() + self.ttl, value)


class Desk:
    """What the routes share: settings, the hub client, caches, the mailer."""

    def __init__(self, rt: Runtime, settings: TwinhubDesk, hub_api: str, token: str) -> None:
        self.rt = rt
        self.settings = settings
        self.db_url = rt.db_url
        self.hub_api = hub_api
        self.token = token
        self.desk_url = rt.url + SERVICE_PREFIX.lstrip("/")
        self.mailer = Mailer(settings, rt.path(MAILDIR))
        self.hub: httpx.AsyncClient | None = None
        self.cache = TtlCache(HUB_TTL)

    # -- the hub ---------------------------------------------------------------------------
    async def _cached(self, key: str, fetch: Any) -> Any:
        hit, value = self.cache.get(key)
        if not hit:
            value = await fetch()
            self.cache.put(key, value)
        return value

    async def caller(self, request: Request) -> Caller:
        who = request.state.hub_user
        if who.get("kind", "user") != "user":
            raise BadRequest(f"{who.get('name')!r} is not a user: tickets are users'", 403)
        assert self.hub is not None
        model = await self._cached(
            "user:" + who["name"], lambda: hub_user_model(self.hub, self.hub_api, who["name"])
        )
        if model is None:
            raise BadRequest(f"user {who['name']!r} no longer exists", 403)
        return Caller(who, model, self.settings.support_group)

    async def staff_addresses(self) -> list[str]:
        """Where new-ticket notices go: the team address, else every support member's."""
        if self.settings.staff_address:
            return [self.settings.staff_address]

        async def members() -> list[str]:
            assert self.hub is not None
            name = quote(self.settings.support_group, safe="")
            try:
                r = await self.hub.get(f"{self.hub_api}/groups/{name}")
            except httpx.HTTPError as e:
                log.error("cannot ask the hub for the support group's members: %s", e)
                return []
            if r.status_code != 200:  # no such group yet: nobody to tell
                return []
            return list(r.json().get("users") or [])

        # Asked afresh each time (a notice per ticket or reply: rare): a member who just
        # joined the group hears of the next ticket.
        users = await members()
        return [self.mailer.address_of(u) for u in users]

    async def projects_of(self, me: Caller) -> list[str]:
        """The caller's groups that are projects (the projects catalogue's), sorted."""

        async def names() -> frozenset[str]:
            try:
                catalog = await asyncio.to_thread(ProjectCatalog.from_runtime, self.rt)
                return frozenset(await asyncio.to_thread(catalog.allocations))
            except Exception as e:  # a bad projects configuration: the hub says why
                log.error("cannot read the projects catalogue: %s", e)
                return frozenset()

        projects = await self._cached("projects", names)
        return sorted(me.groups & projects)

    async def services_for(self, me: Caller) -> list[dict[str, Any]]:
        """Integrated registry entries the caller may see (a ticket may name one)."""
        rows = await asyncio.to_thread(store.integrated_services, self.db_url)
        return [r for r in rows if can_see(r["visibility"], me.user)]

    # -- notifications ---------------------------------------------------------------------
    async def notify_new(self, ticket: dict[str, Any], body: str) -> None:
        await self.notify_staff(ticket, "new", body)

    async def notify_staff(self, ticket: dict[str, Any], kind: str, body: str) -> None:
        """Mail the support group's members a notice of ``kind`` (``new``, ``reply``)."""
        subject, text = notices(self.mailer, ticket, desk_url=self.desk_url, text=body)[kind]
        self.mailer.send_later(await self.staff_addresses(), subject, text)

    def notify_owner(self, ticket: dict[str, Any], kind: str, body: str = "") -> None:
        subject, text = notices(self.mailer, ticket, desk_url=self.desk_url, text=body)[kind]
        self.mailer.send_later(
            [self.mailer.address_of(ticket["owner"], ticket["email"])], subject, text
        )
