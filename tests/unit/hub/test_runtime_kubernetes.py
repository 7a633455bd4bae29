"""The Kubernetes deployment of the same code: the runtime the chart mounts (runtime.json in
a ConfigMap, Secrets as files), the parts' Kubernetes branches, and `twinhub service run`,
started for real as a pod would run it."""

from __future__ import annotations

import functools
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
from urllib.parse import quote, unquote, urlsplit

import psycopg
import pytest
from traitlets.config import Config

from tests.helpers import helm
from twinhub import parts
from twinhub.errors import PlatformError, StartError
from twinhub.gateway import GatewayPart
from twinhub.hubconf.core import CorePart
from twinhub.process.runtime import Runtime, sqlalchemy_url
from twinhub.process.supervisor import free_port
from twinhub.services.accounting import AccountingPart
from twinhub.services.base import AsgiService, pod_options
from twinhub.services.cache import CachePart
from twinhub.services.datalake import (
    StacPart,
    kubernetes_database_url,
    migrate_pgstac_as_owner,
    without_role_statements,
)
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


@pytest.mark.parametrize(
    "bad",
    ["app:s3cr3t-pw@twinhub-db-rw/app", "postgresql://app:s3cr3t-pw@twinhub-db-rw:54x2/app"],
    ids=["no-scheme", "bad-port"],
)
def test_an_invalid_db_url_secret_keeps_its_password_out_of_the_log(
    tmp_path: Path, bad: str
) -> None:
    """A malformed db-url Secret stops the pod with a message that a pod log may carry: the
    scheme at most, never the URL (whose password is the database's)."""
    from twinhub.services.base import migrate

    rt = Runtime.load(chart_runtime(tmp_path, secrets={"db-url": bad}))
    with pytest.raises(PlatformError, match="is not a valid SQLAlchemy URL") as e:
        migrate(rt)
    assert "s3cr3t" not in str(e.value) and "twinhub-db-rw" not in str(e.value)
    scheme = "scheme 'postgresql+psycopg'" if "://" in bad else "no scheme"
    assert f"db_url ({scheme})" in str(e.value)


def test_a_pod_waits_for_its_database_then_stops_with_one_line(tmp_path: Path) -> None:
    """CNPG's cluster bootstraps while the release's pods start: a pod retries, saying so,
    for a bounded time (shortened here), then stops with one line naming the database's
    host and the driver's reason: no traceback, never the password. Nothing listens on
    the port."""
    from twinhub.services.base import migrate

    port = free_port()
    db_url = f"postgresql://app:s3cr3t-pw@127.0.0.1:{port}/app"
    rt = Runtime.load(chart_runtime(tmp_path, secrets={"db-url": db_url}))
    said: list[str] = []
    start = time.monotonic()
    with pytest.raises(PlatformError) as e:
        migrate(rt, wait=3, say=said.append)
    assert 3 <= time.monotonic() - start < 30
    where = f"postgresql+psycopg://app:***@127.0.0.1:{port}/app"
    assert str(e.value).startswith(f"database {where}: ") and "\n" not in str(e.value)
    assert "refused" in str(e.value).lower()
    assert said and said[0].startswith(f"waiting for the database {where} (0 of 3 s): ")
    assert all("s3cr3t" not in line for line in [str(e.value), *said])


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


