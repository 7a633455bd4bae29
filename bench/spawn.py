"""Spawn-to-ready latency and logins/s: twinhub vs a stock JupyterHub, same spawner, same run.

    /opt/twinhub/venv/bin/python bench/spawn.py [--rounds 5] [--users 10] [--burst 30]
                                                [--burst-only]

twinhub runs in multi-user mode (`twinhub up`), a stock JupyterHub 6.1 runs its own
LocalProcessSpawner as the *same* OS accounts (created by twinhub's first spawn), from the
same Python environment, behind its own configurable-http-proxy.  Spawn-to-ready is timed
from the REST `POST /users/<name>/server` until the server answers `/api/status` through the
proxy.  Logins/s: real form logins (twinhub: per-user passwords, hashed; stock: JupyterHub's
DummyAuthenticator, no password check) -- the gap there is the price of password hashing.
First-time burst (``--burst N``, default 30; 0 skips it): N users who never had a server (no
OS account yet) all ask for one at the same moment, each with their own token, on a fresh
twinhub.  Counted: answers other than 201/202 (a 429 is a failure), spawns that failed or
did not become ready within ``--burst-timeout``, and the time from the request until the
server answers through the proxy (p50/p95), plus how many progress streams said "queued".
Target: 0 failures.  ``--twinhub-only`` skips the stock hub (environment start-up checks:
compare the 1-user p50 before and after a change); ``--extensions`` compares, in one
platform and interleaved, 1-user spawns with the environment's server extensions as
configured, without the Dask sidebar's, and with the new packages' loaded at start.  Needs root (OS accounts). Prints figures and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import pwd
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers.platform import Platform, free_port_pair  # noqa: E402
from twinhub.hubconf.core import find_proxy  # noqa: E402

STOCK_CONFIG = """
c = get_config()
c.JupyterHub.bind_url = "http://127.0.0.1:{port}/"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.command = ["{chp}"]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.JupyterHub.db_url = "sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{state}/cookie_secret"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = ["{prefix}/bin/jupyterhub-singleuser"]
c.Spawner.default_url = "/lab"
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
    "scopes": ["admin:users", "admin:servers", "access:servers", "tokens"]}}]
"""


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def wait_ready(url: str, name: str, token: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    h = {"Authorization": f"token {token}"}
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}user/{name}/api/status", headers=h, timeout=5)
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{name} not ready")


def spawn_round(url: str, names: list[str], tokens: dict[str, str]) -> list[float]:
    def one(name: str) -> float:
        h = {"Authorization": f"token {tokens[name]}"}
        t0 = time.monotonic()
        r = requests.post(f"{url}hub/api/users/{name}/server", headers=h, timeout=60)
        if r.status_code not in (201, 202):
            raise RuntimeError(f"spawn {name}: {r.status_code} {r.text}")
        wait_ready(url, name, tokens[name])
        return time.monotonic() - t0

    with cf.ThreadPoolExecutor(len(names)) as ex:
        times = list(ex.map(one, names))
    for name in names:
        h = {"Authorization": f"token {tokens[name]}"}
        requests.delete(f"{url}hub/api/users/{name}/server", headers=h, timeout=60)
    for name in names:
        h = {"Authorization": f"token {tokens[name]}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not requests.get(f"{url}hub/api/users/{name}", headers=h, timeout=10).json()[
                "servers"
            ]:
                break
            time.sleep(0.1)
    return times


def follow_progress(url: str, name: str, token: str, timeout: float) -> dict:
    """Read ``name``'s spawn progress stream to its end: {"ready"|"failed", messages}."""
    h = {"Authorization": f"token {token}"}
    messages: list[str] = []
    try:
        with requests.get(
            f"{url}hub/api/users/{name}/server/progress", headers=h, stream=True, timeout=timeout
        ) as r:
            if r.status_code != 200:
                return {"failed": True, "messages": [f"progress: {r.status_code} {r.text[:200]}"]}
            for line in r.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                messages.append(event.get("message", ""))
                if event.get("ready") or event.get("failed"):
                    return {**event, "messages": messages}
    except requests.RequestException as e:
        messages.append(f"progress stream: {e}")
    return {"failed": True, "messages": messages}


