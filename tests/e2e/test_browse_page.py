"""The "Data lake" page driven in headless Chromium (Playwright) on the real multi-user
platform with the sample data: log in through the hub's login page, open the page from the
JupyterLab Launcher tile, search (text + a box dragged on the map), open an item, see its
quick-look, copy the code line, and upload/list in the Buckets tab.

Screenshots go to ``$TWINHUB_SCREENSHOTS`` (tests/e2e/conftest.py) to be looked at.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.browser import log_in
from tests.helpers.platform import wait_for_seed

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]

USER = "lakepage"
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def site(multiuser_platform) -> tuple:
    p = multiuser_platform
    wait_for_seed(p)
    if p.api("GET", f"/users/{USER}", user="admin").status_code != 404:
        pytest.skip(f"{USER} existed before this module: its password is unknown")
    password = p.add_user(USER)
    url = p.spawn(USER)
    return p, url, password


@pytest.fixture(scope="module")
def context(site, browser_context):
    p, _, _ = site
    browser_context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=p.url.rstrip("/")
    )
    return browser_context


def meta_start(lake) -> tuple[str, str]:
    """The selected item's start_datetime (from its metadata table) as (date, HH:MM)."""
    row = lake.locator("#metadata tr", has_text="start_datetime").inner_text()
    m = re.search(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d)", row)
    assert m, row
    return m.group(1), m.group(2)


def test_login_launcher_search_item_quicklook_copy_and_buckets(site, context, shots, tmp_path):
    p, url, password = site
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # -- log in through the hub's own login form ------------------------------------------
    log_in(page, p.url, USER, password)

    # -- the Launcher shows the tile; clicking it opens the page in a new tab --------------
    page.goto(url + "lab")
    tile = page.locator(".jp-LauncherCard[title^='Data lake']")
    tile.wait_for()
    page.screenshot(path=str(shots / "1-launcher.png"))
    with context.expect_page() as opened:
        tile.click()
    lake = opened.value
    lake.on("pageerror", lambda e: errors.append(str(e)))
    lake.wait_for_load_state()
    assert lake.url.startswith(url + "datalake/"), lake.url
    lake.wait_for_function("document.querySelectorAll('#collection option').length > 1")
    values = lake.eval_on_selector_all("#collection option", "os => os.map(o => o.value)")
    assert "climate-dt" in values

    # -- a scientist's word: "temperature" finds the 2t items, first ---------------------
    lake.fill("#q", "temperature")
    lake.click("#search-button")
    lake.wait_for_function("document.querySelectorAll('#results li').length > 0")
    found = lake.locator("#results li .id").all_inner_texts()
    assert all("-2t-" in i for i in found[:5]), found
    assert all("-2t-" in i or "-sst-" in i for i in found), found
    lake.screenshot(path=str(shots / "2-temperature.png"))

    # -- search: text + a box dragged on the map ------------------------------------------
    lake.fill("#q", "msl healpix")  # both words must match
    lake.select_option("#collection", "climate-dt")
    box = lake.locator("#map").bounding_box()
    # Europe-ish: 0..40 E, 30..60 N on the 360 x 180 canvas (-180..180, 90..-90)
    lake.mouse.move(box["x"] + 180, box["y"] + 30)
    lake.mouse.down()
    lake.mouse.move(box["x"] + 220, box["y"] + 60, steps=5)
    lake.mouse.up()
    assert lake.inner_text("#bbox-label") == "box: W 0 S 30 E 40 N 60"
    lake.click("#search-button")
    lake.wait_for_function("document.querySelectorAll('#results li').length > 0")
    ids = lake.locator("#results li .id").all_inner_texts()
    assert ids and all("healpix" in i and "-msl-" in i for i in ids), ids
    assert lake.locator("#results li .badge").first.inner_text() == "local"
    lake.screenshot(path=str(shots / "2-results.png"))

    # -- open an item: metadata, assets, quick-look, code line -----------------------------
    lake.locator("#results li").first.click()
    assert lake.inner_text("#item-title") == ids[0]
    lake.wait_for_function(
        "() => { const i = document.getElementById('quicklook');"
        " return i.complete && i.naturalWidth > 0; }"
    )
    assert lake.evaluate("document.getElementById('quicklook').naturalWidth") == 720
    meta = lake.locator("#metadata").inner_text()
    assert "param" in meta and "msl" in meta
    assert "twinhub:search" not in meta  # the lake's search text is not metadata to read
    assets = lake.locator("#assets").inner_text()
    assert "zarr" in assets and "grib" in assets
    lake.wait_for_function("document.getElementById('code-line').textContent.includes('dl.open')")
    code = lake.inner_text("#code-line")
    assert ids[0] in code
    lake.click("#copy")
    lake.wait_for_function("document.getElementById('copy-status').textContent === 'copied'")
    assert lake.evaluate("navigator.clipboard.readText()") == code
    lake.screenshot(path=str(shots / "3-item.png"), full_page=True)

    # -- the time picker: the item's valid times as datetimes; another one redraws --------
    labels = lake.locator("#ql-time option").all_inner_texts()
    assert len(labels) >= 3 and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", t) for t in labels), labels  # fmt: skip
    assert labels[0] == "{} {} UTC".format(*meta_start(lake))
    first_src = lake.get_attribute("#quicklook", "src")
    first_png = lake.locator("#quicklook").screenshot()
    chosen = lake.eval_on_selector("#ql-time", "s => s.options[2].value")
    lake.select_option("#ql-time", index=2)  # the change event redraws
    lake.wait_for_function(
        "v => { const i = document.getElementById('quicklook');"
        " return i.src.includes('time=' + encodeURIComponent(v)) && i.complete && i.naturalWidth > 0; }",
        arg=chosen,
    )
    assert lake.get_attribute("#quicklook", "src") != first_src
    lake.wait_for_function("document.getElementById('ql-status').textContent === ''")
    assert lake.locator("#quicklook").screenshot() != first_png
    lake.screenshot(path=str(shots / "3b-time-picked.png"), full_page=True)

    # -- buckets: upload into the home bucket, see it listed -----------------------------
    lake.click("#tab-buckets")
    lake.wait_for_function("document.querySelectorAll('#bucket option').length >= 2")
    assert "(home)" in lake.locator("#bucket").inner_text()
    upload = tmp_path / "notes.txt"
    upload.write_text("uploaded from the data lake page\n")
    lake.set_input_files("#upload-file", str(upload))
    lake.fill("#upload-key", "page-test/notes.txt")
    lake.click("#upload-form [type=submit]")
    lake.wait_for_function(
        "document.getElementById('upload-status').textContent.startsWith('uploaded')"
    )
    lake.locator("#objects a.folder", has_text="page-test/").click()
    row = lake.locator("#objects tr[data-key='page-test/notes.txt']")
    row.wait_for()
    # download through the presigned URL: the same bytes come back
    with lake.expect_download() as dl:
        row.locator("button").click()
    assert Path(dl.value.path()).read_text() == upload.read_text()
    lake.screenshot(path=str(shots / "4-buckets.png"), full_page=True)
    assert not errors, errors
