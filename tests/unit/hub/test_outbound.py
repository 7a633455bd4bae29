"""The outbound guard (:mod:`twinhub.outbound`) against real sockets.

Targets are counting HTTP servers (:mod:`tests.helpers.counting_origin`) on 127.0.0.1,
127.0.0.2 and ``::1``: a refused fetch must leave their counts at zero, an allowed one must
reach them. A second local server (:class:`_Tricks`) answers with redirects, stalls, big and
compressed bodies. Only two tests fake an edge that cannot run here, DNS answers for a name
(:class:`FakeResolver`): this machine has no resolver we may configure.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from tests.helpers.counting_origin import start_origin
from twinhub import outbound
from twinhub.outbound import (
    OutboundRefused,
    address_refusal,
    check_url,
    fetch,
    guarded_transport,
    resolve_checked,
)


def _run(coro):
    return asyncio.run(coro)


def _refused(coro, reason: str) -> OutboundRefused:
    with pytest.raises(OutboundRefused) as info:
        _run(coro)
    assert info.value.reason == reason, str(info.value)
    assert str(info.value) == info.value.message
    return info.value


@pytest.fixture
def origins(tmp_path):
    """Counting servers that must not be reached: on 127.0.0.1, 127.0.0.2 and ::1 (fresh
    for each test, so each starts from zero counts)."""
    root = tmp_path
    (root / "secret").write_text("the inside")
    servers = {h: start_origin(root, host=h) for h in ("127.0.0.1", "127.0.0.2", "::1")}
    yield servers
    for s in servers.values():
        s.stop()


class _TricksHandler(BaseHTTPRequestHandler):
    """``/hello``; ``/redirect?to=U``; ``/bytes?n=N[&chunked=1]``; ``/stall?s=S&id=I``
    (answers after S seconds); ``/drip?s=S&id=I`` (a byte every 0.1 s for S seconds);
    ``/bomb`` (a small gzip body that inflates to 50 MB). Stall and drip record in
    ``server.outcomes[I]`` whether the client hung up before they finished ("hung up") or
    not ("finished"): the tests prove a deadline by that, not by the clock."""

    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.server.paths.append(url.path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the guard hung up
            self._route(url.path, q)

    def _route(self, path: str, q: dict) -> None:
        if path == "/hello":
            self._send(200, b"hello", {"X-Seen-Accept-Encoding": self.headers["accept-encoding"]})
        elif path == "/redirect":
            self._send(302, headers={"Location": q["to"]})
        elif path == "/bytes":
            n = int(q["n"])
            if q.get("chunked"):  # no length announced: the cap must count what arrives
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for _ in range(n // 1000):
                    self.wfile.write(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            else:
                self._send(200, b"x" * n)
        elif path == "/stall":
            end = time.monotonic() + float(q["s"])
            while time.monotonic() < end:  # watch for the client's hang-up meanwhile
                readable, _, _ = select.select([self.connection], [], [], 0.05)
                if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                    return self._outcome(q, "hung up")
            self._outcome(q, "finished")
            self._send(200, b"late")
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(int(float(q["s"]) * 10)):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                return self._outcome(q, "hung up")
            self._outcome(q, "finished")
        elif path == "/bomb":
            self._send(200, gzip.compress(b"\0" * 50_000_000), {"Content-Encoding": "gzip"})
        else:
            self._send(404, b"no")

    def _outcome(self, q: dict, what: str) -> None:
        with self.server.seen:
            self.server.outcomes[q.get("id", "")] = what
            self.server.seen.notify_all()


def _outcome(server, key: str) -> str:
    """What the stalling/dripping server recorded for request ``key`` (it records once the
    client hung up or it finished; the wait's bound only stops a broken test hanging)."""
    with server.seen:
        server.seen.wait_for(lambda: key in server.outcomes, timeout=60)
        return server.outcomes.get(key, "nothing recorded")


@pytest.fixture(scope="module")
def tricks():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TricksHandler)
    server.daemon_threads = True
    server.paths = []
    server.outcomes, server.seen = {}, threading.Condition()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def _port(origin) -> int:
    return origin.server.server_address[1]


