"""twinlab: runs in each user's server and on Dask workers.

Kept import-light on purpose: the server extension is imported at every server start.
``twinlab.usage(...)`` (your usage as a DataFrame, :mod:`twinlab.usage`) is loaded on first
use; ``twinlab.services()`` (the registry's services you may use, :mod:`twinlab.registry`)
likewise.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type checkers see the function __getattr__ hands out
    from twinlab.registry import services as services

__version__ = "0.1.0"

#: Subpackages reached as attributes of ``twinlab`` (loaded on first use).
_LAZY = ("usage",)
#: Functions reached as attributes of ``twinlab``: name -> the module defining them.
_LAZY_FUNCTIONS = {"services": "twinlab.registry"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        # importing sets the attribute: later look-ups do not come here
        return import_module(f"twinlab.{name}")
    if name in _LAZY_FUNCTIONS:
        # a function, not a module: twinlab.services() stays callable after its module loads
        return getattr(import_module(_LAZY_FUNCTIONS[name]), name)
    raise AttributeError(f"module 'twinlab' has no attribute {name!r}")


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Jupyter server finds the ``twinlab.serverext`` extension through this hook."""
    return [{"module": "twinlab.serverext"}]
