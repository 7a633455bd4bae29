"""The twinlab Jupyter server extension, loaded in every user server.

Serves ``GET <base_url>twinlab/api/info`` and ``<base_url>twinlab/api/tutorials``
(authenticated like every server API: token or hub cookie), and copies the platform's
tutorials into the user's folder at start (:mod:`twinlab.serverext.tutorials`).  Kept
cheap to import: the server imports it at every start.
"""

from __future__ import annotations

from typing import Any

from twinlab.serverext import cache as _cache  # noqa: F401  (registers 'cache')
from twinlab.serverext import registry_info as _registry_info  # noqa: F401  (registers 'registry')
from twinlab.serverext import storage_info as _storage_info  # noqa: F401  (registers 'storage')
from twinlab.serverext import usage_info as _usage_info  # noqa: F401  (registers 'usage')
from twinlab.serverext.deferred import Deferred
from twinlab.serverext.info import INFO_PROVIDERS, info_provider
from twinlab.serverext.tutorials import Tutorials, TwinlabTutorials

__all__ = ["INFO_PROVIDERS", "info_provider"]


def _offer_tutorials(serverapp: Any) -> Tutorials:
    """The platform's tutorials, copied into the user's folder if not offered before."""
    settings = TwinlabTutorials(config=serverapp.config)
    tutorials = Tutorials.from_config(settings, serverapp.root_dir)
    if settings.enabled:
        try:
            copied = tutorials.offer()
        except OSError as e:  # a full or read-only home must not stop the server
            serverapp.log.warning("twinlab: tutorials not copied to %s: %s", tutorials.target, e)
        else:
            if copied:
                serverapp.log.info("twinlab: tutorials copied to %s: %s", tutorials.target, copied)
    return tutorials


def _dask_dashboards(serverapp: Any) -> None:
    # Imported only here, once dask-labextension is loaded: its base, jupyter_server_proxy,
    # costs start-up time like dask-labextension itself
    try:
        # (imported after the server's start, see above)
        from twinlab.serverext import dashboards
    except ImportError as e:  # no Dask sidebar in this environment
        serverapp.log.info("twinlab: no Dask dashboard proxy: %s", e)
        return
    dashboards.register(serverapp)


def _load_jupyter_server_extension(serverapp: Any) -> None:
    # the handlers need jupyter_server and tornado: loaded only in a running server, so
    # the info registry above stays importable (and cheap) without them
    from jupyter_server.utils import url_path_join
    from tornado.routing import Rule  # (the same)

    from twinlab.serverext.handlers import (  # (the same)
        EarlyHandler,
        InfoHandler,
        TutorialsHandler,
        UntilLoaded,
    )
    from twinlab.serverext.lake import handlers as lake_handlers  # (the same)

    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(".*$", [(url_path_join(base, "twinlab/api/info"), InfoHandler)])
    tutorials = _offer_tutorials(serverapp)
    serverapp.web_app.add_handlers(
        ".*$",
        [
            (
                url_path_join(base, r"twinlab/api/tutorials(?:/([^/]+))?/?"),
                TutorialsHandler,
                {"tutorials": tutorials},
            )
        ],
    )
    # extensions kept off the start path (twinlab.serverext.deferred): their URLs load them
    deferred = Deferred(serverapp)
    serverapp.web_app.settings["twinlab_deferred"] = deferred
    serverapp.web_app.add_handlers(
        ".*$",
        [
            Rule(
                UntilLoaded(url_path_join(base, prefix) + ".*", deferred),
                EarlyHandler,
                {"deferred": deferred},
            )
            for prefix in deferred.prefixes()
        ],
    )
    # the Dask sidebar's dashboard proxy and check, to the platform's gateway only; ahead of
    # dask-labextension's own, so registered once it is loaded
    if deferred.loaded:
        _dask_dashboards(serverapp)
    else:
        deferred.after_load.append(lambda: _dask_dashboards(serverapp))
    # the data lake page's API (twinlab.browse): lake/... and storage/...
    serverapp.web_app.add_handlers(".*$", lake_handlers(base))
    serverapp.log.info("twinlab extension loaded: %stwinlab/api/info", base)


async def _start_jupyter_server_extension(serverapp: Any) -> None:
    # called once the server's event loop runs: load the deferred extensions shortly
    deferred = serverapp.web_app.settings.get("twinlab_deferred")
    if deferred is not None and not deferred.loaded:
        deferred.schedule()
        serverapp.log.info("twinlab: loading %s shortly (start-up time)", deferred.names)
