"""The Kubernetes deployment of the same code: the runtime the chart mounts (runtime.json in
a ConfigMap, Secrets as files), the parts' Kubernetes branches, and `twinhub service run`,
started for real as a pod would run it."""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from traitlets.config import Config

from twinhub import parts
from twinhub.errors import PlatformError
from twinhub.gateway import GatewayPart
from twinhub.hubconf.core import CorePart
from twinhub.process.runtime import Runtime, sqlalchemy_url
from twinhub.process.supervisor import free_port
from twinhub.services.accounting import AccountingPart
from twinhub.services.base import AsgiService, pod_options
from twinhub.services.cache import CachePart
from twinhub.services.datalake import StacPart, kubernetes_database_url
from twinhub.services.datalake.database import EXTENSIONS
from twinhub.services.projects import ProjectsPart
from twinhub.services.registration import uvicorn_argv

SERVICES = ("stac", "cache", "projects", "accounting")


def chart_runtime(
    state: Path,
    *,
    config: dict | None = None,
    ports: dict | None = None,
    secrets: dict[str, str] | None = None,
    **urls: str,
) -> Path:
    """A state dir shaped like a twinhub pod's: runtime.json as the chart renders it (pinned
    in the common brief) and one file per Secret key."""  # fmt: skip
    ports = ports if ports is not None else dict.fromkeys(SERVICES, 8000)
    service_urls = {
        "hub_api": "http://hub:8081/hub/api",
        "proxy": "http://proxy-public",
        **{name: f"http://twinhub-{name}:8000" for name in ports},
        "dask-gateway": "http://traefik-twinhub-dask-gateway",
        "dask-gateway-proxy": "gateway://traefik-twinhub-dask-gateway:80",
        **urls,
    }
    doc = {
        "deployment": "kubernetes",
        "state_dir": "/srv/twinhub/state",
        "mode": "multi-user",
        "public_url": "",
        "instance_id": "twinhub",
        "config": config or {},
        "ports": ports,
        "service_urls": service_urls,
    }
    (state / "run").mkdir(parents=True, exist_ok=True)
    (state / "run" / "runtime.json").write_text(json.dumps(doc))
    (state / "secrets").mkdir(exist_ok=True)
    for name, value in (secrets or {}).items():
        (state / "secrets" / name).write_text(value + "\n")
    return state


def test_embedded_runtime_json_is_unchanged(tmp_path: Path) -> None:
    """The embedded file keeps exactly its keys; a file without `deployment` is embedded."""
    rt = Runtime(state_dir=tmp_path, ports={"public": 8000, "hub": 8081}, instance_id="x")
    doc = json.loads(rt.save().read_text())
    assert sorted(doc) == ["config", "instance_id", "ip", "mode", "ports", "public_url",
                           "state_dir"]  # fmt: skip
    back = Runtime.load(tmp_path)
    assert back.deployment == "embedded" and not back.kubernetes and back.service_urls == {}
    assert back.hub_api_url == "http://127.0.0.1:8081/hub/api"
    assert back.url == back.local_url == "http://127.0.0.1:8000/"
    assert back.db_url == f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    # Embedded secrets are still made on first use, 0600.
    token = back.secret("service-x")
    assert (
        len(token) == 64 and stat.S_IMODE((tmp_path / "secrets/service-x").stat().st_mode) == 0o600
    )


def test_kubernetes_runtime_reads_the_charts_files(tmp_path: Path) -> None:
    chart_runtime(
        tmp_path,
        config={"TwinhubObjectStore": {"endpoint_url": "http://s3.example:9000"}},
        secrets={
            "service-stac": "stac-token",
            "db-url": "postgresql://app:pw@twinhub-db-rw.twinhub:5432/app",
            "s3-access-key": "AK",
            "s3-secret-key": "SK",
        },
    )
    rt = Runtime.load(tmp_path)
    assert rt.kubernetes and rt.mode == "multi-user"
    assert rt.hub_api_url == "http://hub:8081/hub/api"
    assert rt.local_url == rt.url == "http://proxy-public/"
    assert rt.secret("service-stac") == "stac-token"
    assert rt.db_url == "postgresql+psycopg://app:pw@twinhub-db-rw.twinhub:5432/app"
    # The S3 admin keys come from the Secret, into this process's configuration only.
    assert rt.config.TwinhubObjectStore.admin_access_key == "AK"
    assert rt.config.TwinhubObjectStore.admin_secret_key == "SK"
    rt.public_url = "https://twinhub.example.org"
    assert rt.url == "https://twinhub.example.org/" and rt.local_url == "http://proxy-public/"
    saved = json.loads(rt.save().read_text())
    assert saved["deployment"] == "kubernetes" and saved["service_urls"] == rt.service_urls
    assert "admin_access_key" not in saved["config"]["TwinhubObjectStore"]
    assert saved["config"]["TwinhubObjectStore"] == {"endpoint_url": "http://s3.example:9000"}


