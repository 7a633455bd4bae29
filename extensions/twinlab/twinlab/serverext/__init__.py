"""The twinlab Jupyter server extension, loaded in every user server.

Serves ``GET <base_url>twinlab/api/info`` (authenticated like every server API: token or
hub cookie).  Kept cheap to import: the server imports it at every start.
"""

from __future__ import annotations

from typing import Any

from twinlab.serverext import cache as _cache  # noqa: F401  (registers 'cache')
from twinlab.serverext import storage_info as _storage_info  # noqa: F401  (registers 'storage')
from twinlab.serverext.info import INFO_PROVIDERS, info_provider

__all__ = ["INFO_PROVIDERS", "info_provider"]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    # the handlers need jupyter_server and tornado: loaded only in a running server, so
    # the info registry above stays importable (and cheap) without them
    from jupyter_server.utils import url_path_join

    from twinlab.serverext.handlers import InfoHandler  # needs jupyter_server (see above)
    from twinlab.serverext.lake import handlers as lake_handlers  # (the same)

    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(".*$", [(url_path_join(base, "twinlab/api/info"), InfoHandler)])
    # the data lake page's API (twinlab.browse): lake/... and storage/...
    serverapp.web_app.add_handlers(".*$", lake_handlers(base))
    serverapp.log.info("twinlab extension loaded: %stwinlab/api/info", base)
