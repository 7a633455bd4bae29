"""Physically plausible surface fields: a cheap, deterministic stand-in for IFS-NEMO output.

Every field is a climatology (latitude gradient, seasonal cycle with opposite hemispheres,
diurnal cycle in local solar time, land/sea contrast from a real land mask) plus "weather":
sums of smooth random waves that travel eastward.  The waves are analytic, so the surface
winds are the (friction-reduced) geostrophic winds of the pressure anomaly, evaluated
exactly instead of by finite differences: highs and lows have winds circulating round them.
Everything is a function of (lon, lat, time) with one fixed random seed, so every grid
samples the same physical state and a rebuild gives identical numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from .grids import START

#: The random seed of the "weather"; part of the seed's identity (bump SEED_VERSION to change).
WEATHER_SEED = 20300101
N_WAVES = 12
OMEGA = 7.2921e-5  # Earth's rotation rate, s-1
RADIUS = 6.371e6  # m
RHO_AIR = 1.2  # kg m-3 near the surface


@dataclass(frozen=True)
class Variable:
    """A seeded variable as ECMWF names it (GRIB shortName/paramId) and CF describes it."""

    short_name: str
    param_id: int
    units: str
    long_name: str
    standard_name: str
    type_of_level: str
    level: int
    accumulated: bool = False  # over the output interval ending at the valid time
    sea_only: bool = False  # missing (NaN; a GRIB bitmap) over land


VARIABLES: tuple[Variable, ...] = (
    Variable("2t", 167, "K", "2 metre temperature", "air_temperature", "heightAboveGround", 2),
    Variable(
        "tp",
        228,
        "m",
        "Total precipitation",
        "lwe_thickness_of_precipitation_amount",
        "surface",
        0,
        accumulated=True,
    ),
    Variable(
        "10u", 165, "m s-1", "10 metre U wind component", "eastward_wind", "heightAboveGround", 10
    ),
    Variable(
        "10v", 166, "m s-1", "10 metre V wind component", "northward_wind", "heightAboveGround", 10
    ),
    Variable(
        "msl", 151, "Pa", "Mean sea level pressure", "air_pressure_at_mean_sea_level", "meanSea", 0
    ),
    Variable(
        "sst",
        34,
        "K",
        "Sea surface temperature",
        "sea_surface_temperature",
        "surface",
        0,
        sea_only=True,
    ),
)
VARIABLE_NAMES = tuple(v.short_name for v in VARIABLES)

#: Hard climatological bounds; the model is tuned to stay inside, the clip is a guarantee.
BOUNDS = {
    "2t": (190.0, 330.0),
    "msl": (87000.0, 108500.0),
    "sst": (271.35, 308.0),  # sea water freezes at -1.8 C
    "wind": 60.0,  # m/s cap on the 10 m wind speed
}


@dataclass(frozen=True)
class _Waves:
    """K travelling waves: amplitude * cos^2(lat) cos(n lat + a) cos(m lon - m c t + b)."""

    m: np.ndarray  # zonal wavenumber
    n: np.ndarray  # meridional wavenumber
    a: np.ndarray  # meridional phase
    b: np.ndarray  # zonal phase at START
    c: np.ndarray  # eastward angular speed, rad/day
    amp: np.ndarray


def _waves(rng: np.random.Generator, m_max: int) -> _Waves:
    m = rng.integers(1, m_max + 1, N_WAVES).astype(np.float64)
    return _Waves(
        m=m,
        n=rng.integers(2, 11, N_WAVES).astype(np.float64),
        a=rng.uniform(0, 2 * np.pi, N_WAVES),
        b=rng.uniform(0, 2 * np.pi, N_WAVES),
        c=np.deg2rad(rng.uniform(4.0, 14.0, N_WAVES)),  # 4-14 degrees of longitude a day
        # larger scales carry more energy (a red spectrum), total variance ~1
        amp=2.0 / np.sqrt(N_WAVES) * (1.0 / np.sqrt(m / 3.0 + 0.5)),
    )


class FieldModel:
    """The six variables at any valid time on one set of cell centres.

    ``lon``/``lat`` (degrees), ``ring`` (latitude-ring number per cell, to evaluate the
    latitude-only factors once per ring) and ``land`` (bool) are flat, in the grid's order.
    """

    def __init__(self, lon: np.ndarray, lat: np.ndarray, ring: np.ndarray, land: np.ndarray):
        self.lon = np.asarray(lon, dtype=np.float64)
        self.lam = np.deg2rad(self.lon)
        self.ring = np.asarray(ring, dtype=np.int64)
        self.land = np.asarray(land, dtype=bool)
        self.landf = self.land.astype(np.float64)
        # one latitude per ring (cells of a ring share it exactly)
        ring_lat = np.zeros(int(self.ring.max()) + 1)
        ring_lat[self.ring] = lat
        self.phi_r = np.deg2rad(ring_lat)
        self.lat = np.asarray(lat, dtype=np.float64)
        rng = np.random.default_rng(WEATHER_SEED)
        self.psi_w = _waves(rng, 8)  # pressure anomaly (and its geostrophic wind)
        self.temp_w = _waves(rng, 10)  # temperature anomaly
        self.rain_w = _waves(rng, 12)  # precipitation trigger (smaller scales)
        self._profiles = {
            id(w): self._lat_profiles(w) for w in (self.psi_w, self.temp_w, self.rain_w)
        }

    def _lat_profiles(self, w: _Waves) -> tuple[np.ndarray, np.ndarray]:
        """Per ring and wave: P = amp cos^2 cos(n phi + a), and dP/dphi."""
        phi = self.phi_r[:, None]
        c, s = np.cos(phi), np.sin(phi)
        arg = w.n * phi + w.a
        p = w.amp * c**2 * np.cos(arg)
        dp = w.amp * (-2.0 * c * s * np.cos(arg) - w.n * c**2 * np.sin(arg))
        return p, dp

    def _rms(self, w: _Waves) -> np.ndarray:
        """Per-cell RMS over longitude of the wave sum (waves of distinct m are orthogonal).

        Dividing by it gives unit-variance noise at every latitude, whose amplitude the
        climatology then sets explicitly; floored so the poles (where cos^2 -> 0) stay calm.
        """
        p, _ = self._profiles[id(w)]
        return np.maximum(np.sqrt(0.5 * (p**2).sum(axis=1)), 0.05)[self.ring]

    def _wave_sum(
        self, w: _Waves, days: float, derivatives: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The wave field; with ``derivatives`` also d/dphi and (1/cos phi) d/dlambda."""
        p, dp = self._profiles[id(w)]
        total = np.zeros_like(self.lam)
        d_phi = np.zeros_like(self.lam) if derivatives else None
        d_lam = np.zeros_like(self.lam) if derivatives else None
        cos_r = np.cos(self.phi_r)
        for k in range(w.m.size):
            arg = w.m[k] * (self.lam - w.c[k] * days) + w.b[k]
            ck = np.cos(arg)
            total += p[self.ring, k] * ck
            if derivatives:
                d_phi += dp[self.ring, k] * ck
                # p / cos(phi) = amp cos(phi) cos(n phi + a): finite at the poles
                p_over_cos = np.where(cos_r > 1e-12, p[:, k] / np.maximum(cos_r, 1e-12), 0.0)
                d_lam -= w.m[k] * p_over_cos[self.ring] * np.sin(arg)
        return total, d_phi, d_lam

    def fields(self, t: datetime, accumulation_hours: float) -> dict[str, np.ndarray]:
        """All variables (float64, flat, grid order) valid at ``t``; tp over the interval ending at t."""
        days = (t - START).total_seconds() / 86400.0
        doy = t.timetuple().tm_yday + t.hour / 24.0
        phi = self.phi_r[self.ring]
        sin_phi, cos_phi = np.sin(phi), np.cos(phi)
        land = self.landf
        # winter-ness of the cell's hemisphere: +1 in mid-January north / mid-July south
        winter = np.cos(2 * np.pi * (doy - 15.0) / 365.25) * np.sign(self.lat)
        local_hour = np.mod(t.hour + t.minute / 60.0 + self.lon / 15.0, 24.0)
        diurnal = np.cos(2 * np.pi * (local_hour - 15.0) / 24.0)  # warmest mid-afternoon
        polar = np.abs(self.lat) > 60.0

        psi, psi_phi, psi_lam = self._wave_sum(self.psi_w, days, derivatives=True)
        temp_noise = self._wave_sum(self.temp_w, days)[0] / self._rms(self.temp_w)
        rain_noise = self._wave_sum(self.rain_w, days)[0] / self._rms(self.rain_w)
        psi_n = psi / self._rms(self.psi_w)  # unit-variance pressure anomaly

        # --- mean sea level pressure: subtropical highs, subpolar lows, continental winter
        # highs / summer lows, and travelling weather systems strongest at mid-latitudes
        alat = np.abs(self.lat)
        clim = (
            101325.0
            + 900.0 * np.exp(-(((alat - 30.0) / 10.0) ** 2))
            - 1400.0 * np.exp(-(((alat - 60.0) / 10.0) ** 2))
            + 700.0 * land * winter * np.abs(sin_phi)
        )
        a0, a1 = 500.0, 2600.0
        amp = a0 + a1 * sin_phi**2
        msl = clim + amp * psi

        # --- 10 m wind: friction-reduced geostrophic wind of the anomaly, f regularised
        # near the equator where geostrophy fails, plus the zonal-mean circulation
        f = 2 * OMEGA * sin_phi
        f0 = 2 * OMEGA * np.sin(np.deg2rad(12.0))
        inv_f = f / (f * f + f0 * f0)
        dp_dphi = a1 * np.sin(2 * phi) * psi + amp * psi_phi
        dp_dlam_over_cos = amp * psi_lam
        friction = np.where(self.land, 0.5, 0.7)
        u = -friction * inv_f * dp_dphi / (RHO_AIR * RADIUS)
        v = friction * inv_f * dp_dlam_over_cos / (RHO_AIR * RADIUS)
        # trades (easterlies) near the equator, westerlies at mid-latitudes
        u += friction * (12.0 * np.sin(2 * phi) ** 2 - 6.0 * cos_phi**2) / 0.7
        speed = np.hypot(u, v)
        cap = np.minimum(1.0, BOUNDS["wind"] / np.maximum(speed, 1e-9))
        u, v = u * cap, v * cap

        # --- 2 m temperature
        t2 = (
            300.0
            - 45.0 * sin_phi**2
            - 10.0 * (land * polar)  # ice sheets are high and cold
            - (2.0 + 14.0 * land) * winter * np.abs(sin_phi)
            + (1.0 + 7.0 * land) * cos_phi * diurnal
            + (1.0 + 4.0 * sin_phi**2) * temp_noise  # weather: ~1 K in the tropics, ~5 K polar
        )
        t2 = np.clip(t2, *BOUNDS["2t"])

        # --- sea surface temperature (over sea only); slow, with a weak diurnal cycle
        sst = (
            271.4
            + 31.0 * cos_phi**2
            - 2.0 * winter * np.abs(sin_phi)
            + 0.2 * diurnal
            + 0.4 * temp_noise
        )
        sst = np.where(self.land, np.nan, np.clip(sst, *BOUNDS["sst"]))

        # --- precipitation: an ITCZ and storm tracks, more under low pressure; a skewed,
        # mostly-zero field: only where the trigger exceeds a threshold
        moisture = 1.0 * np.exp(-((self.lat / 10.0) ** 2)) + 0.6 * np.exp(
            -(((alat - 45.0) / 15.0) ** 2)
        )
        trigger = rain_noise - 0.8 * psi_n + moisture - 1.6
        rate = 0.001 * np.maximum(trigger, 0.0) ** 2  # m per hour
        tp = rate * accumulation_hours

        return {"2t": t2, "tp": tp, "10u": u, "10v": v, "msl": msl, "sst": sst}
