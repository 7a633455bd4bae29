"""Enable the twinlab server extension for every Jupyter server started from an environment.

Run by ``scripts/setup`` (and by image builds): writes
``<prefix>/etc/jupyter/jupyter_server_config.d/twinlab.json``.  Done by a script rather than
package data-files because editable installs do not install data-files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def install(prefix: str | Path) -> Path:
    target = Path(prefix) / "etc" / "jupyter" / "jupyter_server_config.d" / "twinlab.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"twinlab": True}}}, indent=2)
    )
    target.chmod(0o644)
    return target


def main() -> None:
    prefix = sys.argv[1] if len(sys.argv) > 1 else sys.prefix
    install(prefix)


if __name__ == "__main__":
    main()
