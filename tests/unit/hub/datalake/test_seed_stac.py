"""STAC records of the seed, and offline validation (core STAC 1.1.0 + datacube)."""

from __future__ import annotations

import copy
import re

import pytest

from twinhub.services.datalake.validate import DATACUBE_URI, validate_stac


def test_every_record_validates(seed_build, seed_items):
    for c in seed_build.collections():
        validate_stac(c)
    for item in seed_items:
        validate_stac(item)


def test_items_look_like_the_climate_dt_catalogue(seed_build, seed_items):
    objects = dict(seed_build.objects())
    ids = [i["id"] for i in seed_items]
    assert len(ids) == len(set(ids)) == seed_build.manifest["n_items"]
    for item in seed_items:
        m = re.fullmatch(r"climate-dt-(healpix-h128|healpix-h256|octahedral-o96|gaussian-f48)-"
                         r"(2t|tp|10u|10v|msl|sst)-(2030010[1-7])", item["id"])  # fmt: skip
        assert m, item["id"]
        grid_id, short, day = m.groups()
        p = item["properties"]
        assert p["datetime"] == p["start_datetime"]  # not null: pgstac drops a null one
        assert p["start_datetime"] == f"{day[:4]}-{day[4:6]}-{day[6:]}T00:00:00Z"
        assert p["end_datetime"] == f"{day[:4]}-{day[4:6]}-{day[6:]}T18:00:00Z"
        assert {k: p[k] for k in ("class", "dataset", "activity", "experiment", "model")} == {
            "class": "d1", "dataset": "climate-dt", "activity": "ScenarioMIP",
            "experiment": "SSP3-7.0", "model": "IFS-NEMO",
        }  # fmt: skip
        assert (p["generation"], p["realization"], p["stream"], p["type"], p["levtype"]) == (
            1,
            1,
            "clte",
            "fc",
            "sfc",
        )
        assert p["resolution"] == ("high" if grid_id == "healpix-h256" else "standard")
        assert p["param"] == short
        assert p["twinhub:grid"]["id"] == grid_id
        assert set(p["cube:variables"]) == {short}
        assert item["bbox"] == [-180, -90, 180, 90]
        grib, zarr = item["assets"]["grib"], item["assets"]["zarr"]
        key = f"climate-dt/{grid_id}/{short}/{day}.grib2"
        assert grib["href"] == f"s3://lake/{key}" and grib["type"] == "application/x-grib"
        assert grib["twinhub:size"] == objects[key].stat().st_size
        assert zarr["href"] == f"s3://lake/climate-dt/{grid_id}.zarr"
        assert zarr["type"] == "application/vnd+zarr" and zarr["twinhub:variable"] == short
        assert f"climate-dt/{grid_id}.zarr/zarr.json" in objects
        assert grib["roles"] == zarr["roles"] == ["data"]


def test_item_grid_property_matches_twinlab_grids(seed_items):
    import twinlab.grids as tg
    from twinhub.services.datalake.seed.grids import make_grid

    seen = {}
    for item in seed_items:
        g = item["properties"]["twinhub:grid"]
        seen[g["id"]] = {k: v for k, v in g.items() if k != "id"}
    for grid_id, attrs in seen.items():
        assert attrs == tg.grid_attrs(make_grid(grid_id))
    dims = {
        i["properties"]["twinhub:grid"]["id"]: i["properties"]["cube:dimensions"]
        for i in seed_items
    }
    assert set(dims["gaussian-f48"]) == {"time", "latitude", "longitude"}
    assert dims["gaussian-f48"]["longitude"]["axis"] == "x"
    assert dims["healpix-h128"]["cell"]["extent"] == [0, 12 * 128 * 128 - 1]


def test_collection(seed_build):
    (c,) = seed_build.collections()
    assert c["license"] == "CC-BY-4.0" and c["stac_version"] == "1.1.0"
    assert DATACUBE_URI in c["stac_extensions"]
    assert set(c["cube:variables"]) == {"2t", "tp", "10u", "10v", "msl", "sst"}
    assert c["extent"]["temporal"]["interval"] == [["2030-01-01T00:00:00Z", "2030-01-07T18:00:00Z"]]
    assert set(c["summaries"]["resolution"]) == {"standard", "high"}
    assert set(c["item_assets"]) == {"grib", "zarr"}
    assert c["providers"] and c["keywords"]


@pytest.fixture
def item(seed_items):
    return copy.deepcopy(seed_items[0])


def _broken(item, change) -> str:
    change(item)
    with pytest.raises(ValueError) as e:
        validate_stac(item)
    return str(e.value)


def test_bad_cube_variable_type_is_named(item):
    msg = _broken(item, lambda i: i["properties"]["cube:variables"]["2t"].update(type="field"))
    assert "properties/cube:variables/2t/type" in msg and "'field'" in msg
    assert DATACUBE_URI in msg


def test_missing_datetime_is_named(item):
    msg = _broken(item, lambda i: i["properties"].pop("datetime"))
    assert "'datetime' is a required property" in msg


def test_other_breakages(item):
    bad_dim = copy.deepcopy(item)
    msg = _broken(bad_dim, lambda i: i["properties"]["cube:dimensions"]["time"].update(step="6h"))
    assert "cube:dimensions/time" in msg or "cube:dimensions" in msg
    no_dims = copy.deepcopy(item)
    msg = _broken(no_dims, lambda i: i["properties"].pop("cube:dimensions"))
    assert "cube:dimensions" in msg
    undeclared = copy.deepcopy(item)
    msg = _broken(
        undeclared,
        lambda i: i["properties"]["cube:variables"]["2t"].update(dimensions=["time", "z"]),
    )
    assert "dimension 'z' is not in cube:dimensions" in msg
    spatial = copy.deepcopy(item)
    msg = _broken(
        spatial,
        lambda i: i["properties"]["cube:dimensions"].update(x={"type": "spatial", "axis": "q"}),
    )
    assert "cube:dimensions/x" in msg
    no_geometry = copy.deepcopy(item)
    msg = _broken(no_geometry, lambda i: i.pop("geometry"))
    assert "geometry" in msg
    bad_link = copy.deepcopy(item)
    _broken(bad_link, lambda i: i.update(links=[]))  # "collection" needs its link


def test_unknown_extension_is_not_fetched(item):
    uri = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
    msg = _broken(item, lambda i: i["stac_extensions"].append(uri))
    assert uri in msg and "not bundled" in msg


def test_not_a_stac_object():
    with pytest.raises(ValueError, match="not a STAC type"):
        validate_stac({"type": "FeatureCollection"})
    with pytest.raises(ValueError, match="must be a JSON object"):
        validate_stac([])  # type: ignore[arg-type]


def test_a_plain_catalog_validates():
    validate_stac(
        {
            "type": "Catalog",
            "stac_version": "1.1.0",
            "id": "c",
            "description": "d",
            "links": [],
        }
    )
