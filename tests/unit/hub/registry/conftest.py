"""Shared fixtures of the registry's app-level unit tests (pages, Records): a registry
context over a real, migrated SQLite store, entries made through the real validation, and
the one fake, the hub's token check (:class:`FakeHubAuth`: a table of token -> user model
where JupyterHub would answer).

The table is a fresh copy for every test (``hub_users``): a test may change it freely.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jupyterhub.services.auth import HubOAuth
from traitlets.config import Config

from twinhub import db
from twinhub.process.runtime import Runtime
from twinhub.services.registry import store
from twinhub.services.registry.config import TwinhubRegistry
from twinhub.services.registry.context import RegistryContext
from twinhub.services.registry.entry import validate_entry

PREFIX = "/services/registry/"
ACCESS = "access:services!service=registry"
SERVICE_TOKEN = "registry-service-token"

#: token -> the hub's user model (scopes included) of the fake token check.
HUB_USERS: dict[str, dict[str, Any]] = {
    "alice-token": {"name": "alice", "admin": False, "groups": [], "kind": "user",
                    "scopes": [ACCESS]},
    "bob-token": {"name": "bob", "admin": False, "groups": ["ocean-lab"], "kind": "user",
                  "scopes": [ACCESS]},
    "root-token": {"name": "root", "admin": True, "groups": [], "kind": "user",
                   "scopes": [ACCESS, "admin:users"]},
}  # fmt: skip


class FakeHubAuth(HubOAuth):
    """A fake of the hub's token check (no hub runs in unit tests): known tokens only.

    ``revoked``: tokens the hub no longer honours (a logout) that a cached answer still
    names, as HubOAuth's cache does for a while: refused only when asked afresh."""

    users: dict[str, dict[str, Any]] = {}
    revoked: set[str] = set()

    async def user_for_token(self, token, use_cache=True, session_id="", *, sync=True):
        model = self.users.get(token)
        if model is None or (token in self.revoked and not use_cache):
            return None
        return copy.deepcopy(model)


@pytest.fixture
def hub_users() -> dict[str, dict[str, Any]]:
    """This test's copy of the fake hub's token table (token -> user model with scopes)."""
    return copy.deepcopy(HUB_USERS)


@pytest.fixture
def hub_auth(hub_users) -> FakeHubAuth:
    """A :class:`FakeHubAuth` answering from ``hub_users`` (changes show at once)."""
    auth = FakeHubAuth(
        api_token=SERVICE_TOKEN,
        api_url="http://127.0.0.1:9/hub/api",
        oauth_client_id="service-registry",
        oauth_redirect_uri="http://127.0.0.1:9/services/registry/oauth_callback",
        oauth_authorization_url="/hub/api/oauth2/authorize",
        access_scopes={ACCESS},
    )
    auth.users, auth.revoked = hub_users, set()
    return auth


@pytest.fixture
def registry_ctx(tmp_path: Path) -> RegistryContext:
    """A registry context over an empty, migrated SQLite store (platform "Blue Twin", one
    project ``ocean-lab``)."""
    url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    db.upgrade(url)
    cfg = Config()
    cfg.Twinhub.db_url = url
    cfg.TwinhubFace.platform_name = "Blue Twin"
    cfg.TwinhubProjects.projects = {"ocean-lab": {"profiles": []}}
    rt = Runtime(state_dir=tmp_path, config=cfg, mode="multi-user", ports={"public": 9})
    return RegistryContext(
        rt=rt,
        settings=TwinhubRegistry(config=cfg),
        db_url=url,
        hub_api="http://127.0.0.1:9/hub/api",
        token=SERVICE_TOKEN,
        prefix=PREFIX,
    )


def make_entry(settings, slug, name, visibility, kind="web-application", **more) -> dict:
    """A validated entry; unnamed fields get plain defaults (one endpoint for web kinds)."""
    doc = {
        "name": name,
        "slug": slug,
        "provider": more.pop("provider", "Ocean Institute"),
        "description": more.pop("description", f"About **{name}**, see [docs](https://e.org)."),
        "thematic_areas": more.pop("thematic_areas", ["ocean"]),
        "kind": kind,
        "endpoints": more.pop(
            "endpoints",
            [{"url": f"https://{slug}.example.org/api", "type": "other"}]
            if kind in ("web-application", "api")
            else [],
        ),
        "visibility": visibility,
        **more,
    }
    return validate_entry(doc, settings)


def publish(db_url: str, entry: dict, state: str = "integrated") -> int:
    """Store ``entry`` as a request and move it from ``submitted`` to ``state`` (an
    integration with a loopback upstream)."""
    r = store.create_request(db_url, provider="prov", entry=entry, resources={}, activity="")
    if state != "submitted":
        store.transition(
            db_url,
            r["id"],
            expect="submitted",
            to=state,
            actor="root",
            integration={"upstream": "http://127.0.0.1:9/", "allow_private": True},
        )
    return r["id"]


@pytest.fixture
def registry_entries() -> tuple[Callable[..., dict], Callable[..., int]]:
    """``(make_entry, publish)`` for a test module's own fixtures and tests."""
    return make_entry, publish
