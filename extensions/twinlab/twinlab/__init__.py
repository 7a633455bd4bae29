"""twinlab: runs in each user's server and on Dask workers.

Kept import-light on purpose: the server extension is imported at every server start.
"""

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Jupyter server finds the ``twinlab.serverext`` extension through this hook."""
    return [{"module": "twinlab.serverext"}]
