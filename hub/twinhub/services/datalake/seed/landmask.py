"""Land/sea at cell centres from the ``global-land-mask`` wheel (a real 1 km GLOBE mask).

Importing that package inflates a 21600 x 43200 boolean array: ~1 GB resident and ~4 s.
We sample it in a short-lived child interpreter so the memory goes back to the system when
the masks are done (a platform builds its seed in the background of a running hub).  A
plain ``python -m`` child, not multiprocessing: spawn re-imports the caller's ``__main__``
(breaks scripts without a main guard) and fork is unsafe in a threaded hub.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def _sample(points: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Here, not at the top: its mask (a large array) loads on import; only a build needs it.
    from global_land_mask import globe

    out = {}
    for name in {k.rsplit(".", 1)[0] for k in points}:
        lon, lat = points[f"{name}.lon"], points[f"{name}.lat"]
        lon180 = np.where(lon >= 180.0, lon - 360.0, lon)  # the mask wants [-180, 180)
        out[name] = np.asarray(globe.is_land(lat, lon180), dtype=bool)
    return out


def land_masks(points: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{name: (lon, lat)}`` degrees -> ``{name: bool array}`` (True on land)."""
    with tempfile.TemporaryDirectory(prefix="twinhub-landmask-") as tmp:
        src, dst = Path(tmp, "points.npz"), Path(tmp, "land.npz")
        arrays = {}
        for name, (lon, lat) in points.items():
            arrays[f"{name}.lon"], arrays[f"{name}.lat"] = lon, lat
        np.savez(src, **arrays)
        r = subprocess.run(
            [sys.executable, "-m", __name__, str(src), str(dst)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise RuntimeError(f"land mask sampling failed: {r.stderr.strip()[-2000:]}")
        with np.load(dst) as f:
            return {name: f[name] for name in points}


if __name__ == "__main__":
    with np.load(sys.argv[1]) as f:
        pts = {k: f[k] for k in f.files}
    np.savez(sys.argv[2], **_sample(pts))
