"""The registry's part: on by default in multi-user mode, its role, and the hub's root
sending visitors who are not logged in to the welcome page."""

from __future__ import annotations

from types import SimpleNamespace

from traitlets.config import Config

from twinhub.process.runtime import Runtime
from twinhub.services.registry import RegistryPart, WelcomeForVisitors


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
    assert set(role["scopes"]) == {
        "read:users", "read:groups", "admin:services", "proxy", "access:services!service=stac"
    }  # fmt: skip
    # Admins' browser sessions carry their admin scope (JupyterHub grants it to them only).
    assert svc["oauth_client_allowed_scopes"] == ["admin:users"]
    assert c.JupyterHub.template_vars["registry_url"] == "/services/registry/welcome"
    assert "registry" in c.TwinhubSpawner.services.get_value({})
    assert isinstance(c.JupyterHub.default_url, WelcomeForVisitors)


def test_visitors_land_on_the_welcome_page():
    welcome = WelcomeForVisitors()
    visitor = SimpleNamespace(current_user=None, base_url="/")
    assert welcome(visitor) == "/services/registry/welcome"
    assert welcome(SimpleNamespace(current_user=None, base_url="/twin/")) == (
        "/twin/services/registry/welcome"
    )
    # Logged in: a falsy answer, so JupyterHub goes on as it would without a default_url.
    assert welcome(SimpleNamespace(current_user=object(), base_url="/")) == ""
