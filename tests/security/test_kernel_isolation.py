"""Kernels, servers and Dask clusters of one user are out of reach of another user's kernel.

Probes run from alice's real kernel (as her OS account), the way an attacker would: find
bob's listening ports in ``/proc/net/tcp`` (the socket owner's uid is world-readable) and
talk to them.  Before kernels used IPC transport, a ZeroMQ SUB socket on bob's IOPub port
received bob's code and output (issue 17, item 4).
"""

from __future__ import annotations

import json
import pwd
import re
import threading
from pathlib import Path

import psutil
import pytest
import requests

from tests.helpers.kernel import execute, run_code, shutdown_kernel, start_kernel

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

ALICE, BOB = "kiso-alice", "kiso-bob"

# Kernel code: the TCP ports a uid listens on, as any local process can read them.
_LISTENERS = """
def listeners(uid):
    ports = set()
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(f).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[7]) == uid:  # LISTEN
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return sorted(ports)
"""


@pytest.fixture(scope="module")
def two(multiuser_platform):
    p = multiuser_platform
    for name in (ALICE, BOB):
        p.add_user(name)
    urls = {name: p.spawn(name) for name in (ALICE, BOB)}
    uids = {name: pwd.getpwnam(f"twin-{name}").pw_uid for name in (ALICE, BOB)}
    return p, urls, uids


def test_kernels_use_private_ipc_sockets_and_iopub_is_unreadable_by_others(two) -> None:
    p, urls, uids = two
    bob_tok, alice_tok = p.token(BOB), p.token(ALICE)
    bob_kid = start_kernel(urls[BOB], bob_tok)
    try:
        info = json.loads(
            execute(
                urls[BOB],
                bob_tok,
                bob_kid,
                "from ipykernel.connect import get_connection_info\nprint(get_connection_info())",
            )
        )
        assert info["transport"] == "ipc", info
        runtime = Path(info["ip"]).parent
        assert runtime.parts[:3] == ("/", "run", "twinhub"), info["ip"]
        st = runtime.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (uids[BOB], 0o700)

        # Bob keeps printing a secret while alice listens on every port of his and on
        # his IPC sockets (whose paths she is given, as if guessed).
        stop = threading.Event()

        def bob_works() -> None:
            while not stop.is_set():
                execute(urls[BOB], bob_tok, bob_kid, "print('BOB-SECRET-7f3a')", timeout=30)

        worker = threading.Thread(target=bob_works, daemon=True)
        worker.start()
        probe = _LISTENERS + (
            "import os, socket, time, zmq\n"
            f"ports = listeners({uids[BOB]})\n"
            f"ipc = [{info['ip']!r} + '-%d' % i for i in range(1, 6)]\n"
            "ctx = zmq.Context.instance()\n"
            "subs = []\n"
            "for addr in ['tcp://127.0.0.1:%d' % p for p in ports] + ['ipc://' + x for x in ipc]:\n"
            "    s = ctx.socket(zmq.SUB); s.setsockopt(zmq.SUBSCRIBE, b''); s.connect(addr)\n"
            "    subs.append(s)\n"
            "got = []\n"
            "poller = zmq.Poller()\n"
            "for s in subs: poller.register(s, zmq.POLLIN)\n"
            "end = time.monotonic() + 5\n"
            "while time.monotonic() < end:\n"
            "    for s, _ in poller.poll(200):\n"
            "        got.append(b''.join(s.recv_multipart()))\n"
            "print('PORTS', len(ports), 'MESSAGES', len(got), 'LEAK', any(b'BOB-SECRET' in m for m in got))\n"
            "for x in ipc[:1]:\n"
            "    try:\n"
            "        socket.socket(socket.AF_UNIX).connect(x); print('IPC CONNECTED')\n"
            "    except OSError as e:\n"
            "        print('IPC', type(e).__name__)\n"
            "try:\n"
            f"    os.listdir({str(runtime)!r}); print('RUNTIME LISTED')\n"
            "except OSError as e:\n"
            "    print('RUNTIME', type(e).__name__)\n"
        )
        try:
            out = run_code(urls[ALICE], alice_tok, probe, timeout=60)
        finally:
            stop.set()
            worker.join(30)
        assert "MESSAGES 0 LEAK False" in out, out
        assert "IPC PermissionError" in out, out
        assert "RUNTIME PermissionError" in out, out
        # Bob's own kernel still works over its sockets.
        assert execute(urls[BOB], bob_tok, bob_kid, "print(6 * 7)") == "42\n"
    finally:
        shutdown_kernel(urls[BOB], bob_tok, bob_kid)


