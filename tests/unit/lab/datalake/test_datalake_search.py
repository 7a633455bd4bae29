"""twinlab.datalake search side: input checks and CQL2 assembly (pure functions), and the
client's errors against real HTTP servers on loopback.

Searching the real STAC API (stac-fastapi-pgstac behind hub auth) is tested by the
platform's integration tests; here a small fake STAC server (http.server) only records
what pystac-client sends, to check the request our arguments become on the wire.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("pystac_client")
pytest.importorskip("cql2")

import twinlab.datalake as dl  # noqa: E402
from twinlab.datalake.freetext import FreeText  # noqa: E402


# ---- bbox / datetime ---------------------------------------------------------------------
def test_bbox_of_four_or_six_numbers():
    assert dl.check_bbox([-10, 35, 30, 60]) == [-10.0, 35.0, 30.0, 60.0]
    assert dl.check_bbox("-10,35,30,60") == [-10.0, 35.0, 30.0, 60.0]
    assert dl.check_bbox((0, -5, -100, 10, 5, 2000)) == [0.0, -5.0, -100.0, 10.0, 5.0, 2000.0]
    assert dl.check_bbox([170, -10, -170, 10]) == [170.0, -10.0, -170.0, 10.0]  # antimeridian
    assert dl.check_bbox(None) is None


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ([1, 2, 3], "4 or 6 numbers, got 3"),
        ([1, 2, 3, 4, 5], "4 or 6 numbers, got 5"),
        (["a", 0, 1, 1], "4 or 6 numbers"),
        ([0, 0, float("nan"), 1], "finite"),
        ([-200, 0, 10, 10], "west longitude -200.0 outside"),
        ([0, -95, 10, 10], "south latitude -95.0 outside"),
        ([0, 20, 10, 10], "south 20.0 is north of north 10.0"),
        ([0, 0, 5, 10, 10, 1], "lowest elevation 5.0 above highest 1.0"),
        (3, "4 or 6 numbers, got int"),
    ],
)
def test_bad_bbox_is_refused_naming_the_problem(bbox, message):
    with pytest.raises(ValueError, match=message):
        dl.check_bbox(bbox)


@pytest.mark.parametrize(
    "value",
    [
        "2020-01-01",
        "2020-01-01T00:00:00Z",
        "2020-01-01T06:00:00+01:00",
        "2020",
        "2020-03",
        "2020-01-01/2020-01-31",
        "2020-01-01T00:00:00Z/..",
        "../2020-01-31",
        "/2020-01-31",
    ],
)
def test_good_datetimes_pass_unchanged(value):
    assert dl.check_datetime(value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yesterday", "'yesterday' is not a date or RFC 3339"),
        ("2020-13", "month 13"),
        ("2020-02-30", "not a date"),
        ("2020-01-31/2020-01-01", "start is after end"),
        ("../..", "no start and no end"),
        ("2020/2021/2022", "one instant or 'start/end'"),
        (12, "must be a string"),
    ],
)
def test_bad_datetimes_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        dl.check_datetime(value)


# ---- CQL2 ---------------------------------------------------------------------------------
def eq(name: str, value: Any) -> dict[str, Any]:
    return {"op": "=", "args": [{"property": name}, value]}


def test_properties_become_cql2_json_equalities():
    assert dl.build_filter() is None
    assert dl.build_filter(param="2t") == eq("param", "2t")
    assert dl.build_filter(resolution="standard", param="2t") == {
        "op": "and",
        "args": [eq("param", "2t"), eq("resolution", "standard")],
    }
    assert dl.build_filter(param=["2t", "tp"], level=None) == {
        "op": "and",
        "args": [
            {"op": "isNull", "args": [{"property": "level"}]},
            {"op": "in", "args": [{"property": "param"}, ["2t", "tp"]]},
        ],
    }


def test_text_and_json_filters_combine_with_properties():
    text = dl.build_filter("resolution = 'high' AND generation > 1", param="2t")
    assert text == {
        "op": "and",
        "args": [
            {
                "op": "and",
                "args": [
                    eq("resolution", "high"),
                    {"op": ">", "args": [{"property": "generation"}, 1.0]},
                ],
            },
            eq("param", "2t"),
        ],
    }
    as_json = {"op": "<>", "args": [{"property": "experiment"}, "hist"]}
    assert dl.build_filter(as_json) == as_json
    assert dl.build_filter(json.dumps(as_json), model="ifs-nemo")["args"] == [
        as_json,
        eq("model", "ifs-nemo"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filter": "param = "}, "not valid CQL2"),
        ({"filter": {"op": "=", "args": "oops"}}, "not valid CQL2"),
        ({"filter": 5}, "CQL2 text or a CQL2-JSON dict"),
        ({"param": {"a": 1}}, "only strings, numbers"),
        ({"param": []}, "empty list matches nothing"),
    ],
)
def test_bad_filters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dl.build_filter(**kwargs)


def test_search_checks_its_arguments_before_any_request(monkeypatch):
    # no URL configured: the argument errors come first, naming the argument
    monkeypatch.delenv("TWINHUB_STAC_URL", raising=False)
    with pytest.raises(ValueError, match="bbox"):
        dl.search(bbox=[1, 2])
    with pytest.raises(ValueError, match="datetime"):
        dl.search(datetime="soon")
    with pytest.raises(ValueError, match="max_items"):
        dl.search(max_items=0)
    with pytest.raises(ValueError, match="limit"):
        dl.search(limit=10**6)
    with pytest.raises(dl.DatalakeError, match="TWINHUB_STAC_URL"):
        dl.search(param="2t")


# ---- the client against real HTTP servers --------------------------------------------------
class FakeStac(BaseHTTPRequestHandler):
    """A fake STAC API (landing page + /search) recording requests; ``mode`` picks a
    misbehaviour: "ok", "401", "403", "html" (a login page with status 200)."""

    mode = "ok"
    seen: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []  # what /search answers (filtered by ids/collections)
    free_text = True  # declare item-search free text (stac-fastapi-pgstac does not)

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: Any, ctype: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer(self, body: dict[str, Any] | None) -> None:
        self.seen.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        if self.mode in ("401", "403"):
            return self._send(int(self.mode), {"detail": "invalid token"})
        if self.mode == "html":
            return self._send(200, "<html><form>login</form></html>", "text/html")
        root = f"http://{self.headers['Host']}/services/stac/"
        if self.path.startswith("/services/stac/search"):
            body = body or {}
            found = [
                i
                for i in self.items
                if i["id"] in body.get("ids", [i["id"]])
                and i["collection"] in body.get("collections", [i["collection"]])
            ]
            return self._send(200, {"type": "FeatureCollection", "features": found, "links": []})
        if self.path.rstrip("/").endswith("/collections"):
            cols = sorted({i["collection"] for i in self.items})
            return self._send(
                200, {"collections": [_collection(c, root) for c in cols], "links": []}
            )
        self._send(
            200,
            {
                "type": "Catalog",
                "id": "fake",
                "description": "fake",
                "stac_version": "1.0.0",
                "conformsTo": [
                    "https://api.stacspec.org/v1.0.0/core",
                    "https://api.stacspec.org/v1.0.0/collections",
                    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
                    "https://api.stacspec.org/v1.0.0/item-search",
                    "https://api.stacspec.org/v1.0.0/item-search#filter",
                    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
                ]
                + (
                    ["https://api.stacspec.org/v1.0.0-rc.1/item-search#free-text"]
                    if self.free_text
                    else []
                ),
                "links": [
                    {"rel": "self", "href": root},
                    {"rel": "root", "href": root},
                    {"rel": "data", "href": root + "collections", "type": "application/json"},
                    {
                        "rel": "search",
                        "href": root + "search",
                        "type": "application/geo+json",
                        "method": "POST",
                    },
                ],
            },
        )

    def do_GET(self) -> None:
        self._answer(None)

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        self._answer(json.loads(self.rfile.read(n) or b"{}"))


def _collection(cid: str, root: str) -> dict[str, Any]:
    return {
        "type": "Collection",
        "id": cid,
        "stac_version": "1.0.0",
        "description": f"{cid} (fake)",
        "license": "CC-BY-4.0",
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [["2020-01-01T00:00:00Z", None]]},
        },
        "links": [
            {"rel": "root", "href": root},
            {"rel": "self", "href": root + "collections/" + cid},
        ],
    }


@pytest.fixture(scope="module")
def fake_stac() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeStac)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/stac/"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def stac(fake_stac, monkeypatch) -> Iterator[str]:
    monkeypatch.setenv("TWINHUB_STAC_URL", fake_stac)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "tok123")
    FakeStac.mode = "ok"
    FakeStac.seen.clear()
    FakeStac.items = []
    FakeStac.free_text = True
    yield fake_stac
    FakeStac.mode = "ok"
    FakeStac.items = []
    FakeStac.free_text = True


def test_search_sends_token_and_one_cql2_json_filter(stac):
    items = dl.search(
        collections="climate-dt",
        bbox=[-10, 35, 30, 60],
        datetime="2020-01-01/2020-01-31",
        q="temperature",
        limit=50,
        max_items=100,
        filter="generation = 1",
        param="2t",
    )
    assert len(items) == 0
    assert all(r["auth"] == "token tok123" for r in FakeStac.seen)
    body = next(r["body"] for r in FakeStac.seen if r["path"].endswith("/search"))
    assert body["collections"] == ["climate-dt"]
    assert body["bbox"] == [-10.0, 35.0, 30.0, 60.0]
    assert body["datetime"].startswith("2020-01-01T00:00:00Z/2020-01-31T23:59:59")
    assert body["filter-lang"] == "cql2-json" and body["limit"] == 50
    assert body["q"] == "temperature"
    assert body["filter"] == {
        "op": "and",
        "args": [{"op": "=", "args": [{"property": "generation"}, 1.0]}, eq("param", "2t")],
    }


@pytest.mark.parametrize("status", ["401", "403"])
def test_refused_token_is_a_permission_error(stac, status):
    FakeStac.mode = status
    with pytest.raises(dl.StacAuthError, match=f"refused the request \\(HTTP {status}\\)"):
        dl.client()
    with pytest.raises(PermissionError):
        dl.search(param="2t")


def test_a_login_page_instead_of_json_is_named(stac):
    FakeStac.mode = "html"
    with pytest.raises(dl.StacUnreachable, match="does not answer like a STAC API"):
        dl.client()


def test_nothing_listening_is_unreachable(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(dl.StacUnreachable, match=f"cannot reach the STAC API at .*:{port}"):
            dl.client(f"http://127.0.0.1:{port}/services/stac/", token="x")


def test_missing_configuration_is_named(monkeypatch, fake_stac):
    monkeypatch.delenv("TWINHUB_STAC_URL", raising=False)
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    with pytest.raises(dl.DatalakeError, match="set TWINHUB_STAC_URL"):
        dl.client()
    with pytest.raises(dl.DatalakeError, match="not an http"):
        dl.client("ftp://example.org/stac")
    with pytest.raises(dl.DatalakeError, match="set JUPYTERHUB_API_TOKEN"):
        dl.client(fake_stac)
    FakeStac.seen.clear()
    dl.client(fake_stac, token="")  # explicitly no token: an open STAC API
    assert FakeStac.seen[0]["auth"] is None


def test_unknown_item_id_is_a_key_error(stac):
    with pytest.raises(KeyError, match="no STAC item with id 'nope-2t'"):
        dl.open("nope-2t")
    body = next(r["body"] for r in FakeStac.seen if r["path"].endswith("/search"))
    assert body["ids"] == ["nope-2t"]


def test_the_token_goes_to_the_stac_api_only(stac, monkeypatch, tmp_path):
    """Not through a proxy the environment names (it would see the token), not replaced
    from ~/.netrc, not after a redirect."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens: would fail
    monkeypatch.setenv("NO_PROXY", "")
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login mallory password stolen\n")
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    api = dl.client()
    assert api.id
    assert FakeStac.seen[-1]["auth"] == "token tok123"
    assert api._stac_io.session.max_redirects == 0


