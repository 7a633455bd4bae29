"""The sign-on gateway's header rules and its signed cookie (pure functions, no I/O)."""

from __future__ import annotations

import time

import pytest

from twinhub.services.registry.gateway_rules import (
    SANDBOX_CSP,
    downstream_headers,
    has_dot_segment,
    is_identity_header,
    path_refusal,
    rewrite_location,
    rewrite_set_cookie,
    sign_sso,
    split_path,
    strip_platform_cookies,
    upstream_headers,
    upstream_url,
    verify_sso,
)

UP = "http://10.0.0.5:8080"
PREFIX = "/services/maps/"


def _raw(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


def _up(*pairs: tuple[str, str], **kw) -> dict[str, list[str]]:
    args = dict(
        user="alice",
        groups=["lab", "projects:ocean"],
        proto="https",
        host="twin.example.org",
        prefix="/services/maps",
        client="203.0.113.9",
    )
    args.update(kw)
    out: dict[str, list[str]] = {}
    for k, v in upstream_headers(_raw(*pairs), **args):
        out.setdefault(k, []).append(v)
    return out


FORGED = [
    "X-Twinhub-User", "X-Twinhub-Groups", "X-Twinhub-Anything", "X-Forwarded-User",
    "X-Forwarded-Email", "X-Forwarded-Groups", "X-Forwarded-Preferred-Username",
    "X-Remote-User", "Remote-User", "X-Remote-Group", "X-Auth-Request-User", "X-Auth-Token",
    "X-User", "X-User-Id", "X-Email", "X-Webauth-User", "X-Ms-Client-Principal-Name",
    "X-Ms-Client-Principal", "X-Amzn-Oidc-Identity", "X-Goog-Authenticated-User-Email",
    "Cf-Access-Authenticated-User-Email", "X-Jupyterhub-User", "X-Forwarded-Host",
    "X-Forwarded-Proto", "X-Forwarded-For", "X-Forwarded-Prefix", "X-Real-Ip", "Forwarded",
    "Proxy-Authorization",
]  # fmt: skip


@pytest.mark.parametrize("name", FORGED)
def test_identity_like_headers_are_dropped_and_ours_set(name: str) -> None:
    h = _up((name, "mallory"), ("Accept", "text/html"))
    assert "mallory" not in [v for vs in h.values() for v in vs], name
    assert h["x-twinhub-user"] == ["alice"]
    assert h["x-twinhub-groups"] == ["lab,projects:ocean"]
    assert h["x-forwarded-proto"] == ["https"]
    assert h["x-forwarded-host"] == ["twin.example.org"]
    assert h["x-forwarded-prefix"] == ["/services/maps"]
    assert h["x-forwarded-for"] == ["203.0.113.9"]
    assert h["accept"] == ["text/html"]


def test_ordinary_headers_pass() -> None:
    for name in ("accept", "content-type", "user-agent", "x-requested-with", "if-none-match"):
        assert not is_identity_header(name)
    h = _up(("Content-Type", "application/json"), ("X-Custom", "1"), ("Origin", "https://t"))
    assert h["content-type"] == ["application/json"] and h["x-custom"] == ["1"]
    assert h["origin"] == ["https://t"]


def test_credentials_and_hop_by_hop_are_dropped() -> None:
    h = _up(
        ("Authorization", "token secret"),
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "hop"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "x"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Host", "twin.example.org"),
    )
    for gone in ("authorization", "connection", "x-private", "keep-alive", "te", "trailer",
                 "transfer-encoding", "upgrade", "host"):  # fmt: skip
        assert gone not in h, gone


def test_platform_cookies_are_dropped_others_kept() -> None:
    value = (
        "jupyterhub-session-id=s; jupyterhub-hub-login=t; twinhub-sso-maps=c; "
        "twinhub-services-registry-token=r; _xsrf=x; theme=dark; maps_session=abc"
    )
    assert strip_platform_cookies(value) == "theme=dark; maps_session=abc"
    h = _up(("Cookie", value))
    assert h["cookie"] == ["theme=dark; maps_session=abc"]
    # nothing of the upstream's own: no Cookie header at all
    assert "cookie" not in _up(("Cookie", "jupyterhub-session-id=s; _xsrf=x"))


def test_names_outside_printable_ascii_are_percent_encoded() -> None:
    h = _up(user="jürgen", groups=["a,b", "ok"])
    assert h["x-twinhub-user"] == ["j%C3%BCrgen"]
    assert h["x-twinhub-groups"] == ["a%2Cb,ok"]  # a comma in a name cannot split the list
    assert _up(groups=[])["x-twinhub-groups"] == [""]


def test_websocket_handshake_headers_are_left_to_the_client_library() -> None:
    pairs = (("Sec-WebSocket-Key", "k"), ("Sec-WebSocket-Version", "13"),
             ("Sec-WebSocket-Protocol", "chat"), ("Sec-WebSocket-Extensions", "deflate"))  # fmt: skip
    assert "sec-websocket-key" in _up(*pairs)
    h = _up(*pairs, websocket=True)
    assert not [k for k in h if k.startswith("sec-websocket")]
    assert h["x-twinhub-user"] == ["alice"]


# -- answers -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        ("a=1", "a=1; Path=/services/maps/"),
        ("a=1; Path=/", "a=1; Path=/services/maps/"),
        ("a=1; Path=/app/x; HttpOnly", "a=1; Path=/services/maps/app/x; HttpOnly"),
        ("a=1; Domain=example.org; Path=/x; Secure", "a=1; Path=/services/maps/x; Secure"),
        ("a=1; path=/services/maps/sub", "a=1; Path=/services/maps/sub"),
        ("a=1; Path=relative", "a=1; Path=/services/maps/"),
        ("jupyterhub-hub-login=evil; Path=/hub/", None),
        ("twinhub-sso-other=evil", None),
        ("_xsrf=evil", None),
    ],
)
def test_set_cookie_stays_under_the_prefix(cookie: str, expected: str | None) -> None:
    assert rewrite_set_cookie(cookie, UP, PREFIX) == expected


