"""twinlab.browse: the "Data lake" page of a user server.

The page (``static/``: plain HTML/JS/CSS, nothing from a CDN) is served by a tiny static
file server (``python -m twinlab.browse --unix-socket PATH``) that jupyter-server-proxy
starts on first use and puts behind the user server's own authentication at ``<base_url>datalake/``;
:func:`server_process` is its ``jupyter_serverproxy_servers`` entry point, which also
gives the JupyterLab Launcher its "Data lake" tile.  The page calls the twinlab server
extension's REST API (``<base_url>twinlab/api/lake/...``, ``.../storage/...``) on the same
origin.  See docs/browse.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

STATIC = Path(__file__).parent / "static"
#: The proxied path under the user server's base URL (the entry point's name).
NAME = "datalake"


def server_process() -> dict[str, Any]:
    """jupyter-server-proxy's settings for the page server (a Launcher tile "Data lake")."""
    return {
        # A Unix socket in a directory only this user can enter: a loopback port could be
        # taken first by another user's process, which would then serve the page.
        "command": [sys.executable, "-m", "twinlab.browse", "--unix-socket", "{unix_socket}"],
        "unix_socket": True,
        "timeout": 30,
        "absolute_url": False,
        "launcher_entry": {
            "enabled": True,
            "title": "Data lake",
            "icon_path": str(STATIC / "icon.svg"),
            # JupyterLab draws a tile's own icon only in the kernel rows (Notebook,
            # Console); elsewhere the tile is text only. Beside the notebooks, like other
            # server-proxy apps.
            "category": "Notebook",
        },
        "new_browser_tab": True,
    }