@pytest.fixture
def lake_items(stac, tmp_path) -> list[dict[str, Any]]:
    """Two items of one collection whose Zarr asset is a local store (the fake serves them)."""
    import numpy as np
    import pystac
    import xarray as xr

    import twinlab.grids as grids

    ds = xr.Dataset(
        {
            "2t": (("time", "cell"), np.full((2, 768), 280.0, "float32")),
            "tp": (("time", "cell"), np.zeros((2, 768), "float32")),
        },
        coords={"time": np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[ns]")},
    ).grid.assign(grids.HEALPix(8, True, dims=("cell",)))
    ds.to_zarr(tmp_path / "h8.zarr", zarr_format=3, consolidated=False)
    items = []
    titles = {"2t": "2 metre temperature", "tp": "Total precipitation"}
    for param in ("2t", "tp"):
        item = pystac.Item(
            f"h8-{param}-20200101",
            None,
            None,
            None,
            {
                "title": titles[param],
                "keywords": ["climate", "hourly" if param == "2t" else "accumulated"],
                "param": param,
                "start_datetime": "2020-01-01T00:00:00Z",
                "end_datetime": "2020-01-01T23:59:59Z",
            },
            collection="climate-dt",
        )
        item.add_asset(
            "zarr", pystac.Asset(str(tmp_path / "h8.zarr"), media_type="application/vnd+zarr")
        )
        items.append(item.to_dict())
    FakeStac.items = items
    return items


def test_open_by_item_id_resolves_through_the_search(lake_items):
    ds = dl.open("h8-tp-20200101")
    assert list(ds.data_vars) == ["tp"] and ds.sizes["time"] == 1
    assert ds.attrs["stac_collection"] == "climate-dt"
    assert ds.grid.grid.key == "healpix-n8-nested"


def test_intake_catalog_lists_collections_then_items_then_reads(lake_items):
    cat = dl.catalog()
    assert list(cat) == ["climate-dt"]
    items = cat["climate-dt"].read()
    assert sorted(items) == ["h8-2t-20200101", "h8-tp-20200101"]
    ds = items["h8-2t-20200101"].read()
    assert list(ds.data_vars) == ["2t"] and float(ds["2t"].mean()) == 280.0
    # keyword arguments filter the items like search(**properties)
    FakeStac.seen.clear()
    cat["climate-dt"].read(param="tp")
    body = next(r["body"] for r in FakeStac.seen if r["path"].endswith("/search"))
    assert body["filter"] == eq("param", "tp") and body["collections"] == ["climate-dt"]
    # the entries never hold the token: it is read from the environment on use
    assert "tok123" not in repr(cat["climate-dt"].kwargs) + repr(items.entries)


# ---- free text --------------------------------------------------------------------------
def test_free_text_words_must_all_match_unless_or():
    from twinlab.contract import parse_free_text

    q = parse_free_text('2t healpix OR "total precipitation" -hourly, x')
    assert [[t.words for t in g] for g in q.groups] == [
        [("2t",), ("healpix",)],
        [("total precipitation",), ("hourly",)],
        [("x",)],
    ]
    assert [t.negated for t in q.groups[1]] == [False, True]
    assert parse_free_text("a or b").groups == parse_free_text("a OR b").groups
    assert len(parse_free_text("a AND b").groups[0]) == 2  # AND is the default, said or not
    for bad, message in (
        ('"open', "unclosed quote"),
        (" , ", "no search terms"),
        ("(a OR b) c", "parentheses"),
        (" ".join(f"w{i}" for i in range(17)), "more than 16 terms"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_free_text(bad)


def test_free_text_synonyms_name_parameters():
    from twinlab.contract import parse_free_text

    assert set(parse_free_text("temperature").params) >= {"2t", "t2m"}
    assert set(parse_free_text("precipitation").params) >= {"tp"}
    assert set(parse_free_text("wind").params) >= {"10u", "10v"}
    assert set(parse_free_text("pressure").params) >= {"msl"}
    assert set(parse_free_text("T2M").params) >= {"2t"}  # case does not matter
    # a multi-word name is one term (and not "temperature": 2t)
    (sst,) = parse_free_text("sea surface temperature").groups[0]
    assert sst.words == ("sea surface temperature",) and "2t" not in sst.params
    assert "sst" in sst.params
    # grids: a user's word, the records' word
    (hpx,) = parse_free_text("hpx").groups[0]
    assert "healpix" in hpx.words
    assert parse_free_text("-sst").params == ()  # only excludes: nothing ranks first


def _item(param: str, long_name: str, grid: dict, iid: str = "", **props):
    return {
        "id": iid or f"cdt-{grid['id']}-{param}-20300102",
        "collection": "climate-dt",
        "properties": {
            "param": param,
            "datetime": "2030-01-02T00:00:00Z",
            "cube:variables": {param: {"type": "data", "unit": "K", "description": long_name}},
            "twinhub:grid": grid,
            **props,
        },
    }


HPX = {"id": "healpix-h128", "grid_type": "healpix", "healpix_nside": 128}
OGRID = {"id": "octahedral-o96", "grid_type": "octahedral", "gaussian_N": 96}


def test_free_text_matches_long_names_grids_and_word_starts():
    from twinlab.contract import parse_free_text

    t2 = _item("2t", "2 metre temperature", HPX)
    sst = _item("sst", "sea surface temperature", OGRID)
    msl = _item("msl", "mean sea level pressure", HPX, title="Mean sea level")

    def found(q: str) -> list[str]:
        return [i["properties"]["param"] for i in (t2, sst, msl) if parse_free_text(q).matches(i)]

    assert found("temperature") == ["2t", "sst"]
    assert found("2t healpix") == ["2t"]
    assert found("2t OR msl") == ["2t", "msl"]
    assert found("sea surface temperature") == ["sst"]
    assert found("o96") == found("octahedral") == found("o-grid") == ["sst"]
    assert found("hpx") == found("heal") == ["2t", "msl"]
    assert found('"sea level"') == ["msl"]
    assert found("temperature -healpix") == ["sst"]
    assert found("2t") == ["2t"]  # datetimes are not searched: never the '02T00' of a date
    assert found("ea") == []  # inside 'mean'/'sea' only: not a word start
    assert found("k") == ["2t", "sst", "msl"]  # units: kelvin


def test_free_text_ranks_exact_parameters_first():
    from twinlab.contract import parse_free_text

    q = parse_free_text("temperature")
    sst = _item("sst", "sea surface temperature", OGRID)
    t2 = _item("2t", "2 metre temperature", HPX)
    assert sorted([sst, t2], key=q.rank) == [t2, sst]
    assert q.rank(_item("T2M", "2 metre temperature", HPX)) == 0


def test_free_text_as_cql2_is_one_like_per_word_on_the_search_text():
    """The STAC API's filter (checked against the seeded lake by the integration tests):
    one ``like`` per word on the lake's search text (word starts marked), the parameters by
    equality; negated parameters only where the item has one (SQL's NULL)."""
    from twinlab.contract import SEARCH_MARK, SEARCH_TEXT_PROPERTY, parse_free_text

    f = parse_free_text("heal").to_cql2()
    assert f["op"] == "or"
    likes = [a for a in f["args"] if a["op"] == "like"]
    assert len(likes) == 1 and likes[0]["args"][0] == {"property": SEARCH_TEXT_PROPERTY}
    assert likes[0]["args"][1] == f"%{SEARCH_MARK}HEAL%"  # the text is upper-cased
    assert [a for a in f["args"] if a["op"] == "in"] == [
        {"op": "in", "args": [{"property": "param"}, ["heal", "HEAL"]]}
    ]
    accented = parse_free_text("température").to_cql2()["args"][-1]["args"][1]
    assert accented == {"op": "casei", "args": [f"%{SEARCH_MARK}température%"]}  # the DB's upper
    # a phrase: the mark after each word-start character, as in the stored text
    phrase = parse_free_text('"2 metre"').to_cql2()  # a phrase is no parameter's name
    assert phrase["args"][1] == f"%{SEARCH_MARK}2 {SEARCH_MARK}METRE%"
    both = parse_free_text("2t OR tp").to_cql2()
    assert both["op"] == "or" and len(both["args"]) == 2
    neg = parse_free_text("-sst").to_cql2()
    assert neg["op"] == "not" and "isNull" in json.dumps(neg)
    assert parse_free_text("-sst").exact_cql2() is None


@pytest.mark.parametrize(
    "field, word, found",
    [
        ("2 metre temperature", "temperature", True),
        ("2 metre temperature", "metre temp", True),
        ("2 metre temperature", "etre", False),
        ("healpix-h128", "h128", True),
        ("reduced_gaussian", "gaussian", True),
        ("reduced_gaussian", "reduced_gaussian", True),
        ('{"name": "2t", "units": "k"}', "k", True),
        ("surface (sfc)", "sfc", True),
        ("a/b", "b", True),
        ("ab", "b", False),
        ("a  b", "b", True),
        ("x-", "x-", True),
    ],
)
def test_marked_search_text_finds_exactly_the_word_starts(field, word, found):
    """The lake's search text (one ``LIKE '%<mark>word%'``) agrees with the word-start rule
    of :meth:`FreeTextTerm.found` (what static catalogues and clients use)."""
    from twinlab.contract import FreeTextTerm, mark_words

    assert (mark_words(word) in mark_words(field)) is found
    assert FreeTextTerm((word,), ()).found([field], "") is found


def test_free_text_is_applied_to_items_when_the_api_cannot(lake_items):
    FakeStac.free_text = False  # like stac-fastapi-pgstac: free text for collections only
    FakeStac.seen.clear()
    assert [i.id for i in dl.search(q="PRECIPITATION")] == ["h8-tp-20200101"]
    body = next(r["body"] for r in FakeStac.seen if r["path"].endswith("/search"))
    assert "q" not in body  # the server would ignore it and return everything
    assert [i.id for i in dl.search(q="+climate -accumulated")] == ["h8-2t-20200101"]
    assert len(dl.search(q=["temperature", "precipitation"])) == 2  # a list: any of them
    assert len(dl.search(q="temperature OR precipitation", max_items=1)) == 1
    assert len(dl.search(q="temperature precipitation")) == 0  # both words: no item
    assert len(dl.search(q="snow")) == 0
    # exact parameter matches first, whatever order the API gave
    assert [i.id for i in dl.search(q="tp OR climate")] == ["h8-tp-20200101", "h8-2t-20200101"]


# ---- the data lake page's pages (twinlab.datalake.pages, through the same client) --------
def test_page_search_sends_free_text_the_api_does_itself(lake_items):
    from twinlab.datalake import pages

    api = dl.client()
    root = api.get_self_href()
    FakeStac.seen.clear()
    body = {"limit": 10, "q": "precipitation"}
    doc, features, token = pages.search_page(api, root + "search", body, FreeText.parse("x"))
    sent = next(r for r in FakeStac.seen if r["path"].endswith("/search"))
    assert sent["body"] == body and sent["auth"] == "token tok123"
    assert len(features) == 2 and token is None and doc["type"] == "FeatureCollection"


def test_page_search_matches_free_text_here_when_the_api_cannot(lake_items):
    from twinlab.datalake import pages

    FakeStac.free_text = False
    api = dl.client()
    FakeStac.seen.clear()
    body = {"limit": 10, "q": "PRECIPITATION"}
    text = FreeText.parse(body["q"])
    _, features, _ = pages.search_page(api, api.get_self_href() + "search", body, text)
    assert [f["id"] for f in features] == ["h8-tp-20200101"]
    assert "q" not in next(r["body"] for r in FakeStac.seen if r["path"].endswith("/search"))


def test_page_reads_name_the_stac_answer(stac):
    from twinlab.datalake import pages

    api = dl.client()
    root = api.get_self_href()
    assert pages.read_json(api, root + "collections") == {"collections": [], "links": []}
    FakeStac.mode = "403"
    with pytest.raises(pages.StacAnswerError, match="answered 403") as err:
        pages.read_json(api, root + "search", {"limit": 1})
    assert err.value.status == 403 and "invalid token" in err.value.detail
    FakeStac.mode = "html"
    with pytest.raises(pages.StacAnswerError, match="did not answer JSON"):
        pages.read_json(api, root + "collections")


def test_next_token_from_a_post_body_or_a_get_query():
    from twinlab.datalake.pages import next_token

    assert next_token({"links": [{"rel": "next", "body": {"token": "n:2"}}]}) == "n:2"
    assert next_token({"links": [{"rel": "next", "href": "http://h/search?token=n%3A3"}]}) == "n:3"
    assert next_token({"links": [{"rel": "self", "href": "http://h/"}]}) is None
