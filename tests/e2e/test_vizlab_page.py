"""The VizLab page (``/services/tiles/vizlab``) in headless Chromium on the real multi-user
platform with the sample data.

A user logs in through the hub, opens the page for a seeded HEALPix H128 item (the hub's
sign-on for services), waits for the map's tiles, plays time (the slider moves, the tiles
asked for change time and the picture changes), clicks a point and gets the time series of
the native cell under it (one point per valid time of the item, the same values as the
service's EDR answer for that cell), switches to the globe (a server-side view), and finds
all of it in the page's URL. Then the Data lake page's item view links to the page, and an
item with levels shows the level picked (map, series and URL).

Screenshots go to ``$TWINHUB_SCREENSHOTS`` or the test's tmp dir (tests/e2e/conftest.py):
each is checked not to be blank (the map area has many colours), and they are to be looked
at.
"""

from __future__ import annotations

import io
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.helpers.browser import log_in
from tests.helpers.platform import wait_for_seed
from tests.helpers.tiles import healpix_dataset, private_item, remove_item

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]

TIMEOUT_MS = 120_000
USER = "vizpageuser"
SERVICE = "services/tiles/"
#: Distinct colours a drawn map area has at least (a blank or one-colour map has 1-2).
MIN_COLOURS = 20


@pytest.fixture(scope="module")
def site(multiuser_platform):
    p = multiuser_platform
    wait_for_seed(p)
    if p.api("GET", f"/users/{USER}", user="admin").status_code != 404:
        pytest.skip(f"{USER} existed before this module: its password is unknown")
    return p, p.add_user(USER)


