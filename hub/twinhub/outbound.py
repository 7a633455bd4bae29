"""Fetching URLs that someone else chose, without letting them aim the platform at itself.

Providers hand the registry URLs (endpoints, OpenAPI documents, upstreams); fetching them
naively lets anyone make the platform's processes read the hub's API, the cloud metadata
service (``169.254.169.254``), databases on the cluster network, or files. This module is
the one place such fetches go through:

- :func:`check_url`: syntax only (no I/O) — http/https, a host, no userinfo, a sane port;
- :func:`fetch`: one bounded GET (or other method) of such a URL: every address its host
  resolves to must be public (unless ``allow_private``), the connection goes to the address
  that was checked (a second DNS answer cannot swap in a private one), redirects stay on
  the same scheme, host and port (each re-checked), one deadline covers the whole fetch and
  the body is capped;
- :func:`guarded_transport`: the same address check for a long-lived ``httpx`` client;
- :func:`resolve_checked`: one checked address, for clients that connect themselves
  (websockets).

Refusals raise :class:`OutboundRefused` with a ``reason``; messages name the URL's
``scheme://host[:port]`` only (paths and queries may carry tokens). This module is
platform-wide: it counts nothing and imports nothing from the services (callers count).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import time
import typing
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx
from httpcore._backends.anyio import AnyIOStream

#: The reasons a fetch is refused (``OutboundRefused.reason``).
REASONS = ("scheme", "address", "redirect", "size", "time", "dns", "connect")
SCHEMES = ("http", "https")
MAX_URL = 2048
_REDIRECTS = (301, 302, 303, 307, 308)
# Whitespace, controls, DEL and backslash (parsers disagree on "\" in authorities).
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f\\]")

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_ULA = ipaddress.ip_network("fc00::/7")
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


class OutboundRefused(Exception):
    """A fetch the guard would not make (or could not finish): ``reason`` is one of
    :data:`REASONS`; the message names the URL's origin and why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class OutboundResponse:
    url: str  # the URL finally fetched (after same-origin redirects)
    status: int
    headers: httpx.Headers
    body: bytes
    elapsed_s: float


# -- addresses -------------------------------------------------------------------------------
def address_refusal(address: str) -> str | None:
    """Why ``address`` (an IP literal) is not a public one, or None when it is.

    ``is_global`` is the core test; the explicit checks name the common cases and close the
    gaps Python's tables leave (multicast and site-local pass ``is_global``; IPv4-mapped,
    NAT64 and 6to4 forms carry an IPv4 address that must be judged itself)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("%eth0")
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            why = address_refusal(str(ip.ipv4_mapped))
            return f"{ip} maps {why}" if why else None
        if ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            why = address_refusal(str(inner))
            return f"{ip} is NAT64 for {why}" if why else None
        if ip in _NAT64_LOCAL:
            return f"{ip} is a local-use NAT64 address"
        if ip.sixtofour is not None:
            why = address_refusal(str(ip.sixtofour))
            if why:
                return f"{ip} is 6to4 for {why}"
        if ip in _ULA:
            return f"{ip} is a unique local address (fc00::/7)"
        if ip.is_site_local:
            return f"{ip} is a site-local address"
        if ip.teredo is not None:
            return f"{ip} is a Teredo tunnel address"
    else:
        if ip in _THIS_NETWORK:
            return f"{ip} is in 0.0.0.0/8 ('this network')"
        if ip in _CGNAT:
            return f"{ip} is carrier-grade NAT space (100.64.0.0/10)"
        if ip == ipaddress.IPv4Address("255.255.255.255"):
            return f"{ip} is the broadcast address"
    if ip.is_unspecified:
        return f"{ip} is the unspecified address"
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address (cloud metadata lives there)"
    if ip.is_private:
        return f"{ip} is a private address"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if ip.is_reserved:
        return f"{ip} is a reserved address"
    if not ip.is_global:
        return f"{ip} is not a globally routable address"
    return None


def is_public_address(address: str) -> bool:
    """Whether the guard lets a fetch connect to ``address`` without ``allow_private``."""
    return address_refusal(address) is None


async def _resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (a literal: itself), in the resolver's order."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError) as e:
        raise OutboundRefused("dns", f"cannot resolve {host!r}: {e}") from e
    found: list[str] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and sockaddr[0] not in found:
            found.append(str(sockaddr[0]))
    if not found:
        raise OutboundRefused("dns", f"{host!r} resolves to no IP address")
    return found


async def _checked_addresses(host: str, port: int, allow_private: bool) -> list[str]:
    addresses = await _resolve(host, port)
    if not allow_private:
        # every answer must be public: connecting to "the public one" would still let a
        # name with a private answer reach inside when that one is tried first or alone
        for a in addresses:
            why = address_refusal(a)
            if why:
                where = f"{host} resolves to {a}, and " if host != a else ""
                raise OutboundRefused(
                    "address", f"connection to {host}:{port} refused: {where}{why}"
                )
    return addresses


async def resolve_checked(host: str, port: int, *, allow_private: bool) -> str:
    """One address of ``host`` that passed the check (connect to it, not to the name)."""
    host = host.strip("[]")  # an IPv6 literal as written in URLs
    return (await _checked_addresses(host, port, allow_private))[0]


# -- transport ---------------------------------------------------------------------------------
class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the address check between resolving and connecting.

    httpcore asks it for ``connect_tcp(host, port)`` with the URL's host; TLS is started on
    the returned stream with that host name, so certificates are still checked by name
    while the socket goes to the address that was checked."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await _checked_addresses(host, port, self.allow_private)
        error: Exception | None = None
        for address in addresses:
            try:
                with anyio.fail_after(timeout):
                    stream = await anyio.connect_tcp(address, port, local_host=local_address)
            except TimeoutError as e:
                raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from e
            except OSError as e:  # try the next address, as the resolver ordered them
                error = e
                continue
            for option in socket_options or ():
                stream.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(*option)
            return AnyIOStream(stream)
        raise httpcore.ConnectError(f"cannot connect to {host}:{port}: {error}")

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise OutboundRefused("address", "unix sockets are not outbound destinations")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` over :class:`_GuardedBackend`: no proxy (a proxy would
    connect on our behalf, unchecked), no unix sockets."""

    def __init__(
        self,
        *,
        allow_private: bool,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits | None = None,
    ) -> None:
        limits = limits or _LIMITS
        self._pool = httpcore.AsyncConnectionPool(
            # trust_env here reads SSL_CERT_FILE/DIR only (a platform's own CAs)
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=True),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(allow_private),
        )


