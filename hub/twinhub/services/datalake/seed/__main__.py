"""``python -m twinhub.services.datalake.seed --size small``: build (or reuse) sample data.

The platform builds in this child process rather than in its own: the ecCodes wheel bundles
a libldap/libsasl of its own, and a process that also loads libpq (psycopg: the loader)
crashes in a C destructor at exit when both copies are present.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import SIZES, build


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m twinhub.services.datalake.seed")
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--cache-dir", default=None, help="where builds are kept")
    args = ap.parse_args(argv)
    b = build(
        args.size,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        progress=lambda m: print(m, flush=True),
    )
    print(f"built {b.root}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