@pytest.fixture(scope="module")
def h128(site) -> dict:
    """A seeded HEALPix H128 item with 2 m temperature, as the service describes it."""
    p, _ = site
    headers = {"Authorization": f"token {p.token(USER)}"}
    r = requests.get(p.url + SERVICE + "collections", headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    ids = sorted(
        c["itemId"]
        for c in r.json()["collections"]
        if "healpix-h128" in c["itemId"] and c["variable"] == "2t"
    )
    assert ids, "no seeded HEALPix H128 2t layer listed"
    r = requests.get(p.url + SERVICE + "layers/" + ids[0], headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["grid"].get("healpix_nside") == 128, doc["grid"]
    assert len(doc["times"]) >= 2, doc["times"]
    return doc


def map_colours(page, path) -> tuple[int, bytes]:
    """Screenshot of the map canvas to ``path``: (its distinct colours, its pixels)."""
    png = page.locator("#map").screenshot(path=str(path))
    img = Image.open(io.BytesIO(png)).convert("RGB")
    return len(img.getcolors(maxcolors=1 << 24)), img.tobytes()


def wait_drawn(page, frame: str | None = None, timeout_ms: float = 60_000) -> None:
    """Until the canvas has every image of its current frame (and of ``frame``, if named:
    "<projection> <time>") drawn; else fail saying what the page shows."""
    sel = '#map[data-pending="0"]:not([data-drawn="0"])'
    if frame:
        sel += f'[data-frame="{frame}"]'
    try:
        page.locator(sel).wait_for(state="attached", timeout=timeout_ms)
    except PlaywrightTimeout:
        canvas = page.locator("#map")
        shown = {k: canvas.get_attribute(f"data-{k}") for k in ("pending", "drawn", "frame")}
        raise AssertionError(
            f"the map was not drawn (wanted {frame or 'any frame'}): {shown}, "
            f"status {page.inner_text('#map-status')!r}"
        ) from None


def url_state(page, **want: str) -> dict[str, str]:
    """The page's state in its URL, once it says ``want`` (the page writes it as it goes)."""

    def state(url: str) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}

    page.wait_for_url(lambda u: all(state(u).get(k) == v for k, v in want.items()))
    return state(page.url)


def test_open_play_click_series_and_globe(site, h128, browser_context, shots):
    p, password = site
    item, times = h128["item_id"], h128["times"]
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    tiles_asked: list[str] = []
    page.on("request", lambda r: tiles_asked.append(r.url) if "/map/tiles/" in r.url else None)
    log_in(page, p.url, USER, password)

    # -- the page, through the hub's sign-on, for the item ---------------------------------
    response = page.goto(p.url + SERVICE + f"vizlab?item={item}&variable=2t")
    page.wait_for_url(f"**/{SERVICE}vizlab?**")
    assert response is not None and response.ok
    csp = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, csp
    assert page.inner_text("#user") == USER
    wait_drawn(page)
    assert page.inner_text("#item-sub").startswith(item)
    assert page.locator("#variable").input_value() == "2t"
    assert int(page.locator("#time").get_attribute("max")) == len(times) - 1
    # the layer's default time: its first
    url_state(page, item=item, variable="2t", proj="webmercator", time=times[0], cmap="viridis")
    colours, first = map_colours(page, shots / "1-map.png")
    assert colours > MIN_COLOURS, f"the map has {colours} colours: blank?"
    first_tiles = set(tiles_asked)
    assert first_tiles and all("datetime=" in u for u in first_tiles)
    page.locator("#legend").screenshot(path=str(shots / "1-legend.png"))
    assert page.evaluate("document.getElementById('legend').naturalWidth") > 0

    # -- play: the slider moves, other tiles (another time) are drawn -----------------------
    page.click("#play")
    deadline = time.monotonic() + 60
    while int(page.locator("#time").input_value()) == 0 and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    page.click("#play")  # pause
    step = int(page.locator("#time").input_value())
    assert step >= 1, "the player did not move the time"
    assert times[step][:16].replace("T", " ") in page.inner_text("#time-label")
    wait_drawn(page, f"webmercator {times[step]}")
    url_state(page, time=times[step])
    later = {u for u in tiles_asked if "datetime=" + times[step].replace(":", "%3A") in u}
    assert later, "no tiles asked for the new time"
    colours, played = map_colours(page, shots / "2-played.png")
    assert colours > MIN_COLOURS, f"the map has {colours} colours after playing: blank?"
    assert played != first, "the picture did not change with the time"

    # -- click a point: the cell's time series, one point per valid time -------------------
    box = page.locator("#map").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.45)
    page.locator("#series-status", has_text=re.compile(r"^\d+ values$")).wait_for()
    assert page.locator("#series circle.pt").count() == len(times)
    cell = page.inner_text("#series-cell")
    m = re.match(r"cell (\d+) \(centre (-?[\d.]+), (-?[\d.]+)\)", cell)
    assert m, cell
    assert page.locator("#series .now").count() == 1  # the current time, marked
    # the chart's values are the service's EDR answer at that cell's own centre
    lon, lat = float(m.group(2)), float(m.group(3))
    r = requests.get(
        p.url + SERVICE + f"edr/collections/{item}/position",
        params={"coords": f"POINT({lon} {lat})", "parameter-name": "2t"},
        headers={"Authorization": f"token {p.token(USER)}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    want = r.json()["ranges"]["2t"]["values"]
    points = page.locator("#series circle.pt")
    got = [float(points.nth(i).get_attribute("data-value")) for i in range(points.count())]
    assert got == want  # the native values themselves (the JSON's numbers, to the last bit)
    page.screenshot(path=str(shots / "3-series.png"))
    colours, _ = map_colours(page, shots / "3-map-marked.png")
    assert colours > MIN_COLOURS

    # -- the globe: a server-side view, re-asked after a drag rotates it -------------------
    with page.expect_response(lambda r: "/view/" in r.url and r.status == 200) as got_view:
        page.click("#globe")
    assert got_view.value.headers["content-type"] == "image/png"
    wait_drawn(page, f"orthographic {times[step]}")
    url_state(page, proj="orthographic")
    assert page.locator("#proj").input_value() == "orthographic"
    colours, globe = map_colours(page, shots / "4-globe.png")
    assert colours > MIN_COLOURS, f"the globe has {colours} colours: blank?"
    centre = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    with page.expect_response(lambda r: "/view/" in r.url and r.status == 200):
        page.mouse.move(*centre)
        page.mouse.down()
        page.mouse.move(centre[0] - 150, centre[1] + 60, steps=6)
        page.mouse.up()
    wait_drawn(page)
    lon0 = float(url_state(page)["view"].split(",")[0])
    assert lon0 > 5, url_state(page)["view"]  # dragged west: the globe turned east
    _, turned = map_colours(page, shots / "5-globe-turned.png")
    assert turned != globe
    page.screenshot(path=str(shots / "5-page-globe.png"))

    # -- the URL is the view: opened again, the same state ---------------------------------
    shared = page.url
    again = browser_context.new_page()
    again.goto(shared)
    wait_drawn(again, f"orthographic {times[step]}")
    assert again.locator("#proj").input_value() == "orthographic"
    assert int(again.locator("#time").input_value()) == step
    again.close()
    assert not errors, errors


def test_bad_item_ids_and_no_anonymous_page(site, browser_context, shots):
    p, _ = site
    page = browser_context.new_page()  # the module's context: still logged in
    page.goto(p.url + SERVICE + "vizlab?item=" + "..%2F..%2Fhub%2Fapi")
    page.locator("#finder").wait_for()
    assert "is not an item id" in page.inner_text("#find-status")
    assert page.locator("#explorer").is_hidden()
    # the finder lists the layers the user may see, paged
    page.goto(p.url + SERVICE + "vizlab")
    page.locator("#layers tbody tr").first.wait_for()
    page.fill("#find-q", "healpix-h128 2t")
    rows = page.locator("#layers tbody tr a").all_inner_texts()
    assert rows and all("healpix-h128" in r and r.endswith("/2t") for r in rows), rows
    page.screenshot(path=str(shots / "6-finder.png"))
    # without a login: scripts get 401, browsers are sent to log in (never the page)
    r = requests.get(p.url + SERVICE + "vizlab", timeout=60, allow_redirects=False)
    assert r.status_code == 401, r.text
    r = requests.get(
        p.url + SERVICE + "vizlab",
        headers={"Accept": "text/html"},
        timeout=60,
        allow_redirects=False,
    )
    assert r.status_code == 302 and "oauth2/authorize" in r.headers["location"]


def test_the_data_lake_item_view_links_to_vizlab(site, h128, browser_context, shots):
    p, _ = site
    url = p.spawn(USER)
    page = browser_context.new_page()
    page.goto(url + "datalake/")
    page.locator("#collection option[value='climate-dt']").wait_for(state="attached")
    page.fill("#q", "2t healpix")
    page.click("#search-button")
    page.locator("#results li").first.wait_for()
    page.locator("#results li").first.click()
    link = page.locator("#open-vizlab")
    link.wait_for()
    item = page.inner_text("#item-title")
    href = link.get_attribute("href")
    assert href == f"/{SERVICE}vizlab?item={item}&variable=2t", href
    page.screenshot(path=str(shots / "7-datalake-link.png"))
    with browser_context.expect_page() as opened:
        link.click()
    viz = opened.value
    wait_drawn(viz)
    assert viz.inner_text("#item-sub").startswith(item)
    colours, _ = map_colours(viz, shots / "7-opened.png")
    assert colours > MIN_COLOURS


def test_private_items_only_for_their_owner(site, browser_context, shots):
    p, _ = site
    owner = "vizpageowner"
    if p.api("GET", f"/users/{owner}", user="admin").status_code != 404:
        pytest.skip(f"{owner} existed before this module: its password is unknown")
    owner_password = p.add_user(owner)
    item = private_item(p, owner, "vizpage-private-h8", nside=8, ntimes=3)
    try:
        _private_item_pages(p, browser_context, shots, item, owner, owner_password)
    finally:  # other modules search the lake: its items must be the seed's again
        remove_item(p, item)


def _private_item_pages(p, browser_context, shots, item, owner, owner_password) -> None:
    page_url = p.url + SERVICE + f"vizlab?item={item.item_id}&variable={item.variable}"

    # another user: the page says the service's refusal, and draws nothing
    page = browser_context.new_page()
    page.goto(page_url)
    page.locator("#map-status.error").wait_for()
    assert "may not read" in page.inner_text("#map-status")  # the service's 403, said
    assert page.locator("#map").get_attribute("data-drawn") in (None, "0")
    page.screenshot(path=str(shots / "8-private-refused.png"))

    # its owner, in a browser of their own: the map of the item's own values, 3 time steps
    own = browser_context.browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        mine = own.new_page()
        log_in(mine, p.url, owner, owner_password)
        mine.goto(page_url)
        wait_drawn(mine, f"webmercator {item.times[0]}")
        assert int(mine.locator("#time").get_attribute("max")) == 2
        colours, _ = map_colours(mine, shots / "8-private-owner.png")
        assert colours > MIN_COLOURS
    finally:
        own.close()


def test_a_level_is_shown_on_the_map_and_in_the_series(site, browser_context, shots):
    p, password = site
    ds = healpix_dataset(8, 3, levels=(500, 850), seed=11)
    data = ds["2t"].data
    data[data != data] = 262.0  # no NaN gaps: whichever cell is clicked has a series
    item = private_item(p, USER, "vizpage-levels-h8", ds=ds)
    own = browser_context.browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = own.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        log_in(page, p.url, USER, password)
        page.goto(p.url + SERVICE + f"vizlab?item={item.item_id}&variable=2t")
        wait_drawn(page, f"webmercator {item.times[0]}")
        level = page.locator("#levels select")
        assert level.locator("option").all_inner_texts() == ["500", "850"]
        _, low = map_colours(page, shots / "9-level-500.png")
        with page.expect_request(lambda r: "/map/tiles/" in r.url and "level=850" in r.url):
            level.select_option("850")
        wait_drawn(page)
        url_state(page, level="850")
        colours, high = map_colours(page, shots / "9-level-850.png")
        assert colours > MIN_COLOURS and high != low
        box = page.locator("#map").bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
        page.locator("#series-status", has_text=re.compile(r"^\d+ values$")).wait_for()
        assert "level 850" in page.inner_text("#series-cell")
        m = re.match(r"cell (\d+) ", page.inner_text("#series-cell"))
        assert m, page.inner_text("#series-cell")
        points = page.locator("#series circle.pt")
        got = [float(points.nth(i).get_attribute("data-value")) for i in range(points.count())]
        want = item.values[:, 1, int(m.group(1))]  # (time, level, cell): the 850 hPa values
        assert got == [float(v) for v in want]
        # another level: the clicked cell's series is asked again, at that level
        level.select_option("500")
        page.locator("#series-cell", has_text="level 500").wait_for()
        page.locator("#series-status", has_text=re.compile(r"^\d+ values$")).wait_for()
        got = [float(points.nth(i).get_attribute("data-value")) for i in range(points.count())]
        assert got == [float(v) for v in item.values[:, 0, int(m.group(1))]]
        page.screenshot(path=str(shots / "9-level-series.png"))
        assert not errors, errors
    finally:
        own.close()
        remove_item(p, item)
