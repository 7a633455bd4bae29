"""The seeded data itself: GRIB2 round trips (ecCodes, cfgrib), Zarr copies, physics."""

from __future__ import annotations

from datetime import datetime

import eccodes as ec
import numpy as np
import pytest
import xarray as xr

import twinlab.grids as tg
from twinhub.services.datalake.seed.fields import FieldModel
from twinhub.services.datalake.seed.grids import make_grid

GRIDS = {
    "healpix-h128": lambda g: isinstance(g, tg.HEALPix) and g.nside == 128 and g.nest,
    "healpix-h256": lambda g: isinstance(g, tg.HEALPix) and g.nside == 256 and g.nest,
    "octahedral-o96": lambda g: isinstance(g, tg.ReducedGaussian) and g.is_octahedral and g.N == 96,
    "gaussian-f48": lambda g: isinstance(g, tg.Gaussian) and g.N == 48,
}


def read_messages(path) -> list[dict]:
    out = []
    with open(path, "rb") as f:
        while (h := ec.codes_grib_new_from_file(f)) is not None:
            try:
                keys = {
                    k: ec.codes_get(h, k)
                    for k in (
                        "shortName", "paramId", "typeOfLevel", "level", "gridType", "dataDate",
                        "dataTime", "stepRange", "stepType", "packingType", "bitsPerValue",
                        "binaryScaleFactor", "decimalScaleFactor", "numberOfDataPoints", "class",
                        "stream", "type", "generation", "realization",
                    )
                }  # fmt: skip
                for k in ("dataset", "experiment", "model", "activity", "resolution"):
                    keys[k] = ec.codes_get_string(h, k)
                if keys["gridType"] == "healpix":
                    keys["Nside"] = ec.codes_get(h, "Nside")
                    keys["ordering"] = ec.codes_get_string(h, "orderingConvention")
                elif keys["gridType"] in ("reduced_gg", "regular_gg"):
                    keys["N"] = ec.codes_get(h, "N")
                    keys["isOctahedral"] = ec.codes_get(h, "isOctahedral")
                v = ec.codes_get_values(h)
                if ec.codes_get(h, "bitmapPresent"):
                    v = np.where(v == ec.codes_get(h, "missingValue"), np.nan, v)
                keys["values"] = v
                keys["lat"] = ec.codes_get_array(h, "latitudes")
                keys["lon"] = ec.codes_get_array(h, "longitudes")
                out.append(keys)
            finally:
                ec.codes_release(h)
    return out


@pytest.fixture(scope="module")
def grib_day1(seed_build) -> dict:
    """``(grid_id, short_name) -> messages`` of day 1 for 2t, tp and sst on every grid."""
    root = seed_build.root / "objects" / "climate-dt"
    return {
        (gid, v): read_messages(root / gid / v / "20300101.grib2")
        for gid in GRIDS
        for v in ("2t", "tp", "sst")
    }


@pytest.mark.parametrize("grid_id", GRIDS)
def test_grib_messages_are_climate_dt_shaped(grib_day1, grid_id):
    msgs = grib_day1[(grid_id, "2t")]
    assert len(msgs) == 4
    grid = make_grid(grid_id)
    for hour, m in zip((0, 6, 12, 18), msgs, strict=True):
        assert (m["shortName"], m["paramId"], m["typeOfLevel"], m["level"]) == (
            "2t",
            167,
            "heightAboveGround",
            2,
        )
        assert (m["dataDate"], m["dataTime"], m["stepRange"]) == (20300101, hour * 100, "0")
        assert m["numberOfDataPoints"] == grid.size
        assert (m["class"], m["stream"], m["type"]) == ("d1", "clte", "fc")
        assert (m["dataset"], m["experiment"], m["model"], m["activity"]) == (
            "climate-dt",
            "SSP3-7.0",
            "IFS-NEMO",
            "ScenarioMIP",
        )
        assert m["resolution"] == ("high" if grid_id == "healpix-h256" else "standard")
        assert m["bitsPerValue"] == 16
    first = msgs[0]
    if grid_id.startswith("healpix"):
        assert (first["gridType"], first["Nside"], first["ordering"]) == (
            "healpix",
            grid.nside,
            "nested",
        )
    elif grid_id.startswith("octahedral"):
        assert (first["gridType"], first["N"], first["isOctahedral"]) == ("reduced_gg", 96, 1)
    else:
        assert (first["gridType"], first["N"]) == ("regular_gg", 48)
    # the geometry ecCodes' geo-iterator derives from the GRIB grid section is the geometry
    # the fields were computed on (twinlab.grids centres, native order)
    lon, lat = grid.centers()
    np.testing.assert_allclose(first["lat"], lat, atol=1e-6)
    dlon = np.abs((first["lon"] - lon + 180.0) % 360.0 - 180.0)
    assert dlon[np.abs(lat) < 89.9].max() < 1e-6


