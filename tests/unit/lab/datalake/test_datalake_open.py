"""twinlab.datalake.open on local files: GRIB2 written by ecCodes on every grid kind we
serve (HEALPix nested and ring, octahedral O32, regular Gaussian F16), a Zarr v3 store, a
NetCDF file, and STAC items pointing at them; values, laziness and grid detection."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pyproj = pytest.importorskip("pyproj")  # before ecCodes: its wheel bundles another libproj
ec = pytest.importorskip("eccodes")
xr = pytest.importorskip("xarray")
pystac = pytest.importorskip("pystac")
dask_array = pytest.importorskip("dask.array")

import twinlab.datalake as dl  # noqa: E402
import twinlab.grids as grids  # noqa: E402

TIMES = (0, 1200)  # two messages per file: 00 and 12 UTC on 2020-01-01


def _field(npoints: int, hour: int, offset: float = 0.0) -> np.ndarray:
    # a smooth ramp, different per time: values are checked after 16-bit packing
    return np.linspace(250.0, 300.0, npoints) + hour / 100 + offset


def _write(path: Path, handles: list[Any]) -> None:
    with open(path, "wb") as f:
        for h in handles:
            ec.codes_write(h, f)
            ec.codes_release(h)


def _finish(h: Any, npoints: int, hour: int, short: str = "2t", offset: float = 0.0) -> Any:
    ec.codes_set(h, "dataDate", 20200101)
    ec.codes_set(h, "dataTime", hour)
    ec.codes_set(h, "shortName", short)
    # packingType before bitsPerValue: setting the packing resets the bit count
    ec.codes_set(h, "packingType", "grid_simple")
    ec.codes_set(h, "bitsPerValue", 16)
    ec.codes_set_values(h, _field(npoints, hour, offset))
    return h


def _healpix(nside: int, ordering: str, hour: int) -> Any:
    h = ec.codes_grib_new_from_samples("GRIB2")
    ec.codes_set(h, "gridDefinitionTemplateNumber", 150)  # template 3.150
    ec.codes_set(h, "Nside", nside)
    ec.codes_set(h, "orderingConvention", ordering)
    ec.codes_set(h, "longitudeOfFirstGridPointInDegrees", 45)  # the standard HEALPix origin
    return _finish(h, 12 * nside * nside, hour)


def _octahedral(N: int, hour: int) -> Any:
    h = ec.codes_grib_new_from_samples("reduced_gg_pl_32_grib2")
    pl = grids.octahedral_pl(N)  # the sample's pl is a classic N grid's: build O32's
    ec.codes_set_array(h, "pl", np.asarray(pl, dtype=np.int64))
    return _finish(h, int(np.sum(pl)), hour)


def _regular_gaussian(N: int, hour: int, short: str = "2t", offset: float = 0.0) -> Any:
    h = ec.codes_grib_new_from_samples("regular_gg_sfc_grib2")
    lats = grids.gaussian_latitudes(N)
    for key, value in [
        ("N", N),
        ("Ni", 4 * N),
        ("Nj", 2 * N),
        ("latitudeOfFirstGridPointInDegrees", float(lats[0])),
        ("latitudeOfLastGridPointInDegrees", float(lats[-1])),
        ("longitudeOfLastGridPointInDegrees", 360 - 90 / N),
        ("iDirectionIncrementInDegrees", 90 / N),
    ]:
        ec.codes_set(h, key, value)
    return _finish(h, 8 * N * N, hour, short, offset)


def _accumulation(date: int, hour: int) -> Any:
    h = ec.codes_grib_new_from_samples("regular_gg_sfc_grib2")
    ec.codes_set(h, "stepType", "accum")
    ec.codes_set(h, "stepUnits", "h")
    ec.codes_set(h, "startStep", 0)
    ec.codes_set(h, "endStep", 6)
    h = _finish(h, ec.codes_get(h, "numberOfDataPoints"), hour, "tp", -250)
    ec.codes_set(h, "dataDate", date)  # _finish set 2020-01-01
    return h


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("datalake")
    out = {}
    makers = {
        "healpix_nested": lambda t: _healpix(8, "nested", t),
        "healpix_ring": lambda t: _healpix(8, "ring", t),
        "octahedral": lambda t: _octahedral(32, t),
        "gaussian": lambda t: _regular_gaussian(16, t),
    }
    for name, make in makers.items():
        out[name] = root / f"{name}.grib2"
        _write(out[name], [make(t) for t in TIMES])
    # 2t (2 m) and 10u (10 m) in one file: two cfgrib hypercubes
    out["mixed"] = root / "mixed.grb"
    _write(out["mixed"], [_regular_gaussian(16, 0), _regular_gaussian(16, 0, "10u", -250)])
    # Zarr v3 and NetCDF copies of the HEALPix field, as the seed writes them
    ds = _healpix_dataset()
    out["zarr"] = root / "healpix.zarr"
    ds.to_zarr(out["zarr"], zarr_format=3, consolidated=False)
    out["netcdf"] = root / "healpix.nc"
    ds.to_netcdf(out["netcdf"], engine="h5netcdf")
    # a 6-hourly accumulation as Climate DT writes it: reference time = valid time - 6 h
    out["tp"] = root / "tp.grib2"
    _write(out["tp"], [_accumulation(d, t) for d, t in ((20191231, 1800), (20200101, 600))])
    out["unknown"] = root / "data.bin"
    out["unknown"].write_bytes(b"\0" * 16)
    out["not_grib"] = root / "broken.grib2"
    out["not_grib"].write_bytes(b"this is not GRIB")
    return out


def _healpix_dataset() -> Any:
    nside = 8
    time = np.array(["2020-01-01T00", "2020-01-01T12", "2020-01-02T00"], dtype="datetime64[ns]")
    data = np.stack([_field(12 * nside * nside, 100 * h) for h in (0, 12, 24)]).astype("float32")
    grid = grids.HEALPix(nside, True, dims=("cell",))
    ds = xr.Dataset(
        {
            "2t": (("time", "cell"), data, {"units": "K"}),
            "tp": (("time", "cell"), np.zeros_like(data), {"units": "m"}),
        },
        coords={"time": time},
    )
    return ds.grid.assign(grid)


# ---- GRIB ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "key", "size"),
    [
        ("healpix_nested", "healpix-n8-nested", 768),
        ("healpix_ring", "healpix-n8-ring", 768),
        ("octahedral", "octahedral-O32", 5248),
        ("gaussian", "regular_gg-F16", 2048),
    ],
)
def test_grib_opens_lazily_with_values_and_a_detected_grid(files, name, key, size):
    ds = dl.open(files[name])
    assert list(ds.data_vars) == ["t2m"]  # cfgrib's name unless the shortName is asked for
    da = ds["t2m"]
    assert isinstance(da.data, dask_array.Array)
    # one Dask chunk per GRIB message (time), the whole field in it
    assert da.data.numblocks[0] == 2 and da.chunks[0] == (1, 1)
    grid = grids.from_dataset(ds)
    assert grid.key == key and grid.size == size
    # the twinlab attributes are written, so detection no longer needs GRIB metadata
    assert grids.grid_attrs(grid).items() <= da.attrs.items()
    plain = da.copy()
    plain.attrs = {k: v for k, v in da.attrs.items() if not k.startswith("GRIB_")}
    assert grids.from_dataset(plain) == grid
    values = da.isel(time=1).values.reshape(-1)
    np.testing.assert_allclose(values, _field(size, 1200), atol=2e-3)
    # the grid accessor works on it: area-weighted global mean of a linear ramp
    assert 250 < float(ds.grid.mean()["t2m"].isel(time=0)) < 300


def test_healpix_ring_and_nested_are_told_apart_by_grib_metadata_not_coordinates(files):
    for name, nest in (("healpix_nested", True), ("healpix_ring", False)):
        da = dl.open(files[name])["t2m"]
        assert da.attrs["GRIB_orderingConvention"] == ("nested" if nest else "ring")
        assert da.attrs["GRIB_Nside"] == 8
        assert da.attrs["healpix_order"] == ("nested" if nest else "ring")


def test_grib_variable_by_short_name_is_renamed_and_by_cfgrib_name_kept(files):
    ds = dl.open(files["gaussian"], "2t")
    assert list(ds.data_vars) == ["2t"] and ds["2t"].attrs["GRIB_shortName"] == "2t"
    assert grids.from_dataset(ds).key == "regular_gg-F16"
    assert list(dl.open(str(files["gaussian"]), variable="t2m").data_vars) == ["t2m"]


def test_grib_with_several_levels_merges_and_selects(files):
    ds = dl.open(files["mixed"])
    assert set(ds.data_vars) == {"t2m", "u10"}
    # the conflicting scalar level became a per-variable attribute, not one shared coord
    assert "heightAboveGround" not in ds.coords
    assert (ds["t2m"].attrs["heightAboveGround"], ds["u10"].attrs["heightAboveGround"]) == (2, 10)
    u = dl.open(files["mixed"], "10u")
    assert list(u.data_vars) == ["10u"]
    np.testing.assert_allclose(u["10u"].values.reshape(-1), _field(2048, 0, -250), atol=2e-3)
    with pytest.raises(KeyError, match=r"no variable 'msl'.*10u \(u10\).*2t \(t2m\)"):
        dl.open(files["mixed"], "msl")


def test_grib_chunks_none_loads_numpy(files):
    ds = dl.open(files["octahedral"], chunks=None)
    assert isinstance(ds["t2m"].data, np.ndarray)


# ---- Zarr, NetCDF ------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["zarr", "netcdf"])
def test_zarr_and_netcdf_open_lazily_with_grid(files, fmt):
    ds = dl.open(files[fmt])
    assert set(ds.data_vars) == {"2t", "tp"}
    assert isinstance(ds["2t"].data, dask_array.Array)
    assert grids.from_dataset(ds).key == "healpix-n8-nested"
    xr.testing.assert_allclose(ds.load(), _healpix_dataset())
    one = dl.open(str(files[fmt]), variable="2t")
    assert list(one.data_vars) == ["2t"]
    with pytest.raises(KeyError, match=r"no variable 'sst'.*2t, tp"):
        dl.open(files[fmt], "sst")


def test_zarr_v2_store_opens_too(files, tmp_path):
    path = tmp_path / "v2.zarr"
    _healpix_dataset().chunk({"time": 1}).to_zarr(path, zarr_format=2)
    ds = dl.open(path, "tp", chunks={"time": 1})
    assert ds["tp"].chunks[0] == (1, 1, 1)
    assert ds["tp"].attrs["grid_type"] == "healpix"


def test_data_without_grid_attributes_is_detected_and_annotated(tmp_path):
    # a Zarr store with plain latitude/longitude, as many tools write it: regular 2 deg
    lat = np.arange(90, -91, -2.0)
    lon = np.arange(0, 360, 2.0)
    ds = xr.Dataset(
        {"msl": (("latitude", "longitude"), np.full((lat.size, lon.size), 1e5))},
        coords={"latitude": lat, "longitude": lon},
    )
    ds.to_zarr(tmp_path / "ll.zarr", zarr_format=3, consolidated=False)
    out = dl.open(tmp_path / "ll.zarr")
    assert out["msl"].attrs["grid_type"] == "latlon"
    assert grids.from_dataset(out).key == grids.from_dataset(ds).key


# ---- bad input ---------------------------------------------------------------------------
def test_bad_paths_and_formats_say_what_is_wrong(files, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        dl.open(tmp_path / "missing.grib2")
    with pytest.raises(FileNotFoundError, match="missing.zarr"):
        dl.open(str(tmp_path / "missing.zarr"))
    with pytest.raises(ValueError, match=r"cannot tell the format of .*data.bin.*\.grib2"):
        dl.open(files["unknown"])
    with pytest.raises(ValueError, match=r"cannot read .*broken.grib2 as GRIB"):
        dl.open(files["not_grib"])
    with pytest.raises(TypeError, match="pystac.Item, an item id"):
        dl.open(42)
    with pytest.raises(ValueError, match="non-empty"):
        dl.open("  ")
    with pytest.raises(ValueError, match="only applies to STAC items"):
        dl.open(files["zarr"], asset="zarr")
    with pytest.raises(TypeError, match="chunks must be"):
        dl.open(files["zarr"], chunks=[1])


# ---- STAC items pointing at local files ----------------------------------------------------
def _item(files: dict[str, Path], assets: dict[str, tuple[str, str]], **props: Any) -> Any:
    item = pystac.Item(
        id="h8-2t-20200101",
        geometry=None,
        bbox=None,
        datetime=None,
        properties={
            "start_datetime": "2020-01-01T00:00:00Z",
            "end_datetime": "2020-01-01T12:00:00Z",
            "param": "2t",
            **props,
        },
        collection="test",
    )
    for key, (name, media) in assets.items():
        item.add_asset(key, pystac.Asset(href=str(files[name]), media_type=media))
    return item


ZARR = ("zarr", "application/vnd+zarr")
GRIB = ("healpix_nested", "application/x-grib")


def test_item_prefers_zarr_and_selects_its_variable_and_time_range(files):
    ds = dl.open(_item(files, {"grib": GRIB, "zarr": ZARR}))
    assert list(ds.data_vars) == ["2t"]
    assert ds.sizes["time"] == 2  # the store has 3 times; the item covers the first two
    assert ds.attrs["stac_asset"] == "zarr" and ds.attrs["stac_item"] == "h8-2t-20200101"
    assert grids.from_dataset(ds).key == "healpix-n8-nested"


def test_item_as_json_dict_opens_like_the_item(files):
    item = _item(files, {"zarr": ZARR})
    ds = dl.open(item.to_dict(), "tp")
    assert list(ds.data_vars) == ["tp"] and ds.attrs["stac_item"] == item.id


def test_item_falls_back_to_grib_and_the_same_variable_name_works(files):
    z = dl.open(_item(files, {"zarr": ZARR}))
    g = dl.open(_item(files, {"grib": GRIB}))
    assert g.attrs["stac_asset"] == "grib" and list(g.data_vars) == ["2t"]
    np.testing.assert_allclose(
        g["2t"].values.reshape(2, -1), z["2t"].values.reshape(2, -1), atol=2e-3
    )
    forced = dl.open(_item(files, {"grib": GRIB, "zarr": ZARR}), asset="grib", variable="t2m")
    assert forced.attrs["stac_asset"] == "grib" and list(forced.data_vars) == ["t2m"]


def test_item_time_range_selects_grib_by_valid_time(files):
    # valid 2020-01-01 00 and 12 UTC; reference times 2019-12-31 18 and 2020-01-01 06
    item = _item(files, {"grib": ("tp", "application/x-grib")}, param="tp")
    ds = dl.open(item)
    assert list(ds.data_vars) == ["tp"]
    assert list(ds.valid_time.values) == [
        np.datetime64("2020-01-01T00:00", "ns"),
        np.datetime64("2020-01-01T12:00", "ns"),
    ]
    morning = _item(
        files,
        {"grib": ("tp", "application/x-grib")},
        param="tp",
        start_datetime="2020-01-01T00:00:00Z",
        end_datetime="2020-01-01T06:00:00Z",
    )
    one = dl.open(morning)
    assert one.sizes["time"] == 1
    assert one.time.values[0] == np.datetime64("2019-12-31T18:00", "ns")  # its reference time


def test_item_grid_property_is_applied_and_checked(files, tmp_path):
    # a store without attributes: the item's twinhub:grid describes it
    bare = tmp_path / "bare.zarr"
    ds = _healpix_dataset()
    for v in ds.data_vars.values():
        v.attrs = {}
    ds.attrs = {}
    ds.to_zarr(bare, zarr_format=3, consolidated=False)
    item = _item({"bare": bare}, {"zarr": ("bare", "application/vnd+zarr")})
    assert "grid_type" not in dl.open(item)["2t"].attrs  # nothing says what it is
    grid = grids.grid_attrs(grids.HEALPix(8, True, dims=("cell",)))
    item.properties["twinhub:grid"] = grid
    out = dl.open(item)
    assert grid.items() <= out["2t"].attrs.items()
    assert grids.from_dataset(out).key == "healpix-n8-nested"
    # attributes that contradict the data are not written (nside 16 needs 3072 cells)
    item.properties["twinhub:grid"] = {**grid, "healpix_nside": 16}
    assert "grid_type" not in dl.open(item)["2t"].attrs


def test_item_errors_name_what_exists(files):
    item = _item(files, {"grib": GRIB, "zarr": ZARR})
    with pytest.raises(KeyError, match=r"no asset 'netcdf'; it has: grib, zarr"):
        dl.open(item, asset="netcdf")
    with pytest.raises(KeyError, match=r"no variable 'sst'.*2t, tp"):
        dl.open(item, "sst")
    late = _item(
        files,
        {"zarr": ZARR},
        start_datetime="2021-01-01T00:00:00Z",
        end_datetime="2021-01-02T00:00:00Z",
    )
    with pytest.raises(ValueError, match="no times in 2021-01-01"):
        dl.open(late)
    late_grib = _item(
        files,
        {"grib": GRIB},
        start_datetime="2021-01-01T00:00:00Z",
        end_datetime="2021-01-02T00:00:00Z",
    )
    with pytest.raises(ValueError, match=r"asset 'grib' has no times in 2021.*it has 2020-01-01"):
        dl.open(late_grib)
    thumb = _item(files, {"thumbnail": ("unknown", "image/png")})
    with pytest.raises(ValueError, match=r"no Zarr, GRIB or NetCDF asset.*thumbnail \(image/png\)"):
        dl.open(thumb)


def test_intake_item_reader_reads_the_item(files):
    from twinlab.datalake.intake_view import items_catalog

    cat = items_catalog([_item(files, {"zarr": ZARR})], metadata={"collection": "test"})
    assert list(cat) == ["h8-2t-20200101"]
    reader = cat["h8-2t-20200101"]
    assert reader.metadata["param"] == "2t" and reader.metadata["assets"] == ["zarr"]
    ds = reader.read()
    assert list(ds.data_vars) == ["2t"] and ds.sizes["time"] == 2
    assert list(reader.read(variable="tp").data_vars) == ["tp"]


def test_time_range_is_utc(files):
    item = _item(
        files,
        {"zarr": ZARR},
        start_datetime="2020-01-01T13:00:00+01:00",  # = 12 UTC
        end_datetime="2020-01-02T00:00:00Z",
    )
    ds = dl.open(item)
    assert ds.time.values[0] == np.datetime64(dt.datetime(2020, 1, 1, 12))
