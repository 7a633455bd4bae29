"""The sample data: built (or taken from its cache) in a child process, then loaded into the
running platform's lake in the background (:mod:`.seed`, :mod:`.loader`); its state in
``<state>/run/seed.json`` for ``twinhub status``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ...plugin import Say
from ...process.runtime import Runtime
from .lake_settings import settings


def seed_state_path(rt: Runtime) -> Path:
    return rt.path("run", "seed.json")


def seed_state(rt: Runtime) -> dict[str, Any]:
    try:
        return json.loads(seed_state_path(rt).read_text())
    except (OSError, ValueError):
        return {}


def _write_seed_state(rt: Runtime, **state: Any) -> None:
    f = seed_state_path(rt)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps({**state, "time": time.time()}))
    tmp.replace(f)


def seed_into(rt: Runtime, size: str, say: Say = print) -> dict[str, Any]:
    """Build (or reuse) the ``size`` sample data and load it into this running platform.

    The build runs in a child process (see :mod:`.seed.__main__` for why); this process
    then only reads the finished build and loads it.
    """
    # Here, not at the top: the seed builder (numpy) and the loader (psycopg, boto3) are
    # needed once sample data is loaded, not in every process that lists the parts.
    from .loader import load_build
    from .seed import build

    lake = settings(rt)
    cache = Path(lake.seed_cache_dir) if lake.seed_cache_dir else None
    _write_seed_state(rt, status="building", size=size)
    argv = [sys.executable, "-m", "twinhub.services.datalake.seed", "--size", size]
    if cache:
        argv += ["--cache-dir", str(cache)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail = (tail + [line])[-10:]
        say(line)
    if proc.wait() != 0:
        raise RuntimeError(f"building the sample data failed: {' | '.join(tail)}")
    b = build(size, cache_dir=cache, progress=lambda _m: None)  # the finished build
    _write_seed_state(rt, status="loading", size=size)
    result = load_build(rt, b, say)
    _write_seed_state(rt, status="ready", **result)
    return result


def start_seeding(rt: Runtime, say: Say = print) -> threading.Thread | None:
    """Load the configured sample data in the background unless it is already there."""
    size = settings(rt).seed
    if not size:
        return None

    def note(msg: str) -> None:
        say(f"  data lake      {msg}")

    def run() -> None:
        try:
            # Here, not at the top: see seed_into.
            from .loader import loaded_seed
            from .seed import SEED_VERSION

            have = loaded_seed(rt)
            if have and have.get("size") == size and have.get("version") == SEED_VERSION:
                _write_seed_state(rt, status="ready", **have)
                note(f"sample data ({size}) already loaded")
                return
            note(f"loading sample data ({size}) in the background...")
            r = seed_into(rt, size, note)
            note(f"sample data ({size}) ready: {r['items']} items in {r['seconds']} s")
        except Exception as e:  # the platform stays up; status says what went wrong
            _write_seed_state(rt, status="failed", size=size, error=str(e))
            note(f"loading the sample data failed: {e}")

    t = threading.Thread(target=run, name="sample data loading", daemon=True)
    t.start()
    return t
