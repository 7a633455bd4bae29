"""`twinhub up` to URL: seconds from the command until it prints "twinhub is up at".

    /opt/twinhub/venv/bin/python bench/startup.py [--rounds 3] [--mode personal]

Each round starts a platform on a fresh state dir (no sample data: the URL does not wait
for it), stops it, then starts it again on the same state dir (a restart: databases exist).
Also times `python -c "import twinhub.cli"` (what every CLI call pays before it runs).
Prints min/median/max; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers.platform import Platform, purge_shared_dir  # noqa: E402


def figure(name: str, xs: list[float]) -> None:
    print(
        f"{name:<28} min {min(xs):6.2f} s  median {statistics.median(xs):6.2f} s  "
        f"max {max(xs):6.2f} s  (n={len(xs)})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", default="personal", choices=("personal", "multi-user"))
    args = ap.parse_args()
    imports = []
    for _ in range(5):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", "import twinhub.cli"], check=True)
        imports.append(time.monotonic() - t0)
    first, again = [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="twinhub-bench-", dir="/tmp") as tmp:
            state = Path(tmp) / "state"
            for out in (first, again):
                t0 = time.monotonic()
                p = Platform.start(state, mode=args.mode)
                out.append(time.monotonic() - t0)
                p.stop()
            purge_shared_dir(state)
    print(f"twinhub up to URL, {args.mode} mode, {args.rounds} rounds")
    figure("import twinhub.cli", imports)
    figure("fresh state dir", first)
    figure("restart (same state dir)", again)


if __name__ == "__main__":
    main()
