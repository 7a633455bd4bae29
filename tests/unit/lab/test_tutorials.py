"""twinlab.serverext.tutorials: what is copied into a user's tutorials folder, and when."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from twinlab.serverext.tutorials import MARKER, Tutorials, TwinlabTutorials, notebook_title


def _nb(title: str) -> str:
    cells = [
        {"cell_type": "code", "source": ["# not a heading: code\n"]},
        {"cell_type": "markdown", "source": ["Intro\n", f"# {title}\n", "more"]},
    ]
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


@pytest.fixture
def env(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "share" / "tutorials"
    source.mkdir(parents=True)
    (source / "01-a.ipynb").write_text(_nb("First steps"))
    (source / "02-b.ipynb").write_text(_nb("The lake"))
    (source / "README.md").write_text("not a notebook")
    home = tmp_path / "home"
    home.mkdir()
    return source, home


def test_first_start_copies_every_tutorial_and_lists_them(env):
    source, home = env
    t = Tutorials(source, home / "tutorials", home)
    assert t.offer() == ["01-a.ipynb", "02-b.ipynb"]
    assert sorted(p.name for p in (home / "tutorials").iterdir()) == [
        MARKER, "01-a.ipynb", "02-b.ipynb"
    ]  # fmt: skip
    assert (home / "tutorials" / "01-a.ipynb").read_text() == (source / "01-a.ipynb").read_text()
    assert t.listing() == [
        {"name": "01-a.ipynb", "title": "First steps", "path": "tutorials/01-a.ipynb",
         "present": True},
        {"name": "02-b.ipynb", "title": "The lake", "path": "tutorials/02-b.ipynb",
         "present": True},
    ]  # fmt: skip


def test_edits_and_deletions_survive_the_next_start(env):
    source, home = env
    t = Tutorials(source, home / "tutorials", home)
    t.offer()
    (home / "tutorials" / "01-a.ipynb").write_text("my edit")
    (home / "tutorials" / "02-b.ipynb").unlink()
    assert t.offer() == []
    assert (home / "tutorials" / "01-a.ipynb").read_text() == "my edit"
    assert not (home / "tutorials" / "02-b.ipynb").exists()
    assert [e["present"] for e in t.listing()] == [True, False]
    # the Launcher card copies a deleted one back, never over the user's file
    assert t.restore("02-b.ipynb") is True
    assert t.restore("01-a.ipynb") is False
    assert (home / "tutorials" / "01-a.ipynb").read_text() == "my edit"


def test_a_new_tutorial_is_offered_and_a_users_own_file_is_kept(env):
    source, home = env
    t = Tutorials(source, home / "tutorials", home)
    t.offer()
    (home / "tutorials" / "03-c.ipynb").write_text("the user's own notebook")
    (source / "03-c.ipynb").write_text(_nb("New"))
    (source / "04-d.ipynb").write_text(_nb("Newer"))
    assert t.offer() == ["04-d.ipynb"]
    assert (home / "tutorials" / "03-c.ipynb").read_text() == "the user's own notebook"
    assert json.loads((home / "tutorials" / MARKER).read_text()) == [
        "01-a.ipynb", "02-b.ipynb", "03-c.ipynb", "04-d.ipynb"
    ]  # fmt: skip


def test_deleting_the_folder_is_a_reset(env):
    source, home = env
    t = Tutorials(source, home / "tutorials", home)
    t.offer()
    for p in (home / "tutorials").iterdir():
        p.unlink()
    (home / "tutorials").rmdir()
    assert t.offer() == ["01-a.ipynb", "02-b.ipynb"]


def test_no_source_copies_nothing_and_a_target_outside_the_root_has_no_path(tmp_path):
    t = Tutorials(tmp_path / "missing", tmp_path / "home" / "tutorials", tmp_path / "home")
    assert t.offer() == [] and t.listing() == []
    assert not (tmp_path / "home").exists()
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.ipynb").write_text("{}")
    outside = Tutorials(src, tmp_path / "elsewhere", tmp_path / "home")
    assert outside.listing()[0]["path"] is None


def test_title_falls_back_to_the_file_name(tmp_path):
    p = tmp_path / "plain.ipynb"
    p.write_text("not json")
    assert notebook_title(p) == "plain"


def test_config_places_the_folder_under_the_server_root(tmp_path):
    from traitlets.config import Config

    c = Config()
    c.TwinlabTutorials.directory = "learn"
    c.TwinlabTutorials.source = str(tmp_path / "src")
    t = Tutorials.from_config(TwinlabTutorials(config=c), str(tmp_path))
    assert t.target == tmp_path / "learn" and t.source == tmp_path / "src"