def test_accumulations_and_bitmaps(grib_day1):
    tp = grib_day1[("healpix-h128", "tp")]
    # tp over the 6 h ending at the valid time: reference time 6 h earlier, step 0-6
    assert [(m["dataDate"], m["dataTime"], m["stepRange"], m["stepType"]) for m in tp] == [
        (20291231, 1800, "0-6", "accum"),
        (20300101, 0, "0-6", "accum"),
        (20300101, 600, "0-6", "accum"),
        (20300101, 1200, "0-6", "accum"),
    ]
    assert all(m["shortName"] == "tp" and m["paramId"] == 228 for m in tp)
    sst = grib_day1[("healpix-h128", "sst")][0]
    assert (sst["shortName"], sst["paramId"], sst["typeOfLevel"]) == ("sst", 34, "surface")
    land_fraction = np.isnan(sst["values"]).mean()
    assert 0.2 < land_fraction < 0.4  # Earth is ~29 % land


@pytest.mark.parametrize("grid_id", GRIDS)
def test_grib_reads_back_identically_with_cfgrib_and_the_grid_is_detected(
    seed_build, grib_day1, grid_id
):
    path = seed_build.root / "objects/climate-dt" / grid_id / "sst" / "20300101.grib2"
    ds = xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""})
    assert list(ds.data_vars) == ["sst"]
    msgs = grib_day1[(grid_id, "sst")]
    grid = make_grid(grid_id)
    got = ds["sst"].values.reshape(len(msgs), grid.size)
    want = np.stack([m["values"] for m in msgs])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))  # the bitmap is NaN
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)  # cfgrib's float32
    expected = ["2030-01-01T00", "2030-01-01T06", "2030-01-01T12", "2030-01-01T18"]
    assert [str(t)[:13] for t in ds["valid_time"].values] == expected
    detected = tg.from_dataset(ds)
    assert GRIDS[grid_id](detected), detected


@pytest.mark.parametrize("grid_id", GRIDS)
def test_zarr_equals_grib_to_packing_precision(seed_zarr, grib_day1, grid_id):
    z = seed_zarr[grid_id]
    grid = make_grid(grid_id)
    assert z.attrs["grid_type"] == tg.grid_attrs(grid)["grid_type"]
    assert GRIDS[grid_id](tg.from_dataset(z)), "the Zarr store's grid is detected"
    for name in ("2t", "tp", "sst"):
        da = z[name]
        assert da.dims == ("time", *grid.dims)
        assert da.encoding["chunks"] == (1, *grid.shape)
        assert {"units", "long_name", "standard_name", "grid_type", "grid_dims"} <= set(da.attrs)
        for i, m in enumerate(grib_day1[(grid_id, name)]):
            step = 2.0 ** m["binaryScaleFactor"] * 10.0 ** -m["decimalScaleFactor"]
            zv = da.isel(time=i).values.ravel()
            np.testing.assert_array_equal(np.isnan(zv), np.isnan(m["values"]))
            np.testing.assert_allclose(zv, m["values"], rtol=0, atol=step)
    assert set(z.data_vars) == {"2t", "tp", "10u", "10v", "msl", "sst"}
    assert z.sizes["time"] == seed_build_steps(grid_id)
    assert z["tp"].attrs["cell_methods"] == "time: sum (interval: 6 hours)"


def seed_build_steps(grid_id: str) -> int:
    return 4 if grid_id == "healpix-h256" else 28


def test_zarr_stores_are_zarr_v3(seed_build):
    import json

    for gid, g in seed_build.manifest["grids"].items():
        meta = json.loads((seed_build.root / "objects" / g["zarr"] / "zarr.json").read_text())
        assert meta["zarr_format"] == 3, gid
    h = xr.open_zarr(seed_build.root / "objects/climate-dt/healpix-h128.zarr")
    assert h["cell_ids"].attrs == {"grid_name": "healpix", "level": 7, "indexing_scheme": "nested"}


