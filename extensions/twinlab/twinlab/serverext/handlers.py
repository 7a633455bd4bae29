"""HTTP handlers of the twinlab server extension."""

from __future__ import annotations

import json

from jupyter_server.base.handlers import APIHandler
from tornado import web

from twinlab.serverext.info import collect


class InfoHandler(APIHandler):
    """``GET /twinlab/api/info``: who and what this server is (JSON)."""

    @web.authenticated
    def get(self) -> None:
        info = collect()
        # The authenticated identity wins over the environment (they agree in a hub spawn).
        if self.current_user is not None:
            info["user"] = getattr(self.current_user, "username", info.get("user"))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(info))
