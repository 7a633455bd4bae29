"""Registry catalogue search at 50 000 entries: the index, the Records API, a plain scan.

    /opt/twinhub/venv/bin/python bench/registry.py [--entries 50000] [--rounds 200]

Setup (not timed, but reported): ``--entries`` synthetic entries (names, descriptions and
keywords drawn from Earth-system words plus the system dictionary when there is one;
1-3 random thematic areas, a random kind, a random visibility among public / users / 8
projects, a bbox on two thirds and a time span on three quarters of them) are bulk-inserted
as integrated requests into a fresh SQLite database migrated with ``twinhub.db.upgrade``;
then ``store.published`` reads them back and ``SearchIndex.rebuild`` indexes them (both
timed once: that is what a change to the catalogue costs).

Each query kind is run ``--rounds`` times with fresh random values (a word, an area and
kind, a box...), as a logged-in user of one project (public + users + 1 project visible):

1. **index**: ``SearchIndex.search(..., limit=10)`` called directly (facets on, and off).
2. **api**: ``GET /services/registry/collections/services/items?...&limit=10`` over HTTP
   (keep-alive) to the registry app (``create_app``: request limits, hub auth, FastAPI, the
   records router, JSON rendering of 10 records) run in this process under uvicorn on
   loopback. The one thing missing is the hub: the token check is a table (a fake
   ``HubOAuth``), and the app's lifespan is off (no hub client: the caller's groups come
   from that table). Client time included (httpx in the same process, another thread).
3. **anchor**: a plain Python scan over the same 50 000 row dicts doing the same filtering
   (visibility, area, kind, substring match of the folded words in a pre-folded text,
   bbox test) then the facet counts, the sort and the page — what one would write without
   an index (``--scan-rounds`` times: it is slow).

Printed per query kind: p50 / p95 in milliseconds of each, the api p95 against the target
(100 ms: ``target x`` < 1 meets it) and the index p95 against the anchor's (``anchor x``:
how many times faster). Then **search p95 while a rebuild runs**: api searches (all query
kinds in turn, facets on) sent while one request rebuilds the index (as after a change of
the catalogue); they answer from the old snapshot, so only CPU sharing with the rebuild
slows them. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import uvicorn
from jupyterhub.services.auth import HubOAuth
from sqlalchemy import insert
from traitlets.config import Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from twinhub import db  # noqa: E402
from twinhub.db.models import RegistryRequest  # noqa: E402
from twinhub.process.runtime import Runtime  # noqa: E402
from twinhub.services.registry import search, store  # noqa: E402
from twinhub.services.registry.app import create_app  # noqa: E402
from twinhub.services.registry.config import DEFAULT_THEMATIC_AREAS, TwinhubRegistry  # noqa: E402
from twinhub.services.registry.context import RegistryContext  # noqa: E402
from twinhub.services.registry.entry import KINDS  # noqa: E402

PREFIX = "/services/registry/"
TARGET_MS = 100.0
TOKEN = "bench-token"
PROJECTS = [f"project:lab{i}" for i in range(8)]
VIEWER = frozenset({"public", "users", "project:lab3"})
USER = {"name": "bench", "admin": False, "groups": ["lab3"], "kind": "user",
        "scopes": ["access:services!service=registry"]}  # fmt: skip
#: Earth-system words names and descriptions are made of.
DOMAIN_TEXT = (
    "ocean wave flood drought heatwave wind solar storm river crop soil forest coast sea ice "
    "snow rain urban health energy air quality model forecast reanalysis satellite sensor "
    "risk carbon methane ozone aerosol glacier delta harbour fishery wheat maize grid hydro "
    "adaptation extremes biodiversity habitat wildfire landslide permafrost salinity tide "
    "surge typhoon monsoon pollen dust smoke nitrogen phosphate irrigation reservoir aquifer "
    "runoff evaporation albedo cloud precipitation temperature humidity pressure turbine "
    "photovoltaic demand mobility traffic emissions heat island mortality vector malaria "
    "dengue cholera plankton coral kelp seagrass migration species pollinator yield"
)
DOMAIN = DOMAIN_TEXT.split()


SYLLABLES_TEXT = (
    "ka lo mer ban tor vi sel dra nu pe gor li an ost ri val bur hel mon ta ne sko fjor ad "
    "el por rin zu ca dal ber ven tis ul gra mo sa"
)
SYLLABLES = SYLLABLES_TEXT.split()


def vocabulary(extra: int = 20_000) -> list[str]:
    """Domain words, then ``extra`` rarer ones: the system dictionary's when there is one,
    else made-up place-like names of 2-3 syllables (each then appears in a few dozen
    entries, as names of places, instruments and projects do)."""
    words = list(DOMAIN)
    rnd = random.Random(0)
    dictionary = Path("/usr/share/dict/words")
    if dictionary.exists():
        plain = [w for w in dictionary.read_text(errors="ignore").split() if w.isalpha()]
        return words + rnd.sample(plain, min(extra, len(plain)))
    made: set[str] = set()
    while len(made) < extra:
        made.add("".join(rnd.choices(SYLLABLES, k=rnd.randint(2, 3))))
    return words + sorted(made)


def synthetic(n: int, words: list[str], seed: int = 1) -> list[dict]:
    rnd = random.Random(seed)
    areas, rows = list(DEFAULT_THEMATIC_AREAS), []
    for i in range(n):
        w, s = rnd.uniform(-180, 170), rnd.uniform(-90, 75)
        start = rnd.randint(1990, 2024)
        entry = {
            "name": " ".join(rnd.choices(DOMAIN, k=2) + rnd.choices(words, k=1)).title(),
            "slug": f"svc-{i}",
            "provider": rnd.choice(["ECMWF", "EUMETSAT", "Météo-France", "DLR", "CMCC", "KNMI"]),
            "description": " ".join(rnd.choices(words, k=30) + rnd.choices(DOMAIN, k=10)),
            "thematic_areas": rnd.sample(areas, rnd.randint(1, 3)),
            "kind": rnd.choice(KINDS),
            "endpoints": [],
            "documentation": "",
            "licence": "CC-BY-4.0",
            "contact": "help@example.org",
            "visibility": rnd.choice(["public"] * 5 + ["users"] * 3 + PROJECTS),
            "keywords": rnd.choices(DOMAIN, k=4),
            "bbox": [w, s, w + rnd.uniform(0.5, 10), s + rnd.uniform(0.5, 15)] if i % 3 else None,
            "temporal": {"start": f"{start}-01-01", "end": f"{start + rnd.randint(0, 10)}-12-31"}
            if i % 4
            else None,
        }
        rows.append(entry)
    return rows


def fill(db_url: str, entries: list[dict]) -> None:
    """Bulk insert as integrated requests (the bench's shortcut past the workflow)."""
    now = datetime.now(UTC)
    values = [
        {"id": uuid.uuid4().hex, "slug": e["slug"], "provider": "bench", "state": "integrated",
         "entry": e, "version": 1, "resources": {}, "activity": "", "findings": [],
         "allow_private": False, "sandbox": False, "created_at": now, "updated_at": now}
        for e in entries
    ]  # fmt: skip
    with db.session(db_url) as s:
        for k in range(0, len(values), 5000):
            s.execute(insert(RegistryRequest), values[k : k + 5000])


# -- the queries ----------------------------------------------------------------------------------
def queries(rnd: random.Random, words: list[str]) -> dict[str, Callable[[], dict]]:
    """Query kind -> a maker of random parameters (index keyword names). Domain words are
    frequent (ready bitmasks); dictionary words are rare (bitmasks built per query); a
    two-letter prefix expands to every indexed word it starts (the worst case)."""
    areas = list(DEFAULT_THEMATIC_AREAS)
    rare = [w for w in words[len(DOMAIN) :] if len(w) > 3] or DOMAIN

    def box() -> str:
        w, s = rnd.uniform(-180, 150), rnd.uniform(-90, 60)
        return f"{w:.2f},{s:.2f},{w + 20:.2f},{s + 20:.2f}"

    return {
        "facets only": lambda: {},
        "q (1 word)": lambda: {"q": rnd.choice(DOMAIN)},
        "q (rare word)": lambda: {"q": rnd.choice(rare)},
        "q (2-letter prefix)": lambda: {"q": rnd.choice(DOMAIN)[:2]},
        "q (2 words, prefix)": lambda: {"q": f"{rnd.choice(DOMAIN)} {rnd.choice(DOMAIN)[:4]}"},
        "q + area + kind": lambda: {
            "q": rnd.choice(DOMAIN),
            "areas": [rnd.choice(areas)],
            "kinds": [rnd.choice(KINDS)],
        },  # fmt: skip
        "bbox 20x20": lambda: {"bbox": box()},
        "datetime interval": lambda: {"datetime": f"{rnd.randint(1990, 2030)}-01-01/.."},
    }


def as_params(kw: dict, facets: bool) -> dict:
    p: dict = {"limit": "10", "facets": "true" if facets else "false"}
    for k, v in kw.items():
        key = {"areas": "thematic_area", "kinds": "kind"}.get(k, k)
        p[key] = ",".join(v) if isinstance(v, list) else v
    return p


class Scan:
    """The anchor: every row tested in turn, then facet counts, sort and page."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows
        self.text = [
            search.fold(" ".join([e["name"], e["description"], e["provider"], r["slug"],
                                  " ".join(e["keywords"])]))
            for r in rows for e in [r["entry"]]
        ]  # fmt: skip
        self.key = [(search.fold(r["entry"]["name"]), r["slug"]) for r in rows]

    def search(self, q=None, areas=(), kinds=(), bbox=None, datetime=None, facets=True):
        words = search.tokens(q or "")
        box = search.parse_bbox(bbox)
        span = search.parse_datetime(datetime)
        hits = []
        for i, r in enumerate(self.rows):
            e = r["entry"]
            if e["visibility"] not in VIEWER:
                continue
            if areas and not set(areas) & set(e["thematic_areas"]):
                continue
            if kinds and e["kind"] not in kinds:
                continue
            if words and not all(w in self.text[i] for w in words):
                continue
            if box:
                b = e["bbox"]
                if not b or b[0] > box[2] or box[0] > b[2] or b[1] > box[3] or box[1] > b[3]:
                    continue
            if span:
                t = search._entry_time(e["temporal"])
                if not t or t[0] > span[1] or t[1] < span[0]:
                    continue
            hits.append(i)
        counts: tuple[Counter, Counter] = (Counter(), Counter())
        if facets:
            for i in hits:
                counts[0].update(self.rows[i]["entry"]["thematic_areas"])
                counts[1][self.rows[i]["entry"]["kind"]] += 1
        hits.sort(key=self.key.__getitem__)
        return [self.rows[i] for i in hits[:10]], len(hits), counts


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round((len(values) - 1) * q)))]


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


class FakeHubAuth(HubOAuth):
    """The hub's token check as a table (the bench runs no hub)."""

    async def user_for_token(self, token, use_cache=True, session_id="", *, sync=True):
        return dict(USER) if token == TOKEN else None


def serve(app, port: int) -> uvicorn.Server:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--entries", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--scan-rounds", type=int, default=20)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    db_url = f"sqlite:///{tmp / 'twinhub.sqlite'}"
    db.upgrade(db_url)
    words = vocabulary()
    t = time.perf_counter()
    fill(db_url, synthetic(args.entries, words))
    print(f"{args.entries} entries inserted in {time.perf_counter() - t:.1f} s ({tmp})")

    cfg = Config()
    cfg.Twinhub.db_url = db_url
    rt = Runtime(state_dir=tmp, config=cfg, mode="multi-user", ports={"public": 9})
    ctx = RegistryContext(rt=rt, settings=TwinhubRegistry(config=cfg), db_url=db_url,
                          hub_api="http://127.0.0.1:9/hub/api", token="bench-service",
                          prefix=PREFIX)  # fmt: skip
    hub_auth = FakeHubAuth(api_token="bench-service", api_url=ctx.hub_api,
                           oauth_client_id="service-registry",
                           oauth_redirect_uri="http://127.0.0.1:9/oauth_callback",
                           access_scopes={"access:services!service=registry"})  # fmt: skip
    app = create_app(ctx=ctx, hub_auth=hub_auth, background=False)
    t = time.perf_counter()
    rows = store.published(db_url)
    t_read = time.perf_counter() - t
    t = time.perf_counter()
    asyncio.run(ctx.index.ensure_fresh(ctx))  # store.generation + published + rebuild
    t_fresh = time.perf_counter() - t
    t = time.perf_counter()
    ctx.index.rebuild(rows)
    t_build = time.perf_counter() - t
    print(f"store.published: {t_read:.2f} s; SearchIndex.rebuild: {t_build:.2f} s; "
          f"ensure_fresh (generation, published, rebuild): "
          f"{t_fresh:.2f} s; index holds {ctx.index.size}")  # fmt: skip

    port = 20000 + random.randint(0, 20000)
    server = serve(app, port)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"token {TOKEN}"}
    )
    url = PREFIX + "collections/services/items"
    assert client.get(url).status_code == 200
    scan = Scan(rows)
    rnd = random.Random(5)

    print(f"\n{'query':24} {'facets':6} {'index p50/p95':>16} {'api p50/p95':>16} "
          f"{'anchor p50/p95':>18} {'target x':>9} {'anchor x':>9}")  # fmt: skip
    for name, make in queries(rnd, words).items():
        for facets in (True, False):

            def index_call(make=make, facets=facets):
                ctx.index.search(viewer=VIEWER, limit=10, facets=facets, **make())

            def api_call(make=make, facets=facets):
                r = client.get(url, params=as_params(make(), facets))
                assert r.status_code == 200, r.text

            def scan_call(make=make, facets=facets):
                scan.search(facets=facets, **make())

            ix = timed(index_call, args.rounds)
            api = timed(api_call, args.rounds)
            sc = timed(scan_call, args.scan_rounds)
            print(
                f"{name:24} {'yes' if facets else 'no':6} "
                f"{pct(ix, 0.5):7.2f}/{pct(ix, 0.95):7.2f} ms "
                f"{pct(api, 0.5):6.2f}/{pct(api, 0.95):6.2f} ms "
                f"{pct(sc, 0.5):7.1f}/{pct(sc, 0.95):7.1f} ms "
                f"{pct(api, 0.95) / TARGET_MS:9.3f} {pct(sc, 0.95) / pct(ix, 0.95):8.0f}x"
            )
    during_rebuild(ctx, client, url, port, queries(rnd, words))
    client.close()
    server.should_exit = True


