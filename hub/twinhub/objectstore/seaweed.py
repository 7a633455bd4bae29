"""Files and command line of the embedded SeaweedFS (``weed server``), all under the state dir.

What is closed, and how (every user's kernel shares 127.0.0.1 in multi-user mode):

- private network (default as root, ``TwinhubObjectStore.private_network``): weed runs in
  its own network namespace, so its master, volume, filer and gRPC ports do not exist on
  the host at all; S3 is relayed from the host port to weed's S3 unix socket
  (:mod:`.run`).  Needed because some HTTP pages cannot be switched off: the volume
  server's ``/status`` lists every collection (bucket, hence user name) and the master's
  status page the topology, to anyone who connects.
- S3 (the only port users need): every request must be signed by an identity of
  ``identities.json`` (0600); there is no anonymous identity.
- master and filer HTTP APIs: ``-disableHttp`` (their handlers answer 404; only the
  master's read-only status page remains), so nobody can assign, grow or delete volumes
  or read the filer's tree over HTTP.
- volume HTTP: reads and writes need a JWT signed with keys in ``security.toml``.
- filer HTTP (closed above) also gets JWT keys, in case it is ever re-enabled.
- every gRPC port (master, volume, filer, s3): mutual TLS with a CA made here. weed also
  serves each gRPC server on a unix socket named after its port in a hard-coded /tmp; with
  the private network weed gets its own /tmp too (a 0700 dir of the run dir), so two
  platforms whose namespaces use the same port number never share (or delete) a socket;
  otherwise the sockets are made with umask 077.
- WebDAV, SFTP, Iceberg and Lance servers: off; telemetry: off; admin UI: not started.
"""

from __future__ import annotations

import ctypes
import datetime
import errno
import fcntl
import functools
import ipaddress
import json
import os
import signal
import socket
import struct
from collections.abc import Callable, Collection
from pathlib import Path

from ..process.runtime import Runtime
from .options import StorageError

LAKE_ACTIONS = ("Read", "List")
HOME_ACTIONS = ("Read", "List", "Write", "Tagging")
#: A project bucket over its storage budget: members read and list, nobody writes or tags.
FROZEN_ACTIONS = ("Read", "List")
# Every port weed listens on; allocated by prepare() and kept in runtime.json.
PORT_KEYS = {
    "s3": "object-store",
    "master": "object-store-master",
    "volume": "object-store-volume",
    "filer": "object-store-filer",
    "master.grpc": "object-store-master-grpc",
    "volume.grpc": "object-store-volume-grpc",
    "filer.grpc": "object-store-filer-grpc",
    "s3.grpc": "object-store-s3-grpc",
}
GRPC_SECTIONS = ("master", "volume", "filer", "s3", "client")
#: The internal ports when weed has its own network and /tmp (:func:`private_network`,
#: :func:`private_tmp_works`): nothing else lives there, so they are fixed, and above
#: Linux's ephemeral range so that the host's platform components, drawn at random from
#: their own ranges, never hold the same numbers (a port free on the host is not weed's).
NAMESPACE_PORTS = {
    "master": 61333,
    "volume": 61080,
    "filer": 61888,
    "master.grpc": 62333,
    "volume.grpc": 62080,
    "filer.grpc": 62888,
    "s3.grpc": 62334,
}


def base_dir(rt: Runtime) -> Path:
    return rt.path("objectstore")


def conf_dir(rt: Runtime) -> Path:
    """0700: security.toml, identities.json, the gRPC CA and certificate (weed's cwd)."""
    return base_dir(rt) / "conf"


def data_dir(rt: Runtime) -> Path:
    return base_dir(rt) / "data"


