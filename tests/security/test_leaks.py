"""Smaller leaks and gaps (issue 17, item 8), probed on the real multi-user platform.

- the object store's internal HTTP ports (volume ``/status``, master status page, filer)
  listed every bucket, hence every user, to any local process;
- the admin API created users named ``root`` or ``Bad Name`` (and a spawn made an S3 identity
  and a bucket before the OS account check refused it);
- a 5 MB token note was stored;
- a 100 KB header got a connection reset, not a status;
- ``twin-<name>`` accounts of another platform instance on the host were used as this one's.
"""

from __future__ import annotations

import json
import pwd
import re
import subprocess
import sys
import textwrap

import pytest
import requests

from tests.helpers.kernel import run_code
from twinhub import objectstore
from twinhub.gateway import gateway_url
from twinhub.objectstore import seaweed
from twinhub.process.ports import PRIVILEGED_PORTS
from twinhub.process.runtime import Runtime
from twinhub.spawn.os_accounts import RESERVED_NAMES, recorded_accounts

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

OLGA = "leak-olga"


@pytest.fixture(scope="module")
def plat(multiuser_platform):
    p = multiuser_platform
    p.add_user(OLGA)
    return p, Runtime.load(p.state)


def kernel_json(url: str, token: str, code: str, timeout: float = 90) -> dict:
    text = run_code(
        url,
        token,
        textwrap.dedent(code) + "\nimport json as _j; print(_j.dumps(out))",
        timeout=timeout,
    )
    return json.loads(text.strip().splitlines()[-1])


def test_object_store_internal_ports_list_nothing_to_a_users_kernel(plat) -> None:
    p, rt = plat
    url = p.spawn(OLGA)
    ports = {name: rt.ports[key] for name, key in seaweed.PORT_KEYS.items()}
    out = kernel_json(
        url,
        p.token(OLGA),
        f"""
        import os, urllib.request, urllib.error, boto3
        ports = {ports!r}
        def get(url):
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    return [r.status, r.read(20000).decode("latin-1")]
            except urllib.error.HTTPError as e:
                return [e.code, e.read(20000).decode("latin-1")]
            except OSError as e:
                return ["refused", type(e).__name__]
        paths = {{
            "master": ["/", "/ui/index.html", "/cluster/status", "/dir/status", "/vol/status",
                       "/dir/lookup?volumeId=1", "/collection/info", "/metrics"],
            "volume": ["/status", "/ui/index.html", "/stats/disk", "/metrics", "/"],
            "filer": ["/", "/buckets/", "/buckets/lake/?pretty=y", "/metrics"],
        }}
        out = {{f"{{k}} {{path}}": get(f"http://127.0.0.1:{{ports[k]}}{{path}}")
               for k, ps in paths.items() for path in ps}}
        # S3 itself keeps working with signatures.
        s3 = boto3.client("s3")
        s3.put_object(Bucket="home-{OLGA}", Key="probe.txt", Body=b"x")
        out["s3 own bucket"] = [o["Key"] for o in s3.list_objects_v2(
            Bucket="home-{OLGA}")["Contents"]]
        out["s3 whoami uid"] = os.getuid()
    """,
        timeout=120,
    )
    assert out.pop("s3 own bucket") == ["probe.txt"]
    assert out.pop("s3 whoami uid") == pwd.getpwnam(f"twin-{OLGA}").pw_uid
    # Nothing answers with content: refused, or an error status without any listing.
    for probe, (status, body) in out.items():
        assert status == "refused" or status in (401, 403, 404), (probe, status, body[:300])
        for leak in ("home-", "lake", "Collection", "Volumes", "DataNodes", "127.0.0.1"):
            assert leak not in body, (probe, body[:300])


# A system account of this host that is not on the fixed reserved list (e.g. polkitd).
HOST_SYSTEM = next(
    (p.pw_name for p in pwd.getpwall()
     if 0 < p.pw_uid < 1000 and p.pw_name not in RESERVED_NAMES
     and re.fullmatch(r"[a-z][a-z0-9_-]{0,19}", p.pw_name)),
    "root",
)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("root", "reserved"),
        ("postgres", "reserved"),
        (HOST_SYSTEM, "reserved"),
        ("Bad Name", "not valid"),
        ("Alice", "not valid"),
        ("a" * 40, "too long"),
        ("alice\n", "not valid"),  # '$' alone would let a trailing newline through
    ],
)
def test_admin_api_refuses_names_that_cannot_be_users(plat, name: str, rule: str) -> None:
    p, rt = plat
    admin = p.token("admin")
    r = p.api("POST", f"/users/{requests.utils.quote(name)}", token=admin)
    assert r.status_code == 400, r.text
    assert rule in r.json()["message"] and repr(name) in r.json()["message"]
    if name == name.lower():  # the list form lowercases names first, as JupyterHub does
        r = p.api("POST", "/users", token=admin, json={"usernames": ["leak-fine", name]})
        assert r.status_code == 400 and rule in r.json()["message"], r.text
    # Nothing was made: no hub user (not even the valid name of the batch), no storage.
    assert p.api("GET", f"/users/{requests.utils.quote(name)}", token=admin).status_code == 404
    assert p.api("GET", "/users/leak-fine", token=admin).status_code == 404
    assert objectstore.get_user(rt, name) is None


