"""The desk's part: when it is on, its settings' checks, and the hub's support link."""

from __future__ import annotations

from pathlib import Path

import pytest
from traitlets import TraitError
from traitlets.config import Config

from twinhub.parts import PARTS
from twinhub.process.runtime import Runtime
from twinhub.services.desk import DeskPart, TwinhubDesk, is_enabled


def runtime(tmp_path: Path, mode: str = "multi-user", **config) -> Runtime:
    return Runtime(state_dir=tmp_path, config=Config(config), mode=mode)


def test_on_by_default_in_multi_user_mode_and_on_kubernetes(tmp_path):
    assert is_enabled(runtime(tmp_path))
    assert not is_enabled(runtime(tmp_path, "personal"))
    k = runtime(tmp_path, "personal")
    k.deployment = "kubernetes"
    assert is_enabled(k)
    assert not is_enabled(runtime(tmp_path, TwinhubDesk={"enabled": False}))
    assert DeskPart in PARTS


def test_support_link_points_at_the_desk(tmp_path):
    c = Config()
    c.JupyterHub.template_vars = {"platform_name": "Twin"}
    c.TwinhubFace.support_url = ""  # what the face part set before (nothing configured)
    DeskPart().configure_service(c, runtime(tmp_path))
    assert c.TwinhubFace.support_url == "/services/desk/"
    assert c.JupyterHub.template_vars == {"platform_name": "Twin", "support_url": "/services/desk/"}

    c = Config()
    DeskPart().configure_service(c, runtime(tmp_path, JupyterHub={"base_url": "/twin/"}))
    assert c.TwinhubFace.support_url == "/twin/services/desk/"


def test_an_operators_support_link_wins(tmp_path):
    c = Config()
    c.TwinhubFace.support_url = "https://help.example.org/"
    rt = runtime(tmp_path, TwinhubFace={"support_url": "https://help.example.org/"})
    DeskPart().configure_service(c, rt)
    assert c.TwinhubFace.support_url == "https://help.example.org/"
    assert "template_vars" not in c.JupyterHub


def test_prepare_makes_a_private_maildir(tmp_path):
    DeskPart().prepare_service(runtime(tmp_path), print)
    assert (tmp_path / "mail").is_dir() and (tmp_path / "mail").stat().st_mode & 0o777 == 0o700
    other = tmp_path / "smtp"
    other.mkdir()
    DeskPart().prepare_service(runtime(other, TwinhubDesk={"smtp_host": "mx"}), print)
    assert not (other / "mail").exists()


@pytest.mark.parametrize("name", ["max_attachment_bytes", "max_attachments", "max_body_chars"])
def test_caps_must_be_positive(name):
    with pytest.raises(TraitError, match=name):
        TwinhubDesk(config=Config({"TwinhubDesk": {name: 0}}))
