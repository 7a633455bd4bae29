"""OpenID Connect identities bound to platform user names (``oidc_identities``).

A hub account belongs to the person Keycloak calls ``sub`` (stable, never re-used), not to
the ``preferred_username`` (which can be renamed, or given to someone else later).  The first
login binds (issuer, sub) to a user name; later logins of that identity get the same account
whatever their username is then, and nobody else can get it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..db.models import LocalAccount, OidcIdentity, OsAccount, utcnow
from ..db.schema import session


class IdentityConflict(ValueError):
    """The login would take over an account of someone else; the message says why (shown)."""


@dataclass(frozen=True)
class Resolution:
    username: str  # the platform user name to log in as
    bound: bool  # already bound (False: bind it after the login is allowed)


def bound_username(db_url: str, issuer: str, subject: str) -> str | None:
    with session(db_url) as s:
        row = s.get(OidcIdentity, (issuer, subject))
        return row.username if row else None


def resolve(
    db_url: str,
    issuer: str,
    subject: str,
    username: str,
    *,
    hub_user_exists: bool = False,
    adopt_existing: bool = False,
) -> Resolution:
    """The user name identity (issuer, subject) logs in as; IdentityConflict if none may be."""
    with session(db_url) as s:
        row = s.get(OidcIdentity, (issuer, subject))
        if row is not None:
            return Resolution(row.username, True)
        owner = s.scalar(select(OidcIdentity).where(OidcIdentity.username == username))
        if owner is not None:
            raise IdentityConflict(
                f"The user name {username!r} on this platform belongs to another identity "
                "(a renamed or re-used Keycloak account). Ask an administrator to resolve it."
            )
        local = s.scalar(select(LocalAccount).where(LocalAccount.username == username))
        os_acct = s.get(OsAccount, username)
        if (local is not None or os_acct is not None or hub_user_exists) and not adopt_existing:
            raise IdentityConflict(
                f"An account named {username!r} already exists on this platform from before "
                "Keycloak login was enabled, and it may belong to someone else. An administrator "
                "can allow the takeover with TwinhubKeycloak.adopt_existing_users = True."
            )
        return Resolution(username, False)


def bind(db_url: str, issuer: str, subject: str, username: str, provider_username: str) -> None:
    """Record (or touch) the binding; IdentityConflict when the name was bound meanwhile."""
    try:
        with session(db_url) as s:
            row = s.get(OidcIdentity, (issuer, subject))
            if row is None:
                s.add(
                    OidcIdentity(
                        issuer=issuer,
                        subject=subject,
                        username=username,
                        provider_username=provider_username,
                    )
                )
            else:
                row.provider_username = provider_username
                row.last_login_at = utcnow()
    except IntegrityError as e:
        raise IdentityConflict(
            f"The user name {username!r} was just bound to another identity."
        ) from e
