"""Climate DT-like sample data for the lake: ``build(size)`` -> a :class:`SeedBuild` on disk.

A build is deterministic (fixed random seed; same size -> byte-identical GRIB and Zarr
chunks) and cached: ``<cache_dir>/<size>-v<SEED_VERSION>/`` holds

* ``objects/climate-dt/...``: what goes into the lake bucket, keyed by the path below
  ``objects/`` (GRIB2 per grid/variable/day, one Zarr v3 store per grid);
* ``stac/collections.json`` (a list) and ``stac/items.ndjson`` (one item per line);
* ``manifest.json``: size, version, counts, bytes, seconds, grids, variables, time range,
  value ranges and a sha256 per object.  Written last: a build without it is incomplete.

The build happens in a temporary sibling directory renamed into place at the end, so a
crash or a concurrent build never leaves a half build where a complete one is expected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fields import VARIABLES, FieldModel
from .grids import SIZES, GridRun, check_size
from .stac import collection, grib_key, item, zarr_key

#: Bump when the generated data or its layout changes: cached builds of other versions
#: are left alone and a new one is built (the loader compares it with what is loaded).
SEED_VERSION = 4

__all__ = ["SEED_VERSION", "SIZES", "SeedBuild", "build", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$TWINHUB_SEED_CACHE``, else ``~/.cache/twinhub/seed``."""
    env = os.environ.get("TWINHUB_SEED_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "twinhub" / "seed"


@dataclass
class SeedBuild:
    """A complete build on disk."""

    root: Path
    manifest: dict[str, Any] = field(repr=False)

    def collections(self) -> list[dict[str, Any]]:
        return json.loads((self.root / "stac" / "collections.json").read_text())

    def items(self) -> Iterator[dict[str, Any]]:
        with open(self.root / "stac" / "items.ndjson") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def objects(self) -> Iterator[tuple[str, Path]]:
        """(S3 key, local file) for every file under ``objects/``, in sorted key order."""
        base = self.root / "objects"
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            yield path.relative_to(base).as_posix(), path


def build(
    size: str = "small",
    cache_dir: Path | None = None,
    progress: Callable[[str], None] = print,
) -> SeedBuild:
    """Build the sample data of ``size`` (or reuse the complete build already cached)."""
    runs = check_size(size)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    name = f"{size}-v{SEED_VERSION}"
    final = cache / name
    done = _complete(final)
    if done is not None:
        progress(f"seed {size}: reusing the build in {final}")
        return done
    cache.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(cache, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", dir=cache))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the data is public (other accounts may load it)
    try:
        manifest = _build_into(tmp, size, runs, progress)
        try:
            os.rename(tmp, final)
        except OSError:
            # someone else renamed a build into place first: theirs is as good as ours
            other = _complete(final)
            if other is None:
                shutil.rmtree(final)  # an incomplete leftover (not ours to keep)
                os.rename(tmp, final)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
                progress(f"seed {size}: another build finished first; using it")
                return other
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_older_versions(cache, size, progress)
    progress(
        f"seed {size}: done in {manifest['seconds']:.1f} s, {manifest['n_items']} items, "
        f"{manifest['n_objects']} objects, {manifest['bytes'] / 1e6:.0f} MB in {final}"
    )
    return SeedBuild(final, manifest)


def _complete(root: Path) -> SeedBuild | None:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return SeedBuild(root, manifest)


def _remove_stale_temps(cache: Path, name: str) -> None:
    """Temporary dirs of builds whose process is gone (killed mid-build)."""
    for d in cache.glob(f".{name}.*"):
        try:
            pid = int(d.name.split(".")[2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def _remove_older_versions(cache: Path, size: str, progress: Callable[[str], None]) -> None:
    """Builds of this size by older generators: nothing loads them any more (the loader
    replaces a loaded older version), and a large one is gigabytes."""
    for d in cache.glob(f"{size}-v*"):
        try:
            version = int(d.name.rsplit("-v", 1)[1])
        except ValueError:
            continue
        if version < SEED_VERSION and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            progress(f"seed {size}: removed the outdated build {d.name}")


def _build_into(
    root: Path, size: str, runs: tuple[GridRun, ...], progress: Callable[[str], None]
) -> dict[str, Any]:
    # heavy imports here: importing the package (SIZES, default_cache_dir) stays cheap
    from . import grib, zarr_store
    from .landmask import land_masks

    t0 = time.monotonic()
    objects = root / "objects"
    (root / "stac").mkdir(parents=True)
    grids = {r.grid_id: r.grid() for r in runs}
    centres = {gid: g.centers() for gid, g in grids.items()}
    progress(f"seed {size}: sampling the 1 km land mask at {len(grids)} grids' cell centres")
    land = land_masks(centres)
    ranges: dict[str, list[float]] = {}
    n_items = 0
    total_steps = sum(r.n_steps for r in runs)
    done_steps = 0
    with open(root / "stac" / "items.ndjson", "w") as items_out:
        for run in runs:
            grid = grids[run.grid_id]
            lon, lat = centres[run.grid_id]
            model = FieldModel(lon, lat, grid.ring_ids().ravel(), land[run.grid_id])
            templates = {v.short_name: grib.template(grid, v, run.resolution) for v in VARIABLES}
            store = objects / zarr_key(run.grid_id)
            try:
                for day in range(run.days):
                    times = run.day_times(day)
                    messages: dict[str, list[bytes]] = {v.short_name: [] for v in VARIABLES}
                    decoded = {
                        v.short_name: np.empty((len(times), *grid.shape), np.float32)
                        for v in VARIABLES
                    }
                    for i, t in enumerate(times):
                        values = model.fields(t, run.step_hours)
                        for v in VARIABLES:
                            msg, dec = grib.encode(
                                templates[v.short_name], v, t, run.step_hours, values[v.short_name]
                            )
                            messages[v.short_name].append(msg)
                            decoded[v.short_name][i] = dec.reshape(grid.shape)
                    for v in VARIABLES:
                        path = objects / grib_key(run.grid_id, v.short_name, times[0].date())
                        path.parent.mkdir(parents=True, exist_ok=True)
                        data = b"".join(messages[v.short_name])
                        path.write_bytes(data)
                        items_out.write(
                            json.dumps(item(run, grid, v, day, len(data)), sort_keys=True) + "\n"
                        )
                        n_items += 1
                        arr = decoded[v.short_name]
                        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
                        old = ranges.get(v.short_name, [lo, hi])
                        ranges[v.short_name] = [min(old[0], lo), max(old[1], hi)]
                    ds = zarr_store.day_dataset(grid, run.grid_id, times, decoded, run.step_hours)
                    zarr_store.write_day(store, ds, first=day == 0)
                    done_steps += len(times)
                    progress(
                        f"seed {size}: {run.grid_id} day {day + 1}/{run.days} "
                        f"({done_steps}/{total_steps} steps, {time.monotonic() - t0:.0f} s)"
                    )
            finally:
                for h in templates.values():
                    grib.ec.codes_release(h)

    (root / "stac" / "collections.json").write_text(
        json.dumps([collection(runs, size, SEED_VERSION)], indent=1, sort_keys=True)
    )
    progress(f"seed {size}: checksums")
    checksums, total = {}, 0
    for key, path in SeedBuild(root, {}).objects():
        checksums[key] = _sha256(path)
        total += path.stat().st_size
    all_times = [t for r in runs for t in (r.times()[0], r.times()[-1])]
    manifest = {
        "size": size,
        "version": SEED_VERSION,
        "n_items": n_items,
        "n_objects": len(checksums),
        "bytes": total,
        "seconds": round(time.monotonic() - t0, 2),
        "grids": {
            r.grid_id: {
                "resolution": r.resolution,
                "days": r.days,
                "step_hours": r.step_hours,
                "steps": r.n_steps,
                "cells": grids[r.grid_id].size,
                "zarr": zarr_key(r.grid_id),
            }
            for r in runs
        },
        "variables": {
            v.short_name: {"paramId": v.param_id, "units": v.units, "long_name": v.long_name}
            for v in VARIABLES
        },
        "time_range": [min(all_times).isoformat() + "Z", max(all_times).isoformat() + "Z"],
        "value_ranges": ranges,
        "checksums": checksums,
    }
    # written last: its presence is what marks the build complete
    with contextlib.suppress(FileNotFoundError):
        (root / "manifest.json").unlink()
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
