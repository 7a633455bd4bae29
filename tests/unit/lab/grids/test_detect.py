"""Grid detection from GRIB files opened with cfgrib, our attributes, xdggs and coordinates."""

from __future__ import annotations

import numpy as np
import pytest

xr = pytest.importorskip("xarray")

from twinlab.grids import (  # noqa: E402
    Gaussian,
    HEALPix,
    LatLon,
    Octahedral,
    ReducedGaussian,
    from_dataset,
    grid_attrs,
)

GRIB_EXPECT = {
    "healpix_nested": (HEALPix(16, True), ("values",)),
    "healpix_ring": (HEALPix(16, False), ("values",)),
    "octahedral_O96": (Octahedral(96), ("values",)),
    "regular_ll_2_nodes": (LatLon(2.0), ("latitude", "longitude")),
    "regular_ll_3_centres": (LatLon(3.0, nodes=False), ("latitude", "longitude")),
}


def _check_centres(grid, lat, lon, lon_diff) -> None:
    glon, glat = grid.centers()
    np.testing.assert_allclose(glat, lat, atol=1e-9)
    assert lon_diff(glon, lon).max() < 1e-9


@pytest.mark.parametrize("name", list(GRIB_EXPECT))
def test_detects_grib_written_by_eccodes(grib_files, gribtools, name: str) -> None:
    field = grib_files[name]
    expect, dims = GRIB_EXPECT[name]
    with gribtools.open(field.path) as ds:
        grid = from_dataset(ds)
        assert grid == expect and grid.dims == dims
        assert type(grid) is type(expect)
        # geometry agrees with ecCodes' geo-iterator and with cfgrib's coordinates
        _check_centres(grid, field.lat, field.lon, gribtools.lon_diff)
        if len(dims) == 1:
            np.testing.assert_allclose(ds.latitude.values, field.lat, atol=1e-9)
        # the accessor sees the same grid, per variable too
        assert ds.grid.grid == expect and ds["t"].grid.grid == expect


def test_detects_classic_reduced_gaussian(grib_files, gribtools, ec) -> None:
    field = grib_files["classic_N96"]
    with gribtools.open(field.path) as ds:
        grid = from_dataset(ds)
    assert isinstance(grid, ReducedGaussian) and not grid.is_octahedral and grid.N == 96
    _check_centres(grid, field.lat, field.lon, gribtools.lon_diff)


@pytest.mark.parametrize(
    ("fname", "cls", "size"),
    [
        ("reduced_gg.grib", ReducedGaussian, 13280),
        ("regular_gg_sfc.grib", Gaussian, 96 * 192),
        ("regular_ll_sfc.grib", LatLon, 37 * 72),
    ],
)
def test_detects_real_ecmwf_files(gribtools, ec, fname: str, cls: type, size: int) -> None:
    path = gribtools.data / fname
    with open(path, "rb") as f:
        h = ec.codes_grib_new_from_file(f)
    try:
        lat, lon = gribtools.geo(h)
    finally:
        ec.codes_release(h)
    with gribtools.open(path) as ds:
        grid = from_dataset(ds)
    assert type(grid) is cls and grid.size == size
    _check_centres(grid, lat, lon, gribtools.lon_diff)


def test_healpix_ordering_read_from_grib_keys(grib_files, gribtools) -> None:
    path = grib_files["healpix_ring"].path
    kw = {"indexpath": "", "read_keys": ["Nside", "orderingConvention"]}
    with xr.open_dataset(path, engine="cfgrib", backend_kwargs=kw) as ds:
        assert ds["t"].attrs["GRIB_orderingConvention"] == "ring"
        # drop the coordinates: the keys alone must decide
        grid = from_dataset(ds.drop_vars(["latitude", "longitude"]))
    assert grid == HEALPix(16, nest=False)


GRIDS = [
    HEALPix(8),
    HEALPix(8, nest=False),
    Octahedral(24),
    ReducedGaussian(2, [6, 10, 10, 6]),
    Gaussian(12),
    LatLon(5.0),
    LatLon(10.0, 5.0, nodes=False, lon0=-175.0, descending=False),
]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: g.key)
def test_twinlab_attributes_round_trip_through_netcdf(grid, tmp_path) -> None:
    pytest.importorskip("scipy")
    data = np.arange(grid.size, dtype=np.float32).reshape(grid.shape)
    da = xr.DataArray(data[None], dims=("time", *grid.dims), name="t")
    ds = da.to_dataset().grid.assign(grid)
    ds.to_netcdf(tmp_path / "f.nc", engine="scipy")
    with xr.open_dataset(tmp_path / "f.nc", engine="scipy") as back:
        found = from_dataset(back)
    assert found == grid and found.dims == grid.dims


