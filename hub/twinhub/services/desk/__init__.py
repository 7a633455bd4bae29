"""The service desk: support tickets between users and the platform's support staff.

- :class:`TwinhubDesk` (``c.TwinhubDesk.*``): who the staff are, attachment, message and
  per-user caps, where notification mails go (an SMTP server, or the embedded default: a
  Maildir under the state directory);
- the ``desk`` component (:mod:`.app`, uvicorn), a hub service at ``/services/desk/``: the
  REST API (``api/v1/tickets...``), the page for users and staff, ``metrics`` and ``health``;
- in the hub's configuration (:meth:`DeskPart.configure_service`): the hub's support link
  (``TwinhubFace.support_url``, the help pages, the nav bar) points at the desk, unless an
  operator set that link themselves.

See docs/desk.md.
"""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Integer, TraitError, Unicode, validate
from traitlets.config import Configurable

from ...plugin import Say
from ...process.runtime import Runtime
from ..base import AsgiService

SERVICE_NAME = "desk"
SERVICE_PREFIX = f"/services/{SERVICE_NAME}/"
#: The Maildir notification mails go to without an SMTP server (under the state directory).
MAILDIR = "mail"


class TwinhubDesk(Configurable):
    """The service desk at /services/desk/: tickets, staff answers, mail notifications."""

    enabled = Bool(
        None,
        allow_none=True,
        help="Run the service desk at /services/desk/. None: on in multi-user mode and on "
        "Kubernetes, off in personal mode.",
    ).tag(config=True)

    support_group = Unicode(
        "support",
        help="Hub group whose members are support staff: they see every ticket, answer and "
        "close them, and get new-ticket notices (unless staff_address is set).",
    ).tag(config=True)

    max_attachment_bytes = Integer(
        5 * 1024 * 1024,
        help="Largest attachment accepted, in bytes (larger: 413). Attachments are kept in "
        "twinhub's database.",
    ).tag(config=True)

    max_attachments = Integer(
        10,
        help="Attachments one ticket may hold (more: 409).",
    ).tag(config=True)

    max_body_chars = Integer(
        20_000,
        help="Characters a ticket's body or one message may have (more: 400).",
    ).tag(config=True)

    max_open_tickets = Integer(
        20,
        help="Tickets one user may have open or answered at once (more, or reopening one "
        "beyond it: 429 naming the limit). Support staff are exempt.",
    ).tag(config=True)

    max_tickets_per_hour = Integer(
        10,
        help="Tickets one user may open within an hour (more: 429 naming the limit, with "
        "Retry-After). Each new ticket mails the staff: this bounds those mails too. Support "
        "staff are exempt.",
    ).tag(config=True)

    max_user_attachment_bytes = Integer(
        50 * 1024 * 1024,
        help="Bytes of attachments one user may store in all, over every ticket (more: 413 "
        "naming the limit). They live in twinhub's database, beside the hub's own state. "
        "Support staff are exempt.",
    ).tag(config=True)

    max_messages = Integer(
        500,
        help="Messages one ticket may hold, staff's included (more: 429 naming the limit; "
        "open a new ticket). Messages live in twinhub's database.",
    ).tag(config=True)

    max_messages_per_hour = Integer(
        120,
        help="Messages one user may write within an hour, over all their tickets (more: 429 "
        "naming the limit, with Retry-After). Support staff are exempt.",
    ).tag(config=True)

    max_pending_mails = Integer(
        1000,
        help="Notification mails waiting for delivery at once; beyond it a new notice is "
        'dropped (logged, counted as twinhub_desk_mails_total{outcome="dropped"}) rather '
        "than held in memory while the mail server is slow or down.",
    ).tag(config=True)

    @validate(
        "max_attachment_bytes",
        "max_attachments",
        "max_body_chars",
        "max_open_tickets",
        "max_tickets_per_hour",
        "max_user_attachment_bytes",
        "max_messages",
        "max_messages_per_hour",
        "max_pending_mails",
    )
    def _positive(self, proposal):  # type: ignore[no-untyped-def]
        value = int(proposal["value"])
        if value < 1:
            raise TraitError(
                f"TwinhubDesk.{proposal['trait'].name} must be at least 1, not {value}"
            )
        return value

    smtp_host = Unicode(
        "",
        help="SMTP server notification mails are sent through. Empty: the embedded default, "
        "which writes each mail into the Maildir <state>/mail/ (read it with any mail "
        "client, or `ls <state>/mail/new`).",
    ).tag(config=True)

    smtp_port = Integer(
        587,
        help="Port of smtp_host (587: submission with STARTTLS; 465: TLS from the start; 25).",
    ).tag(config=True)

    smtp_starttls = Bool(
        True,
        help="Upgrade the SMTP connection with STARTTLS (the server's certificate is checked). "
        "Ignored on port 465, which speaks TLS from the start.",
    ).tag(config=True)

    smtp_username = Unicode(
        "",
        help="User to log in to smtp_host as; empty: no login.",
    ).tag(config=True)

    smtp_password_file = Unicode(
        "",
        help="File holding the SMTP password (its first line), readable by the platform only "
        "(0600). A path rather than the password: secrets never go into configuration "
        "values (Kubernetes: a Secret mounted as a file).",
    ).tag(config=True)

    mail_from = Unicode(
        "",
        help="The From address of notification mails. Empty: twinhub-desk@<smtp_host or "
        "localhost>.",
    ).tag(config=True)

    staff_address = Unicode(
        "",
        help="Where new-ticket notices go (a team mailbox). Empty: to every member of "
        "support_group, at user_address_template.",
    ).tag(config=True)

    user_address_template = Unicode(
        "{user}@localhost",
        help="How a user's mail address is made when a ticket gives none: {user} is the hub "
        "user name.",
    ).tag(config=True)

    @validate("user_address_template")
    def _template(self, proposal):  # type: ignore[no-untyped-def]
        value = str(proposal["value"])
        if "{user}" not in value:
            raise TraitError(
                f"TwinhubDesk.user_address_template must contain {{user}}, not {value!r}"
            )
        return value


