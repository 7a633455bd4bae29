"""The seeded data lake end to end on the real multi-user platform: pystac-client searches
against /services/stac/, every served item valid, every asset opened from a user's kernel
with twinlab.datalake and equal to what the seed wrote."""

from __future__ import annotations

import json
import re
import textwrap
from datetime import datetime

import numpy as np
import pytest

from tests.helpers.kernel import run_code
from tests.helpers.platform import wait_for_seed

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

USER = "lakeuser"


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def lake(multiuser_platform):
    from pystac_client import Client

    from twinhub.services.datalake.seed import build

    p = multiuser_platform
    state = wait_for_seed(p)
    seed = build(state["size"], progress=lambda _m: None)  # the cached build the platform loaded
    items = list(seed.items())
    if p.api("GET", f"/users/{USER}", user="admin").status_code == 404:
        p.add_user(USER)
    url = p.url + "services/stac/"
    client = Client.open(url, headers={"Authorization": f"token {p.token(USER)}"})
    return p, seed, items, client


def _ids(results) -> set[str]:
    return {i.id for i in results.items()}


def test_property_filters_return_exactly_the_matching_items(lake):
    _, _, items, client = lake
    expected = {
        i["id"]
        for i in items
        if i["properties"]["param"] == "2t" and i["properties"]["resolution"] == "standard"
    }
    assert expected
    cql = {
        "op": "and",
        "args": [
            {"op": "=", "args": [{"property": "param"}, "2t"]},
            {"op": "=", "args": [{"property": "resolution"}, "standard"]},
        ],
    }
    got = client.search(collections=["climate-dt"], filter=cql, filter_lang="cql2-json", limit=200)
    assert _ids(got) == expected
    text = client.search(
        collections=["climate-dt"], filter="param = '2t' AND resolution = 'standard'", limit=200
    )
    assert _ids(text) == expected


def test_datetime_and_bbox_searches_return_the_right_items(lake):
    _, _, items, client = lake
    first = min(items, key=lambda i: i["properties"]["start_datetime"])
    start = _when(first["properties"]["start_datetime"])
    window = (start.replace(hour=3), start.replace(hour=9))

    def overlaps(i: dict) -> bool:
        a, b = _when(i["properties"]["start_datetime"]), _when(i["properties"]["end_datetime"])
        return a <= window[1] and b >= window[0]

    expected = {i["id"] for i in items if overlaps(i) and i["properties"]["param"] == "msl"}
    assert expected and len(expected) < len(items)
    got = client.search(
        collections=["climate-dt"],
        datetime=f"{window[0]:%Y-%m-%dT%H:%M:%SZ}/{window[1]:%Y-%m-%dT%H:%M:%SZ}",
        bbox=[-10, 35, 30, 60],  # Europe: the fields are global, every item covers it
        filter="param = 'msl'",
        limit=200,
    )
    assert _ids(got) == expected


def test_every_served_item_validates_offline(lake):
    from twinhub.services.datalake.validate import validate_stac

    _, _, items, client = lake
    served = list(client.search(collections=["climate-dt"], limit=500).items_as_dicts())
    assert len(served) == len(items)
    for item in served:
        validate_stac(item)
    validate_stac(client.get_collection("climate-dt").to_dict())


def _kernel(p, code: str, timeout: float = 240) -> dict:
    url = p.spawn(USER)
    text = run_code(
        url,
        p.token(USER),
        textwrap.dedent(code) + "\nimport json; print('RESULT ' + json.dumps(out))\n",
        timeout=timeout,
    )
    found = re.findall(r"RESULT (.*)", text)
    assert found, text
    return json.loads(found[-1])


