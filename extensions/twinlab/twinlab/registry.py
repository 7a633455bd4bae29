"""twinlab.services(): the registry's services this server's user may use.

Asked from the platform's registry service (``registry`` in ``$TWINHUB_SERVICES``,
``api/v1/entries``) with this server's token, so the registry answers for the server's user:
public entries, those for every logged-in user, and those of the user's projects. Shared by
``twinlab.services()`` in a notebook and the info endpoint's ``registry`` key
(:mod:`twinlab.serverext.registry_info`). Standard library only: the server extension
imports it at every start.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Final

from twinlab import environment
from twinlab.contract import ENV_SERVICES

__all__ = ["ENTRIES_PATH", "SERVICE", "RegistryError", "Service", "list_entries", "services"]

#: The registry's name in ``$TWINHUB_SERVICES``.
SERVICE: Final = "registry"
#: The published entries under the registry's root.
ENTRIES_PATH: Final = "api/v1/entries"
#: The most a registry answer may weigh (a list of entries, not data).
MAX_BYTES: Final = 8 * 1024 * 1024


class RegistryError(RuntimeError):
    """The services could not be listed; the message says why (``status``: the HTTP
    status of a refusal, 0 when the registry was not reached)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Service:
    """One registry entry the user may use.

    ``url``: where the platform serves it (``/services/<slug>/`` for a web application
    or an API behind the platform's single sign-on), None for kinds it does not serve;
    ``status``: the last health check's ("up", "down"; "unknown" before the first), None
    when the registry gives none.
    """

    slug: str
    name: str
    kind: str
    url: str | None
    status: str | None
    thematic_areas: tuple[str, ...] = field(default=())
    description: str = ""
    visibility: str = "public"

    @classmethod
    def from_entry(cls, doc: dict[str, Any]) -> Service:
        """A service from one item of the registry's ``entries`` answer."""
        if not isinstance(doc, dict) or not isinstance(doc.get("slug"), str):
            raise RegistryError(f"the registry answered an entry without a slug: {doc!r:.200}")
        areas = doc.get("thematic_areas") or ()
        url, status = doc.get("url"), doc.get("status")
        return cls(
            slug=doc["slug"],
            name=str(doc.get("name") or doc["slug"]),
            kind=str(doc.get("kind") or ""),
            url=str(url) if url else None,
            status=str(status) if status else None,
            thematic_areas=tuple(str(a) for a in areas) if isinstance(areas, list) else (),
            description=str(doc.get("description") or ""),
            visibility=str(doc.get("visibility") or "public"),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the info endpoint's form): areas as a list."""
        return {
            "slug": self.slug,
            "name": self.name,
            "kind": self.kind,
            "url": self.url,
            "status": self.status,
            "thematic_areas": list(self.thematic_areas),
            "description": self.description,
            "visibility": self.visibility,
        }


def registry_url() -> str:
    """The registry's root as the hub set it ("" when no registry runs)."""
    url = environment.services().get(SERVICE, "")
    return url.rstrip("/") + "/" if url else ""


def _refusal(body: bytes) -> str:
    """The registry's own message of an error answer (``description``), else its first bytes."""
    text = body.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for key in ("description", "message", "detail"):
            if isinstance(doc.get(key), str) and doc[key]:
                return str(doc[key])
    return text.strip()[:300] or "no reason given"


def _get(url: str, token: str, timeout: float) -> tuple[int, bytes]:
    """GET ``url`` within ``timeout`` seconds in all (connect, headers and body: a registry
    that answers slowly, byte by byte, cannot hold a caller past it); (status, body)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError(f"the registry's URL {url!r} is not an http(s) URL")
    deadline = time.monotonic() + timeout

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete answer within {timeout:g} s")
        return remaining

    conn_cls = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = conn_cls(parts.hostname, parts.port, timeout=left())
    try:
        path = parts.path + ("?" + parts.query if parts.query else "")
        conn.request(
            "GET", path, headers={"Authorization": f"token {token}", "Accept": "application/json"}
        )
        if conn.sock is not None:
            conn.sock.settimeout(left())
        resp = conn.getresponse()
        chunks: list[bytes] = []
        size = 0
        while True:
            if conn.sock is not None:
                # each read may wait only for what is left of the whole deadline
                conn.sock.settimeout(left())
            chunk = resp.read1(64 * 1024)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_BYTES:
                raise RegistryError(f"the registry's answer is over {MAX_BYTES} bytes")
            chunks.append(chunk)
            left()
        return resp.status, b"".join(chunks)
    finally:
        conn.close()


def list_entries(*, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The registry's ``entries`` answer for this server's user (JSON objects).

    Raises :class:`RegistryError`: no registry, not reachable in ``timeout`` seconds, a
    refusal (its status and the registry's message) or an answer that is not the list.
    """
    base = registry_url()
    if not base:
        raise RegistryError(
            f"no registry service: ${ENV_SERVICES} lists none (the registry is off on this "
            "platform, or this is not a twinhub server)"
        )
    try:
        status, body = _get(base + ENTRIES_PATH, environment.hub_token(), timeout)
    except (OSError, http.client.HTTPException) as e:
        # TimeoutError and socket.timeout are OSErrors: one message for "not reached"
        reason = "timed out" if isinstance(e, socket.timeout) else str(e) or type(e).__name__
        raise RegistryError(f"the registry is not reachable at {base}: {reason}") from None
    if status != 200:
        raise RegistryError(f"the registry refused ({status}): {_refusal(body)}", status)
    try:
        doc = json.loads(body)
    except ValueError:
        raise RegistryError(f"the registry answered no JSON: {body[:200]!r}") from None
    entries = doc.get("entries") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise RegistryError("the registry's answer has no 'entries' list")
    return entries


def services(*, timeout: float = 10.0) -> list[Service]:
    """The services you may use, as the platform's registry lists them for you.

    Public entries, those open to every logged-in user and those of your projects, each a
    :class:`Service` (``slug``, ``name``, ``kind``, ``url``, ``status``,
    ``thematic_areas``, ``description``, ``visibility``). Raises :class:`RegistryError`
    with the reason when the registry cannot be asked (none runs, not reachable within
    ``timeout`` seconds, or it refused).
    """
    return [Service.from_entry(doc) for doc in list_entries(timeout=timeout)]
