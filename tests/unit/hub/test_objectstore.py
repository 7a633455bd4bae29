"""twinhub.objectstore without a running store: names, keys, generated files, the table."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import psutil
import pytest
from sqlalchemy import inspect
from traitlets.config import Config

from twinhub import db, objectstore
from twinhub.objectstore import credentials, seaweed
from twinhub.process.runtime import Runtime
from twinhub.process.supervisor import free_port, port_in_use


@pytest.fixture
def rt(tmp_path) -> Runtime:
    r = Runtime(state_dir=tmp_path, config=Config(), instance_id="t")
    for sub in ("secrets", "run"):
        (tmp_path / sub).mkdir(mode=0o700)
    for i, key in enumerate(seaweed.PORT_KEYS.values()):
        r.ports[key] = 40000 + i
    yield r
    db.dispose_engines()


@pytest.mark.parametrize(
    "parts",
    [("..",), ("a", "../b"), ("a/./b",), ("",), ("/abs",), ("a//b",), ("a\\b",), ("a\nb",)],
)
def test_safe_key_refuses_keys_that_walk_or_hide(parts):
    with pytest.raises(ValueError, match="object key part"):
        objectstore.safe_key(*parts)


def test_safe_key_joins_plain_parts():
    assert objectstore.safe_key("climate-dt", "2t/2020.zarr") == "climate-dt/2t/2020.zarr"


def test_home_bucket_names_are_valid_and_distinct():
    assert objectstore.home_bucket_name("home-", "olga") == "home-olga"
    odd = [objectstore.home_bucket_name("home-", n) for n in ("Ann_B", "ann.b", "ann@b", "x" * 80)]
    assert len(set(odd)) == len(odd)
    assert all(credentials.BUCKET_RE.match(b) and len(b) <= 63 for b in odd), odd
    with pytest.raises(ValueError, match="must not be empty"):
        objectstore.home_bucket_name("home-", "")


def test_identities_give_users_their_bucket_and_a_read_only_lake():
    doc = seaweed.identities(("AK", "SK"), [("olga", "OK", "OS", "home-olga")], "lake")
    admin, olga = doc["identities"]
    assert "Admin" in admin["actions"]
    assert sorted(olga["actions"]) == sorted(
        [
            "Read:lake",
            "List:lake",
            "Read:home-olga",
            "List:home-olga",
            "Write:home-olga",
            "Tagging:home-olga",
        ]
    )
    assert not any(a.startswith(("Write:lake", "Admin")) for a in olga["actions"])


def test_config_files_are_private_and_close_every_server(rt):
    seaweed.write_config(rt)
    conf = seaweed.conf_dir(rt)
    assert stat.S_IMODE(conf.stat().st_mode) == 0o700
    for f in conf.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    sec = tomllib.loads((conf / "security.toml").read_text())
    keys = [
        sec["jwt"]["signing"]["key"],
        sec["jwt"]["signing"]["read"]["key"],
        sec["jwt"]["filer_signing"]["key"],
        sec["jwt"]["filer_signing"]["read"]["key"],
    ]
    assert all(len(k) == 64 for k in keys) and len(set(keys)) == 4
    for section in ("master", "volume", "filer", "s3", "client"):
        assert sec["grpc"][section]["cert"] == str(conf / "grpc.crt")
    assert sec["grpc"]["ca"] == str(conf / "ca.crt")
    # The certificate chains to the CA (weed would refuse it otherwise).
    from cryptography import x509

    ca = x509.load_pem_x509_certificate((conf / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((conf / "grpc.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    argv = seaweed.argv(rt, "weed", 64)
    for flag in (
        "-disableHttp",
        "-webdav=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-ip.bind=127.0.0.1",
        "-s3.port=40000",
        "-s3.port.grpc=40007",
    ):
        assert flag in argv, flag
    # No secret on weed's command line.
    for f in (rt.secrets_dir).iterdir():
        assert f.read_text().strip() not in " ".join(argv)


def test_every_option_is_documented():
    for name, trait in objectstore.TwinhubObjectStore.class_traits(config=True).items():
        assert trait.help, name


def test_bad_lake_bucket_is_refused_by_name():
    with pytest.raises(Exception, match="lake_bucket 'Bad_Lake'"):
        objectstore.TwinhubObjectStore(lake_bucket="Bad_Lake")


def test_credentials_table_and_external_endpoint_without_keys(rt):
    db.upgrade(rt.db_url)
    assert "storage_credentials" in inspect(db.engine(rt.db_url)).get_table_names()
    rt.config.TwinhubObjectStore.endpoint_url = "https://s3.example.org"
    with pytest.raises(credentials.StorageError, match="external S3 endpoint"):
        objectstore.ensure_user(rt, "olga")
    with pytest.raises(credentials.StorageError, match="admin_access_key"):
        objectstore.admin_keys(rt)
    assert objectstore.endpoint(rt) == "https://s3.example.org"
    assert objectstore.ObjectStorePart().components(rt) == []


def test_user_storage_repr_hides_the_secret():
    u = objectstore.UserStorage("olga", "AK", "very-secret", "home-olga")
    assert "very-secret" not in repr(u) and "very-secret" not in str(u)


def test_private_network_off_is_off_and_on_needs_root():
    assert seaweed.private_network("off") is False
    if os.geteuid() != 0:
        assert seaweed.private_network("auto") is False
        with pytest.raises(credentials.StorageError, match="private_network is 'on'"):
            seaweed.private_network("on")


def test_weed_in_a_private_network_sees_only_its_own_loopback(tmp_path):
    """What the object-store component does as root: a child in a new network namespace
    can serve and reach 127.0.0.1 there, while its ports do not exist on the host."""
    if not seaweed.private_network("auto"):
        pytest.skip("no network namespace here (needs root with CAP_SYS_ADMIN)")
    port = free_port()
    code = textwrap.dedent(
        f"""
        import os, socket, sys
        srv = socket.create_server(("127.0.0.1", {port}))
        c = socket.create_connection(("127.0.0.1", {port}), timeout=5)
        print(os.readlink("/proc/self/ns/net"), flush=True)
        sys.stdin.read()  # stay up until the parent is done
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=seaweed.enter_private_network,
    )
    try:
        ns = proc.stdout.readline().strip()
        assert ns.startswith("net:[") and ns != os.readlink("/proc/self/ns/net")
        assert not port_in_use("127.0.0.1", port)  # served inside only
    finally:
        proc.stdin.close()
        proc.wait(10)
    assert proc.returncode == 0