# -- nothing inside is reached -----------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1"])
def test_loopback_literals_are_refused_before_connecting(origins, host):
    origin = origins[host]
    e = _refused(fetch(origin.url + "/secret?token=sekrit"), "address")
    assert host in str(e) and "loopback" in str(e)
    assert "sekrit" not in str(e) and "/secret" not in str(e)  # no paths or queries in messages
    assert origin.hits("/secret") == 0


def test_allow_private_reaches_the_same_server(origins):
    origin = origins["127.0.0.2"]
    r = _run(fetch(origin.url + "/secret", allow_private=True))
    assert (r.status, r.body) == (200, b"the inside")
    assert r.url == origin.url + "/secret" and r.elapsed_s > 0
    assert origin.hits("/secret") == 1


def test_a_name_that_resolves_to_loopback_is_refused(origins):
    origin = origins["127.0.0.1"]
    e = _refused(fetch(f"http://localhost:{_port(origin)}/secret"), "address")
    assert "localhost resolves to" in str(e)
    assert origin.hits("/secret") == 0


def test_zero_address_is_refused(origins):
    # Linux connects 0.0.0.0 to this machine: it would reach the 127.0.0.1 server
    origin = origins["127.0.0.1"]
    _refused(fetch(f"http://0.0.0.0:{_port(origin)}/secret"), "address")
    assert origin.hits("/secret") == 0


def test_metadata_address_is_refused_without_trying(monkeypatch):
    """Refused before any connection is attempted (a spy on the guard's only way to open a
    socket; nothing can listen on 169.254.169.254 here)."""
    attempts: list = []

    async def connect_tcp(*args, **kwargs):
        attempts.append(args)
        raise OSError("the spy connects nowhere")

    monkeypatch.setattr(outbound.anyio, "connect_tcp", connect_tcp)
    e = _refused(fetch("http://169.254.169.254/latest/meta-data/", timeout=5), "address")
    assert "169.254.169.254" in str(e) and "link-local" in str(e)
    assert attempts == []
    _refused(fetch("http://127.0.0.1:9/", allow_private=True), "connect")  # the spy works
    assert attempts and attempts[0][0] == "127.0.0.1"


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/", "data:,hi"]
)
def test_other_schemes_are_refused(url):
    _refused(fetch(url), "scheme")


def test_redirect_to_another_host_is_refused(origins, tricks):
    base, server = tricks
    target = origins["127.0.0.2"].url + "/secret"
    e = _refused(fetch(f"{base}/redirect?to={target}", allow_private=True), "redirect")
    assert "127.0.0.2" in str(e)
    assert origins["127.0.0.2"].hits("/secret") == 0


@pytest.mark.parametrize(
    "where",
    [
        "https://127.0.0.1:{port}/hello",  # another scheme
        "http://127.0.0.1:{other}/hello",  # another port
        "http://localhost:{port}/hello",  # another host name for the same server
    ],
)
def test_redirect_must_keep_scheme_host_and_port(tricks, origins, where):
    base, _ = tricks
    port = int(base.rsplit(":", 1)[1])
    to = where.format(port=port, other=_port(origins["127.0.0.1"]))
    _refused(fetch(f"{base}/redirect?to={to}", allow_private=True), "redirect")


def test_same_origin_redirect_is_followed(tricks):
    base, server = tricks
    r = _run(fetch(f"{base}/redirect?to=/hello", allow_private=True))
    assert (r.status, r.body, r.url) == (200, b"hello", base + "/hello")
    assert r.headers["x-seen-accept-encoding"] == "identity"


def test_redirect_chain_is_bounded(tricks):
    base, _ = tricks
    hop = "/hello"
    for _ in range(4):  # 4 redirects in a row, then /hello
        hop = "/redirect?to=" + quote(hop, safe="")
    e = _refused(fetch(base + hop, allow_private=True, max_redirects=3), "redirect")
    assert "more than 3 redirects" in str(e)
    assert _run(fetch(base + hop, allow_private=True, max_redirects=4)).body == b"hello"