def test_a_missing_secret_is_named_and_never_created(tmp_path: Path) -> None:
    rt = Runtime.load(chart_runtime(tmp_path))
    with pytest.raises(PlatformError, match=r"secret .service-cache. is missing.*Add the key "
                                            r"'service-cache' to the Secret"):  # fmt: skip
        rt.secret("service-cache")
    with pytest.raises(PlatformError, match="secret 'db-url' is missing"):
        _ = rt.db_url
    assert list((tmp_path / "secrets").iterdir()) == []
    # Without the S3 key files the options stay unset (the object store says what it needs).
    assert "admin_access_key" not in rt.config.get("TwinhubObjectStore", {})


def test_runtime_json_errors_name_the_problem(tmp_path: Path) -> None:
    chart_runtime(tmp_path)
    doc = json.loads((tmp_path / "run/runtime.json").read_text())
    rt = Runtime.load(tmp_path)
    with pytest.raises(PlatformError, match=r"no service_urls\['notes'\]"):
        rt.service_url("notes")
    doc["deployment"] = "swarm"
    (tmp_path / "run/runtime.json").write_text(json.dumps(doc))
    with pytest.raises(
        PlatformError, match="deployment 'swarm' is not one of embedded, kubernetes"
    ):
        Runtime.load(tmp_path)


def test_sqlalchemy_url_of_a_libpq_uri() -> None:
    assert sqlalchemy_url("postgres://a:b@h/d") == "postgresql+psycopg://a:b@h/d"
    assert sqlalchemy_url("postgresql://a@h:5/d?sslmode=require\n") == (
        "postgresql+psycopg://a@h:5/d?sslmode=require"
    )
    same = "postgresql+psycopg://a@/d?host=/run"
    assert sqlalchemy_url(same) == same and sqlalchemy_url("sqlite:///x") == "sqlite:///x"


def test_services_and_gateway_register_in_cluster_addresses(tmp_path: Path) -> None:
    chart_runtime(tmp_path, secrets={"service-cache": "c-token", "service-dask-gateway": "g"})
    rt = Runtime.load(tmp_path)
    c = Config()
    CachePart().configure_hub(c, rt)
    GatewayPart().configure_hub(c, rt)
    by_name = {s["name"]: s for s in c.JupyterHub.services}
    assert by_name["cache"]["url"] == "http://twinhub-cache:8000"
    assert by_name["cache"]["api_token"] == "c-token"
    assert by_name["dask-gateway"]["url"] == "http://traefik-twinhub-dask-gateway"
    assert by_name["dask-gateway"]["api_token"] == "g"
    env = _lazy_env(c)
    assert env["TWINHUB_CACHE_URL"] == "http://proxy-public/services/cache/"
    assert (
        env["DASK_GATEWAY__ADDRESS"] == "http://traefik-twinhub-dask-gateway/services/dask-gateway"
    )
    assert env["DASK_GATEWAY__PROXY_ADDRESS"] == "gateway://traefik-twinhub-dask-gateway:80"
    assert env["DASK_GATEWAY__PUBLIC_ADDRESS"] == "http://proxy-public/services/dask-gateway"
    assert CachePart().api_url(rt) == "http://twinhub-cache:8000/services/cache/"
    # A chart without dask-gateway: nothing registered for it.
    chart_runtime(tmp_path, **{"dask-gateway": ""})
    doc = json.loads((tmp_path / "run/runtime.json").read_text())
    del doc["service_urls"]["dask-gateway"]
    (tmp_path / "run/runtime.json").write_text(json.dumps(doc))
    c2 = Config()
    GatewayPart().configure_hub(c2, Runtime.load(tmp_path))
    assert "services" not in c2.JupyterHub


def _lazy_env(c: Config) -> dict[str, str]:
    """c.Spawner.environment as JupyterHub will see it (update() calls made it a lazy value)."""
    value = c.Spawner.environment
    return value.get_value({}) if hasattr(value, "get_value") else dict(value)