def test_renaming_a_user_to_a_name_that_cannot_be_one_is_refused(plat) -> None:
    p, _rt = plat
    admin = p.token("admin")
    assert p.api("POST", "/users/leak-rena", token=admin).status_code == 201
    try:
        r = p.api("PATCH", "/users/leak-rena", token=admin, json={"name": "root"})
        assert r.status_code == 400 and "reserved" in r.json()["message"], r.text
        assert p.api("GET", "/users/root", token=admin).status_code == 404
        assert p.api("GET", "/users/leak-rena", token=admin).status_code == 200
    finally:
        p.api("DELETE", "/users/leak-rena", token=admin)


def test_spawn_refused_for_another_instances_account_makes_no_storage(plat) -> None:
    """``twin-<name>`` made by someone else (another instance on this host) is refused,
    naming it, before an S3 identity or bucket is made (that this instance's purge leaves
    such an account alone: tests/unit/hub/test_accounts.py)."""
    p, rt = plat
    name = "leak-squat"
    os_name = f"twin-{name}"
    subprocess.run(
        ["useradd", "--no-create-home", "--comment", "twinhub user leak-squat (other)", os_name],
        check=True,
    )
    try:
        p.add_user(name)
        r = p.api("POST", f"/users/{name}/server", user=name)
        assert r.status_code == 409, r.text
        msg = r.json()["message"]
        assert repr(os_name) in msg and "not made by this platform" in msg
        # Nor does the Dask Gateway run their clusters as that account.
        r = requests.post(
            gateway_url(rt) + "/api/v1/clusters/",
            json={"cluster_options": {}},
            headers={"Authorization": f"jupyterhub {p.token(name)}"},
            timeout=60,
        )
        assert r.status_code == 422 and "not made by this platform" in r.json()["error"], r.text
        assert objectstore.get_user(rt, name) is None
        buckets = {b["Name"] for b in objectstore.admin_client(rt).list_buckets()["Buckets"]}
        assert f"home-{name}" not in buckets
        assert os_name not in recorded_accounts(p.state)
        assert pwd.getpwnam(os_name).pw_gecos.endswith("(other)")  # left as it was
    finally:
        subprocess.run(["userdel", os_name], check=False)


def test_token_notes_and_bodies_are_capped(plat) -> None:
    p, _ = plat
    tok = p.token(OLGA)
    r = p.api("POST", f"/users/{OLGA}/tokens", token=tok, json={"note": "n" * 5_000_000})
    assert r.status_code == 400 and "at most 65536 bytes" in r.json()["message"], r.text[:300]
    r = p.api("POST", f"/users/{OLGA}/tokens", token=tok, json={"note": "n" * 1001})
    assert r.status_code == 400 and "at most 1000 characters" in r.json()["message"], r.text
    r = p.api("POST", f"/users/{OLGA}/tokens", token=tok, json={"note": "n" * 1000})
    assert r.status_code == 201, r.text
    notes = [t["note"] for t in p.api("GET", f"/users/{OLGA}/tokens", token=tok).json()[
        "api_tokens"]]  # fmt: skip
    assert max(len(n or "") for n in notes) == 1000


@pytest.mark.parametrize("size", [100_000, 1_000_000])
def test_huge_header_gets_a_status_not_a_reset(plat, size: int) -> None:
    p, _ = plat
    r = requests.get(p.url + "hub/api/", headers={"X-Big": "a" * size}, timeout=30)
    assert r.status_code == 431
    assert r.json() == {
        "code": 431,
        "description": "request headers too large: at most 16 KiB in all",
    }
    r = requests.get(p.url + "hub/api/", cookies={"big": "c" * size}, timeout=30)
    assert r.status_code == 431
    # The platform keeps answering.
    assert requests.get(p.url + "hub/api/", timeout=30).status_code == 200


def test_component_ports_cannot_be_taken_by_a_user_while_a_component_restarts(plat) -> None:
    """A restarted component binds its old port again (the hub and proxy know it): were it
    bindable by users, one could bind it in the gap and receive requests and tokens meant for
    the component. As root the platform's internal ports lie where only root may bind."""
    p, rt = plat
    # weed's own ports, in its network namespace, are not on the host at all: nobody here
    # connects to them there (test_objectstore checks they stay closed on the host).
    inside = {
        seaweed.PORT_KEYS[name]
        for name, port in seaweed.NAMESPACE_PORTS.items()
        if rt.ports.get(seaweed.PORT_KEYS[name]) == port
    }
    internal = {k: v for k, v in rt.ports.items() if k != "public" and k not in inside}
    assert internal and all(port < 1024 for port in internal.values()), internal
    # An ordinary account is refused any free port of that range (EACCES), unlike above it.
    probe = textwrap.dedent(
        f"""
        import socket, sys
        for port in ({PRIVILEGED_PORTS[0]}, {PRIVILEGED_PORTS[1]}, 40000 + {PRIVILEGED_PORTS[1]}):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port)); print(port, "bound")
            except PermissionError:
                print(port, "refused")
            except OSError as e:
                print(port, "busy", e.errno)
            s.close()
        """
    )
    out = subprocess.run(
        ["setpriv", f"--reuid={pwd.getpwnam('nobody').pw_uid}", "--regid=65534", "--clear-groups",
         sys.executable, "-c", probe],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    seen = dict(line.split(" ", 1) for line in out.stdout.split("\n") if line)
    low, high = str(PRIVILEGED_PORTS[0]), str(PRIVILEGED_PORTS[1])
    assert seen[low] in ("refused", "busy 98") and seen[high] in ("refused", "busy 98"), seen
    assert "refused" in (seen[low], seen[high]), seen
    assert seen[str(40000 + PRIVILEGED_PORTS[1])] == "bound", seen  # the probe itself works