# -- bounds ------------------------------------------------------------------------------------
def test_body_cap_with_announced_length(tricks):
    base, _ = tricks
    _refused(fetch(f"{base}/bytes?n=3000", allow_private=True, max_bytes=2000), "size")
    r = _run(fetch(f"{base}/bytes?n=2000", allow_private=True, max_bytes=2000))
    assert len(r.body) == 2000


def test_body_cap_while_streaming(tricks):
    base, _ = tricks
    url = f"{base}/bytes?n=50000&chunked=1"
    e = _refused(fetch(url, allow_private=True, max_bytes=10_000), "size")
    assert "10000 bytes" in str(e)
    assert len(_run(fetch(url, allow_private=True, max_bytes=50_000)).body) == 50_000


def test_compressed_body_is_capped_after_inflating(tricks):
    base, _ = tricks
    _refused(fetch(f"{base}/bomb", allow_private=True, max_bytes=1_000_000), "size")


def test_a_stalling_server_hits_the_deadline(tricks):
    """The guard hangs up at its deadline: the server, stalling for 30 s, sees the client
    go before it answers."""
    base, server = tricks
    _refused(fetch(f"{base}/stall?s=30&id=stall", allow_private=True, timeout=0.5), "time")
    assert _outcome(server, "stall") == "hung up"


def test_the_deadline_covers_the_whole_fetch(tricks):
    # a byte every 0.1 s never leaves a read waiting long: only a total deadline ends it
    base, server = tricks
    _refused(fetch(f"{base}/drip?s=30&id=drip", allow_private=True, timeout=1), "time")
    assert _outcome(server, "drip") == "hung up"


def test_connection_refused_is_reported():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _refused(fetch(f"http://127.0.0.1:{port}/", allow_private=True), "connect")


def test_unresolvable_name():
    _refused(fetch("http://no-such-host.invalid/"), "dns")


# -- transport and resolver ----------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_guarded_transport_refuses_at_connect(origins, host):
    origin = origins[host]

    async def get(allow_private: bool) -> int:
        transport = guarded_transport(allow_private=allow_private)
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            return (await client.get(origin.url + "/secret")).status_code

    with pytest.raises(OutboundRefused) as info:
        _run(get(False))
    assert info.value.reason == "address"
    assert origin.hits("/secret") == 0
    assert _run(get(True)) == 200
    assert origin.hits("/secret") == 1


def test_guarded_transport_reports_connection_failures_as_httpx_errors():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def get():
        async with httpx.AsyncClient(transport=guarded_transport(allow_private=True)) as c:
            await c.get(f"http://127.0.0.1:{port}/")

    with pytest.raises(httpx.ConnectError):
        _run(get())


def test_resolve_checked():
    for host in ("localhost", "127.0.0.1", "[::1]", "169.254.169.254", "10.1.2.3"):
        _refused(resolve_checked(host, 80, allow_private=False), "address")
    assert _run(resolve_checked("localhost", 80, allow_private=True)) in ("127.0.0.1", "::1")
    assert _run(resolve_checked("[::1]", 80, allow_private=True)) == "::1"
    assert _run(resolve_checked("8.8.8.8", 443, allow_private=False)) == "8.8.8.8"
    _refused(resolve_checked("no-such-host.invalid", 80, allow_private=False), "dns")


class FakeResolver:
    """FAKE of the DNS edge: ``socket.getaddrinfo`` answering ``answers`` for every name
    ending in ``.test`` (one list per call, the last repeated), the real resolver otherwise."""

    def __init__(self, monkeypatch, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self)

    def __call__(self, host, port, *args, **kwargs):
        if not str(host).endswith(".test"):
            return self.real(host, port, *args, **kwargs)
        self.calls += 1
        ips = self.answers[min(self.calls, len(self.answers)) - 1]
        out = []
        for ip in ips:
            if ":" in ip:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
        return out


def test_every_answer_must_be_public(monkeypatch, origins):
    FakeResolver(monkeypatch, ["93.184.215.14", "8.8.8.8", "127.0.0.2"])
    port = _port(origins["127.0.0.2"])
    e = _refused(fetch(f"http://mixed.test:{port}/secret"), "address")
    assert "mixed.test resolves to 127.0.0.2" in str(e)
    assert origins["127.0.0.2"].hits("/secret") == 0


