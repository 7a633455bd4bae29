"""The desk's notification mails: composed here, delivered off the event loop.

Delivery goes to ``TwinhubDesk.smtp_host`` (STARTTLS, TLS on port 465, optional login with
the password read from ``smtp_password_file``) or, without one, into the Maildir
``<state>/mail/`` (the embedded default: nothing leaves the machine). A mail that cannot be
delivered is logged and counted (``twinhub_desk_mails{outcome="failed"}``) and never fails
the request that caused it: the ticket is stored either way, and the desk's page shows it.
At most ``TwinhubDesk.max_pending_mails`` wait at once; past that a notice is dropped and
counted (``outcome="dropped"``): a slow or dead mail server must not grow the desk's memory.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from . import TwinhubDesk
from .metrics import MAILS

log = logging.getLogger("twinhub.desk.mail")

#: Seconds one SMTP conversation may take.
SMTP_TIMEOUT = 30.0
#: Characters of a message quoted in its notice (the rest is on the desk's page).
QUOTE_CHARS = 4000
#: Deliveries in flight at once; more wait (a burst of tickets must not open 100 sessions).
MAX_PARALLEL = 4


class Mailer:
    """Compose and deliver notifications per the desk's settings."""

    def __init__(self, settings: TwinhubDesk, maildir: Path) -> None:
        self.settings = settings
        self.maildir = maildir
        host = settings.smtp_host or "localhost"
        self.sender = settings.mail_from or f"twinhub-desk@{host}"
        self._tasks: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(MAX_PARALLEL)

    # -- addresses -------------------------------------------------------------------------
    def address_of(self, user: str, email: str = "") -> str:
        """The ticket's own address, else the user's per ``user_address_template``."""
        return email or self.settings.user_address_template.format(user=user)

    # -- composing -------------------------------------------------------------------------
    def compose(self, to: list[str], subject: str, text: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(to)
        # A subject is one line (the store refuses others); collapse anything left anyway.
        msg["Subject"] = " ".join(subject.split())[:250]
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or "localhost")
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies, please
        msg.set_content(text)
        return msg

    # -- delivering ------------------------------------------------------------------------
    def deliver(self, msg: EmailMessage) -> None:
        """Deliver one mail now (blocking: call it in a thread); raises on failure."""
        s = self.settings
        if not s.smtp_host:
            # Maildir(create=True) makes the three folders only when the top one is missing,
            # and `twinhub up` makes that one (0700) ahead: make what lacks here.
            for sub in ("tmp", "new", "cur"):
                (self.maildir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
            box = mailbox.Maildir(str(self.maildir), create=False)
            try:
                box.add(msg)
            finally:
                box.close()
            return
        password = _password(s.smtp_password_file) if s.smtp_username else ""
        if s.smtp_port == 465:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                s.smtp_host, s.smtp_port, timeout=SMTP_TIMEOUT, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=SMTP_TIMEOUT)
        with smtp:
            if s.smtp_starttls and s.smtp_port != 465:
                smtp.starttls(context=ssl.create_default_context())
            if s.smtp_username:
                smtp.login(s.smtp_username, password)
            smtp.send_message(msg)

    async def _send(self, msg: EmailMessage) -> None:
        async with self._slots:
            try:
                await asyncio.to_thread(self.deliver, msg)
            except Exception as e:  # an SMTP server down, a full disk: the request stands
                MAILS.labels("failed").inc()
                log.error("cannot deliver the mail %r to %s: %s", msg["Subject"], msg["To"], e)
                return
        MAILS.labels("sent").inc()

    def send_later(self, to: list[str], subject: str, text: str) -> None:
        """Deliver in the background (never blocks, never raises): the caller answers now.
        With ``max_pending_mails`` already waiting the mail is dropped (logged, counted)."""
        to = sorted({a for a in to if a})
        if not to:
            return
        if len(self._tasks) >= self.settings.max_pending_mails:
            MAILS.labels("dropped").inc()
            log.warning(
                "dropped the mail %r to %s: %d mails already wait for delivery "
                "(TwinhubDesk.max_pending_mails)",
                subject,
                to,
                len(self._tasks),
            )
            return
        try:
            msg = self.compose(to, subject, text)
        except (ValueError, TypeError) as e:  # an address the email package refuses
            MAILS.labels("failed").inc()
            log.error("cannot compose the mail %r to %s: %s", subject, to, e)
            return
        task = asyncio.get_running_loop().create_task(self._send(msg))
        self._tasks.add(task)  # kept: a task nobody references may be collected mid-way
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait (bounded) for deliveries under way: the app's shutdown, and tests."""
        pending = list(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=timeout)


def _password(path: str) -> str:
    if not path:
        raise OSError("TwinhubDesk.smtp_username is set but smtp_password_file is not")
    return Path(path).read_text().splitlines()[0].strip() if Path(path).stat().st_size else ""


def notices(
    mailer: Mailer, ticket: dict[str, Any], *, desk_url: str, text: str = ""
) -> dict[str, tuple[str, str]]:
    """Subject and text of each notice about ``ticket`` (by kind), with its link; ``text``:
    the message the notice is about (quoted in the mail, shortened)."""
    tid, subj = ticket["id"], ticket["subject"]
    link = f"{desk_url}?ticket={tid}"
    quoted = ""
    if text:
        short = text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + " [...]"
        quoted = "\n" + "\n".join("> " + line for line in short.splitlines()) + "\n"
    return {
        "new": (
            f"[desk #{tid}] New ticket: {subj}",
            f"{ticket['owner']} opened ticket #{tid}: {subj}\n{quoted}\nAnswer it at {link}\n",
        ),
        "reply": (
            f"[desk #{tid}] Owner replied: {subj}",
            f"{ticket['owner']} wrote again to ticket #{tid} ({subj}) after its answer: it "
            f"is open again.\n{quoted}\nAnswer it at {link}\n",
        ),
        "answer": (
            f"[desk #{tid}] Answered: {subj}",
            f"Support staff answered your ticket #{tid}: {subj}\n{quoted}\n"
            f"Read it and reply at {link}\n",
        ),
        "state": (
            f"[desk #{tid}] Now {ticket['state']}: {subj}",
            f"Your ticket #{tid} ({subj}) is now {ticket['state']}.\n\nSee it at {link}\n",
        ),
    }
