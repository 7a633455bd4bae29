"""``python -m twinlab.usage --unix-socket PATH`` (or ``--port N``): the Usage page's server.

Serves ``static/`` and one API, ``GET api/usage?start=&end=&step=&project=&format=``, which
asks the accounting service with this server's token (``twinlab.usage.client``) and passes
its answer (JSON or CSV) or its refusal on. Only jupyter-server-proxy reaches it, behind the
user server's authentication, on a Unix socket in a private directory (as the Data lake
page's server, ``twinlab.browse``): whoever opens the page is the server's owner.
"""

from __future__ import annotations

import json
import sys
import urllib.parse
from typing import Any

from twinlab import pageserver
from twinlab.usage import STATIC
from twinlab.usage.client import UsageError, fetch

#: Parameters the page may pass on (``user`` is not one: the page shows its owner's usage).
PAGE_PARAMS = ("start", "end", "step", "project", "format")
#: The longest query the page sends (times, a step, a project name).
MAX_QUERY = 2048


class PageHandler(pageserver.StaticHandler):
    """Files of ``static/`` (no listings) and ``api/usage``."""

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        path, _, qs = self.path.partition("?")
        if path.rstrip("/") == "/api/usage":
            self._usage(qs)
            return
        super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        if "/api/" in self.path:
            self._send(405, "application/json", b'{"message": "GET only"}')
            return
        super().do_HEAD()

    def _usage(self, qs: str) -> None:
        if len(qs) > MAX_QUERY:
            self._json(400, {"message": f"query longer than {MAX_QUERY} characters"})
            return
        asked = urllib.parse.parse_qs(qs, keep_blank_values=False)
        unknown = sorted(set(asked) - set(PAGE_PARAMS))
        if unknown:
            self._json(400, {"message": f"unknown parameter(s): {', '.join(unknown)}"})
            return
        params = {k: v[-1] for k, v in asked.items()}
        try:
            ctype, body = fetch(params)
        except UsageError as e:
            # the service's status when it answered; 502 when it could not be reached
            self._json(e.status or 502, {"message": str(e)})
            return
        headers: dict[str, str] = {}
        if params.get("format") == "csv":
            headers["Content-Disposition"] = 'attachment; filename="usage.csv"'
        self._send(200, ctype or "application/octet-stream", body, headers)

    def _json(self, status: int, doc: dict[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(doc).encode())

    def _send(
        self, status: int, ctype: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


if __name__ == "__main__":
    sys.exit(
        pageserver.main(PageHandler, STATIC, prog="python -m twinlab.usage", description=__doc__)
    )
