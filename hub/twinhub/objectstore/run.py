"""``python -m twinhub.objectstore.run``: the ``object-store`` component's process.

A thin parent of ``weed server`` so the platform stops it promptly and cleanly: weed's own
graceful stop waits for gRPC streams that never end (seen: still running minutes after
SIGTERM), so SIGTERM is passed on and, after a short grace, weed is killed (its volumes are
append-only; a killed weed loses nothing acknowledged).  SIGHUP is passed on too: it makes
the S3 gateway reload identities.json (new users' keys).  Leftover /tmp sockets go at exit.

With a private network (:func:`seaweed.private_network`), weed runs in its own network
namespace, where all its TCP ports live; the only way in from the host is the S3 port,
which this process serves by relaying each connection to weed's S3 unix socket (in the
0700 run dir).  weed gets SIGKILL if this process dies, so it never outlives its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import shutil
import signal
import subprocess
import sys

from ..process.runtime import Runtime
from . import seaweed
from .options import settings

STOP_GRACE = 3.0
RELAY_CHUNK = 256 * 1024
#: Relayed connections at once (two file descriptors each); more are refused at once, so that
#: no number of idle connections can leave the relay without descriptors for everyone else.
MAX_CONNECTIONS = 1024
#: Seconds a relayed connection may pass no byte either way before it is cut.
IDLE_TIMEOUT = 300.0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await asyncio.wait_for(reader.read(RELAY_CHUNK), IDLE_TIMEOUT):
            writer.write(data)
            await asyncio.wait_for(writer.drain(), IDLE_TIMEOUT)
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other side may still answer
    except (ConnectionError, OSError, TimeoutError):
        writer.transport.abort()


_open_connections = 0


async def _relay(sock_path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    global _open_connections
    if _open_connections >= MAX_CONNECTIONS:
        writer.transport.abort()
        return
    _open_connections += 1
    try:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(sock_path)
        except OSError:
            writer.transport.abort()  # weed not (yet) listening: the client sees a reset
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
    finally:
        _open_connections -= 1


def _raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one: the relay holds two descriptors a connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _supervise(proc: subprocess.Popen, rt: Runtime, private: bool) -> int:
    loop = asyncio.get_running_loop()
    stopping: list[int] = []

    def forward(signum: int) -> None:
        if signum != signal.SIGHUP:
            stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGHUP if signum == signal.SIGHUP else signal.SIGTERM)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(s, forward, s)
    server = None
    if private:
        sock = str(seaweed.s3_socket(rt))
        server = await asyncio.start_server(
            lambda r, w: _relay(sock, r, w),
            "127.0.0.1",
            rt.ports[seaweed.PORT_KEYS["s3"]],
            reuse_address=True,
        )
    deadline: float | None = None
    try:
        while proc.poll() is None:
            if stopping and deadline is None:
                deadline = loop.time() + STOP_GRACE
                if server is not None:
                    server.close()
            if deadline is not None and loop.time() > deadline:
                proc.kill()
            await asyncio.sleep(0.2)
    finally:
        if server is not None:
            server.close()
    return 0 if stopping else proc.returncode


def _private(rt: Runtime):
    return seaweed.private_namespaces(
        seaweed.private_tmp(rt), [rt.run_dir, seaweed.base_dir(rt), seaweed.identities_path(rt)]
    )


def main() -> int:
    rt = Runtime.load()
    store = settings(rt)
    weed = store.weed_command()
    private = seaweed.private_network(store.private_network)
    own_tmp = private and seaweed.private_tmp_works()
    if private:
        _raise_fd_limit()
    print(
        "object-store: "
        + (
            "private network namespace, S3 relayed from the host port"
            if private
            else "ports on the host's 127.0.0.1 (no private network)"
        ),
        file=sys.stderr,
        flush=True,
    )
    if private and not own_tmp:
        print(
            "object-store: no mount namespace here: weed's gRPC sockets are in the host's "
            "/tmp (umask 077), named after ports another platform's namespace may also use",
            file=sys.stderr,
            flush=True,
        )
    if own_tmp:
        # weed's own /tmp: left over from the last run, or new.
        shutil.rmtree(seaweed.private_tmp(rt), ignore_errors=True)
        seaweed.private_tmp(rt).mkdir(mode=0o700)
    proc = subprocess.Popen(
        seaweed.argv(rt, weed, store.volume_size_limit_mb),
        cwd=seaweed.conf_dir(rt),  # weed reads ./security.toml
        stdin=subprocess.DEVNULL,
        preexec_fn=(
            _private(rt)
            if own_tmp
            else seaweed.enter_private_network
            if private
            else seaweed.die_with_parent
        ),
    )
    try:
        return asyncio.run(_supervise(proc, rt, private))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for sock in seaweed.grpc_unix_sockets(rt, own_tmp):
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
        if own_tmp:
            shutil.rmtree(seaweed.private_tmp(rt), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