def test_first_admin_password_comes_from_the_secret_and_stays_out_of_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Local accounts in Kubernetes: the hub creates the first admin with the chart's
    admin-password key, logs where it is (not what), and reads the key only while that
    account does not exist."""
    from twinhub import db
    from twinhub.auth.local_accounts import get_account, verify_login
    from twinhub.auth.part import AuthPart

    password = secrets.token_urlsafe(30)
    db_url = f"sqlite:///{tmp_path / 'own.sqlite'}"
    chart_runtime(tmp_path, secrets={"db-url": db_url, "admin-password": password})
    rt = Runtime.load(tmp_path)
    db.upgrade(rt.db_url)
    AuthPart().configure_hub(Config(), rt)
    log = capsys.readouterr().out
    assert "first admin account: admin; its password is key 'admin-password'" in log
    assert password not in log
    account = verify_login(rt.db_url, "admin", password)
    assert account is not None and account.is_admin
    # Restarted hub: the account exists, the key is not needed and nothing is logged.
    (tmp_path / "secrets" / "admin-password").unlink()
    AuthPart().configure_hub(Config(), Runtime.load(tmp_path))
    assert "first admin" not in capsys.readouterr().out
    # A fresh database without the key: the missing key is named.
    (tmp_path / "own.sqlite").unlink()
    db.dispose_engines()
    db.upgrade(rt.db_url)
    with pytest.raises(PlatformError, match="secret 'admin-password' is missing"):
        AuthPart().configure_hub(Config(), Runtime.load(tmp_path))
    # An operator's existingSecret whose password the configured policy refuses: the key
    # is named, the password is not, and no account is made.
    config = {"TwinhubLocalAuth": {"min_password_length": 16}}
    chart_runtime(tmp_path, config=config, secrets={"admin-password": "fifteen-chars-x"})
    with pytest.raises(PlatformError) as e:
        AuthPart().configure_hub(Config(), Runtime.load(tmp_path))
    assert str(e.value) == (
        "key 'admin-password' of twinhub-secrets: password too short: at least 16 characters"
    )
    assert get_account(rt.db_url, "admin") is None


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
    # A percent-encoded owner name: decoded once, so the passfile's user is the URL's.
    chart_runtime(tmp_path, secrets={"db-url": "postgresql://app%40x%3Ay:pw@h/app"})
    url = kubernetes_database_url(Runtime.load(tmp_path))
    assert urlsplit(url).username == "app%40x%3Ay" and unquote("app%40x%3Ay") == "app@x:y"
    assert passfile.read_text() == "*:*:*:app@x\\:y:pw\n"  # libpq's escape of ':'
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


def test_service_run_refuses_an_embedded_runtime(tmp_path: Path) -> None:
    """Embedded services listen on loopback, started by twinhub up: a pod's command on an
    embedded state dir would serve on every interface. Refused before anything is done."""
    Runtime(state_dir=tmp_path, ports={"public": 1, "hub": 2, "projects": 3}).save()
    r = _run_cli(tmp_path, "projects")
    assert r.returncode == 2, r.stderr
    assert "twinhub service run is for the Helm chart's pods (deployment 'kubernetes')" in r.stderr
    assert f"the runtime in {tmp_path} is 'embedded'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "twinhub.sqlite").exists() and not list(tmp_path.glob("*.sqlite"))


_databases = itertools.count()


@functools.cache
def cnpg_bootstrap() -> dict:
    """``spec.bootstrap.initdb`` of the chart's CNPG Cluster twinhub-db, as Helm renders it
    (helm/twinhub/templates/database.yaml): the tests run this SQL, so they cannot drift."""
    if helm.missing_helm():
        pytest.skip(f"Helm is not installed ({', '.join(helm.missing_helm())}): scripts/fetch-helm")
    return helm.find(helm.render("default"), "Cluster", "twinhub-db")["spec"]["bootstrap"]["initdb"]


def cnpg_database(pg) -> tuple[str, str]:
    """A new database bootstrapped as the chart's CNPG Cluster is: what the operator does
    itself (owner role with a password, its database), then the chart's ``postInitSQL`` (in
    ``postgres``) and ``postInitApplicationSQL`` (in the new database), both as superuser.
    The session cluster is shared, so the chart's names (``twinhub``, ``keycloak``) become
    this test's own; pgstac's roles are the cluster's, as in CNPG. Returns the owner's URI
    as CNPG's ``uri`` key names it (here a socket directory for the host) and the name of
    Keycloak's database."""
    initdb = cnpg_bootstrap()
    n = f"k8s_{os.getpid()}_{next(_databases)}"
    names = {initdb["owner"]: n, initdb["database"]: n, "keycloak": f"kc_{n}"}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")

    def run(statements: list[str], dbname: str) -> None:
        pg._psql("".join(f"{pattern.sub(lambda m: names[m[1]], sql)};\n" for sql in statements),
                 dbname)  # fmt: skip

    password = secrets.token_hex(16)
    pg._psql(f"CREATE ROLE {n} LOGIN PASSWORD '{password}';\nCREATE DATABASE {n} OWNER {n};\n")
    run(initdb.get("postInitSQL", []), "postgres")
    run(initdb["postInitApplicationSQL"], n)
    return f"postgresql://{n}:{password}@/{n}?host={pg.run_dir}&port={pg.port}", names["keycloak"]