def identities_path(rt: Runtime) -> Path:
    return conf_dir(rt) / "identities.json"


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) atomically, so weed never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def make_tls(conf: Path) -> None:
    """A private CA and one certificate (server and client) for SeaweedFS's gRPC mTLS."""
    if (conf / "grpc.crt").exists() and (conf / "grpc.key").exists():
        return
    # cryptography's x509 takes ~30 ms to import and is needed once per state directory;
    # every process that reads the store's settings imports this module.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    later = now + datetime.timedelta(days=3650)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("twinhub object store CA"))
        .issuer_name(name("twinhub object store CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("seaweedfs"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    # The CA key is not kept: nothing else is ever signed with it.
    _write_private(conf / "ca.crt", ca.public_bytes(pem))
    _write_private(
        conf / "grpc.key",
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    _write_private(conf / "grpc.crt", cert.public_bytes(pem))


def security_toml(rt: Runtime) -> str:
    conf = conf_dir(rt)
    lines = []
    for section, secret in (
        ("jwt.signing", "objectstore-jwt-volume-write"),
        ("jwt.signing.read", "objectstore-jwt-volume-read"),
        ("jwt.filer_signing", "objectstore-jwt-filer-write"),
        ("jwt.filer_signing.read", "objectstore-jwt-filer-read"),
    ):
        lines += [f"[{section}]", f'key = "{rt.secret(secret)}"', "expires_after_seconds = 10", ""]
    lines += ["[access]", "ui = false", "", "[filer.expose_directory_metadata]", "enabled = false"]
    lines += ["", "[grpc]", f'ca = "{conf / "ca.crt"}"', ""]
    for section in GRPC_SECTIONS:
        lines += [
            f"[grpc.{section}]",
            f'cert = "{conf / "grpc.crt"}"',
            f'key = "{conf / "grpc.key"}"',
            "",
        ]
    return "\n".join(lines)


def identities(
    admin: tuple[str, str],
    users: list[tuple[str, str, str, str]],
    lake: str,
    shared: dict[str, list[str]] | None = None,
    frozen: Collection[str] = (),
) -> dict:
    """SeaweedFS's S3 identities: the platform's admin, then (name, access, secret, bucket);
    ``shared`` adds, per user name, buckets they may use like their own (project buckets),
    but those in ``frozen`` (over their storage budget) only to read and list."""
    shared = shared or {}
    out = [
        {
            "name": "twinhub-admin",
            "credentials": [{"accessKey": admin[0], "secretKey": admin[1]}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
    ]
    for name, access, secret, bucket in users:
        actions = [f"{a}:{lake}" for a in LAKE_ACTIONS] + [f"{a}:{bucket}" for a in HOME_ACTIONS]
        for b in shared.get(name, []):
            actions += [f"{a}:{b}" for a in (FROZEN_ACTIONS if b in frozen else HOME_ACTIONS)]
        out.append(
            {
                "name": f"user-{name}",
                "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": actions,
            }
        )
    return {"identities": out}


def write_identities(rt: Runtime, doc: dict) -> None:
    _write_private(identities_path(rt), json.dumps(doc, indent=1).encode())


def write_config(rt: Runtime) -> None:
    """Create the layout, the gRPC certificates and security.toml (idempotent)."""
    base = base_dir(rt)
    for d in (base, conf_dir(rt), data_dir(rt)):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        d.chmod(0o700)
    make_tls(conf_dir(rt))
    _write_private(conf_dir(rt) / "security.toml", security_toml(rt).encode())


def argv(rt: Runtime, weed: str, volume_size_mb: int) -> list[str]:
    p = {flag: rt.ports[key] for flag, key in PORT_KEYS.items()}
    run = rt.run_dir
    return [
        weed,
        "server",
        f"-dir={data_dir(rt)}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        # "s3" -> -s3.port=N, "s3.grpc" -> -s3.port.grpc=N
        *(_port_flag(flag, port) for flag, port in p.items()),
        "-filer",
        "-s3",
        f"-s3.config={identities_path(rt)}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-disableHttp",
        "-master.telemetry=false",
        # One master: after a restart on recovered Raft state it waits a whole election
        # timeout (default 10 s) before leading; nobody else can win it.
        "-master.electionTimeout=1s",
        f"-master.volumeSizeLimitMB={volume_size_mb}",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
        # Unix sockets of the filer and the S3 gateway: in the platform's 0700 run dir.
        f"-filer.localSocket={run / 'objectstore-filer.sock'}",
        f"-s3.localSocket={s3_socket(rt)}",
    ]


def _port_flag(flag: str, port: int) -> str:
    server, _, grpc = flag.partition(".")
    return f"-{server}.port{'.grpc' if grpc else ''}={port}"


def private_tmp(rt: Runtime) -> Path:
    """What weed sees as /tmp when it runs in its private namespaces (in the 0700 run dir)."""
    return rt.run_dir / "objectstore-tmp"


def grpc_unix_sockets(rt: Runtime, own_tmp: bool) -> list[Path]:
    """The sockets weed makes in its /tmp for its gRPC servers (it does not remove them), as
    seen from the host; ``own_tmp``: weed has its own (:func:`private_namespaces`)."""
    tmp = private_tmp(rt) if own_tmp else Path("/tmp")
    return [
        tmp / f"seaweedfs-{name}-grpc-{rt.ports[PORT_KEYS[name + '.grpc']]}.sock"
        for name in ("master", "volume", "filer", "s3")
    ]


def s3_socket(rt: Runtime) -> Path:
    """weed's S3 unix socket (in the 0700 run dir): what the private network relays to."""
    return rt.run_dir / "objectstore-s3.sock"


# -- private network namespace ------------------------------------------------------------
_CLONE_NEWNET, _CLONE_NEWNS = 0x40000000, 0x00020000
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 0x40000
_PR_SET_PDEATHSIG = 1
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
# Loaded before any fork: the preexec functions below run between fork and exec.
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """(preexec) SIGKILL this process when its parent dies: weed never outlives run.py.
    Also a private umask: weed makes its gRPC unix sockets in /tmp, where any local user
    could otherwise connect to them."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.umask(0o077)


def enter_private_network() -> None:
    """(preexec) Move into a new network namespace with only its own loopback, up."""
    die_with_parent()
    if _libc.unshare(_CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"unshare(CLONE_NEWNET): {os.strerror(e)}")
    # A new namespace's lo is down; weed's servers talk to each other over 127.0.0.1.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def private_namespaces(tmp: Path, needed: list[Path]) -> Callable[[], None]:
    """A preexec function: the private network, plus a mount namespace where /tmp is ``tmp``
    (weed's gRPC socket names are /tmp/seaweedfs-<name>-grpc-<port>.sock, and another
    platform's namespace may use the same port). The top-level entries of the host's /tmp
    that hold ``needed`` paths (a state dir under /tmp, as in tests) are bound back in."""
    tmp_root = Path("/tmp").resolve()
    keep = sorted(
        {
            p.resolve().relative_to(tmp_root).parts[0]
            for p in needed
            if p.resolve().is_relative_to(tmp_root) and p.resolve() != tmp_root
        }
    )
    private = os.fsencode(tmp)

    def enter() -> None:
        enter_private_network()
        # Nothing mounted here may propagate back to the host's namespace.
        _enter_private_mounts()
        for name in keep:
            target = private + b"/" + os.fsencode(name)
            os.mkdir(target, 0o700)
            source = b"/tmp/" + os.fsencode(name)
            _check(_libc.mount(source, target, None, _MS_BIND | _MS_REC, None), "bind back")
        _check(_libc.mount(private, b"/tmp", None, _MS_BIND | _MS_REC, None), "bind /tmp")

    return enter


def _enter_private_mounts() -> None:
    _check(_libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount private /")


def _private_network_works() -> bool:
    """Try it in a throwaway child (needs root with CAP_SYS_ADMIN: not in every container)."""
    return _works_in_child(enter_private_network)


@functools.lru_cache(maxsize=1)
def private_tmp_works() -> bool:
    """Whether weed can also have its own /tmp (a mount namespace: some hosts that allow
    network namespaces deny mounts, e.g. a container under AppArmor's default profile).
    Without it weed keeps the private network and makes its gRPC sockets in the host's
    /tmp under umask 077."""
    return _works_in_child(_enter_private_mounts)


def _works_in_child(enter: Callable[[], None]) -> bool:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            enter()
            os._exit(0)
        except BaseException:
            os._exit(1)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status) == 0
        except InterruptedError:  # pragma: no cover
            continue
        except ChildProcessError:  # pragma: no cover
            return False


def private_network(setting: str) -> bool:
    """Whether weed runs in its own network namespace (``TwinhubObjectStore.private_network``:
    'on', 'off', or 'auto': when running as root and the kernel allows it)."""
    if setting == "off":
        return False
    if setting == "auto" and os.geteuid() != 0:
        return False
    if _private_network_works():
        return True
    if setting == "on":
        raise StorageError(
            "TwinhubObjectStore.private_network is 'on' but a network namespace cannot be made "
            f"here ({os.strerror(errno.EPERM)}: needs root with CAP_SYS_ADMIN); set it to "
            "'auto' or 'off'"
        )
    return False
