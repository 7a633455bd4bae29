"""The sign-on gateway's rules, without I/O: what upstream gets of a request, what the
client gets of the answer, the signed sign-on cookie (gateway.py applies them).

Upstream must be able to trust ``X-Twinhub-User``/``X-Twinhub-Groups``: every header a
client could use to pass for someone (the conventions of common SSO proxies) is dropped,
whatever its value, before ours are set; the caller's ``Authorization`` and the platform's
cookies never leave the platform. Upstream's cookies and redirects are kept under the
service's prefix, so that a service cannot set cookies for the platform's other paths.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

#: The signed cookie naming the user to one service (its path is that service's prefix).
SSO_COOKIE = "twinhub-sso-"
#: Short: the cookie is independent of the hub's session, so the hub's logout cannot revoke
#: it; a browser renews it silently through ``sso``, which fails once the hub logged it out.
SSO_MAX_AGE = 15 * 60
#: Longest path + query kept as the place to return to after sign-on.
MAX_NEXT = 2048

_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")

# -- header rules (pure) ---------------------------------------------------------------------
#: Hop-by-hop headers (RFC 9110 7.6.1) and what only a proxy between client and us may set.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host"}
)
#: Headers a client may send to pass for someone (common SSO proxies' conventions): dropped
#: whatever their value, so that upstream can trust only ours.
IDENTITY_HEADERS = frozenset(
    {
        "x-forwarded-user", "x-forwarded-email", "x-forwarded-groups",
        "x-forwarded-preferred-username", "x-remote-user", "remote-user", "x-remote-group",
        "x-user", "x-email", "forwarded", "x-real-ip",
    }
)  # fmt: skip
IDENTITY_PREFIXES = (
    "x-twinhub-", "x-auth-", "x-user-", "x-webauth-", "x-ms-client-principal",
    "x-amzn-oidc-", "x-goog-authenticated-", "cf-access-", "x-jupyterhub-", "proxy-",
    # ours to set (proto, host, prefix, for); any other X-Forwarded-* is a client's claim
    "x-forwarded-",
)  # fmt: skip
#: Cookie names of the platform (the hub's session and login, the services' tokens, ours).
PLATFORM_COOKIE_PREFIXES = ("jupyterhub-", "twinhub-", "_xsrf")
#: What a websocket handshake sets itself (the client library writes its own).
WS_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
     "sec-websocket-protocol", "sec-websocket-accept"}
)  # fmt: skip
#: Answer headers that reach beyond the service's prefix: a service worker scoped to the whole
#: origin (it would intercept the hub and every user server), wiping the platform's cookies.
ORIGIN_WIDE = frozenset({"service-worker-allowed", "clear-site-data"})
SANDBOX_CSP = "sandbox allow-scripts allow-forms allow-popups allow-downloads allow-modals"
# Printable ASCII but "%" and ",": a user or group name outside it is percent-encoded (UTF-8)
# so that a header value stays ASCII and the groups list stays comma-separated.
_NAME_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "%,") + " "


def _connection_named(headers: Iterable[tuple[bytes, bytes]]) -> set[str]:
    """Headers a ``Connection`` header names (hop-by-hop for this hop only)."""
    named: set[str] = set()
    for k, v in headers:
        if k.lower() == b"connection":
            named |= {t.strip().lower() for t in v.decode("latin-1").split(",") if t.strip()}
    return named


def is_identity_header(name: str) -> bool:
    """Whether a request header (lower case) claims an identity (or is ours to set)."""
    return name in IDENTITY_HEADERS or name.startswith(IDENTITY_PREFIXES)


def is_platform_cookie(name: str) -> bool:
    return name.startswith(PLATFORM_COOKIE_PREFIXES)


def strip_platform_cookies(value: str) -> str:
    """A ``Cookie`` header without the platform's cookies (upstream's own stay, as sent)."""
    keep = []
    for part in value.split(";"):
        name = part.split("=", 1)[0].strip()
        if part.strip() and not is_platform_cookie(name):
            keep.append(part.strip())
    return "; ".join(keep)


def header_name_value(s: str) -> str:
    return quote(s, safe=_NAME_SAFE)


def upstream_headers(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    user: str,
    groups: Iterable[str],
    proto: str,
    host: str,
    prefix: str,
    client: str,
    websocket: bool = False,
) -> list[tuple[str, str]]:
    """The headers upstream gets: the client's, less hop-by-hop ones, credentials, platform
    cookies and identity claims; plus who the user is and where the request came in."""
    raw = list(raw)
    drop = HOP_BY_HOP | _connection_named(raw) | {"authorization"}
    if websocket:
        drop |= WS_HANDSHAKE
    out: list[tuple[str, str]] = []
    for k, v in raw:
        name = k.decode("latin-1").lower()
        if name in drop or is_identity_header(name):
            continue
        value = v.decode("latin-1")
        if name == "cookie":
            value = strip_platform_cookies(value)
            if not value:
                continue
        out.append((name, value))
    out += [
        ("x-twinhub-user", header_name_value(user)),
        ("x-twinhub-groups", ",".join(header_name_value(g) for g in groups)),
        ("x-forwarded-proto", proto),
        ("x-forwarded-host", host),
        ("x-forwarded-prefix", prefix.rstrip("/")),
        ("x-forwarded-for", client),
    ]
    return out


def _under_prefix(path: str, base_path: str, prefix: str) -> str:
    """An upstream absolute path as seen from the platform: the upstream base's path
    replaced by the service's prefix (a path already under the prefix stays)."""
    if path == prefix.rstrip("/") or path.startswith(prefix):
        return path  # upstream honours X-Forwarded-Prefix itself
    base = base_path.rstrip("/") + "/"
    if path.startswith(base):
        path = path[len(base) :]
    elif path == base.rstrip("/"):
        path = ""
    return prefix + path.lstrip("/")


