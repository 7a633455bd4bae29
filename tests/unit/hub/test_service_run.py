"""`twinhub service run` as a pod runs it, against a real PostgreSQL set up by the chart's own
CNPG bootstrap SQL: migrations under advisory locks, pgstac without CREATEROLE, health."""

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
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.helpers import helm
from tests.helpers.chart_runtime import chart_runtime
from twinhub import parts
from twinhub.errors import StartError
from twinhub.process.runtime import Runtime, sqlalchemy_url
from twinhub.process.supervisor import free_port
from twinhub.services.accounting import AccountingPart
from twinhub.services.base import AsgiService, pod_options
from twinhub.services.cache import CachePart
from twinhub.services.datalake import (
    StacPart,
    migrate_pgstac_as_owner,
    without_role_statements,
)
from twinhub.services.projects import ProjectsPart
from twinhub.services.registration import uvicorn_argv


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
