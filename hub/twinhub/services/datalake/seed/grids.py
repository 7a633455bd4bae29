"""Which grids, periods and output steps each seed size contains.

Grid ids are what keys and item ids use (``climate-dt/<grid-id>/...``); the grid objects
themselves come from :mod:`twinlab.grids`, so the seed and the notebook API agree on
geometry (cell centres, ordering) by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from twinlab.grids import Gaussian, Grid, HEALPix, Octahedral

#: First valid time of every seed (Climate DT's SSP3-7.0 runs cover the 2020s-2040s).
START = datetime(2030, 1, 1)


@dataclass(frozen=True)
class GridRun:
    """One grid of a seed: how many days, at which output interval."""

    grid_id: str
    resolution: str  # Climate DT's "standard" / "high"
    days: int
    step_hours: int

    def grid(self) -> Grid:
        return make_grid(self.grid_id)

    @property
    def steps_per_day(self) -> int:
        return 24 // self.step_hours

    @property
    def n_steps(self) -> int:
        return self.days * self.steps_per_day

    def times(self) -> list[datetime]:
        """Valid times, in order."""
        dt = timedelta(hours=self.step_hours)
        return [START + i * dt for i in range(self.n_steps)]

    def day_times(self, day: int) -> list[datetime]:
        n = self.steps_per_day
        return self.times()[day * n : (day + 1) * n]


def make_grid(grid_id: str) -> Grid:
    """The :mod:`twinlab.grids` object behind a seed grid id."""
    makers = {
        "healpix-h128": lambda: HEALPix(128, nest=True),
        "healpix-h256": lambda: HEALPix(256, nest=True),
        "octahedral-o96": lambda: Octahedral(96),
        "gaussian-f48": lambda: Gaussian(48),
    }
    if grid_id not in makers:
        raise ValueError(f"unknown seed grid {grid_id!r}; known: {', '.join(makers)}")
    return makers[grid_id]()


# Sizes.  small: the default, loaded by every fresh platform (builds in well under a minute
# on 2 cores, ~150 MB).  medium/large: for benchmarks (docs/datalake.md lists measured
# numbers); their H128 periods are what make them big (one H128 field is 0.4 MB of GRIB).
SIZES: dict[str, tuple[GridRun, ...]] = {
    "small": (
        GridRun("healpix-h128", "standard", 7, 6),
        GridRun("healpix-h256", "high", 1, 6),
        GridRun("octahedral-o96", "standard", 7, 6),
        GridRun("gaussian-f48", "standard", 7, 6),
    ),
    "medium": (
        GridRun("healpix-h128", "standard", 31, 1),
        GridRun("healpix-h256", "high", 7, 6),
        GridRun("octahedral-o96", "standard", 31, 6),
        GridRun("gaussian-f48", "standard", 31, 6),
    ),
    "large": (
        GridRun("healpix-h128", "standard", 365, 6),
        GridRun("healpix-h256", "high", 31, 6),
        GridRun("octahedral-o96", "standard", 365, 6),
        GridRun("gaussian-f48", "standard", 365, 6),
    ),
}


def check_size(size: object) -> tuple[GridRun, ...]:
    if not isinstance(size, str) or size not in SIZES:
        raise ValueError(f"unknown seed size {size!r}; valid sizes: {', '.join(SIZES)}")
    return SIZES[size]


# The Climate DT's identifying keys: GRIB local section (DestinE) and STAC properties alike.
CLIMATE_DT = {
    "class": "d1",
    "dataset": "climate-dt",
    "activity": "ScenarioMIP",
    "experiment": "SSP3-7.0",
    "model": "IFS-NEMO",
    "generation": 1,
    "realization": 1,
    "stream": "clte",
    "type": "fc",
    "expver": "0001",
}