def test_weed_dies_with_its_parent():
    """run.py may be killed -9: weed (here a sleep) must not outlive it."""
    if not seaweed.private_network("auto"):
        pytest.skip("no network namespace here (needs root with CAP_SYS_ADMIN)")
    code = textwrap.dedent(
        f"""
        import subprocess, sys
        sys.path.insert(0, {str(Path(seaweed.__file__).parents[2])!r})
        from twinhub.objectstore import seaweed
        p = subprocess.Popen(["sleep", "60"], preexec_fn=seaweed.enter_private_network)
        print(p.pid, flush=True)
        sys.stdin.read()
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    child = psutil.Process(int(parent.stdout.readline()))
    parent.kill()
    parent.wait()
    gone, _ = psutil.wait_procs([child], timeout=10)
    assert gone, "the child outlived its killed parent"


def test_relay_bounds_its_connections_and_cuts_idle_ones(tmp_path, monkeypatch):
    """The S3 relay (object store in its own network namespace) holds two descriptors per
    connection: past MAX_CONNECTIONS it refuses at once, and a connection passing no byte for
    IDLE_TIMEOUT is cut, so idle connections cannot starve everyone's S3."""
    from twinhub.objectstore import run

    monkeypatch.setattr(run, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(run, "IDLE_TIMEOUT", 0.5)
    sock = str(tmp_path / "s3.sock")

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(1024):
            w.write(data)
            await w.drain()
        w.close()

    async def go() -> None:
        upstream = await asyncio.start_unix_server(echo, sock)
        relay = await asyncio.start_server(lambda r, w: run._relay(sock, r, w), "127.0.0.1", 0)
        port = relay.sockets[0].getsockname()[1]
        try:
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            for r, w in held:  # both relayed
                w.write(b"ping")
                assert await asyncio.wait_for(r.read(4), 5) == b"ping"
            r3, w3 = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(r3.read(10), 5) == b""  # refused: closed at once
            for r, _ in held:  # then each idle one is cut
                assert await asyncio.wait_for(r.read(10), 5) == b""
            r4, w4 = await asyncio.open_connection("127.0.0.1", port)  # room again
            w4.write(b"pong")
            assert await asyncio.wait_for(r4.read(4), 5) == b"pong"
            w4.close()
        finally:
            relay.close()
            upstream.close()

    asyncio.run(go())


def test_weeds_of_two_platforms_each_get_their_own_tmp(tmp_path):
    """weed names its gRPC sockets /tmp/seaweedfs-<name>-grpc-<port>.sock, and two platforms'
    private networks may use the same port: each weed gets its own /tmp, where a state dir
    under the host's /tmp (``needed``) is still reachable."""
    if not seaweed.private_network("auto"):
        pytest.skip("no network namespace here (needs root with CAP_SYS_ADMIN)")
    name = f"seaweedfs-filer-grpc-{free_port()}.sock"
    state = tmp_path / "state"
    state.mkdir()
    (state / "marker").write_text("here")
    code = textwrap.dedent(
        f"""
        import os, socket, sys
        s = socket.socket(socket.AF_UNIX)
        s.bind("/tmp/{name}")
        s.listen()
        print(open({str(state / "marker")!r}).read(), sorted(os.listdir("/tmp")), flush=True)
        sys.stdin.read()
        """
    )
    procs, lines = [], []
    try:
        for i in range(2):
            private = tmp_path / f"tmp{i}"
            private.mkdir(mode=0o700)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", code],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    preexec_fn=seaweed.private_namespaces(private, [state]),
                )
            )
            lines.append(procs[-1].stdout.readline().split(" ", 1))
        for i, (marker, listing) in enumerate(lines):
            assert marker == "here", procs[i].stderr.read()
            assert name in listing
            assert (tmp_path / f"tmp{i}" / name).is_socket()
        assert not (Path("/tmp") / name).exists()
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(10)
    assert [p.returncode for p in procs] == [0, 0]
