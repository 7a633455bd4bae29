"""The platform's tutorials in every user server: copied once into ``<root_dir>/tutorials``.

The environment holds a world-readable copy of the repository's ``notebooks/``
(``<prefix>/share/twinhub/tutorials``, put there by ``twinhub.install_jupyter_config``).
At each server start, a tutorial not yet *offered* to this user is copied into their
tutorials folder; offered names are kept in a marker file in that folder
(:data:`MARKER`), so:

- a tutorial the user edited is never overwritten (it was offered already);
- a tutorial the user deleted stays deleted (the Launcher card copies it back on click);
- a file of the user's that has a tutorial's name is left alone (marked as offered);
- a tutorial new in the environment is copied at the next start;
- deleting the whole folder (marker included) offers every tutorial again.

Cheap on purpose (it runs at every start): one small JSON read and a stat per tutorial.
The server runs as the user's OS account, so the copies are the user's own files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from traitlets import Bool, Unicode
from traitlets.config import Configurable

#: Names of the tutorials already offered to this user (JSON list), in the tutorials folder.
MARKER = ".twinhub-tutorials.json"


class TwinlabTutorials(Configurable):
    """Where the platform's tutorials come from and where a user server offers them."""

    enabled = Bool(
        True, help="Copy the platform's tutorials into the user's tutorials folder at start."
    ).tag(config=True)
    source = Unicode(
        str(Path(sys.prefix) / "share" / "twinhub" / "tutorials"),
        help="The environment's read-only copy of the tutorials (*.ipynb), installed by "
        "twinhub.install_jupyter_config.",
    ).tag(config=True)
    directory = Unicode(
        "tutorials",
        help="The user's tutorials folder, relative to the server's root directory (the "
        "user's home in a hub spawn).",
    ).tag(config=True)


class Tutorials:
    """The tutorials of one server: ``source`` (read-only) offered in ``target``."""

    def __init__(self, source: Path, target: Path, root: Path) -> None:
        self.source, self.target, self.root = source, target, root

    @classmethod
    def from_config(cls, settings: TwinlabTutorials, root_dir: str) -> Tutorials:
        root = Path(root_dir).expanduser()
        return cls(Path(settings.source), root / settings.directory, root)

    def available(self) -> list[Path]:
        """The environment's tutorials, sorted by name (none when it has no copy)."""
        try:
            return sorted(p for p in self.source.glob("*.ipynb") if p.is_file())
        except OSError:
            return []

    def _offered(self) -> set[str]:
        try:
            names = json.loads((self.target / MARKER).read_text())
        except (OSError, ValueError):
            return set()
        return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()

    def _write_offered(self, names: set[str]) -> None:
        tmp = self.target / (MARKER + ".tmp")
        tmp.write_text(json.dumps(sorted(names)))
        os.replace(tmp, self.target / MARKER)

    def offer(self) -> list[str]:
        """Copy every tutorial not offered before; returns the names copied."""
        available = self.available()
        if not available:
            return []
        offered = self._offered()
        new = [p for p in available if p.name not in offered]
        if not new:
            return []
        self.target.mkdir(parents=True, exist_ok=True)
        copied = []
        for p in new:
            dest = self.target / p.name
            if not dest.exists():  # a file of the user's own with that name stays theirs
                _copy(p, dest)
                copied.append(p.name)
            offered.add(p.name)
        self._write_offered(offered)
        return copied

    def restore(self, name: str) -> bool:
        """Copy tutorial ``name`` (a file name from :meth:`available`) back if it is missing;
        ``False`` when the user has a file there already (it is never overwritten)."""
        src = self.source / name
        dest = self.target / name
        if dest.exists():
            return False
        self.target.mkdir(parents=True, exist_ok=True)
        _copy(src, dest)
        self._write_offered(self._offered() | {name})
        return True

    def listing(self) -> list[dict[str, Any]]:
        """One entry per tutorial: file name, title, the path the contents API knows it by
        (relative to the server's root) and whether the user's copy exists."""
        out = []
        for p in self.available():
            dest = self.target / p.name
            try:
                rel = dest.relative_to(self.root).as_posix()
            except ValueError:  # a target outside the root cannot be opened in JupyterLab
                rel = None
            out.append(
                {
                    "name": p.name,
                    "title": notebook_title(p),
                    "path": rel,
                    "present": dest.exists(),
                }
            )
        return out


def _copy(src: Path, dest: Path) -> None:
    # copyfile, not copy2: the user's file gets their umask and a fresh mtime
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def notebook_title(path: Path) -> str:
    """The first Markdown heading of a notebook, else its file name without extension."""
    try:
        nb = json.loads(path.read_text())
        for cell in nb.get("cells", []):
            if cell.get("cell_type") != "markdown":
                continue
            src = cell.get("source", "")
            text = "".join(src) if isinstance(src, list) else str(src)
            for line in text.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    except (OSError, ValueError, AttributeError):
        pass
    return path.stem