def test_core_leaves_the_hub_to_z2jh(tmp_path: Path) -> None:
    """What z2jh set stays; twinhub sets none of bind URL, database, proxy, cookie secret."""
    chart_runtime(tmp_path, secrets={"db-url": f"sqlite:///{tmp_path / 'own.sqlite'}"})
    rt = Runtime.load(tmp_path)
    c = Config()
    c.JupyterHub.services = [{"name": "jupyterhub-idle-culler", "api_token": "z2jh"}]
    c.JupyterHub.load_roles = [{"name": "jupyterhub-idle-culler", "scopes": ["list:users"]}]
    c.JupyterHub.db_url = "sqlite:///z2jh.sqlite"
    CorePart().configure_hub(c, rt)
    assert [s["name"] for s in c.JupyterHub.services] == ["jupyterhub-idle-culler"]
    assert [r["name"] for r in c.JupyterHub.load_roles] == ["jupyterhub-idle-culler"]
    assert c.JupyterHub.db_url == "sqlite:///z2jh.sqlite"
    for key in ("bind_url", "hub_bind_url", "cookie_secret_file", "pid_file"):
        assert key not in c.JupyterHub, key
    assert "ConfigurableHTTPProxy" not in c and "CryptKeeper" not in c
    assert _lazy_env(c)["TWINHUB_INSTANCE"] == "twinhub"
    # twinhub's own tables were migrated into the db-url database.
    from twinhub import db

    db.check_schema(rt.db_url)


def test_pgstac_connection_from_the_db_url_secret(tmp_path: Path) -> None:
    chart_runtime(tmp_path, secrets={"db-url": "postgresql://app:s3cr%2Ft@db-rw.ns:5433/app"})
    rt = Runtime.load(tmp_path)
    url = kubernetes_database_url(rt)
    passfile = tmp_path / "run/pgstac.pgpass"
    assert (
        url
        == f"postgresql://app@/app?host=db-rw.ns&port=5433&passfile={quote(str(passfile), safe='')}"
    )
    assert "s3cr" not in url and passfile.read_text() == "*:*:*:app:s3cr/t\n"
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    assert rt.config.TwinhubDataLake.database_url == url
    chart_runtime(tmp_path, secrets={"db-url": "postgresql://app:a:b@h/app"})
    with pytest.raises(PlatformError, match="password of no ':'"):
        kubernetes_database_url(Runtime.load(tmp_path))


def test_hub_config_is_the_charts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """twinhub.hub_config refuses an embedded runtime (that hub runs jupyterhub_config.py),
    and names the chart's setting when the hub pod lacks $TWINHUB_STATE."""
    from twinhub.hub_config import configure

    monkeypatch.delenv("TWINHUB_STATE", raising=False)
    with pytest.raises(PlatformError, match="jupyterhub.hub.extraEnv"):
        configure(Config())

    Runtime(state_dir=tmp_path, ports={"public": 1, "hub": 2}).save()
    with pytest.raises(PlatformError, match="is not a Kubernetes runtime"):
        configure(Config(), Runtime.load(tmp_path))


def test_keycloak_in_kubernetes_needs_the_public_url(tmp_path: Path) -> None:
    """Refused before the realm is asked: the OAuth callback must be the public address."""
    from twinhub.auth import realm

    # Nothing listens on port 9: had discovery been tried, the error would say so instead.
    config = {"TwinhubKeycloak": {"url": "http://127.0.0.1:9/realms/twinhub"}}
    rt = Runtime.load(chart_runtime(tmp_path, config=config))
    with pytest.raises(realm.KeycloakError, match="set twinhub.publicUrl"):
        realm.configure_hub(Config(), rt)


def test_pod_uvicorn_command() -> None:
    argv = uvicorn_argv("m:f", 8000, *pod_options(("--proxy-headers", "--forwarded-allow-ips",
                                                   "127.0.0.1")), host="0.0.0.0")  # fmt: skip
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert argv[argv.index("--forwarded-allow-ips") + 1] == "*"
    assert uvicorn_argv("m:f", 1)[uvicorn_argv("m:f", 1).index("--host") + 1] == "127.0.0.1"