def cnpg_like_database(pg) -> str:
    """The owner's URI of a new database bootstrapped as the chart's (:func:`cnpg_database`)."""
    return cnpg_database(pg)[0]


def test_the_database_owner_cannot_take_other_roles(postgres_cluster) -> None:
    """The chart's owner role is no superuser and has no CREATEROLE (on PostgreSQL 15 it
    could grant itself any role: a shell through COPY ... FROM PROGRAM, Keycloak's realm),
    and Keycloak's database refuses it; pgstac's roles are its own."""
    url, keycloak = cnpg_database(postgres_cluster)
    with psycopg.connect(url, autocommit=True) as conn:
        attrs = conn.execute("SELECT rolsuper, rolcreaterole FROM pg_roles "
                             "WHERE rolname = current_user").fetchone()  # fmt: skip
        assert attrs == (False, False)
        for sql in (
            "GRANT pg_execute_server_program TO current_user",
            f"GRANT {keycloak} TO current_user",
            f"ALTER ROLE {keycloak} PASSWORD 'taken'",
            "CREATE ROLE intruder LOGIN",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SET ROLE {keycloak}")
        for role in ("pgstac_admin", "pgstac_read", "pgstac_ingest"):
            conn.execute(f"SET ROLE {role}")
            conn.execute("RESET ROLE")
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(urlsplit(url)._replace(path=f"/{keycloak}").geturl())


def test_pgstac_migration_names_what_an_owner_without_the_bootstrap_lacks(
    postgres_cluster,
) -> None:
    """An external PostgreSQL whose owner was not given pgstac's roles: the stac pod stops
    before migrating, naming what a superuser must do; nothing of pgstac is made."""
    pg = postgres_cluster
    n = f"bare_{os.getpid()}_{next(_databases)}"
    password = secrets.token_hex(16)
    pg._psql(f"CREATE ROLE {n} LOGIN PASSWORD '{password}';\nCREATE DATABASE {n} OWNER {n};\n")
    dsn = f"postgresql://{n}:{password}@/{n}?host={pg.run_dir}&port={pg.port}"
    with pytest.raises(StartError, match="lacks pgstac's roles pgstac_admin, pgstac_read, "
                                         "pgstac_ingest .*docs/kubernetes.md"):  # fmt: skip
        migrate_pgstac_as_owner(dsn)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regnamespace('pgstac')").fetchone() == (None,)


def test_pgstac_role_statements_are_left_out_of_every_migration() -> None:
    """Every migration file pypgstac ships keeps no role statement once rewritten (the owner
    cannot run them); one it does not know is refused, never dropped."""
    from pypgstac.migrate import get_sql, migrations_dir

    files = sorted(Path(migrations_dir).glob("pgstac.*.sql"))
    assert len(files) > 50
    for f in files:
        sql = get_sql(f.name)
        out = without_role_statements(sql)
        if "CREATE ROLE pgstac_admin" in sql:
            assert "SET ROLE pgstac_admin" in out and "NULL;" in out, f.name
    with pytest.raises(StartError, match="'ALTER ROLE pgstac_read NOLOGIN;'"):
        without_role_statements("SELECT 1;\nALTER ROLE pgstac_read NOLOGIN;\n")
    with pytest.raises(StartError, match="GRANT pgstac_admin TO someone"):
        without_role_statements("GRANT pgstac_admin TO someone;")


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


def test_a_broken_lock_connection_does_not_hide_the_error(postgres_cluster) -> None:
    """The lock's session dies during a migration (the server restarts): the migration's
    own error is what the pod reports, not the failed unlock's."""
    from twinhub.services.base import migration_lock

    owner = cnpg_like_database(postgres_cluster)  # a database of its own: its own locks
    key = 0x74657374
    with (
        pytest.raises(RuntimeError, match="the migration's error"),
        migration_lock(sqlalchemy_url(owner), key=key),
    ):
        with psycopg.connect(owner, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = "
                "'advisory' AND objid = %s::oid AND granted", [key]
            ).fetchall()  # fmt: skip
        assert killed == [(True,)]
        raise RuntimeError("the migration's error")


def test_the_hubs_migration_does_not_wait_for_pgstacs(tmp_path: Path, postgres_cluster) -> None:
    """A stac pod migrates pgstac under a lock of its own: while another stac pod holds
    it (here the test), the hub's migration of twinhub's tables goes ahead."""
    from twinhub.services.base import PGSTAC_LOCK, migrate, migration_lock

    db_url = cnpg_like_database(postgres_cluster)
    hub = Runtime.load(chart_runtime(tmp_path / "hub", secrets={"db-url": db_url}))
    stac_state = chart_runtime(tmp_path / "stac", secrets={"db-url": db_url})
    code = ("from twinhub.process.runtime import Runtime\n"
            "from twinhub.services.datalake import StacPart\n"
            "StacPart().prepare_to_serve(Runtime.load())\n")  # fmt: skip
    with migration_lock(hub.db_url, key=PGSTAC_LOCK):
        proc = subprocess.Popen([sys.executable, "-u", "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "TWINHUB_STATE": str(stac_state)})  # fmt: skip
        try:
            line = proc.stdout.readline()  # twinhub's tables: then it waits for pgstac's lock
            assert line.startswith("stac: database "), line + proc.stdout.read()
            assert migrate(hub).startswith("database "), "the hub's migration"
            time.sleep(0.5)
            assert proc.poll() is None, proc.stdout.read()
        except BaseException:
            proc.kill()
            raise
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    from pypgstac import __version__ as pgstac_version

    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT pgstac.get_version()").fetchone() == (pgstac_version,)


def test_pods_starting_together_migrate_one_at_a_time(tmp_path: Path, postgres_cluster) -> None:
    """A new release starts the hub and every service pod at once (stac with replicas > 1
    too): each migrates twinhub's tables, and stac pgstac's schema, before serving.
    Separate processes, each with its own pod state, on one empty database all succeed."""
    db_url = cnpg_like_database(postgres_cluster)
    code = (
        "import sys\n"
        "from twinhub.process.runtime import Runtime\n"
        "from twinhub.services.base import migrate\n"
        "from twinhub.services.datalake import StacPart\n"
        "rt = Runtime.load()\n"
        "if sys.argv[1] == 'stac':\n"
        "    StacPart().prepare_to_serve(rt)\n"
        "else:\n"
        "    print(migrate(rt))\n"
    )
    pods = ["hub", "stac", "stac", "stac"]
    procs = []
    for i, pod in enumerate(pods):
        state = chart_runtime(tmp_path / f"pod{i}", secrets={"db-url": db_url})
        env = {**os.environ, "TWINHUB_STATE": str(state)}
        procs.append(subprocess.Popen([sys.executable, "-c", code, pod], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))  # fmt: skip
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
    # One of them migrated the empty database; the others found it done.
    assert sum("migrated empty ->" in o for o in outs) == 1, outs
    from pypgstac import __version__ as pgstac_version

    from twinhub import db

    db.check_schema(Runtime.load(tmp_path / "pod0").db_url)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT pgstac.get_version()").fetchone() == (pgstac_version,)


def test_a_percent_encoded_user_name_reaches_libpq_decoded() -> None:
    """The connection pgstac's loader and stac use names the user the passfile names."""
    from twinhub.services.datalake.database import _from_url

    conn = _from_url("postgresql://app%40x%3Ay@db.example:5432/app?passfile=/run/pgpass")
    assert conn.user == "app@x:y"
    assert "user=app@x:y" in conn.libpq_dsn() or "user='app@x:y'" in conn.libpq_dsn()
    spaced = _from_url("postgresql://my%20app@db/app?passfile=/p")
    assert "user='my app'" in spaced.libpq_dsn()