def test_another_users_server_port_refuses_alice_with_or_without_her_token(two) -> None:
    p, urls, uids = two
    bob_tok, alice_tok = p.token(BOB), p.token(ALICE)
    prefix = f"/user/{BOB}/"
    # Bob has a terminal; alice must not get its websocket (a shell as bob).
    r = requests.post(
        urls[BOB] + "api/terminals", headers={"Authorization": f"token {bob_tok}"}, timeout=30
    )
    assert r.status_code == 200, r.text
    term = r.json()["name"]
    code = _LISTENERS + (
        "import http.client, os\n"
        "tok = os.environ['JUPYTERHUB_API_TOKEN']\n"
        "def ask(port, method, path, headers):\n"
        "    c = http.client.HTTPConnection('127.0.0.1', port, timeout=10)\n"
        "    c.request(method, path, headers=headers)\n"
        "    r = c.getresponse(); body = r.read()\n"
        "    return r.status, body\n"
        f"for port in listeners({uids[BOB]}):\n"
        "    for label, method, path, hdr in [\n"
        f"        ('contents-anon', 'GET', '{prefix}api/contents', {{}}),\n"
        f"        ('contents-token', 'GET', '{prefix}api/contents', {{'Authorization': 'token ' + tok}}),\n"
        f"        ('contents-query', 'GET', '{prefix}api/contents?token=' + tok, {{}}),\n"
        f"        ('lab-anon', 'GET', '{prefix}lab', {{}}),\n"
        f"        ('terminal-new', 'POST', '{prefix}api/terminals', {{'Authorization': 'token ' + tok}}),\n"
        f"        ('terminal-ws', 'GET', '{prefix}terminals/websocket/{term}', {{\n"
        "            'Authorization': 'token ' + tok, 'Connection': 'Upgrade', 'Upgrade': 'websocket',\n"
        "            'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ=='}),\n"
        "    ]:\n"
        "        try:\n"
        "            status, body = ask(port, method, path, hdr)\n"
        "        except OSError as e:\n"
        "            status, body = type(e).__name__, b''\n"
        "        print('PROBE', port, label, status, b'kiso-bob-file' in body)\n"
    )
    # Something of bob's that would show in his contents listing.
    r = requests.put(
        urls[BOB] + "api/contents/kiso-bob-file.txt",
        json={"type": "file", "format": "text", "content": "private"},
        headers={"Authorization": f"token {bob_tok}"},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text
    out = run_code(urls[ALICE], alice_tok, code)
    probes = re.findall(r"PROBE (\d+) (\S+) (\S+) (True|False)", out)
    assert probes, out
    ports = {port for port, *_ in probes}
    for port, label, status, leaked in probes:
        assert leaked == "False", (port, label, status)
        assert status in ("302", "401", "403"), (port, label, status)
    # One of those ports does serve bob (so the probes hit his server, not a closed door).
    for port in ports:
        own = requests.get(
            f"http://127.0.0.1:{port}{prefix}api/contents",
            headers={"Authorization": f"token {bob_tok}"},
            timeout=30,
        )
        if own.status_code == 200:
            assert "kiso-bob-file.txt" in own.text
            break
    else:
        raise AssertionError(f"none of bob's ports {ports} is his server: {out}")


def test_the_data_lake_page_server_listens_on_no_port_another_user_could_take(two) -> None:
    """jupyter-server-proxy used to start the page's server on a loopback port named in its
    command line: another user's process could bind that port first and serve its own script
    at bob's origin. It listens on a Unix socket in a directory only bob can enter."""
    p, urls, uids = two
    bob_tok = p.token(BOB)
    r = requests.get(
        urls[BOB] + "datalake/", headers={"Authorization": f"token {bob_tok}"}, timeout=60
    )
    assert r.status_code == 200 and "<html" in r.text.lower(), r.text[:300]
    pages = [
        proc
        for proc in psutil.process_iter(["cmdline", "uids"])
        if proc.info["uids"] and proc.info["uids"].real == uids[BOB]
        and "twinlab.browse" in (proc.info["cmdline"] or [])
    ]  # fmt: skip
    assert len(pages) == 1, pages
    argv = pages[0].info["cmdline"]
    assert "--port" not in argv and "--unix-socket" in argv, argv
    sock = Path(argv[argv.index("--unix-socket") + 1])
    st = sock.parent.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (uids[BOB], 0o700), oct(st.st_mode)
    assert [c for c in pages[0].net_connections(kind="inet") if c.status == "LISTEN"] == []


def test_dask_cluster_of_one_user_is_unusable_by_another_and_capped(two) -> None:
    p, urls, uids = two
    bob_tok, alice_tok = p.token(BOB), p.token(ALICE)
    bob_kid = start_kernel(urls[BOB], bob_tok)
    try:
        out = execute(
            urls[BOB],
            bob_tok,
            bob_kid,
            "import resource\n"
            "from dask_gateway import Gateway\n"
            "cluster = Gateway().new_cluster(shutdown_on_close=False)\n"
            "client = cluster.get_client()\n"
            "lim = client.run_on_scheduler(lambda: resource.getrlimit(resource.RLIMIT_NPROC))\n"
            "addr = client.scheduler_info()['address']\n"
            "print('CLUSTER', cluster.name, 'NPROC', lim[0], lim[1], 'AT', addr)\n",
            timeout=180,
        )
        m = re.search(r"CLUSTER (\S+) NPROC (\d+) (\d+) AT tls://127.0.0.1:(\d+)", out)
        assert m, out
        name, soft, hard, sched = m.groups()
        # The scheduler runs under the same per-account process cap as bob's kernels.
        assert int(soft) == int(hard) == 1024
        probe = _LISTENERS + (
            "import asyncio, ssl\n"
            "from dask_gateway import Gateway\n"
            "from distributed.comm import connect\n"
            "try:\n"
            f"    Gateway().connect({name!r}); print('GATEWAY CONNECTED')\n"
            "except Exception as e:\n"
            "    print('GATEWAY', type(e).__name__)\n"
            "ctx = ssl.create_default_context(); ctx.check_hostname = False\n"
            "ctx.verify_mode = ssl.CERT_NONE\n"
            "async def ask(port, scheme, kw):\n"
            "    comm = await connect(f'{scheme}://127.0.0.1:{port}', timeout=5, **kw)\n"
            "    await comm.write({'op': 'identity', 'reply': True})\n"
            "    return await comm.read()\n"
            "async def probe(port, scheme, kw):\n"
            "    try:\n"  # bounded: a port that never answers must not hang the probe
            "        msg = await asyncio.wait_for(ask(port, scheme, kw), 10)\n"
            "        print('DASK', port, scheme, 'ANSWERED', str(msg)[:60])\n"
            "    except Exception as e:\n"
            "        print('DASK', port, scheme, 'refused', type(e).__name__)\n"
            f"ports = listeners({uids[BOB]})\n"
            "await asyncio.gather(*[probe(p, s, kw) for p in ports\n"
            "                       for s, kw in (('tcp', {}), ('tls', {'ssl_context': ctx}))])\n"
        )
        out = run_code(urls[ALICE], alice_tok, probe, timeout=120)
        assert "GATEWAY CONNECTED" not in out and "GATEWAY" in out, out
        # The scheduler itself was among the probed ports, and refused both ways.
        assert f"DASK {sched} tls refused" in out and f"DASK {sched} tcp refused" in out, out
        assert "ANSWERED" not in out, out
    finally:
        execute(urls[BOB], bob_tok, bob_kid, _SHUTDOWN_CLUSTER, timeout=120)
        shutdown_kernel(urls[BOB], bob_tok, bob_kid)


_SHUTDOWN_CLUSTER = """
try:
    cluster.shutdown()
except NameError:  # the cluster never started
    pass
"""
