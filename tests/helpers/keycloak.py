"""A real embedded platform logging in against the test realm (tests.fixtures.oidc)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.platform import Platform, free_port_pair
from twinhub.auth.local_accounts import create_account
from twinhub.db import upgrade
from twinhub.process.runtime import Runtime


@contextmanager
def keycloak_platform(
    base: Path, config: str, realm_factory: Callable, post_logout: bool = False, **realm_options
) -> Iterator[Platform]:
    """A personal platform in Keycloak mode, with ``config`` as its twinhub_config.py.

    Before the switch to Keycloak the state dir already had a local account ``bob`` (the
    name of a realm user): the tests show it is never taken over. ``p.realm`` is the realm,
    ``p.rt`` the platform's runtime. ``realm_options`` go to the realm factory.
    """
    (port,) = free_port_pair(1)
    hub = f"http://127.0.0.1:{port}/"
    if post_logout:  # the hub's own page is where Keycloak's logout may send the browser
        realm_options["post_logout_uris"] = [hub + "hub/"]
    realm = realm_factory(redirect_uris=[hub + "hub/oauth_callback"], **realm_options)
    state = base / "state"
    state.mkdir()
    (state / "twinhub_config.py").write_text(config)
    db_url = f"sqlite:///{state / 'twinhub.sqlite'}"
    upgrade(db_url)
    create_account(db_url, "bob", password="bob-local-password")
    p = Platform.start(
        state,
        mode="personal",
        port=port,
        extra=[
            "--keycloak-url",
            realm.url,
            "--keycloak-client-id",
            realm.client_id,
            "--keycloak-client-secret",
            realm.client_secret,
        ],  # fmt: skip
    )
    p.realm = realm  # type: ignore[attr-defined]
    p.rt = Runtime.load(state)  # type: ignore[attr-defined]
    try:
        yield p
    finally:
        p.stop()
