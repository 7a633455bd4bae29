"""Regenerate ``static/land.png``, the land backdrop of the page's map (run by hand:
``python -m twinlab.browse.make_land``; needs ``global-land-mask``, a hub-side package).

0.5 degree cells, equirectangular -180..180 x 90..-90, land opaque, sea transparent: a few
kB, committed, so the page needs no map tiles from the network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twinlab.browse import STATIC


def land_rgba(step: float = 0.5) -> np.ndarray:
    from global_land_mask import globe  # a hub-side package: this script is run by hand

    lats = 90 - step / 2 - step * np.arange(round(180 / step))
    lons = -180 + step / 2 + step * np.arange(round(360 / step))
    land = globe.is_land(*np.meshgrid(lats, lons, indexing="ij"))
    rgba = np.zeros(land.shape + (4,), dtype=np.uint8)
    rgba[land] = (196, 205, 186, 255)
    return rgba


def main() -> Path:
    from matplotlib.image import imsave  # start-up cost: only when run

    out = STATIC / "land.png"
    imsave(out, land_rgba(), format="png")
    return out


if __name__ == "__main__":
    print(main())
