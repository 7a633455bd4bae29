"""twinlab: runs in each user's server and on Dask workers.

Kept import-light on purpose: the server extension is imported at every server start.
``twinlab.usage(...)`` (your usage as a DataFrame, :mod:`twinlab.usage`) is loaded on first
use.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: Subpackages reached as attributes of ``twinlab`` (loaded on first use).
_LAZY = ("usage",)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        # importing sets the attribute: later look-ups do not come here
        return import_module(f"twinlab.{name}")
    raise AttributeError(f"module 'twinlab' has no attribute {name!r}")


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Jupyter server finds the ``twinlab.serverext`` extension through this hook."""
    return [{"module": "twinlab.serverext"}]