def test_every_asset_opens_from_a_kernel_and_matches_the_seed(lake):
    """Per grid: the Zarr store and one GRIB file, opened with twinlab.datalake in the user's
    server (s3 with the user's own keys), give the values the seed wrote."""
    import xarray as xr

    p, seed, items, _ = lake
    per_grid: dict[str, dict] = {}
    for i in items:
        grid = (
            i["properties"]["twinhub:grid"]["id"]
            if "id" in i["properties"]["twinhub:grid"]
            else i["id"].split("-")[2]
        )
        per_grid.setdefault(grid, i)
    picks = [i["id"] for i in per_grid.values()]
    out = _kernel(
        p,
        f"""
        import numpy as np, twinlab.datalake as dl
        from twinlab.grids import from_dataset
        out = {{}}
        for iid in {picks!r}:
            item = dl.resolve_item(iid)
            var = item.properties["param"]
            z = dl.open(item)
            g = dl.open(item, asset="grib")
            zv, gv = z[var].values, g[var].values
            out[iid] = {{
                "grid": type(from_dataset(z)).__name__,
                "grib_grid": type(from_dataset(g)).__name__,
                "shape": list(zv.shape),
                "zarr_mean": float(np.nanmean(zv)),
                "max_diff": float(np.nanmax(np.abs(zv - gv))),
                "nan_same": bool((np.isnan(zv) == np.isnan(gv)).all()),
                "std": float(np.nanstd(zv)),
            }}
        """,
    )
    for iid, got in out.items():
        item = next(i for i in items if i["id"] == iid)
        var = item["properties"]["param"]
        store = seed.root / "objects" / item["assets"]["zarr"]["href"].removeprefix("s3://lake/")
        local = xr.open_zarr(store)[var].sel(
            time=slice(
                item["properties"]["start_datetime"].rstrip("Z"),
                item["properties"]["end_datetime"].rstrip("Z"),
            )
        )
        assert got["shape"] == list(local.shape), (iid, got)
        assert np.isclose(got["zarr_mean"], float(np.nanmean(local.values)), rtol=1e-6), (iid, got)
        assert got["grid"] == got["grib_grid"], (iid, got)
        # GRIB packing keeps ~1e-3 of the field's spread; the same cells are missing
        assert got["max_diff"] <= 1e-3 * max(got["std"], 1e-6) * 100, (iid, got)
        assert got["nan_same"], (iid, got)


def test_data_seed_cli_reloads_idempotently_and_names_bad_sizes(lake):
    p, _, items, client = lake
    r = p.cli("data", "seed", "--size", "small")
    assert f"loaded: {len(items)} items, 0 bytes sent" in r.stdout, r.stdout  # all objects there
    served = list(client.search(collections=["climate-dt"], limit=500).items_as_dicts())
    assert len(served) == len(items)  # upserted, not duplicated
    r = p.cli("data", "seed", "--size", "huge", check=False)
    assert r.returncode == 2 and "--size must be one of small, medium, large" in r.stderr


# ---- free text (q): AND by default, OR, synonyms, grids, exact parameters first ----------
def _grid_type(i: dict) -> str:
    return i["properties"]["twinhub:grid"]["grid_type"]


def _stac_get(p, **params):
    import requests

    return requests.get(
        p.url + "services/stac/search",
        params=params,
        headers={"Authorization": f"token {p.token(USER)}"},
        timeout=60,
    )


def _all_pages(p, params: dict) -> list[dict]:
    """Every page of a GET search, following the next links."""
    import requests

    out: list[dict] = []
    r = _stac_get(p, **params)
    for _ in range(100):
        assert r.status_code == 200, r.text
        doc = r.json()
        out += doc["features"]
        nxt = [lk for lk in doc["links"] if lk["rel"] == "next"]
        if not nxt:
            return out
        assert "filter" not in nxt[0]["href"]  # the client's own q, not the filter it became
        r = requests.get(
            nxt[0]["href"], headers={"Authorization": f"token {p.token(USER)}"}, timeout=60
        )
    raise AssertionError("more than 100 pages")


