"""The catalogue's search index (services/registry/search.py): free text, bbox, datetime,
facet filters and counts, visibility, paging and order — checked against hand-made entries
and, at 50 000 entries, against a plain scan doing the same filtering; and its refresh from
the real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import math
import random
import threading
from types import SimpleNamespace

import pytest

from twinhub.services.registry import search, store
from twinhub.services.registry.config import DEFAULT_THEMATIC_AREAS
from twinhub.services.registry.search import SearchError, SearchIndex

ALL = None  # an admin's viewer: sees everything
VISITOR = frozenset({"public"})


def row(slug: str, name: str, **entry) -> dict:
    e = {
        "name": name,
        "slug": slug,
        "provider": entry.pop("provider", "Ocean Institute"),
        "description": entry.pop("description", ""),
        "thematic_areas": entry.pop("thematic_areas", ["ocean"]),
        "kind": entry.pop("kind", "api"),
        "visibility": entry.pop("visibility", "public"),
        "keywords": entry.pop("keywords", []),
        "bbox": entry.pop("bbox", None),
        "temporal": entry.pop("temporal", None),
        **entry,
    }
    return {"id": slug, "slug": slug, "provider": "prov", "entry": e, "version": 1}


@pytest.fixture
def index() -> SearchIndex:
    ix = SearchIndex(DEFAULT_THEMATIC_AREAS)
    ix.rebuild(
        [
            row("waves", "Wave Forecast", description="Significant **wave height** forecasts",
                keywords=["swell"], bbox=[-10, 40, 5, 60],
                temporal={"start": "2020-01-01", "end": "2020-12-31"}),
            row("meteo", "Météo Extrêmes", provider="Météo-France", kind="web-application",
                thematic_areas=["extremes", "health"], bbox=[170, -50, -170, -30],
                temporal={"start": "2021-06-01T00:00:00Z", "end": None}),
            row("crops", "crop yields", thematic_areas=["agriculture"], kind="dataset",
                visibility="users", description="Yield of wheat and maize"),
            row("tides", "Tide Tables", visibility="project:ocean-lab", keywords=["tide"],
                bbox=[0, 0, 10, 10]),
            row("reefs", "Reef Watch", visibility="project:other-lab", kind="dataset"),
            row("air", "Air Quality Now", thematic_areas=["air-quality", "urban"],
                kind="web-application", description="Urban air: NO2 and ozone"),
        ]
    )  # fmt: skip
    return ix


def slugs(result) -> list[str]:
    return [r["slug"] for r in result.items]


def test_results_sorted_by_folded_name_then_slug(index) -> None:
    # "crop yields" (lower case) sorts among the others by its folded name.
    r = index.search(viewer=ALL, limit=100)
    assert slugs(r) == ["air", "crops", "meteo", "reefs", "tides", "waves"]
    assert r.matched == 6


def test_text_words_are_anded_and_commas_ored(index) -> None:
    assert slugs(index.search(q="wave height", viewer=ALL)) == ["waves"]
    assert slugs(index.search(q="wave ozone", viewer=ALL)) == []
    assert slugs(index.search(q="wave, ozone", viewer=ALL)) == ["air", "waves"]
    # Keywords, provider, slug and the description (Markdown) are searched.
    assert slugs(index.search(q="swell", viewer=ALL)) == ["waves"]
    assert slugs(index.search(q="maize", viewer=ALL)) == ["crops"]
    assert slugs(index.search(q="france", viewer=ALL)) == ["meteo"]


def test_text_folds_case_and_accents_and_prefixes_the_last_word(index) -> None:
    assert slugs(index.search(q="METEO extremes", viewer=ALL)) == ["meteo"]
    assert slugs(index.search(q="Météo", viewer=ALL)) == ["meteo"]
    assert slugs(index.search(q="forec", viewer=ALL)) == ["waves"]  # prefix of "forecast"
    # Only the last word is a prefix: "forec" in first place must match a whole word.
    assert slugs(index.search(q="forec wave", viewer=ALL)) == []
    # A single letter is not expanded (it would match nearly everything).
    assert slugs(index.search(q="w", viewer=ALL)) == []


def test_thematic_area_labels_are_searchable(index) -> None:
    # "food" is only in the label of "agriculture" (Agriculture and food).
    assert slugs(index.search(q="food", viewer=ALL)) == ["crops"]
    assert slugs(index.search(q="weather", viewer=ALL)) == ["meteo"]


def test_area_and_kind_filters_or_within_and_across(index) -> None:
    assert slugs(index.search(areas=["urban"], viewer=ALL)) == ["air"]
    assert slugs(index.search(areas="urban,agriculture", viewer=ALL)) == ["air", "crops"]
    assert slugs(index.search(areas=["urban", "agriculture"], viewer=ALL)) == ["air", "crops"]
    assert slugs(index.search(kinds="dataset", viewer=ALL)) == ["crops", "reefs"]
    assert slugs(index.search(areas=["ocean"], kinds=["dataset"], viewer=ALL)) == ["reefs"]
    assert slugs(index.search(areas=["no-such-area"], viewer=ALL)) == []


def test_bbox_intersects_and_entries_without_bbox_never_match(index) -> None:
    assert slugs(index.search(bbox="0,0,1,1", viewer=ALL)) == ["tides"]
    assert slugs(index.search(bbox=[-180, -90, 180, 90], viewer=ALL)) == ["meteo", "tides", "waves"]
    # Touching edges count as intersecting.
    assert slugs(index.search(bbox="5,60,6,61", viewer=ALL)) == ["waves"]
    # "meteo" crosses the antimeridian (170 .. -170): found on both sides, not in between.
    assert slugs(index.search(bbox="175,-40,176,-39", viewer=ALL)) == ["meteo"]
    assert slugs(index.search(bbox="-175,-40,-174,-39", viewer=ALL)) == ["meteo"]
    assert slugs(index.search(bbox="0,-40,1,-39", viewer=ALL)) == []
    # A query box across the antimeridian.
    assert slugs(index.search(bbox="179,-45,-179,-44", viewer=ALL)) == ["meteo"]


@pytest.mark.parametrize(
    "bad", ["1,2,3", "a,b,c,d", "0,10,1,5", "0,0,200,1", "nan,0,1,1", "0,-91,1,1"]
)
def test_bad_bbox_is_refused(index, bad) -> None:
    with pytest.raises(SearchError, match="bbox"):
        index.search(bbox=bad, viewer=ALL)


def test_datetime_instants_intervals_and_open_ends(index) -> None:
    assert slugs(index.search(datetime="2020-06-15", viewer=ALL)) == ["waves"]
    assert slugs(index.search(datetime="2020-12-31T23:00:00Z", viewer=ALL)) == ["waves"]
    assert slugs(index.search(datetime="2019-01-01/2020-01-01", viewer=ALL)) == ["waves"]
    assert slugs(index.search(datetime="2019-01-01/2019-12-31", viewer=ALL)) == []
    # "meteo" has no end: it matches anything after its start.
    assert slugs(index.search(datetime="2030-01-01", viewer=ALL)) == ["meteo"]
    assert slugs(index.search(datetime="../2020-02-01", viewer=ALL)) == ["waves"]
    assert slugs(index.search(datetime="2020-12-31/..", viewer=ALL)) == ["meteo", "waves"]
    assert slugs(index.search(datetime="2021-06-01T00:00:00+00:00", viewer=ALL)) == ["meteo"]


@pytest.mark.parametrize("bad", ["yesterday", "2021-13-01", "2021-02-01/2020-01-01", "/"])
def test_bad_datetime_is_refused(index, bad) -> None:
    with pytest.raises(SearchError, match="datetime"):
        index.search(datetime=bad, viewer=ALL)


def test_visibility_applies_to_results_counts_facets_and_get(index) -> None:
    r = index.search(viewer=VISITOR, limit=100)
    assert slugs(r) == ["air", "meteo", "waves"] and r.matched == 3
    assert r.facets["kind"] == {"web-application": 2, "api": 1}
    assert "agriculture" not in r.facets["thematic_areas"]
    bob = frozenset({"public", "users", "project:ocean-lab"})
    r = index.search(viewer=bob, limit=100)
    assert slugs(r) == ["air", "crops", "meteo", "tides", "waves"]
    assert r.facets["kind"] == {"api": 2, "web-application": 2, "dataset": 1}
    # A text match on an invisible entry is not counted anywhere.
    r = index.search(q="reef", viewer=bob)
    assert (r.items, r.matched, r.facets["kind"]) == ([], 0, {})
    assert index.get("reefs", bob) is None and index.get("reefs", ALL)["slug"] == "reefs"
    assert index.get("tides", VISITOR) is None and index.get("tides", bob) is not None
    assert index.get("no-such", ALL) is None


def test_facets_count_the_matched_set_most_first(index) -> None:
    r = index.search(q="tide, urban, wheat, reef", viewer=ALL, limit=1)
    assert r.matched == 4 and slugs(r) == ["air"]
    assert list(r.facets["thematic_areas"].items()) == [
        ("ocean", 2), ("agriculture", 1), ("air-quality", 1), ("urban", 1)
    ]  # fmt: skip
    assert list(r.facets["kind"].items()) == [("dataset", 2), ("api", 1), ("web-application", 1)]
    assert index.search(viewer=ALL, facets=False).facets == {}


def test_q_is_capped_with_a_message_naming_the_limit(index) -> None:
    """A long q of many short prefixes was about a second of CPU per request: refused."""
    with pytest.raises(SearchError, match="at most 256 are allowed"):
        index.search(q="ab," * 86, viewer=VISITOR)  # 258 characters
    with pytest.raises(SearchError, match="11 comma-separated terms; at most 10"):
        index.search(q=",".join(f"t{i}" for i in range(11)), viewer=VISITOR)
    with pytest.raises(SearchError, match="9 words; at most 8"):
        index.search(q="a b c d e f g h i", viewer=VISITOR)
    # at the limits: fine; repeated (after folding) and empty terms do not count
    q = ",".join(f"t{i}" for i in range(10)) + ",T0, t0 ,,"
    assert index.search(q=q, viewer=VISITOR).matched == 0
    assert search.parse_q("Wave, wave,WAVE height, wave  height") == [("wave",), ("wave", "height")]
    assert slugs(index.search(q="a b c d e f g wave", viewer=ALL)) == []
    assert slugs(index.search(q="wave," * 20, viewer=ALL)) == ["waves"]  # one term, deduplicated
    # the same limits on the filter-less path (an invisible set still checks q)
    with pytest.raises(SearchError):
        index.search(q="x" * 300, viewer=frozenset())


def test_ids_filter(index) -> None:
    assert slugs(index.search(ids="tides,waves,nope", viewer=ALL)) == ["tides", "waves"]
    assert slugs(index.search(ids=["tides"], viewer=VISITOR)) == []


def test_paging(index) -> None:
    everything = slugs(index.search(viewer=ALL, limit=100))
    pages = [slugs(index.search(viewer=ALL, limit=4, offset=o)) for o in (0, 4, 8)]
    assert pages == [everything[:4], everything[4:], []]
    assert index.search(viewer=ALL, limit=0).items == []
    with pytest.raises(SearchError):
        index.search(viewer=ALL, offset=-1)


def test_positions_skip_whole_chunks() -> None:
    mask = sum(1 << p for p in range(0, 3 * search.CHUNK_BITS, 3))
    every = list(range(0, 3 * search.CHUNK_BITS, 3))
    assert search.positions(mask) == every
    assert search.positions(mask, offset=2000, limit=5) == every[2000:2005]
    assert search.positions(mask, offset=len(every)) == []


# -- at 50 000 entries: the index against a plain scan ----------------------------------------
WORDS = [
    "ocean", "wave", "flood", "drought", "heat", "wind", "solar", "storm", "river", "crop",
    "soil", "forest", "coast", "ice", "snow", "rain", "urban", "health", "energy", "air",
    "quality", "model", "forecast", "reanalysis", "satellite", "sensor", "risk", "carbon",
    "methane", "ozone", "aerosol", "glacier", "delta", "harbour", "fishery", "wheat", "maize",
    "grid", "hydro",
]  # fmt: skip
AREAS = list(DEFAULT_THEMATIC_AREAS)
KINDS = ["web-application", "api", "notebook", "dataset", "processing"]
VISIBILITIES = ["public"] * 4 + ["users"] * 2 + [f"project:p{i}" for i in range(8)]


def synthetic(n: int, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        w = rnd.uniform(-180, 175)
        s = rnd.uniform(-90, 80)
        rows.append(
            row(
                f"svc-{i}",
                " ".join(rnd.choices(WORDS, k=3)) + f" {i}",
                description=" ".join(rnd.choices(WORDS, k=12)),
                thematic_areas=rnd.sample(AREAS, rnd.randint(1, 3)),
                kind=rnd.choice(KINDS),
                visibility=rnd.choice(VISIBILITIES),
                bbox=[w, s, w + rnd.uniform(0, 5), s + rnd.uniform(0, 10)] if i % 3 else None,
                temporal={"start": f"{2000 + i % 25}-01-01", "end": None} if i % 4 else None,
            )
        )
    return rows


def scan(rows, *, q=None, area=None, kind=None, bbox=None, year=None, viewer=ALL):
    """The same question answered the plain way: every entry tested in turn."""
    out = []
    for r in rows:
        e = r["entry"]
        if viewer is not None and e["visibility"] not in viewer:
            continue
        if area and area not in e["thematic_areas"]:
            continue
        if kind and e["kind"] != kind:
            continue
        if q:
            text = search.tokens(
                " ".join([e["name"], e["description"], e["provider"], r["slug"]]
                         + [f"{a} {DEFAULT_THEMATIC_AREAS[a]}" for a in e["thematic_areas"]])
            )  # fmt: skip
            words = search.tokens(q)
            last = words[-1]
            prefix = len(last) >= search.PREFIX_MIN
            if not all(w in text for w in words[:-1]) or not any(
                t.startswith(last) if prefix else t == last for t in text
            ):
                continue
        if bbox:
            b = e["bbox"]
            if not b or b[0] > bbox[2] or bbox[0] > b[2] or b[1] > bbox[3] or bbox[1] > b[3]:
                continue
        if year:
            t = e["temporal"]
            if not t or int(t["start"][:4]) > year:
                continue
        out.append(r)
    out.sort(key=lambda r: (search.fold(r["entry"]["name"]), r["slug"]))
    return out


def test_fifty_thousand_entries_match_a_plain_scan() -> None:
    rows = synthetic(50_000)
    ix = SearchIndex(DEFAULT_THEMATIC_AREAS)
    ix.rebuild(rows)
    assert ix.size == 50_000
    rnd = random.Random(3)
    viewers = [ALL, VISITOR, frozenset({"public", "users", "project:p3"})]
    for _ in range(12):
        q = " ".join(rnd.sample(WORDS, rnd.randint(1, 2)))
        q = q[: max(2, len(q) - rnd.randint(0, 2))]  # sometimes a prefix
        area, kind = rnd.choice([None, *AREAS]), rnd.choice([None, *KINDS])
        w, s = rnd.uniform(-180, 150), rnd.uniform(-90, 60)
        bbox = rnd.choice([None, (w, s, w + 30, s + 30)])
        year = rnd.choice([None, 2010])
        viewer = rnd.choice(viewers)
        want = scan(rows, q=q, area=area, kind=kind, bbox=bbox, year=year, viewer=viewer)
        got = ix.search(
            q=q,
            areas=[area] if area else (),
            kinds=[kind] if kind else (),
            bbox=list(bbox) if bbox else None,
            datetime="2010-06-01" if year else None,
            viewer=viewer,
            limit=50,
            offset=7,
        )
        assert got.matched == len(want), (q, area, kind, bbox, year)
        assert slugs(got) == [r["slug"] for r in want[7:57]]
        assert sum(got.facets["kind"].values()) == len(want)
        expected_areas = {a: sum(a in r["entry"]["thematic_areas"] for r in want) for a in AREAS}
        assert got.facets["thematic_areas"] == {a: n for a, n in expected_areas.items() if n}
    # Facets alone over everything a visitor sees, and a deep page.
    public = scan(rows, viewer=VISITOR)
    r = ix.search(viewer=VISITOR, offset=len(public) - 3, limit=10)
    assert r.matched == len(public) and slugs(r) == [x["slug"] for x in public[-3:]]


# -- refreshing from the database -------------------------------------------------------------
def _publish(db_url: str, slug: str, name: str) -> str:
    from twinhub.services.registry.config import TwinhubRegistry
    from twinhub.services.registry.entry import validate_entry

    entry = validate_entry(
        {"name": name, "slug": slug, "provider": "Org", "description": "d",
         "thematic_areas": ["water"], "kind": "dataset", "endpoints": [],
         "visibility": "public"},
        TwinhubRegistry(),
    )  # fmt: skip
    r = store.create_request(db_url, provider="prov", entry=entry, resources={}, activity="")
    store.transition(db_url, r["id"], expect="submitted", to="integrated", actor="root",
                     integration={"upstream": None, "allow_private": False})  # fmt: skip
    return r["id"]


def test_ensure_fresh_rebuilds_when_the_store_changes(twinhub_db) -> None:
    ix = SearchIndex(DEFAULT_THEMATIC_AREAS)
    ctx = SimpleNamespace(db_url=twinhub_db, index=ix)
    _publish(twinhub_db, "river-gauges", "River Gauges")

    async def run() -> None:
        await search.ensure_fresh(ctx)
        assert slugs(ix.search(viewer=VISITOR)) == ["river-gauges"]
        # A change within the second is not looked for yet (one cheap query a second at most).
        rid = _publish(twinhub_db, "lake-levels", "Lake Levels")
        await ix.ensure_fresh(ctx)
        assert slugs(ix.search(viewer=VISITOR)) == ["river-gauges"]
        ix._checked = -math.inf  # as if the second had passed
        await ix.ensure_fresh(ctx)
        assert slugs(ix.search(q="lake", viewer=VISITOR)) == ["lake-levels"]
        # Leaving the integrated state takes it out of the catalogue.
        store.transition(twinhub_db, rid, expect="integrated", to="suspended", actor="root")
        ix._checked = -math.inf
        await ix.ensure_fresh(ctx)
        assert slugs(ix.search(viewer=VISITOR)) == ["river-gauges"]

    asyncio.run(run())


def test_a_search_during_a_slow_rebuild_answers_from_the_old_snapshot(twinhub_db) -> None:
    """Readers never wait for a rebuild (the rebuild is held on an event, not the clock)."""
    ix = SearchIndex(DEFAULT_THEMATIC_AREAS)
    ctx = SimpleNamespace(db_url=twinhub_db, index=ix)
    _publish(twinhub_db, "river-gauges", "River Gauges")
    started, release = threading.Event(), threading.Event()
    build = ix.rebuild

    def slow_rebuild(rows):
        started.set()
        release.wait(60)  # a safety net only: the test releases it itself
        build(rows)

    async def run() -> None:
        await ix.ensure_fresh(ctx)  # the first build is waited for
        _publish(twinhub_db, "lake-levels", "Lake Levels")
        ix.rebuild = slow_rebuild
        ix._checked = -math.inf
        builder = asyncio.create_task(ix.ensure_fresh(ctx))
        await asyncio.to_thread(started.wait, 60)
        assert not builder.done()
        for stale in (False, True):
            if stale:
                ix._checked = -math.inf  # as if the second had passed during the rebuild
            reader = asyncio.create_task(ix.ensure_fresh(ctx))
            done, _ = await asyncio.wait({reader, builder}, return_when=asyncio.FIRST_COMPLETED)
            assert done == {reader}, "the reader waited for the rebuild"
            assert slugs(ix.search(viewer=VISITOR)) == ["river-gauges"]
        release.set()
        await builder
        assert slugs(ix.search(viewer=VISITOR)) == ["lake-levels", "river-gauges"]

    try:
        asyncio.run(run())
    finally:
        release.set()
