"""The cache's index (SQLite, in its directory): objects, their sizes and access times, and
the counters; read-only by ``twinhub status`` (another process) through :func:`read_stats`."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

INDEX = "index.sqlite"
#: hits: requests served without a fetch of their own (``joined``: of those, the ones that
#: read a download another request started); misses: requests that started a fetch.
COUNTERS = (
    "hits",
    "joined",
    "misses",
    "evictions",
    "expired",
    "errors",
    "bytes_served",
    "bytes_fetched",
    "cancelled",
)
SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT,
    etag TEXT,
    last_modified TEXT,
    fetched REAL NOT NULL,
    accessed REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_accessed ON objects (accessed);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def connect_index(path: Path) -> sqlite3.Connection:
    """The index at ``path`` (created if absent), for the service's own process."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    return db


def read_stats(directory: str | Path) -> dict[str, Any] | None:
    """Counters, size and object count from a cache's index, read-only (another process);
    None when there is no index yet."""
    path = Path(directory) / INDEX
    if not path.is_file():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
        for name, value in db.execute("SELECT name, value FROM counters"):
            out[name] = int(value)
        n, total = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM objects").fetchone()
        out.update(objects=int(n), size=int(total))
        return out
    finally:
        db.close()