def first_time_burst(url: str, admin_token: str, n: int, timeout: float) -> dict:
    """``n`` new users (no OS account yet) ask for a server at the same moment."""
    names = [f"burst{i}" for i in range(n)]
    ah = {"Authorization": f"token {admin_token}"}
    r = requests.post(f"{url}hub/api/users", headers=ah, json={"usernames": names}, timeout=60)
    r.raise_for_status()
    tokens = {}
    for name in names:
        r = requests.post(f"{url}hub/api/users/{name}/tokens", headers=ah, json={}, timeout=60)
        r.raise_for_status()
        tokens[name] = r.json()["token"]
    start = cf.ThreadPoolExecutor(n)
    barrier = threading.Barrier(n)

    def one(name: str) -> dict:
        h = {"Authorization": f"token {tokens[name]}"}
        barrier.wait()
        t0 = time.monotonic()
        try:
            r = requests.post(f"{url}hub/api/users/{name}/server", headers=h, timeout=timeout)
        except requests.RequestException as e:
            return {"name": name, "status": 0, "error": f"request: {e}"}
        out: dict = {"name": name, "status": r.status_code, "answer_s": time.monotonic() - t0}
        if r.status_code not in (201, 202):
            return {**out, "error": f"{r.status_code} {r.text[:200]}"}
        ev = follow_progress(url, name, tokens[name], max(1.0, timeout - (time.monotonic() - t0)))
        out["queued"] = any("queue" in m.lower() for m in ev["messages"])
        if not ev.get("ready"):
            last = ev["messages"][-1] if ev["messages"] else "(no progress events)"
            return {**out, "error": f"spawn failed: {last[:300]}"}
        try:
            wait_ready(url, name, tokens[name], timeout=max(1.0, timeout - (time.monotonic() - t0)))
        except TimeoutError:
            return {**out, "error": "progress said ready but the server never answered"}
        return {**out, "ready_s": time.monotonic() - t0}

    t_all = time.monotonic()
    with start:
        results = list(start.map(one, names))
    wall = time.monotonic() - t_all
    for name in names:
        requests.delete(f"{url}hub/api/users/{name}/server", headers=ah, timeout=60)
    return {"results": results, "wall": wall}


def print_burst(label: str, n: int, burst: dict) -> None:
    res = burst["results"]
    failed = [r for r in res if "error" in r]
    ready = [r["ready_s"] for r in res if "ready_s" in r]
    codes: dict[int, int] = {}
    for r in res:
        codes[r["status"]] = codes.get(r["status"], 0) + 1
    print()
    print(f"{label}: {n}-user first-time burst (OS accounts created during the burst)")
    print(f"  answers          {dict(sorted(codes.items()))}")
    print(f"  failures         {len(failed)} of {n}")
    for r in failed:
        print(f"    {r['name']}: {r['error']}")
    if ready:
        print(
            f"  time to ready    p50 {pct(ready, 0.5):.1f} s  p95 {pct(ready, 0.95):.1f} s  "
            f"max {max(ready):.1f} s  (wall {burst['wall']:.1f} s)"
        )
    print(f"  saw 'queued'     {sum(1 for r in res if r.get('queued'))} of {n}")
    print("  target: 0 failures")


def logins_per_s(url: str, creds: list[tuple[str, str]], seconds: float = 4.0) -> float:
    def worker(i: int) -> int:
        n = 0
        name, pw = creds[i % len(creds)]
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            s = requests.Session()
            s.get(url + "hub/login", timeout=10)
            r = s.post(
                url + "hub/login",
                data={"username": name, "password": pw, "_xsrf": s.cookies.get("_xsrf", "")},
                allow_redirects=False,
                timeout=10,
            )
            if r.status_code != 302:
                raise RuntimeError(f"login failed: {r.status_code}")
            n += 1
        return n

    with cf.ThreadPoolExecutor(2) as ex:
        total = sum(ex.map(worker, range(2)))
    return total / seconds