def guarded_transport(*, allow_private: bool, **kwargs: typing.Any) -> httpx.AsyncBaseTransport:
    """An httpx transport that connects only to checked addresses (public ones unless
    ``allow_private``); a refused address or an unresolvable name raises
    :class:`OutboundRefused` from the request, a failed connection ``httpx.ConnectError``.
    Give the client no ``proxy=`` or ``mounts=``: those would carry requests past this
    transport (httpx ignores proxies from the environment once a transport is given).
    ``kwargs``: ``verify``, ``limits``."""
    return _GuardedTransport(allow_private=allow_private, **kwargs)


# -- URLs --------------------------------------------------------------------------------------
def _origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` for messages (never its path, query or userinfo)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    scheme = parts.scheme if parts.scheme in SCHEMES else (parts.scheme or "?")
    return f"{scheme}://{host}{port}"


def check_url(url: str) -> None:
    """Refuse (``OutboundRefused("scheme")``) a URL the guard would never fetch, by syntax:
    not http/https, no host, userinfo, a bad port, whitespace or controls, too long."""
    if not isinstance(url, str) or not url:
        raise OutboundRefused("scheme", "the URL is empty")
    if len(url) > MAX_URL:
        raise OutboundRefused("scheme", f"the URL is longer than {MAX_URL} characters")
    if _BAD_CHARS.search(url):
        raise OutboundRefused(
            "scheme", f"{_origin(url)}: the URL has whitespace, control characters or '\\'"
        )
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise OutboundRefused(
            "scheme", f"{parts.scheme or 'no'} scheme: only http and https URLs are fetched"
        )
    if "@" in parts.netloc:
        raise OutboundRefused("scheme", f"{_origin(url)}: the URL carries a user name or password")
    if not parts.hostname:
        raise OutboundRefused("scheme", f"{parts.scheme}:// URL without a host")
    try:
        port = parts.port
    except ValueError:
        raise OutboundRefused("scheme", f"{parts.scheme}://{parts.hostname}: bad port") from None
    if port is not None and not 1 <= port <= 65535:
        raise OutboundRefused("scheme", f"{_origin(url)}: port {port} is out of range")
    try:
        httpx.URL(url)  # httpx must read the same host the checks above read
    except httpx.InvalidURL as e:
        raise OutboundRefused("scheme", f"{_origin(url)}: {e}") from None


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    # httpx.URL.port is None for the scheme's default port, so 80 and "" compare equal
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


# -- fetch ---------------------------------------------------------------------------------------
class _Body:
    """Collects a response body of at most ``limit`` bytes after decoding gzip/deflate
    (identity is asked for, but a server may compress anyway: a small compressed body can
    expand enormously, so decompression itself is bounded)."""

    def __init__(self, encoding: str, limit: int, origin: str) -> None:
        wbits = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}.get(encoding)
        if encoding == "deflate":
            wbits = zlib.MAX_WBITS
        self.inflate = zlib.decompressobj(wbits) if wbits else None
        self.limit, self.origin = limit, origin
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        if self.inflate is not None:
            try:
                chunk = self.inflate.decompress(chunk, self.limit - self.size + 1)
            except zlib.error as e:
                raise OutboundRefused(
                    "connect", f"{self.origin}: bad compressed body: {e}"
                ) from None
        self.size += len(chunk)
        if self.size > self.limit:
            raise OutboundRefused(
                "size", f"{self.origin}: the response is larger than {self.limit} bytes"
            )
        self.parts.append(chunk)


async def fetch(
    url: str,
    *,
    allow_private: bool = False,
    timeout: float = 10.0,
    max_bytes: int = 2 * 1024 * 1024,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    max_redirects: int = 3,
) -> OutboundResponse:
    """Fetch ``url`` through the guard (module docstring): the final response, whatever its
    status, with at most ``max_bytes`` of body, within ``timeout`` seconds in all."""
    check_url(url)
    origin = _origin(url)
    send_headers = {"accept-encoding": "identity", **(headers or {})}
    t0 = time.monotonic()
    transport = guarded_transport(allow_private=allow_private)
    try:
        async with asyncio.timeout(timeout):
            async with httpx.AsyncClient(
                transport=transport,
                trust_env=False,
                follow_redirects=False,
                timeout=httpx.Timeout(timeout),
            ) as client:
                return await _fetch(
                    client, httpx.URL(url), method, send_headers, max_bytes, max_redirects, t0
                )
    except OutboundRefused:
        raise
    except (TimeoutError, httpx.TimeoutException):
        raise OutboundRefused("time", f"{origin}: no complete answer within {timeout} s") from None
    except httpx.HTTPError as e:
        raise OutboundRefused("connect", f"{origin}: {type(e).__name__}: {e}") from None


async def _fetch(
    client: httpx.AsyncClient,
    url: httpx.URL,
    method: str,
    headers: dict[str, str],
    max_bytes: int,
    max_redirects: int,
    t0: float,
) -> OutboundResponse:
    first = url
    for hop in range(max_redirects + 1):
        async with client.stream(method, url, headers=headers) as r:
            location = r.headers.get("location")
            if r.status_code in _REDIRECTS and location is not None:
                if hop == max_redirects:
                    raise OutboundRefused(
                        "redirect", f"{_origin(str(first))}: more than {max_redirects} redirects"
                    )
                try:
                    target = url.join(location)
                except httpx.InvalidURL:
                    raise OutboundRefused(
                        "redirect", f"{_origin(str(url))}: unreadable redirect location"
                    ) from None
                if not _same_origin(target, first):
                    raise OutboundRefused(
                        "redirect",
                        f"{_origin(str(first))} redirects to {_origin(str(target))}: only "
                        "redirects to the same scheme, host and port are followed",
                    )
                if r.status_code == 303 or (r.status_code in (301, 302) and method != "HEAD"):
                    method = "GET"
                url = target
                continue
            declared = r.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:  # no need to read it
                raise OutboundRefused(
                    "size", f"{_origin(str(url))}: the response is larger than {max_bytes} bytes"
                )
            encoding = r.headers.get("content-encoding", "").strip().lower()
            body = _Body(encoding, max_bytes, _origin(str(url)))
            async for chunk in r.aiter_raw():
                body.add(chunk)
            return OutboundResponse(
                url=str(url),
                status=r.status_code,
                headers=r.headers,
                body=b"".join(body.parts),
                elapsed_s=time.monotonic() - t0,
            )
    raise AssertionError("unreachable")  # the loop returns or raises
