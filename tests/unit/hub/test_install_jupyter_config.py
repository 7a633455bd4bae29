"""twinhub.install_jupyter_config: what it writes into an environment's prefix."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from twinhub import install_jupyter_config as ijc


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, Path]:
    tut = tmp_path / "notebooks"
    (tut / ".ipynb_checkpoints").mkdir(parents=True)
    (tut / "01-x.ipynb").write_text("{}")
    (tut / "README.md").write_text("#")
    (tut / ".ipynb_checkpoints" / "01-x-checkpoint.ipynb").write_text("{}")
    build = tmp_path / "build"
    (build / "static").mkdir(parents=True)
    (build / "package.json").write_text(json.dumps({"name": ijc.LABEXTENSION}))
    (build / "static" / "remoteEntry.js").write_text("//")
    return tut, build


def test_install_writes_config_tutorials_labextension_and_settings(tmp_path, sources):
    tut, build = sources
    prefix = tmp_path / "prefix"
    overrides = prefix / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    overrides.parent.mkdir(parents=True)
    overrides.write_text(json.dumps({"other-plugin:x": {"a": 1}}))  # another package's
    ijc.install(prefix, tut, build)

    server = json.loads((prefix / "etc/jupyter/jupyter_server_config.d/twinlab.json").read_text())[
        "ServerApp"
    ]["jpserver_extensions"]
    assert server == {
        "twinlab": True,
        "panel.io.jupyter_server_extension": False,
        "dask_labextension": False,
    }
    settings = json.loads(overrides.read_text())
    assert settings["other-plugin:x"] == {"a": 1}
    assert settings["@jupyterlab/apputils-extension:notification"] == {
        "fetchNews": "false",
        "checkForUpdates": False,
    }
    shared = prefix / "share" / "twinhub" / "tutorials"
    assert sorted(p.name for p in shared.iterdir()) == ["01-x.ipynb"]
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "01-x.ipynb").stat().st_mode) == 0o644
    ext = prefix / "share" / "jupyter" / "labextensions" / "@twinhub" / "lab"
    assert (ext / "static" / "remoteEntry.js").is_file() and (ext / "package.json").is_file()

    # again, after a tutorial was removed from the repository: the copy follows
    (tut / "01-x.ipynb").rename(tut / "02-y.ipynb")
    ijc.install(prefix, tut, build)
    assert sorted(p.name for p in shared.iterdir()) == ["02-y.ipynb"]


def test_an_unbuilt_labextension_is_a_clear_error(tmp_path, sources):
    tut, _ = sources
    with pytest.raises(SystemExit, match="no built labextension"):
        ijc.install(tmp_path / "prefix", tut, tmp_path / "nothing-here")
