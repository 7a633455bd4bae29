"""The Kubernetes deployment of the same code: the runtime the chart mounts (runtime.json in
a ConfigMap, Secrets as files), the parts' Kubernetes branches, and `twinhub service run`,
started for real as a pod would run it."""

from __future__ import annotations

import json
import secrets
import stat
import time
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest
from traitlets.config import Config

from tests.helpers.chart_runtime import chart_runtime
from twinhub.errors import PlatformError
from twinhub.gateway import GatewayPart
from twinhub.hubconf.core import CorePart
from twinhub.process.runtime import Runtime, sqlalchemy_url
from twinhub.process.supervisor import free_port
from twinhub.services.cache import CachePart
from twinhub.services.datalake import (
    kubernetes_database_url,
)


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


def test_a_percent_encoded_user_name_reaches_libpq_decoded() -> None:
    """The connection pgstac's loader and stac use names the user the passfile names."""
    from twinhub.services.datalake.database import _from_url

    conn = _from_url("postgresql://app%40x%3Ay@db.example:5432/app?passfile=/run/pgpass")
    assert conn.user == "app@x:y"
    assert "user=app@x:y" in conn.libpq_dsn() or "user='app@x:y'" in conn.libpq_dsn()
    spaced = _from_url("postgresql://my%20app@db/app?passfile=/p")
    assert "user='my app'" in spaced.libpq_dsn()