def test_connects_to_the_checked_address_not_a_second_answer(monkeypatch, origins):
    # DNS rebinding: a public answer when checked, loopback afterwards. The guard resolves
    # once and connects to what it checked (a public address, unreachable here), so the
    # loopback server is never reached and the name is not asked again.
    resolver = FakeResolver(monkeypatch, ["93.184.215.14"], ["127.0.0.2"])
    port = _port(origins["127.0.0.2"])
    with pytest.raises(OutboundRefused) as info:
        _run(fetch(f"http://rebind.test:{port}/secret", timeout=1))
    assert info.value.reason in ("connect", "time")
    assert resolver.calls == 1
    assert origins["127.0.0.2"].hits("/secret") == 0


# -- classification and syntax ------------------------------------------------------------------
REFUSED = [
    "127.0.0.1", "127.255.255.254", "0.0.0.0", "0.1.2.3", "10.0.0.1", "172.16.5.4",
    "172.31.255.255", "192.168.1.1", "169.254.169.254", "169.254.0.1", "100.64.0.1",
    "100.127.255.254", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    "192.0.2.10", "198.18.0.1", "198.51.100.7", "203.0.113.9",
    "::", "::1", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1", "fec0::1",
    "ff02::1", "ff0e::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::1", "2002:7f00:1::1",
    "2002:a00:1::1", "2002:a9fe:a9fe::", "2001:db8::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "::127.0.0.1", "100::1",
]  # fmt: skip
PUBLIC = [
    "8.8.8.8", "1.1.1.1", "93.184.215.14", "172.32.0.1", "100.128.0.1", "192.169.0.1",
    "2a00:1450:4007:80e::200e", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808",
]  # fmt: skip


@pytest.mark.parametrize("ip", REFUSED)
def test_non_public_addresses(ip):
    assert address_refusal(ip), ip
    assert not outbound.is_public_address(ip)


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses(ip):
    assert address_refusal(ip) is None


def test_refusal_names_the_kind():
    assert "link-local" in address_refusal("169.254.169.254")
    assert "carrier-grade" in address_refusal("100.64.0.1")
    assert "NAT64" in address_refusal("64:ff9b::7f00:1")
    assert "6to4" in address_refusal("2002:a00:1::1")
    assert "maps" in address_refusal("::ffff:10.0.0.1")
    assert "unique local" in address_refusal("fd00::1")
    assert "not an IP" in address_refusal("example.com")


BAD_URLS = [
    "", "file:///etc/passwd", "ftp://example.com/", "gopher://example.com/", "data:,x",
    "javascript:alert(1)", "example.com/x", "//example.com/x", "http://", "http:///x",
    "http://user:pw@example.com/", "http://user@example.com/", "http://example.com:0/",
    "http://example.com:65536/", "http://example.com:http/", "http://exa mple.com/",
    "http://example.com/\nX: y", "http://example.com/\t", "http:\\\\example.com\\x",
    "http://example.com\\@evil.test/", "https://example.com/" + "a" * 2100,
]  # fmt: skip
GOOD_URLS = [
    "http://example.com", "https://example.com/x?y=1#z", "HTTPS://Example.COM:8443/a",
    "http://[2001:db8::1]:8080/", "http://127.0.0.1:9/",  # syntax only: addresses are fetch's
]  # fmt: skip


@pytest.mark.parametrize("url", BAD_URLS)
def test_check_url_refuses(url):
    with pytest.raises(OutboundRefused) as info:
        check_url(url)
    assert info.value.reason == "scheme"
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("url", GOOD_URLS)
def test_check_url_accepts(url):
    check_url(url)


def test_check_url_needs_a_string():
    with pytest.raises(OutboundRefused):
        check_url(None)  # type: ignore[arg-type]


def test_proxies_from_the_environment_are_not_used(monkeypatch, origins, tricks):
    # a proxy would connect on the guard's behalf to whatever address it likes; HTTP_PROXY
    # and friends must not route the guard's fetches through one
    base, _ = tricks
    proxy = origins["127.0.0.2"]
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert _run(fetch(base + "/hello", allow_private=True)).body == b"hello"
    assert sum(proxy.server.counts.values()) == 0
