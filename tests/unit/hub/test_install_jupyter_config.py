"""twinhub.install_jupyter_config: what it writes into an environment's prefix."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
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


def test_no_fixed_desk_item_and_an_old_one_is_removed(tmp_path):
    """The Help menu's "Service desk" comes from the labextension, where the desk runs; the
    fixed item an earlier version wrote into the overrides goes, other menu items stay."""
    prefix = tmp_path / "prefix"
    overrides = prefix / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    overrides.parent.mkdir(parents=True)
    desk = {
        "command": "help:open",
        "rank": 1,
        "args": {"url": "/services/desk/", "text": "Service desk", "newBrowserTab": True},
    }
    mine = {"command": "help:open", "args": {"url": "https://x.test/", "text": "Mine"}}
    old = {"menus": [{"id": "jp-mainmenu-help", "items": [desk, mine]}]}  # fmt: skip
    overrides.write_text(json.dumps({ijc.MAINMENU: old}))
    ijc.lab_overrides(prefix)
    menus = json.loads(overrides.read_text())[ijc.MAINMENU]["menus"]
    assert menus == [{"id": "jp-mainmenu-help", "items": [mine]}]

    overrides.write_text(json.dumps({ijc.MAINMENU: {"menus": [{"id": "jp-mainmenu-help",
                                                              "items": [desk]}]}}))  # fmt: skip
    ijc.lab_overrides(prefix)
    assert ijc.MAINMENU not in json.loads(overrides.read_text())
    ijc.lab_overrides(tmp_path / "fresh")
    fresh = tmp_path / "fresh" / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    assert "Service desk" not in fresh.read_text()


def test_an_unbuilt_labextension_is_a_clear_error(tmp_path, sources):
    tut, _ = sources
    with pytest.raises(SystemExit, match="no built labextension"):
        ijc.install(tmp_path / "prefix", tut, tmp_path / "nothing-here")


# -- the R kernel ---------------------------------------------------------------------------
# These use the machine's real R with IRkernel (scripts/setup installs Debian's r-base-core
# and r-cran-irkernel, which also puts a spec named "ir" in /usr/share/jupyter/kernels).


def _environment(tmp_path: Path) -> Path:
    """A real Python environment at tmp_path/env that sees this one's packages (a .pth),
    so Jupyter in it searches tmp_path/env/share/jupyter as it would any environment's."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    (site,) = env.glob("lib/python3*/site-packages")
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env


def _kernelspecs(env: Path, home: Path) -> dict[str, dict]:
    """What Jupyter in ``env`` offers: {name: {"dir", "language"}}, by jupyter_client itself."""
    code = (
        "import json; from jupyter_client.kernelspec import KernelSpecManager as M\n"
        "specs = M().get_all_specs()\n"
        "print(json.dumps({k: {'dir': v['resource_dir'], 'language': v['spec']['language']}"
        " for k, v in specs.items()}))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    out = subprocess.run(
        [str(env / "bin" / "python"), "-c", code],
        env={**clean, "HOME": str(home)},  # no user-level kernels of whoever runs the tests
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_r_kernel_spec_runs_the_r_with_irkernel_and_replaces_debians(tmp_path, sources):
    tut, build = sources
    env, home = _environment(tmp_path), tmp_path / "home"
    home.mkdir()
    before = _kernelspecs(env, home)
    assert before["ir"]["dir"] == "/usr/share/jupyter/kernels/ir"  # Debian's, system-wide

    ijc.install(env, tut, build)
    target = env / "share" / "jupyter" / "kernels" / "ir"
    spec = json.loads((target / "kernel.json").read_text())
    r = shutil.which("R")
    assert spec["argv"][0] == r and Path(r).is_absolute()
    # the user's library first (tested below), then IRkernel on the connection file
    assert spec["argv"][1:] == [
        "--no-echo",
        "-e",
        f"{ijc.R_USER_LIBRARY}; IRkernel::main()",
        "--args",
        "{connection_file}",
    ]
    assert (spec["display_name"], spec["language"]) == ("R", "R")
    assert sorted(p.name for p in target.iterdir()) == [
        "kernel.json",
        "logo-64x64.png",
        "logo-svg.svg",
    ]
    for p in [target, target.parent, *target.iterdir()]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p

    # Jupyter in that environment now offers this spec instead of Debian's: one R, not two.
    after = _kernelspecs(env, home)
    assert after["ir"]["dir"] == str(target)
    assert [k for k, v in after.items() if v["language"].lower() == "r"] == ["ir"]
    assert "python3" in after

    # again: the same files, nothing left over
    first = {p.name: p.read_bytes() for p in target.iterdir()}
    ijc.install(env, tut, build)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == first
    assert sorted(p.name for p in target.parent.iterdir()) == ["ir"]


def test_without_r_no_spec_no_error_and_a_stale_spec_of_ours_goes(
    tmp_path, sources, monkeypatch, capsys
):
    tut, build = sources
    prefix = tmp_path / "prefix"
    target = prefix / "share" / "jupyter" / "kernels" / "ir"
    ijc.install(prefix, tut, build)
    assert (target / "kernel.json").is_file()

    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # R is gone
    ijc.main([str(prefix), "--tutorials", str(tut), "--labextension", str(build)])
    assert not target.exists()
    out = capsys.readouterr()
    assert "kernels" not in out.out and "no R kernel: R is no R with IRkernel" in out.err

    # A spec that someone else wrote stays.
    theirs = {"argv": ["/opt/R/bin/R"], "display_name": "R (theirs)", "language": "R"}
    target.mkdir(parents=True)
    (target / "kernel.json").write_text(json.dumps(theirs))
    assert ijc.r_kernel(prefix) is None
    assert json.loads((target / "kernel.json").read_text()) == theirs


@pytest.mark.parametrize("body", ["exit 0", "echo 'Error: no R here' >&2; exit 1"])
def test_an_r_without_irkernel_gets_no_spec(tmp_path, body):
    # A fake R (this machine's R has IRkernel): one answering that IRkernel has no files, one
    # that fails.
    fake = tmp_path / "R"
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    assert ijc.r_kernel(tmp_path / "prefix", str(fake)) is None
    assert not (tmp_path / "prefix").exists()


def _user_library(home: Path, **env: str) -> list[str]:
    """.libPaths() of an R started as every R kernel starts, before IRkernel."""
    out = subprocess.run(
        ["R", "--no-echo", "-e", f"{ijc.R_USER_LIBRARY}; cat(.libPaths(), sep = '\\n')"],
        env={**os.environ, "HOME": str(home), **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.splitlines()


def test_each_r_kernel_makes_and_uses_the_users_own_library(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    clean = {"R_LIBS_USER": ""}  # Debian's Renviron: empty is R's default, ~/R/...
    paths = _user_library(home, **clean)
    lib = Path(paths[0])
    assert lib.is_dir() and lib.is_relative_to(home / "R")
    assert len(paths) > 1 and not any(Path(p).is_relative_to(home) for p in paths[1:])
    assert _user_library(home, **clean) == paths  # once made, used as it is

    # A library that cannot be made is no reason not to start: R's own paths only.
    paths = _user_library(home, R_LIBS_USER="/proc/no/such/library")
    assert paths and not any(p.startswith("/proc") for p in paths)