def test_set_cookie_under_an_upstream_base_path() -> None:
    got = rewrite_set_cookie("a=1; Path=/app/x", "http://10.0.0.5:8080/app/", PREFIX)
    assert got == "a=1; Path=/services/maps/x"


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("http://10.0.0.5:8080/login?next=%2F", "/services/maps/login?next=%2F"),
        ("http://10.0.0.5:8080", "/services/maps/"),
        ("/login", "/services/maps/login"),
        ("/services/maps/already", "/services/maps/already"),
        ("next/page", "next/page"),
        ("https://accounts.example.org/auth", "https://accounts.example.org/auth"),
        ("http://10.0.0.5:9999/x", "http://10.0.0.5:9999/x"),  # another port: another origin
        ("//evil.example/x", "//evil.example/x"),
    ],
)
def test_location_of_upstream_origin_goes_under_the_prefix(location: str, expected: str) -> None:
    assert rewrite_location(location, UP, PREFIX) == expected


def test_downstream_headers() -> None:
    raw = _raw(
        ("Content-Type", "text/html"),
        ("Connection", "close, X-Hop"),
        ("X-Hop", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Set-Cookie", "jupyterhub-session-id=stolen; Path=/"),
        ("Set-Cookie", "own=1; Path=/"),
        ("Location", "http://10.0.0.5:8080/next"),
        ("Proxy-Authenticate", "Basic"),
        ("Content-Security-Policy", "default-src 'self'"),
        ("Service-Worker-Allowed", "/"),
        ("Clear-Site-Data", '"cookies"'),
    )
    out = downstream_headers(raw, upstream=UP, prefix=PREFIX, sandbox=False)
    got = [(k.decode(), v.decode()) for k, v in out]
    assert got == [
        ("content-type", "text/html"),
        ("set-cookie", "own=1; Path=/services/maps/"),
        ("location", "/services/maps/next"),
        ("content-security-policy", "default-src 'self'"),
    ]
    sandboxed = downstream_headers(raw, upstream=UP, prefix=PREFIX, sandbox=True)
    assert (b"content-security-policy", SANDBOX_CSP.encode()) in sandboxed
    assert SANDBOX_CSP.startswith("sandbox allow-scripts")
    assert "allow-same-origin" not in SANDBOX_CSP  # the point: an opaque origin


# -- paths -------------------------------------------------------------------------------------
def test_split_path_and_upstream_url() -> None:
    assert split_path("/services/maps/") == ("maps", "")
    assert split_path("/services/maps/a/b") == ("maps", "a/b")
    assert split_path("/services/maps") == ("maps", "")
    for bad in ("/services/", "/services/Maps/", "/services/-x/", "/hub/maps", "/services/a/"):
        assert split_path(bad) is None, bad
    for dots in ("..", "a/../b", "%2e%2e/x", "%2E%2e", "./x", "a/%2e", "a/.", "..;/x",
                 "..%3B/x", "%252e%252e/x", ".;x/y"):  # fmt: skip
        assert has_dot_segment(dots), dots
        assert path_refusal(dots), dots
    for fine in ("", "a/b", "a..b/c", "...", "%2e%2e%2e", "a;b/c", "a..;/b"):
        assert not has_dot_segment(fine), fine
        assert path_refusal(fine) is None, fine
    for sep in ("a%2Fb", "..%2fx", "a%5Cb", "a\\b", "a%00", "a%252Fb"):
        assert not has_dot_segment(sep) and "escaped '/'" in (path_refusal(sep) or ""), sep
    assert upstream_url("http://h:1", "a/b", b"x=1&y=%20") == "http://h:1/a/b?x=1&y=%20"
    assert upstream_url("http://h:1/app/", "", b"") == "http://h:1/app/"


# -- the sign-on cookie ------------------------------------------------------------------------
def test_sso_cookie_round_trip_and_tampering() -> None:
    key, other = b"k" * 32, b"o" * 32
    exp = int(time.time()) + 60
    c = sign_sso(key, "alice", "maps", exp)
    assert verify_sso(key, c, "maps") == "alice"
    assert verify_sso(other, c, "maps") is None  # another key (another platform)
    assert verify_sso(key, c, "tiles") is None  # bound to its slug
    assert verify_sso(key, c, "maps", now=exp + 1) is None  # expired
    exp_s, user, sig = c.split(".")
    forged_user = sign_sso(key, "mallory", "maps", exp).split(".")[1]
    assert verify_sso(key, f"{exp_s}.{forged_user}.{sig}", "maps") is None
    assert verify_sso(key, f"{exp + 3600}.{user}.{sig}", "maps") is None  # longer life
    for junk in ("", "a.b", "1.2.3.4", "x.%%%.y", f"{exp_s}.{user}."):
        assert verify_sso(key, junk, "maps") is None
    assert verify_sso(key, sign_sso(key, "jürgen@x", "maps", exp), "maps") == "jürgen@x"
