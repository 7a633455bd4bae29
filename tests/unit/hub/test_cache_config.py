"""TwinhubCache options and what the supervisor hands the cache service (a 0600 file with
the sources' secret headers), on a real Runtime in a temporary state dir."""

from __future__ import annotations

import json
import stat

import pytest
from traitlets.config import Config

from twinhub.errors import PlatformError
from twinhub.process.runtime import Runtime
from twinhub.services import cache
from twinhub.services.cache import CachePart

PART = CachePart()


def runtime(tmp_path, **sections) -> Runtime:
    rt = Runtime(state_dir=tmp_path, config=Config(sections), ports={"public": 8000})
    PART.plan(rt)
    return rt


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("max_size", 0, "max_size must be positive"),
        ("max_object_gb", -1, "max_object_gb must be positive"),
        ("fetch_timeout", 0, "fetch_timeout must be positive"),
        ("max_age_hours", -2, "max_age_hours must be >= 0"),
        ("max_downloads", 0, "max_downloads must be at least 1"),
        ("max_user_downloads", -1, "max_user_downloads must be at least 1"),
        ("download_wait", -1, "download_wait must be >= 0"),
    ],
)
def test_bad_options_are_named(tmp_path, option, value, words):
    with pytest.raises(PlatformError, match=words):
        runtime(tmp_path, TwinhubCache={option: value})


def test_the_service_config_carries_sources_and_limits_privately(tmp_path):
    source = {"name": "partner", "url": "https://stac.partner.example/api"}
    rt = runtime(
        tmp_path,
        TwinhubCache={"max_size": 0.5, "max_object_gb": 2, "max_age_hours": 1.5},
        TwinhubDataLake={"sources": [{**source, "headers": {"Authorization": "Bearer s3cr3t"}}]},
    )
    assert PART.active(rt) and rt.ports["cache"] > 0
    PART.prepare(rt)
    f = tmp_path / cache.CONFIG_FILE
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    doc = json.loads(f.read_text())
    assert doc["directory"] == str(tmp_path / "cache")
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    assert doc["max_size"] == 500_000_000 and doc["max_object"] == 500_000_000  # clamped
    assert doc["max_age"] == 5400
    assert (doc["max_downloads"], doc["max_user_downloads"], doc["download_wait"]) == (8, 4, 30)
    assert doc["sources"][0]["headers"] == {"Authorization": "Bearer s3cr3t"}
    assert PART.status_line(rt) == "empty (nothing fetched yet)"


def test_disabled_means_no_port_no_component_no_status(tmp_path):
    rt = runtime(tmp_path, TwinhubCache={"enabled": False})
    assert not PART.active(rt)
    assert PART.components(rt) == [] and PART.status_line(rt) is None


def test_hub_registration_and_server_environment(tmp_path):
    rt = runtime(tmp_path)
    c = Config()
    c.TwinhubSpawner.services = {}
    c.Spawner.environment = {}  # as os_spawners.configure_hub leaves them
    PART.configure_hub(c, rt)
    (svc,) = [s for s in c.JupyterHub.services if s["name"] == "cache"]
    assert svc["url"] == f"http://127.0.0.1:{rt.ports['cache']}"
    assert c.Spawner.environment["TWINHUB_CACHE_URL"] == "http://127.0.0.1:8000/services/cache/"
    user_role = next(r for r in c.JupyterHub.load_roles if r["name"] == "user")
    assert "access:services!service=cache" in user_role["scopes"]
    assert "access:services!service=cache" in c.Spawner.server_token_scopes