def is_enabled(rt: Runtime) -> bool:
    """On when configured so; by default in multi-user mode and on Kubernetes."""
    enabled = TwinhubDesk(config=rt.config).enabled
    if enabled is None:
        return rt.mode != "personal" or rt.kubernetes
    return bool(enabled)


def desk_path(rt: Runtime) -> str:
    """The desk's path on the platform's origin (``<base_url>services/desk/``)."""
    base = str(rt.config.get("JupyterHub", {}).get("base_url", "/") or "/")
    return "/" + base.strip("/") + ("/" if base.strip("/") else "") + SERVICE_PREFIX.lstrip("/")


class DeskPart(AsgiService):
    """Support tickets at /services/desk/, and the hub's support link pointing there."""

    name = SERVICE_NAME
    settings = (TwinhubDesk,)
    factory = "twinhub.services.desk.app:create_app"
    listed = True
    # Who is in the support group, and users' groups (projects a ticket may name).
    scopes = ("read:users", "read:groups")

    def enabled(self, rt: Runtime) -> bool:
        return is_enabled(rt)

    def prepare_service(self, rt: Runtime, say: Say) -> None:
        """The embedded mail drop: a Maildir only the platform reads (mails name users)."""
        if not TwinhubDesk(config=rt.config).smtp_host:
            d = rt.path(MAILDIR)
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            d.chmod(0o700)

    def configure_service(self, c: Any, rt: Runtime) -> None:
        """Point the hub's support link at the desk, unless an operator chose another one."""
        if "support_url" in rt.config.get("TwinhubFace", {}):
            return
        url = desk_path(rt)
        c.TwinhubFace.support_url = url
        variables = dict(c.JupyterHub.template_vars) if "template_vars" in c.JupyterHub else {}
        variables["support_url"] = url
        c.JupyterHub.template_vars = variables


__all__ = [
    "MAILDIR",
    "SERVICE_NAME",
    "SERVICE_PREFIX",
    "DeskPart",
    "TwinhubDesk",
    "desk_path",
    "is_enabled",
]