def rewrite_location(value: str, upstream: str, prefix: str) -> str:
    """``Location`` from upstream: its own origin (or a bare absolute path) → under the
    prefix; relative references and other origins stay as they are."""
    base = urlsplit(upstream)
    loc = urlsplit(value)
    if loc.scheme or loc.netloc:
        same = (
            loc.scheme.lower() == base.scheme.lower() and loc.netloc.lower() == base.netloc.lower()
        )
        if not same:
            return value
    elif not loc.path.startswith("/") or value.startswith("//"):
        return value  # relative: the browser resolves it under the prefix already
    out = _under_prefix(loc.path or "/", base.path, prefix)
    if loc.query:
        out += "?" + loc.query
    if loc.fragment:
        out += "#" + loc.fragment
    return out


def rewrite_set_cookie(value: str, upstream: str, prefix: str) -> str | None:
    """A ``Set-Cookie`` from upstream: a platform cookie's name → None (dropped); otherwise
    no ``Domain`` and a ``Path`` under the service's prefix."""
    parts = [p.strip() for p in value.split(";")]
    name = parts[0].split("=", 1)[0].strip()
    if not name or is_platform_cookie(name):
        return None
    base_path = urlsplit(upstream).path
    path = prefix
    attrs = []
    for p in parts[1:]:
        key, _, val = p.partition("=")
        k = key.strip().lower()
        if k == "domain" or not p:
            continue
        if k == "path":
            val = val.strip()
            path = _under_prefix(val, base_path, prefix) if val.startswith("/") else prefix
            continue
        attrs.append(p)
    return "; ".join([parts[0], f"Path={path}", *attrs])


def downstream_headers(
    raw: Iterable[tuple[bytes, bytes]], *, upstream: str, prefix: str, sandbox: bool
) -> list[tuple[bytes, bytes]]:
    """The headers of upstream's answer as the client gets them (see the rules above)."""
    raw = list(raw)
    drop = (HOP_BY_HOP - {"host"}) | _connection_named(raw)
    out: list[tuple[bytes, bytes]] = []
    for k, v in raw:
        name = k.decode("latin-1").lower()
        if name in drop or name in ORIGIN_WIDE or name.startswith("proxy-"):
            continue
        value = v.decode("latin-1")
        if name == "set-cookie":
            rewritten = rewrite_set_cookie(value, upstream, prefix)
            if rewritten is None:
                continue
            value = rewritten
        elif name == "location":
            value = rewrite_location(value, upstream, prefix)
        out.append((name.encode("latin-1"), value.encode("latin-1")))
    if sandbox:
        out.append((b"content-security-policy", SANDBOX_CSP.encode()))
    return out


def upstream_url(upstream: str, rest: str, query: bytes) -> str:
    """Upstream base + the path after ``/services/<slug>/`` + the query."""
    url = upstream.rstrip("/") + "/" + rest
    return url + ("?" + query.decode("latin-1") if query else "")


def _unquote_all(text: str) -> str:
    """``text`` percent-decoded until it stops changing (``%252e`` is a ``.`` too)."""
    for _ in range(8):
        once = unquote(text)
        if once == text:
            break
        text = once
    return text


def has_dot_segment(rest: str) -> bool:
    """Whether a raw path holds ``.`` or ``..`` segments, however encoded (``%2e``,
    ``%252e``) or decorated (``..;x``: Tomcat, Jetty and Spring drop the ``;`` part):
    resolved upstream, they would leave the upstream's base path."""
    return any(_unquote_all(seg).split(";", 1)[0] in (".", "..") for seg in rest.split("/"))


def path_refusal(rest: str) -> str | None:
    """Why a raw path after ``/services/<slug>/`` may not go upstream, or None.

    Some upstreams decode escapes before they resolve the path (nginx: ``%2F``; Windows
    servers take ``\\`` for ``/``) or cut it at a NUL: there ``..%2F`` or ``..\\`` would
    leave the base path. So a ``/``, ``\\`` or NUL inside a segment, escaped however
    many times, is refused along with dot segments."""
    for seg in rest.split("/"):
        if any(c in _unquote_all(seg) for c in "/\\\x00"):
            return "an escaped '/' or NUL, or a backslash, is not allowed in a service's paths"
    if has_dot_segment(rest):
        return "'.' and '..' segments are not allowed in a service's paths"
    return None


def split_path(path: str) -> tuple[str, str] | None:
    """``/services/<slug>/<rest>`` → (slug, rest); None if not such a path."""
    if not path.startswith("/services/"):
        return None
    slug, _, rest = path[len("/services/") :].partition("/")
    return (slug, rest) if _SLUG.fullmatch(slug) else None


# -- the sign-on cookie ------------------------------------------------------------------------
def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def sign_sso(key: bytes, user: str, slug: str, expires: int) -> str:
    """``<expires>.<user, base64url>.<HMAC-SHA256 of slug, user, expiry>``."""
    msg = f"{slug}\n{user}\n{expires}".encode()
    sig = hmac.new(key, msg, hashlib.sha256).digest()
    return f"{expires}.{_b64(user.encode())}.{_b64(sig)}"


def verify_sso(key: bytes, value: str, slug: str, now: float | None = None) -> str | None:
    """The user a cookie names for ``slug``, if its signature holds and it has not expired."""
    try:
        exp_s, user_b64, sig = value.split(".")
        expires = int(exp_s)
        user = base64.urlsafe_b64decode(user_b64 + "=" * (-len(user_b64) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    good = sign_sso(key, user, slug, expires).rsplit(".", 1)[1]
    if not hmac.compare_digest(good.encode(), sig.encode()):
        return None
    if expires < (time.time() if now is None else now):
        return None
    return user
