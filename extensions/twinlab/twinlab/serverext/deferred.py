"""Server extensions loaded just after the server is up, not on the start path.

dask-labextension's server extension (the Dask sidebar's ``dask/clusters`` and dashboard
proxy) imports ``dask.distributed`` when loaded: about 0.3 s of every user server start
(measured: docs/tutorials.md), for a sidebar nobody uses in the server's first seconds.
It is switched off in the environment's Jupyter config (``twinhub.install_jupyter_config``)
and loaded from here instead:

- a moment after the server answers, its heavy dependencies are imported in a thread (the
  server keeps answering), then the extension itself on the server's event loop
  (dask-labextension makes asyncio objects at import: it needs the loop's thread);
- a request to its URLs before that (the Dask sidebar polls as soon as JupyterLab opens)
  loads it at once and is redirected (307) to the same URL, now served by the extension
  (``twinlab.serverext.handlers.EarlyHandler``): no 404 ever reaches the sidebar.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from traitlets import Dict, Float, List, Unicode
from traitlets.config import Configurable


class TwinlabDeferredExtensions(Configurable):
    """Which server extensions twinlab loads after start, and when."""

    extensions = List(
        Unicode(),
        default_value=["dask_labextension"],
        help="Server extension modules (with load_jupyter_server_extension) loaded after "
        "the server is up instead of at start. Keep them disabled in "
        "ServerApp.jpserver_extensions; one enabled there is not loaded again.",
    ).tag(config=True)
    routes = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        default_value={"dask_labextension": "dask/"},
        help="Each deferred extension's URL prefix (under the server's base URL): a request "
        "there before the extension is loaded loads it at once.",
    ).tag(config=True)
    preload = List(
        Unicode(),
        default_value=["dask.distributed", "jupyter_server_proxy.handlers"],
        help="Modules the deferred extensions import, imported first in a thread so that "
        "the server's event loop is blocked only for the rest.",
    ).tag(config=True)
    delay = Float(
        2.0,
        min=0.0,
        help="Seconds after the server is up before their import starts: the hub's and the "
        "browser's first requests to a new server come first.",
    ).tag(config=True)


class Deferred:
    """The deferred extensions of one server: loaded once, by the timer or a request."""

    def __init__(self, serverapp: Any) -> None:
        self.serverapp = serverapp
        self.settings = TwinlabDeferredExtensions(config=serverapp.config)
        enabled = serverapp.jpserver_extensions
        self.names = [n for n in self.settings.extensions if not enabled.get(n)]
        self.loaded = not self.names
        self._lock = threading.Lock()
        #: Called once the extensions are loaded (routes that must win over theirs).
        self.after_load: list[Callable[[], None]] = []

    def prefixes(self) -> list[str]:
        """URL prefixes (under the base URL) of the extensions not loaded yet."""
        return [self.settings.routes[n] for n in self.names if n in self.settings.routes]

    def load_now(self) -> None:
        """Import and load every deferred extension (on the event loop's thread); once."""
        with self._lock:
            if self.loaded:
                return
            self.loaded = True  # even if one fails: a broken one is not retried per request
        log = self.serverapp.log
        for name in self.names:
            try:
                module = importlib.import_module(name)
                loader = getattr(module, "_load_jupyter_server_extension", None)
                (loader or module.load_jupyter_server_extension)(self.serverapp)
            except Exception as e:  # a broken optional extension must not hurt the server
                log.warning("twinlab: deferred extension %s not loaded: %s", name, e)
            else:
                log.info("twinlab: loaded deferred extension %s", name)
        for hook in self.after_load:
            try:
                hook()
            except Exception as e:  # as above: the server keeps running without it
                log.warning("twinlab: after loading %s: %s", self.names, e)

    def schedule(self) -> None:
        """After ``delay`` s: preload in a thread, then :meth:`load_now` on the loop."""
        if self.loaded:
            return
        loop = self.serverapp.io_loop

        def preload() -> None:
            for name in self.settings.preload:
                try:
                    importlib.import_module(name)
                except Exception as e:  # the extension's own import reports what matters
                    self.serverapp.log.debug("twinlab: preloading %s failed: %s", name, e)
            loop.add_callback(self.load_now)

        def start() -> None:
            if not self.loaded:
                threading.Thread(target=preload, name="twinlab-deferred", daemon=True).start()

        loop.call_later(self.settings.delay, start)
