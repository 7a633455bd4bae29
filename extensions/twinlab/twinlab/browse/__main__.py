"""``python -m twinlab.browse --unix-socket PATH`` (or ``--port N``): serve the Data lake
page's static files (:mod:`twinlab.pageserver`: no listings, no uploads, a private Unix
socket behind jupyter-server-proxy)."""

from __future__ import annotations

import sys

from twinlab import pageserver
from twinlab.browse import STATIC

if __name__ == "__main__":
    sys.exit(
        pageserver.main(
            pageserver.StaticHandler, STATIC, prog="python -m twinlab.browse", description=__doc__
        )
    )
