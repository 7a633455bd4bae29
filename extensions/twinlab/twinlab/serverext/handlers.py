"""HTTP handlers of the twinlab server extension."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import httputil, web
from tornado.routing import PathMatches

from twinlab.serverext.deferred import Deferred
from twinlab.serverext.info import collect
from twinlab.serverext.tutorials import Tutorials


class InfoHandler(APIHandler):
    """``GET /twinlab/api/info``: who and what this server is (JSON)."""

    @web.authenticated
    async def get(self) -> None:
        # Keys ask the platform's services (cache, usage, registry: up to 2 s each when one
        # is slow): in a thread, so the server's event loop never waits on them.
        info = await asyncio.to_thread(collect)
        # The authenticated identity wins over the environment (they agree in a hub spawn).
        if self.current_user is not None:
            info["user"] = getattr(self.current_user, "username", info.get("user"))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(info))


class TutorialsHandler(APIHandler):
    """``GET /twinlab/api/tutorials``: the platform's tutorials in this server (JSON, for the
    Launcher); ``POST /twinlab/api/tutorials/<name>``: copy a deleted one back.

    Files in the user's folder: authorized like the contents API (the server's owner)."""

    auth_resource = "contents"

    def initialize(self, tutorials: Tutorials) -> None:
        self.tutorials = tutorials

    @web.authenticated
    @authorized("read")
    def get(self, name: str | None = None) -> None:
        if name:
            raise web.HTTPError(405, "GET lists every tutorial: /twinlab/api/tutorials")
        self.finish(
            json.dumps(
                {"directory": self.tutorials.target.name, "tutorials": self.tutorials.listing()}
            )
        )

    @web.authenticated
    @authorized("write")
    def post(self, name: str | None = None) -> None:
        known = {p.name for p in self.tutorials.available()}
        if not name:
            raise web.HTTPError(400, "name the tutorial: POST /twinlab/api/tutorials/<name>")
        if name not in known:
            raise web.HTTPError(404, f"no tutorial {name[:80]!r}; known: {sorted(known)}")
        restored = self.tutorials.restore(name)
        self.set_status(201 if restored else 200)
        entry = next(t for t in self.tutorials.listing() if t["name"] == name)
        self.finish(json.dumps({**entry, "restored": restored}))


class UntilLoaded(PathMatches):
    """Matches its path only while the deferred extensions are not loaded (then the
    extensions' own handlers, added later, serve it)."""

    def __init__(self, pattern: str, deferred: Deferred) -> None:
        super().__init__(pattern)
        self.deferred = deferred

    def match(self, request: httputil.HTTPServerRequest) -> dict[str, Any] | None:
        return None if self.deferred.loaded else super().match(request)


class EarlyHandler(APIHandler):
    """A request for a deferred extension before it is loaded: load it now, then send the
    client to the same URL (307 keeps the method and body), which it now serves."""

    def initialize(self, deferred: Deferred) -> None:
        self.deferred = deferred

    def _load_and_retry(self, *_: Any) -> None:
        self.deferred.load_now()
        self.redirect(self.request.uri or "/", status=307)

    @web.authenticated
    def get(self, *args: Any) -> None:
        self._load_and_retry()

    @web.authenticated
    def put(self, *args: Any) -> None:
        self._load_and_retry()

    @web.authenticated
    def post(self, *args: Any) -> None:
        self._load_and_retry()

    @web.authenticated
    def patch(self, *args: Any) -> None:
        self._load_and_retry()

    @web.authenticated
    def delete(self, *args: Any) -> None:
        self._load_and_retry()
