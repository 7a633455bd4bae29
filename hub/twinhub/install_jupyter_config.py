"""Set up every Jupyter server started from an environment: twinhub's share of it.

Run by ``scripts/setup`` (and by image builds) as
``python -m twinhub.install_jupyter_config <prefix> [--tutorials D] [--labextension D] [--r R]``:

- ``<prefix>/etc/jupyter/jupyter_server_config.d/twinlab.json``: the twinlab server
  extension on; server extensions not needed at start off (see :data:`SERVER_EXTENSIONS`);
- ``<prefix>/share/twinhub/tutorials/``: a world-readable copy of the platform's tutorials
  (the repository's ``notebooks/``), which twinlab copies into each user's folder;
- ``<prefix>/share/jupyter/labextensions/@twinhub/lab/``: the prebuilt JupyterLab
  extension (Launcher cards for the tutorials, docs and support in the Help menu, and the
  "Service desk" item where the platform runs the desk), built by ``scripts/setup`` from
  ``extensions/twinlab/labextension``;
- ``<prefix>/share/jupyter/lab/settings/overrides.json``: JupyterLab defaults (no news
  popup, no update check: a platform's users cannot act on either, and servers may have no
  internet);
- ``<prefix>/share/jupyter/kernels/ir/``: the R kernel (IRkernel in Debian's R), when R with
  IRkernel is installed (see :func:`r_kernel`); none, and no error, without it.

The Dask sidebar's "+ New" is pointed at Dask Gateway by the hub (the gateway part's
spawner environment), not here: only where the platform runs a gateway.

Done by a script rather than package data-files because editable installs do not install
data-files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
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
    },
}
#: Earlier versions put a fixed "Service desk" item into the Help menu here, shown even where
#: no desk runs; the labextension adds it now, where the desk runs. Removed when found.
MAINMENU = "@jupyterlab/mainmenu-extension:plugin"
OLD_DESK_ITEM = {"command": "help:open", "text": "Service desk"}

#: The R kernel's name: IRkernel's own, which Debian's r-cran-irkernel also registers
#: system-wide (/usr/share/jupyter/kernels/ir). Jupyter looks in an environment's
#: share/jupyter before /usr/share/jupyter and takes the first spec of each name, so the one
#: written here replaces Debian's in this environment's servers: one R in the Launcher, not
#: two; and notebooks saved elsewhere with kernel "ir" open with it.
R_KERNEL = "ir"
#: In the kernel.json written here, so that a run without R removes that spec and no other.
WRITTEN_BY = "twinhub.install_jupyter_config"
#: Run by every R kernel before IRkernel: creates the user's library (R_LIBS_USER, by default
#: ~/R/<platform>-library/<R version>) and puts it first. R only uses that folder when it
#: exists, and a non-interactive R (a kernel is one) refuses to create it, so without this
#: install.packages() in a notebook fails with "unable to install packages".
#: Wrapped in try(): whatever happens here, the kernel starts.
R_USER_LIBRARY = (
    "try(local({u <- path.expand(strsplit(Sys.getenv('R_LIBS_USER'), .Platform$path.sep)[[1]][1]); "
    "if (!is.na(u) && nzchar(u) && (dir.exists(u) || dir.create(u, recursive = TRUE, "
    "showWarnings = FALSE))) .libPaths(c(u, .libPaths()))}), silent = TRUE)"
)
#: Where the installed IRkernel keeps its logos (the Launcher tile's icon), or "" without it.
_R_PROBE = "cat(system.file('kernelspec', package = 'IRkernel'))"
_R_LOGOS = ("logo-64x64.png", "logo-svg.svg")


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
    _drop_old_desk_item(current)
    return _write(target, json.dumps(current, indent=2))


def _drop_old_desk_item(settings: dict) -> None:
    """Remove the fixed Help-menu desk item an earlier version wrote (and what it leaves
    empty); anything else in the main menu's settings stays."""
    menu = settings.get(MAINMENU)
    if not isinstance(menu, dict) or not isinstance(menu.get("menus"), list):
        return

    def old(item: object) -> bool:
        return (
            isinstance(item, dict)
            and item.get("command") == OLD_DESK_ITEM["command"]
            and (item.get("args") or {}).get("text") == OLD_DESK_ITEM["text"]
        )

    kept = []
    for m in menu["menus"]:
        if isinstance(m, dict) and isinstance(m.get("items"), list):
            m["items"] = [i for i in m["items"] if not old(i)]
            if not m["items"] and set(m) <= {"id", "items"}:
                continue
        kept.append(m)
    menu["menus"] = kept
    if not kept and set(menu) == {"menus"}:
        del settings[MAINMENU]


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


def _find_r(r: str) -> tuple[str, Path] | None:
    """The R that ``r`` names (its absolute path) and IRkernel's kernelspec folder in it, or
    None: no such R, or no IRkernel in its site or system libraries (--vanilla: not in the
    installing account's own library, which no other account can read)."""
    exe = shutil.which(r)
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--vanilla", "--no-echo", "-e", _R_PROBE],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (exe, Path(out)) if out else None


def _ours(spec_dir: Path) -> bool:
    try:
        meta = json.loads((spec_dir / "kernel.json").read_text()).get("metadata") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(meta, dict) and meta.get("written_by") == WRITTEN_BY


def r_kernel(prefix: Path, r: str = "R") -> Path | None:
    """Register the R kernel for ``prefix``'s servers; returns its folder, or None when
    ``r`` (a command on PATH or a path) is no R with IRkernel. Then a spec written by an
    earlier run is removed (it would start an R that is gone) and any other is left alone."""
    target = prefix / "share" / "jupyter" / "kernels" / R_KERNEL
    found = _find_r(r)
    if found is None:
        if _ours(target):
            shutil.rmtree(target)
        return None
    # The absolute path: a server's PATH is the spawner's choice, not this environment's.
    exe, files = found
    spec = {
        "argv": [exe, "--no-echo", "-e", f"{R_USER_LIBRARY}; IRkernel::main()"]
        + ["--args", "{connection_file}"],
        "display_name": "R",
        "language": "R",
        "interrupt_mode": "signal",
        "metadata": {"written_by": WRITTEN_BY},
    }
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _write(tmp / "kernel.json", json.dumps(spec, indent=1) + "\n")
    for logo in _R_LOGOS:
        if (files / logo).is_file():
            shutil.copyfile(files / logo, tmp / logo)
            (tmp / logo).chmod(0o644)
    for d in (tmp, *tmp.parents[:3]):  # kernels/, jupyter/, share/
        d.chmod(0o755)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def install(
    prefix: str | Path,
    tutorials_dir: Path | None = None,
    labextension_dir: Path | None = None,
    r: str = "R",
) -> list[Path]:
    """Everything above; the tutorials and the labextension only when their source exists
    (an installed, non-editable twinhub has no checkout beside it: pass them explicitly),
    the R kernel only when ``r`` is an R with IRkernel."""
    prefix = Path(prefix)
    done = [server_config(prefix), lab_overrides(prefix)]
    spec = r_kernel(prefix, r)
    if spec is not None:
        done.append(spec)
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
    ap.add_argument(
        "--r",
        default="R",
        help="the R to register a kernel for: a command on PATH or a path (default R); "
        "without IRkernel in it, no R kernel",
    )
    args = ap.parse_args(argv)
    done = install(args.prefix, args.tutorials, args.labextension, args.r)
    for path in done:
        print(f"twinhub: wrote {path}")
    if not any(p.name == R_KERNEL for p in done):
        print(f"twinhub: no R kernel: {args.r} is no R with IRkernel", file=sys.stderr)


if __name__ == "__main__":
    main()
