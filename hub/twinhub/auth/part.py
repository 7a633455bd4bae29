"""The auth part: which authenticator the hub runs, and the first admin account.

Local accounts (:class:`~twinhub.auth.authenticator.TwinhubLocalAuth` on twinhub's own
database, with signup, approval and password pages) by default; a Keycloak realm when
``TwinhubKeycloak.url`` is set (:mod:`twinhub.auth.realm`). See docs/accounts.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import Twinhub
from ..errors import PlatformError
from ..plugin import Part, Say
from . import realm
from .authenticator import TwinhubLocalAuth
from .local_accounts import DEFAULT_MIN_PASSWORD_LENGTH, AccountError
from .local_accounts import ensure_first_admin as _ensure_local_admin

TEMPLATES_DIR = Path(__file__).with_name("templates")

#: Kubernetes: the key of the chart's Secret (twinhub-secrets) holding the first admin's
#: password, mounted in the hub pod's secrets directory.
FIRST_ADMIN_SECRET = "admin-password"


def ensure_first_admin(rt) -> str | None:
    """The first local admin's generated password, once; never in Keycloak mode, where
    accounts (and who is admin, TwinhubKeycloak.admin_groups) are managed in Keycloak."""
    if realm.enabled(rt.config):
        return None
    return _ensure_local_admin(rt)


def ensure_first_admin_from_secret(rt) -> bool:
    """Kubernetes: create ``Twinhub.admin_user`` with the password of the mounted secret
    :data:`FIRST_ADMIN_SECRET` unless the account exists; True when it was created. Only
    read when needed, so a hub whose admin exists starts without the key. A password the
    policy refuses (an operator's ``existingSecret``) is a PlatformError naming the key."""
    # Read from the config, not an instance: TwinhubLocalAuth() would touch its db_url.
    own = rt.config.get("TwinhubLocalAuth", {})
    min_length = int(own.get("min_password_length", DEFAULT_MIN_PASSWORD_LENGTH))
    try:
        made = _ensure_local_admin(rt, lambda: rt.secret(FIRST_ADMIN_SECRET), min_length=min_length)
    except AccountError as e:
        raise PlatformError(f"key {FIRST_ADMIN_SECRET!r} of twinhub-secrets: {e}") from None
    return made is not None


def first_admin_notice(admin: str) -> str:
    """The hub pod's log line: where the password is, never the password (pods/log is
    readable by more people than Secrets are, and log shippers keep lines)."""
    ns = os.environ.get("POD_NAMESPACE") or "<namespace>"  # z2jh sets it in the hub pod
    return (
        f"twinhub: first admin account: {admin}; its password is key {FIRST_ADMIN_SECRET!r} of "
        f"the Secret twinhub-secrets (or twinhub.existingSecret): kubectl -n {ns} get secret "
        f"twinhub-secrets -o jsonpath='{{.data.{FIRST_ADMIN_SECRET}}}' | base64 -d"
    )


class AuthPart(Part):
    """Login: local accounts, or a Keycloak realm (``TwinhubKeycloak.url``)."""

    name = "auth"
    settings = (TwinhubLocalAuth, realm.TwinhubKeycloak)

    def __init__(self) -> None:
        self.first_password: str | None = None

    def plan(self, rt) -> None:
        # Before runtime.json is written: the client secret leaves the configuration.
        realm.prepare(rt)

    def prepare(self, rt, say: Say) -> None:
        self.first_password = ensure_first_admin(rt)

    def after_up(self, rt, say: Say) -> None:
        if self.first_password:
            admin = Twinhub(config=rt.config).admin_user
            say(f"  first admin account: {admin}  password: {self.first_password}")
            say("  (shown once; change it after logging in)")

    def configure_hub(self, c: Any, rt) -> None:
        """Use TwinhubLocalAuth on ``rt.db_url``, make ``Twinhub.admin_user`` an admin and add
        the signup / approval / password pages and their templates; or, when
        ``TwinhubKeycloak.url`` is set, log in through Keycloak (twinhub.auth.realm)."""
        if realm.enabled(rt.config):
            realm.configure_hub(c, rt)
            return

        tw = Twinhub(config=rt.config)
        if rt.kubernetes and ensure_first_admin_from_secret(rt):
            print(first_admin_notice(tw.admin_user), flush=True)
        c.JupyterHub.authenticator_class = TwinhubLocalAuth
        own = rt.config.get("TwinhubLocalAuth", {})
        # Options an operator set in twinhub_config.py win over what we derive here.
        for key, value in (("db_url", rt.db_url), ("user_prefix", tw.user_prefix)):
            if key not in own:
                setattr(c.TwinhubLocalAuth, key, value)
        if own:
            c.TwinhubLocalAuth.merge(own)
        admins = set(c.Authenticator.admin_users) if "admin_users" in c.Authenticator else set()
        c.Authenticator.admin_users = admins | {tw.admin_user}
        paths = list(c.JupyterHub.template_paths) if "template_paths" in c.JupyterHub else []
        if str(TEMPLATES_DIR) not in paths:
            # First, so our login.html (which extends JupyterHub's own) is the one found.
            paths.insert(0, str(TEMPLATES_DIR))
        c.JupyterHub.template_paths = paths
        # The hub's navigation links the Accounts page (approval, set-password links) for admins.
        variables = dict(c.JupyterHub.template_vars) if "template_vars" in c.JupyterHub else {}
        variables["accounts_page"] = True
        c.JupyterHub.template_vars = variables