def _post_all(p, q: str, limit: int = 100) -> list[dict]:
    """Every page of a POST search, following the next links (their bodies)."""
    import requests

    out: list[dict] = []
    body: dict = {"q": q, "limit": limit}
    for _ in range(100):
        r = requests.post(
            p.url + "services/stac/search",
            json=body,
            headers={"Authorization": f"token {p.token(USER)}"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        doc = r.json()
        out += doc["features"]
        nxt = [lk for lk in doc["links"] if lk["rel"] == "next"]
        if not nxt:
            return out
        body = nxt[0]["body"]
        assert body["q"] == q and "filter" not in body
    raise AssertionError("more than 100 pages")


def _fids(features: list[dict]) -> set[str]:
    return {f["id"] for f in features}


def test_free_text_temperature_finds_2t_first(lake):
    p, _, items, client = lake
    got = _post_all(p, "temperature", limit=50)
    params = [f["properties"]["param"] for f in got]
    # "2 metre temperature" (2t, by synonym and long name) and "sea surface temperature"
    expected = {i["id"] for i in items if i["properties"]["param"] in ("2t", "sst")}
    assert got and {f["id"] for f in got} == expected and len(got) == len(expected)
    n2t = params.count("2t")
    assert n2t and params[:n2t] == ["2t"] * n2t  # every 2t item before any other
    assert set(params[n2t:]) == {"sst"}
    # GET, small pages: the same ranking across page boundaries, nothing twice
    paged = _all_pages(p, {"q": "temperature", "limit": "7"})
    assert [f["id"] for f in paged] == [f["id"] for f in got]


def test_free_text_words_must_all_match(lake):
    p, _, items, client = lake
    got = _post_all(p, "2t healpix")
    expected = {
        i["id"] for i in items if i["properties"]["param"] == "2t" and _grid_type(i) == "healpix"
    }
    assert expected and {f["id"] for f in got} == expected
    for f in got:
        assert f["properties"]["param"] == "2t" and _grid_type(f) == "healpix"
    # a multi-word variable name is one term: sst, not "sea" and "surface" and "temperature"
    sst = _post_all(p, "sea surface temperature")
    assert sst and {f["properties"]["param"] for f in sst} == {"sst"}
    assert _fids(_post_all(p, '"total precipitation" octahedral')) == {
        i["id"] for i in items if i["properties"]["param"] == "tp" and _grid_type(i) == "octahedral"
    }


def test_free_text_or_and_exclusion(lake):
    p, _, items, client = lake
    both = {i["id"] for i in items if i["properties"]["param"] in ("2t", "tp")}
    # (OR separates groups of words that must all match: "-sst" belongs to "temperature")
    for q in ("2t OR tp", "2t or tp", "2t,tp", "temperature -sst OR precipitation"):
        assert _fids(_post_all(p, q, limit=200)) == both, q
    assert {f["properties"]["param"] for f in _post_all(p, "wind")} == {"10u", "10v"}
    assert {f["properties"]["param"] for f in _post_all(p, "pressure")} == {"msl"}


@pytest.mark.parametrize(
    ("q", "words"),
    [
        ('"unclosed', "unclosed quote"),
        ("(2t OR tp) healpix", "parentheses"),
        (",", "no search terms"),
    ],
)
def test_bad_free_text_is_a_400_naming_it(lake, q, words):
    p, _, _, _ = lake
    r = _stac_get(p, q=q)
    assert r.status_code == 400 and words in r.text, r.text


def test_free_text_from_a_kernel_with_twinlab_datalake(lake):
    p, _, items, _ = lake
    out = _kernel(
        p,
        """
        from twinlab import datalake as dl
        t = dl.search(q="temperature", max_items=None)
        h = dl.search(q="2t healpix", max_items=None)
        o = dl.search(q="2t OR tp", max_items=None)
        out = {"t": [i.properties["param"] for i in t.items],
               "h": sorted((i.properties["param"], i.properties["twinhub:grid"]["grid_type"]) for i in h.items),
               "o": sorted({i.properties["param"] for i in o.items})}
        """,
    )
    n2t = sum(1 for i in items if i["properties"]["param"] == "2t")
    assert out["t"][:n2t] == ["2t"] * n2t and set(out["t"][n2t:]) == {"sst"}
    assert out["h"] and set(map(tuple, out["h"])) == {("2t", "healpix")}
    assert out["o"] == ["2t", "tp"]