def measure(url: str, names: list[str], tokens: dict[str, str], rounds: int) -> dict:
    single = []
    for i in range(rounds):
        single += spawn_round(url, [names[i % len(names)]], tokens)
    concurrent = []
    for _ in range(max(1, rounds // 2)):
        concurrent += spawn_round(url, names, tokens)
    return {"single": single, "concurrent": concurrent}


# --extensions: per-user Jupyter configs (~/.jupyter, read at each start, over the
# environment's) make users whose servers start like other environments would.
EXTENSION_VARIANTS: dict[str, dict | None] = {
    "configured": None,  # the environment as installed (twinhub.install_jupyter_config)
    "without": {  # no Dask sidebar API at all: as before dask-labextension was installed
        "ServerApp": {"jpserver_extensions": {"dask_labextension": False}},
        "TwinlabDeferredExtensions": {"extensions": []},
    },
    "at-start": {  # the new packages' server extensions loaded at start (their default)
        "ServerApp": {
            "jpserver_extensions": {
                "dask_labextension": True,
                "panel.io.jupyter_server_extension": True,
            }
        }
    },
}


def extensions_ab(p: Platform, rounds: int) -> None:
    """Interleaved 1-user spawns of one user per variant, in one platform (same load)."""
    prefix = os.environ.get("TWINHUB_TEST_USER_PREFIX") or "twin-"
    names = {v: f"ext{i}" for i, v in enumerate(EXTENSION_VARIANTS)}
    tokens = {}
    for n in names.values():
        p.add_user(n)
        tokens[n] = p.token(n)
    spawn_round(p.url, list(names.values()), tokens)  # warm-up: OS accounts, tutorials
    for variant, cfg in EXTENSION_VARIANTS.items():
        if cfg:
            pw = pwd.getpwnam(prefix + names[variant])
            d = Path(pw.pw_dir) / ".jupyter"
            d.mkdir(exist_ok=True)
            f = d / "jupyter_server_config.json"
            f.write_text(json.dumps(cfg))
            for x in (d, f):
                os.chown(x, pw.pw_uid, pw.pw_gid)
    times: dict[str, list[float]] = {v: [] for v in EXTENSION_VARIANTS}
    order = list(EXTENSION_VARIANTS)
    for i in range(rounds):
        for v in order if i % 2 == 0 else order[::-1]:
            times[v] += spawn_round(p.url, [names[v]], tokens)
    print(f"\nserver extensions: 1-user spawn-to-ready, {rounds} interleaved rounds")
    base = statistics.median(times["without"])
    for v, xs in times.items():
        med = statistics.median(xs)
        print(f"  {v:<12} p50 {med:.2f} s  min {min(xs):.2f} s  vs without {med / base:.3f}")
    print("  target: configured within 1.10 of without")


def purge(base: Path) -> None:
    """Stop twinhub, remove the OS accounts it created, and the bench's files."""
    subprocess.run(
        [f"{sys.prefix}/bin/twinhub", "down", "--state", str(base / "twinhub"), "--purge-users"],
        capture_output=True,
    )
    shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument(
        "--burst", type=int, default=30, help="first-time users in the burst (0: no burst)"
    )
    ap.add_argument(
        "--burst-timeout", type=float, default=600, help="seconds each burst spawn may take"
    )
    ap.add_argument(
        "--burst-only", action="store_true", help="run only the burst (no stock comparison)"
    )
    ap.add_argument(
        "--extensions",
        action="store_true",
        help="only the server-extension A/B (start-up with the environment as configured, "
        "without the Dask sidebar's extension, with the new packages' extensions at start)",
    )
    ap.add_argument(
        "--twinhub-only",
        action="store_true",
        help="measure twinhub only (no stock comparison): start-up regressions of the environment",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/spawn.py needs root (multi-user mode creates OS accounts)")
    base = Path(tempfile.mkdtemp(prefix="twinhub-bench-", dir="/tmp"))
    base.chmod(0o755)
    names = [f"bench{i}" for i in range(args.users)]
    results: dict[str, dict] = {}
    logins: dict[str, float] = {}

    what = (
        f"{args.burst}-user burst"
        if args.burst_only
        else f"{args.users} users, {args.rounds} rounds"
    )
    print(f"twinhub: starting (multi-user), {what}")
    p = Platform.start(base / "twinhub", mode="multi-user")
    if args.extensions:
        try:
            extensions_ab(p, max(args.rounds, 2))
        finally:
            p.stop()
            purge(base)
        return
    try:
        if args.burst:
            # First, on the fresh platform: no OS account of these users exists yet.
            burst = first_time_burst(p.url, p.token("admin"), args.burst, args.burst_timeout)
            print_burst("twinhub", args.burst, burst)
        if args.burst_only:
            p.stop()
            purge(base)
            return
        pw = {n: p.add_user(n) for n in names}
        tokens = {n: p.token(n) for n in names}
        spawn_round(p.url, names, tokens)  # warm-up: creates the OS accounts
        results["twinhub"] = measure(p.url, names, tokens, args.rounds)
        logins["twinhub"] = logins_per_s(p.url, list(pw.items()))
    except BaseException:
        p.stop()
        purge(base)
        raise
    p.stop()
    # printed now: a failure of the stock hub below must not lose twinhub's figures
    single = results["twinhub"]["single"]
    print(
        f"twinhub spawn-to-ready: 1 user p50 {pct(single, 0.5):.2f} s  p95 {pct(single, 0.95):.2f} s"
        f"  ({len(single)} spawns); {args.users} concurrent p50 "
        f"{pct(results['twinhub']['concurrent'], 0.5):.2f} s"
    )
    if args.twinhub_only:
        purge(base)
        return

    print("stock JupyterHub: starting (LocalProcessSpawner, same OS accounts)")
    stock_state = base / "stock"
    stock_state.mkdir()
    port, api_port, hub_port = free_port_pair(3)
    token = secrets.token_hex(16)
    cfg = stock_state / "jupyterhub_config.py"
    cfg.write_text(
        STOCK_CONFIG.format(
            port=port,
            hub_port=hub_port,
            api_port=api_port,
            chp=find_proxy(),
            state=stock_state,
            prefix=sys.prefix,
            token=token,
        )
    )
    with open(stock_state / "hub.log", "wb") as log:
        hub = subprocess.Popen(
            [f"{sys.prefix}/bin/jupyterhub", "-f", str(cfg)],
            cwd=stock_state,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PATH": f"{sys.prefix}/bin:" + os.environ["PATH"]},
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        h = {"Authorization": f"token {token}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "hub/api/", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        # the OS accounts twinhub made: twin-<user>, or $TWINHUB_TEST_USER_PREFIX<user>
        prefix = os.environ.get("TWINHUB_TEST_USER_PREFIX") or "twin-"
        stock_names = [f"{prefix}{n}" for n in names]
        stock_tokens = {}
        for n in stock_names:
            requests.post(f"{url}hub/api/users/{n}", headers=h, timeout=10)
            r = requests.post(f"{url}hub/api/users/{n}/tokens", headers=h, json={}, timeout=10)
            stock_tokens[n] = r.json()["token"]
        spawn_round(url, stock_names, stock_tokens)  # warm-up
        results["stock"] = measure(url, stock_names, stock_tokens, args.rounds)
        logins["stock"] = logins_per_s(url, [(n, "x") for n in stock_names])
    finally:
        hub.terminate()
        hub.wait(60)
        subprocess.run(
            [
                f"{sys.prefix}/bin/twinhub",
                "down",
                "--state",
                str(base / "twinhub"),
                "--purge-users",
            ],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)

    print()
    print(f"{'spawn-to-ready (s)':<28}{'twinhub':>10}{'stock':>10}{'ratio':>8}")
    for kind, label in (("single", "1 user"), ("concurrent", f"{args.users} concurrent")):
        for q, qn in ((0.5, "p50"), (0.95, "p95")):
            a = pct(results["twinhub"][kind], q)
            b = pct(results["stock"][kind], q)
            print(f"  {label + ' ' + qn:<26}{a:>10.2f}{b:>10.2f}{a / b:>8.2f}")
    a, b = logins["twinhub"], logins["stock"]
    print(f"  {'logins/s (2 clients)':<26}{a:>10.1f}{b:>10.1f}{a / b:>8.2f}")
    print(
        "targets: spawn ratio <= 1.1 and p50 <= 2 s (1 user); "
        f"median 1-user spawn twinhub {statistics.median(results['twinhub']['single']):.2f} s"
    )


if __name__ == "__main__":
    main()