def test_attribute_convention_values() -> None:
    assert grid_attrs(HEALPix(1024)) == {
        "grid_type": "healpix",
        "grid_dims": "cell",
        "healpix_nside": 1024,
        "healpix_order": "nested",
    }
    assert grid_attrs(Octahedral(1280))["gaussian_N"] == 1280


def test_xdggs_convention() -> None:
    grid = HEALPix(4, nest=True)
    attrs = {"grid_name": "healpix", "level": 2, "indexing_scheme": "nested"}
    ids = xr.Variable("cells", np.arange(grid.size), attrs)
    da = xr.DataArray(np.zeros(grid.size), dims="cells", coords={"cell_ids": ids})
    found = from_dataset(da)
    assert found == grid and found.dims == ("cells",)
    ring = da.assign_coords(
        cell_ids=xr.Variable("cells", ids.values, {**attrs, "indexing_scheme": "ring"})
    )
    assert from_dataset(ring) == HEALPix(4, nest=False)
    with pytest.raises(ValueError, match="cover 10 of the 192"):
        from_dataset(da.isel(cells=slice(0, 10)))
    with pytest.raises(ValueError, match="not supported"):
        from_dataset(
            da.assign_coords(
                cell_ids=xr.Variable("cells", ids.values, {**attrs, "grid_name": "h3"})
            )
        )


def test_plain_coordinates_south_to_north_from_minus_180() -> None:
    lat = np.arange(-89.5, 90, 1.0)
    lon = np.arange(-180.0, 180.0, 1.0)
    da = xr.DataArray(
        np.zeros((lat.size, lon.size)), dims=("lat", "lon"), coords={"lat": lat, "lon": lon}
    )
    grid = from_dataset(da)
    assert grid == LatLon(1.0, nodes=False, lon0=180.0, descending=False)
    assert grid.dims == ("lat", "lon")
    glon, glat = grid.centers()
    np.testing.assert_allclose(glat.reshape(grid.shape)[:, 0], lat)
    np.testing.assert_allclose(glon.reshape(grid.shape)[0], np.mod(lon, 360))


def test_plain_gaussian_latitudes() -> None:
    g = Gaussian(16)
    lon, lat = g.centers()
    da = xr.DataArray(
        np.zeros(g.shape),
        dims=("latitude", "longitude"),
        coords={"latitude": lat.reshape(g.shape)[:, 0], "longitude": lon.reshape(g.shape)[0]},
    )
    assert from_dataset(da) == g


def test_healpix_from_per_cell_coordinates_only() -> None:
    grid = HEALPix(8, nest=False)
    lon, lat = grid.centers()
    da = xr.DataArray(
        np.zeros(grid.size),
        dims="values",
        coords={"latitude": ("values", lat), "longitude": ("values", lon)},
    )
    assert from_dataset(da) == grid


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: xr.DataArray(np.zeros(5), dims="x"), ValueError, "cannot detect"),
        (
            lambda: xr.DataArray(np.zeros(768), dims="cell", attrs={"grid_type": "hexagons"}),
            ValueError,
            "unknown grid_type 'hexagons'",
        ),
        (
            lambda: xr.DataArray(np.zeros(768), dims="cell", attrs={"grid_type": "healpix"}),
            ValueError,
            "healpix_nside",
        ),
        (
            lambda: xr.DataArray(
                np.zeros(768), dims="cell", attrs={"grid_type": "healpix", "healpix_nside": 3}
            ),
            ValueError,
            "power of two",
        ),
        (
            lambda: xr.DataArray(
                np.zeros(700), dims="cell", attrs={"grid_type": "healpix", "healpix_nside": 8}
            ),
            ValueError,
            "size 768",
        ),
        (
            lambda: xr.DataArray(
                np.zeros((3, 4)), dims=("a", "b"), attrs={"grid_type": "latlon", "latlon_dlon": 90}
            ),
            ValueError,
            "no dimension 'latitude'",
        ),
        (
            lambda: xr.DataArray(np.zeros(10), dims="values", attrs={"GRIB_gridType": "lambert"}),
            ValueError,
            "lambert",
        ),
        (
            lambda: xr.DataArray(
                np.zeros((10, 20)),
                dims=("lat", "lon"),
                coords={"lat": np.arange(10.0), "lon": np.arange(20.0)},
            ),
            ValueError,
            "not a global regular circle",
        ),
        (
            lambda: xr.DataArray(
                np.zeros((10, 360)),
                dims=("lat", "lon"),
                coords={"lat": np.arange(10.0), "lon": np.arange(360.0)},
            ),
            ValueError,
            "not a global grid",
        ),
        (lambda: np.zeros(3), TypeError, "Dataset or DataArray"),
    ],
)
def test_detection_errors_name_the_problem(make, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        from_dataset(make())
