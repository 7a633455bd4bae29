"""Notification mails: the embedded Maildir, a real SMTP conversation (with a fake SMTP
server: no mail server runs here), and failures that are counted and never raised."""

from __future__ import annotations

import asyncio
import base64
import mailbox
import socket
import threading
from email import message_from_bytes

import pytest
from traitlets import TraitError
from traitlets.config import Config

from twinhub.services.desk import TwinhubDesk
from twinhub.services.desk.mail import Mailer
from twinhub.services.desk.metrics import MAILS


def settings(**kw) -> TwinhubDesk:
    return TwinhubDesk(config=Config({"TwinhubDesk": kw}))


def count(outcome: str) -> float:
    return MAILS.labels(outcome)._value.get()


class FakeSmtpServer:
    """A fake SMTP server (the edge: no mail server runs in unit tests): speaks just enough
    SMTP for smtplib (EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT) and keeps what it got."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.received: list[dict] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        f = conn.makefile("rwb")

        def say(line: str) -> None:
            f.write(line.encode() + b"\r\n")
            f.flush()

        got: dict = {"rcpt": [], "auth": None}
        say("220 fake ESMTP")
        while True:
            line = f.readline().decode().strip()
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                say("250-fake")
                say("250 AUTH PLAIN")
            elif verb == "AUTH":
                got["auth"] = line.split(" ", 2)[2]
                say("235 ok")
            elif verb == "MAIL":
                got["from"] = line
                say("250 ok")
            elif verb == "RCPT":
                got["rcpt"].append(line)
                say("250 ok")
            elif verb == "DATA":
                say("354 go")
                data = b""
                while (chunk := f.readline()) != b".\r\n":
                    data += chunk
                got["data"] = data
                self.received.append(got)
                say("250 queued")
            elif verb in ("QUIT", ""):
                say("221 bye")
                conn.close()
                return
            else:
                say("502 no")


def test_maildir_delivery(tmp_path):
    (tmp_path / "mail").mkdir(mode=0o700)  # as `twinhub up` leaves it: no sub-folders yet
    m = Mailer(settings(), tmp_path / "mail")
    m.deliver(m.compose(["alice@localhost"], "[desk #1] Answered: hi", "Read it at http://x/"))
    box = mailbox.Maildir(str(tmp_path / "mail"), create=False)
    (msg,) = list(box)
    assert msg["To"] == "alice@localhost" and msg["Subject"] == "[desk #1] Answered: hi"
    assert msg["From"] == "twinhub-desk@localhost" and msg["Auto-Submitted"] == "auto-generated"
    assert "http://x/" in msg.get_payload()
    assert len(list((tmp_path / "mail" / "new").iterdir())) == 1


def test_address_template():
    m = Mailer(settings(user_address_template="{user}@example.org"), None)
    assert m.address_of("bob") == "bob@example.org"
    assert m.address_of("bob", "b@elsewhere.org") == "b@elsewhere.org"


def test_smtp_delivery_with_login(tmp_path):
    server = FakeSmtpServer()
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    m = Mailer(
        settings(
            smtp_host="127.0.0.1",
            smtp_port=server.port,
            smtp_starttls=False,
            smtp_username="desk",
            smtp_password_file=str(pw),
            mail_from="help@example.org",
        ),  # fmt: skip
        tmp_path / "mail",
    )
    m.deliver(m.compose(["a@example.org", "b@example.org"], "New ticket", "body text"))
    (got,) = server.received
    assert [r.upper() for r in got["rcpt"]] == [
        "RCPT TO:<A@EXAMPLE.ORG>",
        "RCPT TO:<B@EXAMPLE.ORG>",
    ]
    assert "help@example.org" in got["from"]
    assert message_from_bytes(got["data"])["Subject"] == "New ticket"
    assert base64.b64decode(got["auth"]) == b"\0desk\0s3cret"
    assert not (tmp_path / "mail").exists()  # SMTP: nothing in the Maildir


def test_failures_are_counted_never_raised(tmp_path):
    # A port nobody listens on: the SMTP connection is refused.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    m = Mailer(settings(smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=False), tmp_path)
    failed, sent = count("failed"), count("sent")

    async def go() -> None:
        m.send_later(["a@example.org"], "s", "t")  # returns at once
        m.send_later([], "nobody", "t")  # no recipient: nothing to do
        await m.drain()

    asyncio.run(go())
    assert count("failed") == failed + 1 and count("sent") == sent


def test_send_later_delivers_in_the_background(tmp_path):
    m = Mailer(settings(), tmp_path / "mail")
    sent = count("sent")

    async def go() -> None:
        m.send_later(["x@localhost", "x@localhost", "y@localhost"], "Subject\nInjected: 1", "t")
        await m.drain()

    asyncio.run(go())
    assert count("sent") == sent + 1
    (msg,) = list(mailbox.Maildir(str(tmp_path / "mail"), create=False))
    assert msg["To"] == "x@localhost, y@localhost"
    assert msg["Subject"] == "Subject Injected: 1" and msg["Injected"] is None


@pytest.mark.parametrize("bad", ["{usr}@x", "fixed@x"])
def test_address_template_needs_user(bad):
    with pytest.raises(TraitError, match="user_address_template"):
        settings(user_address_template=bad)


def test_pending_mails_are_bounded_excess_dropped_and_counted(tmp_path):
    """A mail server that hangs must not let notices pile up in memory: past
    max_pending_mails a notice is dropped and counted; those already waiting still go."""
    m = Mailer(settings(max_pending_mails=2), tmp_path / "mail")
    release = threading.Event()
    delivered: list[str] = []

    def hanging_deliver(msg) -> None:  # a mail server that answers only when released
        release.wait(10)
        delivered.append(msg["Subject"])

    m.deliver = hanging_deliver
    sent, dropped = count("sent"), count("dropped")

    async def go() -> None:
        for i in range(4):
            m.send_later(["a@localhost"], f"notice {i}", "t")
        assert len(m._tasks) == 2
        release.set()
        await m.drain()
        m.send_later(["a@localhost"], "after the queue drained", "t")  # room again
        await m.drain()

    asyncio.run(go())
    assert sorted(delivered) == ["after the queue drained", "notice 0", "notice 1"]
    assert count("dropped") == dropped + 2 and count("sent") == sent + 3


def test_caps_must_be_positive():
    for name in ("max_open_tickets", "max_tickets_per_hour", "max_user_attachment_bytes",
                 "max_pending_mails"):  # fmt: skip
        with pytest.raises(TraitError, match=name):
            settings(**{name: 0})
    s = settings()
    assert (s.max_open_tickets, s.max_tickets_per_hour) == (20, 10)
    assert (s.max_user_attachment_bytes, s.max_pending_mails) == (50 * 1024 * 1024, 1000)
