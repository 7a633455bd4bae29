"""Regridding weights' two caches (memory and disk) and :func:`get_weights`, which builds
what neither holds (:mod:`.builders`); the :class:`Weights` matrix is in :mod:`.matrix`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from twinlab import environment

from . import builders
from .matrix import Weights, cache_id

log = logging.getLogger(__name__)

METHODS = ("nearest", "bilinear", "conservative")
_MEMORY_ENTRIES = 8  # weights can be hundreds of MB: keep only a few in memory


def default_cache_dir() -> Path:
    env = environment.weights_dir()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "twinlab" / "weights"


_memory: OrderedDict[str, Weights] = OrderedDict()
_lock = threading.Lock()
#: Number of weight builds per cache id in this process (tests and benchmarks read it).
build_counts: dict[str, int] = {}


def clear_memory_cache() -> None:
    with _lock:
        _memory.clear()


def get_weights(
    source: Any,
    target: Any,
    method: str,
    cache_dir: str | os.PathLike[str] | None | bool = None,
) -> Weights:
    """Weights for ``(source, target, method)`` from memory, else disk, else built.

    ``cache_dir``: ``None`` uses ``$TWINLAB_WEIGHTS_DIR`` or ``~/.cache/twinlab/weights``;
    ``False`` disables the disk cache.  A file that cannot be read or validated is rebuilt.
    """
    if method not in METHODS:
        raise ValueError(f"unknown regrid method {method!r}; expected one of {METHODS}")
    cid = cache_id(source.key, target.key, method)
    with _lock:
        if cid in _memory:
            _memory.move_to_end(cid)
            return _memory[cid]
    path = None
    if cache_dir is not False:
        directory = (
            default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir)
        )
        path = directory / f"{cid}.npz"
    w = None
    if path is not None and path.exists():
        try:
            w = Weights.load(path, source.key, target.key, method)
        except ValueError as exc:
            log.warning("rebuilding regrid weights: %s", exc)
    if w is None:
        t0 = time.perf_counter()
        w = builders.build(source, target, method)
        w.build_seconds = time.perf_counter() - t0
        build_counts[cid] = build_counts.get(cid, 0) + 1
        if path is not None:
            try:
                w.save(path)
            except OSError as exc:  # a read-only home must not break regridding
                log.warning("could not cache regrid weights in %s: %s", path, exc)
    with _lock:
        _memory[cid] = w
        while len(_memory) > _MEMORY_ENTRIES:
            _memory.popitem(last=False)
    return w


__all__ = [
    "METHODS",
    "build_counts",
    "clear_memory_cache",
    "default_cache_dir",
    "get_weights",
]
