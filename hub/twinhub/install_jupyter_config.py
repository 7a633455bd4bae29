"""Set up every Jupyter server started from an environment: twinhub's share of it.

Run by ``scripts/setup`` (and by image builds) as
``python -m twinhub.install_jupyter_config <prefix> [--tutorials DIR] [--labextension DIR]``:

- ``<prefix>/etc/jupyter/jupyter_server_config.d/twinlab.json``: the twinlab server
  extension on; server extensions not needed at start off (see :data:`SERVER_EXTENSIONS`);
- ``<prefix>/share/twinhub/tutorials/``: a world-readable copy of the platform's tutorials
  (the repository's ``notebooks/``), which twinlab copies into each user's folder;
- ``<prefix>/share/jupyter/labextensions/@twinhub/lab/``: the prebuilt JupyterLab
  extension (Launcher cards for the tutorials, docs and support in the Help menu), built by
  ``scripts/setup`` from ``extensions/twinlab/labextension``;
- ``<prefix>/share/jupyter/lab/settings/overrides.json``: JupyterLab defaults (no news
  popup, no update check: a platform's users cannot act on either, and servers may have no
  internet).

The Dask sidebar's "+ New" is pointed at Dask Gateway by the hub (the gateway part's
spawner environment), not here: only where the platform runs a gateway.

Done by a script rather than package data-files because editable installs do not install
data-files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The labextension's name (its package.json) and where scripts/setup builds it.
LABEXTENSION = "@twinhub/lab"
LABEXTENSION_BUILD = REPO / "extensions" / "twinlab" / "labextension" / "build" / "labextension"
TUTORIALS = REPO / "notebooks"

#: Server extensions switched by twinhub.  Each enabled extension is imported and loaded
#: at every user server start, before the server answers the hub.
SERVER_EXTENSIONS = {
    "twinlab": True,
    # panel's extension serves Panel apps as previews (/panel-preview): ~0.5 s of imports
    # at every start for a feature reached through `panel serve`-style previews only;
    # Panel and HoloViews output in notebooks works without it (pyviz_comms + the
    # @pyviz/jupyterlab_pyviz labextension).
    "panel.io.jupyter_server_extension": False,
    # the Dask sidebar's API imports dask.distributed (~0.3 s of every start): twinlab loads
    # it just after the server is up instead (twinlab.serverext.deferred)
    "dask_labextension": False,
}

#: JupyterLab settings that differ from JupyterLab's defaults on the platform.
LAB_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    }
}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o644)
    return path


def _copy_tree(src: Path, dest: Path, pattern: str = "*") -> None:
    """Replace ``dest`` with a world-readable copy of ``src``'s files matching ``pattern``."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(
        src, tmp, ignore=lambda d, names: [n for n in names if not _wanted(Path(d) / n, pattern)]
    )
    for p in [tmp, *tmp.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _wanted(path: Path, pattern: str) -> bool:
    if path.name.startswith("."):  # .ipynb_checkpoints and the like
        return False
    return path.is_dir() or path.match(pattern)


def server_config(prefix: Path) -> Path:
    target = prefix / "etc" / "jupyter" / "jupyter_server_config.d" / "twinlab.json"
    # twinlab.json sorts after the other packages' files in that folder: its switches win
    return _write(
        target, json.dumps({"ServerApp": {"jpserver_extensions": SERVER_EXTENSIONS}}, indent=2)
    )


def lab_overrides(prefix: Path) -> Path:
    target = prefix / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    try:
        current = json.loads(target.read_text())
    except (OSError, ValueError):
        current = {}
    for plugin, values in LAB_OVERRIDES.items():
        current.setdefault(plugin, {}).update(values)
    return _write(target, json.dumps(current, indent=2))


def tutorials(prefix: Path, source: Path) -> Path:
    target = prefix / "share" / "twinhub" / "tutorials"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.parent.chmod(0o755)
    _copy_tree(source, target, "*.ipynb")
    return target


def labextension(prefix: Path, build: Path) -> Path:
    if not (build / "package.json").is_file():
        raise SystemExit(
            f"no built labextension in {build}: build it first "
            "(scripts/setup does: npm install, then @jupyterlab/builder's build-labextension)"
        )
    target = prefix / "share" / "jupyter" / "labextensions" / LABEXTENSION
    target.parent.mkdir(parents=True, exist_ok=True)
    _copy_tree(build, target)
    return target


def install(
    prefix: str | Path, tutorials_dir: Path | None = None, labextension_dir: Path | None = None
) -> list[Path]:
    """Everything above; the tutorials and the labextension only when their source exists
    (an installed, non-editable twinhub has no checkout beside it: pass them explicitly)."""
    prefix = Path(prefix)
    done = [server_config(prefix), lab_overrides(prefix)]
    src = tutorials_dir or TUTORIALS
    if tutorials_dir or src.is_dir():
        done.append(tutorials(prefix, src))
    build = labextension_dir or LABEXTENSION_BUILD
    if labextension_dir or build.is_dir():
        done.append(labextension(prefix, build))
    return done


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prefix", nargs="?", default=sys.prefix, help="the environment's prefix")
    ap.add_argument("--tutorials", type=Path, help=f"the tutorials' folder (default {TUTORIALS})")
    ap.add_argument(
        "--labextension", type=Path, help=f"the built labextension (default {LABEXTENSION_BUILD})"
    )
    args = ap.parse_args(argv)
    for path in install(args.prefix, args.tutorials, args.labextension):
        print(f"twinhub: wrote {path}")


if __name__ == "__main__":
    main()