# -- twinhub service run: the process of a service pod, started for real ----------------------
def _run_cli(state: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "TWINHUB_STATE": str(state)}
    return subprocess.run([sys.executable, "-m", "twinhub", "service", "run", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_service_run_refuses_unknown_and_disabled_services(tmp_path: Path) -> None:
    chart_runtime(tmp_path, ports={"projects": 8000})
    r = _run_cli(tmp_path, "notes")
    assert r.returncode == 2
    services = sorted(p.name for p in parts.load() if isinstance(p, AsgiService))
    assert f"unknown service 'notes'; services: {', '.join(services)}" in r.stderr
    r = _run_cli(tmp_path, "cache")
    assert r.returncode == 2
    assert "service 'cache' is not enabled in this deployment's runtime.json" in r.stderr
    assert "(enabled services: projects)" in r.stderr


_databases = itertools.count()


def cnpg_like_database(pg) -> str:
    """A new database and its owner, made as the chart's CNPG Cluster bootstraps them
    (helm/twinhub/templates/database.yaml: owner role with a password, extensions and
    CREATEROLE granted by the superuser in postInitApplicationSQL, for pgstac's roles);
    the owner is no superuser. Returns the URI as CNPG's ``uri`` key names it (here a
    socket directory for the host)."""
    n = f"k8s_{os.getpid()}_{next(_databases)}"
    password = secrets.token_hex(16)
    pg._psql(f"CREATE ROLE {n} LOGIN PASSWORD '{password}';\nCREATE DATABASE {n} OWNER {n};\n")
    bootstrap = [f"CREATE EXTENSION IF NOT EXISTS {e}" for e in EXTENSIONS]
    pg._psql("".join(f"{sql};\n" for sql in [*bootstrap, f"ALTER ROLE {n} WITH CREATEROLE"]), n)
    return f"postgresql://{n}:{password}@/{n}?host={pg.run_dir}&port={pg.port}"


def _wait_health(proc: subprocess.Popen, url: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"service exited {proc.returncode}:\n{out}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout} s")


@pytest.mark.parametrize(
    "part", [ProjectsPart, CachePart, StacPart, AccountingPart], ids=lambda p: p.name
)
def test_service_run_serves_health(tmp_path: Path, postgres_cluster, part: type) -> None:
    """A pod's process against a chart-shaped runtime (hub API at an address nothing
    answers: health needs no hub): migrations into the db-url database (pgstac's too, for
    stac), prepare, uvicorn."""
    name = part.name
    port = free_port()
    chart_runtime(
        tmp_path,
        ports={name: port},
        config={
            "TwinhubProjects": {"projects": {"A": {"profiles": ["small-cpu"]}}},
            # As the chart renders it; nothing answers there (the meter's ticks fail, the
            # service still serves).
            "TwinhubAccounting": {
                "backend": "prometheus",
                "prometheus_url": "http://127.0.0.1:9",
                "prometheus_namespace": "twinhub",
            },
        },
        secrets={
            f"service-{name}": "t0ken",
            "db-url": cnpg_like_database(postgres_cluster),
        },
        hub_api="http://127.0.0.1:9/hub/api",
    )
    env = {**os.environ, "TWINHUB_STATE": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "twinhub", "service", "run", name], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        health = f"http://127.0.0.1:{port}/services/{name}/{part.health_path}"
        assert _wait_health(proc, health, timeout=180) == 200
        # Anything else needs the hub's word: refused without a token.
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/services/{name}/", timeout=5)
        assert e.value.code in (401, 403, 302)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert f"{name}: serving /services/{name}/ on 0.0.0.0:{port}" in out
    assert re.search(rf"{name}: database \S+ (migrated \S+ -> \w+|at \w+)\n", out), out
    if name == "cache":  # its config file, written 0600 by prepare in the pod's state dir
        f = tmp_path / "run/cache.json"
        assert json.loads(f.read_text())["prefix"] == "/services/cache/"
        assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_pods_starting_together_migrate_one_at_a_time(tmp_path: Path, postgres_cluster) -> None:
    """A new release starts the hub and every service pod at once; each migrates twinhub's
    tables at start. Separate processes on one empty PostgreSQL database all succeed."""
    chart_runtime(tmp_path, secrets={"db-url": cnpg_like_database(postgres_cluster)})
    code = (
        "from twinhub.process.runtime import Runtime\n"
        "from twinhub.services.base import migrate\n"
        "print(migrate(Runtime.load()))\n"
    )
    env = {**os.environ, "TWINHUB_STATE": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
    # One of them migrated the empty database; the others found it done.
    assert sum("migrated empty ->" in o for o in outs) == 1, outs
    from twinhub import db

    db.check_schema(Runtime.load(tmp_path).db_url)