@pytest.mark.parametrize("grid_id", GRIDS)
def test_climatological_bounds(seed_zarr, grid_id):
    z = seed_zarr[grid_id].load()
    t2, msl, sst, tp = z["2t"].values, z["msl"].values, z["sst"].values, z["tp"].values
    assert t2.min() >= 190 and t2.max() <= 330
    assert msl.min() >= 87000 and msl.max() <= 108500
    speed = np.hypot(z["10u"].values, z["10v"].values)
    assert speed.max() < 80
    assert speed.mean() > 3  # there is weather: winds are not all calm
    assert tp.min() >= 0
    assert (tp == 0).mean() > 0.5 and tp.max() > 0.005  # mostly dry, some heavy rain
    assert np.nanmin(sst) >= 271 and np.nanmax(sst) <= 308
    # no NaN except sst over land, always the same cells
    for name in ("2t", "tp", "10u", "10v", "msl"):
        assert not np.isnan(z[name].values).any(), name
    assert (np.isnan(sst) == np.isnan(sst[:1])).all()


def _cell(grid, lon: float, lat: float) -> int:
    if isinstance(grid, tg.HEALPix):
        return int(grid.lonlat2pix(np.array([lon]), np.array([lat]))[0])
    glon, glat = grid.centers()
    d = (glat - lat) ** 2 + ((glon - lon % 360 + 180) % 360 - 180) ** 2
    return int(np.argmin(d))


@pytest.mark.parametrize("grid_id", GRIDS)
def test_sst_is_missing_over_land_and_present_over_sea(seed_zarr, grid_id):
    grid = make_grid(grid_id)
    sst = seed_zarr[grid_id]["sst"].isel(time=0).values.ravel()
    for name, lon, lat in [
        ("Sahara", 13.0, 23.0),
        ("Amazon", -60.0, -5.0),
        ("Siberia", 100.0, 62.0),
    ]:
        assert np.isnan(sst[_cell(grid, lon, lat)]), name
    for name, lon, lat in [("mid-Pacific", -150.0, 0.0), ("South Atlantic", -20.0, -30.0)]:
        v = sst[_cell(grid, lon, lat)]
        assert 290 < v < 305, (name, v)


def test_latitude_and_diurnal_structure(seed_zarr):
    z = seed_zarr["healpix-h128"]
    grid = make_grid("healpix-h128")
    lon, lat = grid.centers()
    t2 = z["2t"].values  # (time, cell)
    assert t2[:, np.abs(lat) < 20].mean() > t2[:, np.abs(lat) > 70].mean() + 25
    # over land near the Greenwich meridian, 12 UTC is local noon and 00 UTC midnight
    land = np.isnan(z["sst"].isel(time=0).values)
    near0 = land & ((lon < 7.5) | (lon > 352.5)) & (np.abs(lat) < 40)
    assert near0.sum() > 100
    hours = z["time"].dt.hour.values
    noon, midnight = t2[hours == 12][:, near0].mean(), t2[hours == 0][:, near0].mean()
    assert noon > midnight + 5, (noon, midnight)
    # the sea barely notices the time of day
    sea0 = ~land & ((lon < 7.5) | (lon > 352.5)) & (np.abs(lat) < 40)
    assert abs(t2[hours == 12][:, sea0].mean() - t2[hours == 0][:, sea0].mean()) < 2.5


def test_seasons_are_opposite_in_the_two_hemispheres():
    grid = tg.HEALPix(32)
    lon, lat = grid.centers()
    land = np.zeros(grid.size, dtype=bool)  # an aqua-planet: the season alone
    model = FieldModel(lon, lat, grid.ring_ids(), land)
    jan = model.fields(datetime(2030, 1, 15, 12), 6)["2t"]
    jul = model.fields(datetime(2030, 7, 15, 12), 6)["2t"]
    north, south = (lat > 40) & (lat < 60), (lat < -40) & (lat > -60)
    assert jul[north].mean() > jan[north].mean() + 2
    assert jan[south].mean() > jul[south].mean() + 2


def test_grib_holds_the_model_fields_to_packing_precision(grib_day1):
    """Recompute day 1 on O96 from the field model: the GRIB values are those fields,
    quantised to 16 bits (error at most half a packing step), NaN exactly over land."""
    from twinhub.services.datalake.seed.landmask import land_masks

    grid = make_grid("octahedral-o96")
    lon, lat = grid.centers()
    land = land_masks({"o96": (lon, lat)})["o96"]
    model = FieldModel(lon, lat, grid.ring_ids().ravel(), land)
    for i, hour in enumerate((0, 6, 12, 18)):
        truth = model.fields(datetime(2030, 1, 1, hour), 6)
        for name in ("2t", "tp", "sst"):
            m = grib_day1[("octahedral-o96", name)][i]
            step = 2.0 ** m["binaryScaleFactor"] * 10.0 ** -m["decimalScaleFactor"]
            np.testing.assert_array_equal(np.isnan(m["values"]), np.isnan(truth[name]))
            np.testing.assert_allclose(m["values"], truth[name], rtol=0, atol=step * 0.51)
            assert step < (0.01 if name != "tp" else 1e-6), (name, step)
