"""The registry's part: on by default in multi-user mode, its role, and the hub's root
sending visitors who are not logged in to the welcome page."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from traitlets import TraitError
from traitlets.config import Config

from twinhub.process.runtime import Runtime
from twinhub.services.registry import RegistryPart, WelcomeForVisitors
from twinhub.services.registry.config import TwinhubRegistry


def rt(tmp_path, mode="multi-user", **registry) -> Runtime:
    cfg = Config()
    for k, v in registry.items():
        setattr(cfg.TwinhubRegistry, k, v)
    return Runtime(state_dir=tmp_path, config=cfg, mode=mode, ports={"public": 8000, "hub": 8081})


def test_enabled_by_default_in_multi_user_mode_only(tmp_path):
    part = RegistryPart()
    assert part.enabled(rt(tmp_path))
    assert not part.enabled(rt(tmp_path, mode="personal"))
    assert part.enabled(rt(tmp_path, mode="personal", enabled=True))
    assert not part.enabled(rt(tmp_path, enabled=False))


def test_hub_configuration(tmp_path):
    r = rt(tmp_path)
    part = RegistryPart()
    part.plan(r)
    c = Config()
    c.JupyterHub.template_vars = {"platform_name": "Blue Twin"}  # set by the face: kept
    part.configure_hub(c, r)
    (svc,) = [s for s in c.JupyterHub.services if s["name"] == "registry"]
    assert c.JupyterHub.template_vars["platform_name"] == "Blue Twin"
    assert svc["url"] == f"http://127.0.0.1:{r.ports['registry']}"
    (role,) = [x for x in c.JupyterHub.load_roles if x["name"] == "registry-service"]
    # No "proxy" (finding 8): the hub adds routes itself, checking them every 30 s at most.
    assert set(role["scopes"]) == {
        "read:users", "read:groups", "admin:services", "access:services!service=stac"
    }  # fmt: skip
    assert c.JupyterHub.last_activity_interval == 30
    # Admins' browser sessions carry admin-ui (JupyterHub grants it to admins only), not
    # the hub-wide admin:users (finding 1).
    assert svc["oauth_client_allowed_scopes"] == ["admin-ui"]
    assert c.JupyterHub.template_vars["registry_url"] == "/services/registry/welcome"
    assert "registry" in c.TwinhubSpawner.services.get_value({})
    assert isinstance(c.JupyterHub.default_url, WelcomeForVisitors)


def test_a_shorter_route_check_interval_is_kept(tmp_path):
    r = rt(tmp_path)
    part = RegistryPart()
    part.plan(r)
    c = Config()
    c.JupyterHub.last_activity_interval = 10
    part.configure_hub(c, r)
    assert c.JupyterHub.last_activity_interval == 10
    c = Config()
    c.JupyterHub.last_activity_interval = 600
    part.configure_hub(c, r)
    assert c.JupyterHub.last_activity_interval == 30


def test_visitors_land_on_the_welcome_page():
    welcome = WelcomeForVisitors()
    visitor = SimpleNamespace(current_user=None, base_url="/")
    assert welcome(visitor) == "/services/registry/welcome"
    assert welcome(SimpleNamespace(current_user=None, base_url="/twin/")) == (
        "/twin/services/registry/welcome"
    )
    # Logged in: a falsy answer, so JupyterHub goes on as it would without a default_url.
    assert welcome(SimpleNamespace(current_user=object(), base_url="/")) == ""


# -- review finding 9: settings are checked ------------------------------------------------
@pytest.mark.parametrize(
    "trait", ["evaluation_interval", "health_interval", "fetch_timeout", "evaluation_budget",
              "gateway_timeout", "lake_refresh_interval"],
)  # fmt: skip
@pytest.mark.parametrize("value", [0, -1, 0.1, float("nan")])
def test_intervals_and_timeouts_below_half_a_second_are_refused(trait, value):
    with pytest.raises(TraitError, match=f"TwinhubRegistry.{trait} must be at least 0.5"):
        TwinhubRegistry(**{trait: value})
    assert getattr(TwinhubRegistry(**{trait: 0.5}), trait) == 0.5


def test_bad_settings_from_config_name_the_trait():
    cfg = Config()
    cfg.TwinhubRegistry.health_interval = 0
    with pytest.raises(TraitError, match="TwinhubRegistry.health_interval"):
        TwinhubRegistry(config=cfg)


@pytest.mark.parametrize("value", [0, -5, 1023])
def test_fetch_max_bytes_below_a_kilobyte_is_refused(value):
    with pytest.raises(TraitError, match="TwinhubRegistry.fetch_max_bytes must be at least 1024"):
        TwinhubRegistry(fetch_max_bytes=value)
    assert TwinhubRegistry(fetch_max_bytes=1024).fetch_max_bytes == 1024


@pytest.mark.parametrize(
    "areas, words",
    [
        ({"Water": "Water"}, "id 'Water' must be lower case"),
        ({"sea ice": "Sea ice"}, "id 'sea ice' must be lower case"),
        ({"": "Nothing"}, "id '' must be lower case"),
        ({"water": ""}, "'water' needs a label"),
        ({"water": "  "}, "'water' needs a label"),
        ({"water": 3}, "'water' needs a label"),
        ({}, "needs at least one area"),
    ],
)
def test_thematic_areas_are_checked(areas, words):
    with pytest.raises(TraitError, match=f"TwinhubRegistry.thematic_areas.*{re.escape(words)}"):
        TwinhubRegistry(thematic_areas=areas)
    assert TwinhubRegistry(thematic_areas={"sea-ice-2": "Sea ice"}).thematic_areas == {"sea-ice-2": "Sea ice"}  # fmt: skip