def during_rebuild(ctx, client: httpx.Client, url: str, port: int, kinds: dict) -> None:
    """API searches while a rebuild runs: one request notices the change (as after a
    catalogue change) and starts the rebuild; the others must answer from the old snapshot
    meanwhile. The rebuild is forced by forgetting the generation (whatever store.generation
    says, it differs)."""
    ctx.index._generation = "forgotten"
    ctx.index._checked = float("-inf")
    trigger_ms: list[float] = []

    def trigger() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300,
                          headers={"Authorization": f"token {TOKEN}"}) as c:  # fmt: skip
            t = time.perf_counter()
            assert c.get(url, params={"limit": 1}).status_code == 200
            trigger_ms.append((time.perf_counter() - t) * 1000)

    thread = threading.Thread(target=trigger)
    thread.start()
    deadline = time.monotonic() + 30
    while not ctx.index._lock.locked() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)  # until the rebuild has started
    makers = list(kinds.values())
    lat: list[float] = []
    while thread.is_alive():
        params = as_params(makers[len(lat) % len(makers)](), True)
        t = time.perf_counter()
        r = client.get(url, params=params)
        lat.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text
    thread.join()
    if not lat:
        print("\nsearch while a rebuild runs: the rebuild ended before any search was sent")
        return
    print(
        f"\nsearch p95 while a rebuild runs: {len(lat)} searches, p50/p95/max "
        f"{pct(lat, 0.5):.2f}/{pct(lat, 0.95):.2f}/{max(lat):.2f} ms "
        f"(target x {pct(lat, 0.95) / TARGET_MS:.3f}); the request that started the "
        f"rebuild took {trigger_ms[0]:.0f} ms"
    )


if __name__ == "__main__":
    main()
