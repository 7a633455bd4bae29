"""The VizLab explorer (twinlab.viz.explore) served by Panel in this process and driven in
Chromium: the map shows the field, the player advances time, a click shows the exact native
cell's series, the globe renders and rotates when dragged.  No platform needed.

Screenshots go to ``shots`` (``$TWINHUB_SCREENSHOTS``): look at them.
"""

from __future__ import annotations

import io
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import panel as pn
import pytest
from PIL import Image

import twinlab.grids as tg
from tests.unit.lab.viz.test_explore import TIMES, h128  # the unit tests' H128 field
from twinlab.viz import nearest_index, view_lonlat
from twinlab.viz.explore import explore
from twinlab.viz.projections import View

TIMEOUT_MS = 60_000
W, H = 640, 320  # the map's pixels (controls + map + series fit the 1400 px viewport)
BACKGROUND = (0xDD, 0xE3, 0xEA)  # the map's background: off the globe


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    ds = h128()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = pn.serve(
        {"explore": lambda: explore(ds, width=W, height=H)},
        port=port, address="127.0.0.1", show=False, threaded=True, start=True,
        websocket_origin=[f"127.0.0.1:{port}"],
    )  # fmt: skip
    deadline = time.monotonic() + 30  # the server thread starts listening on its own time
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}/explore"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def page(browser_context, app_url: str):
    page = browser_context.new_page()
    page.requested = []  # every URL the page loads: Panel/Bokeh's own resources, no CDN
    page.on("request", lambda r: page.requested.append(r.url))
    page.goto(app_url)
    page.get_by_text(f"rendered {W}x{H}").wait_for()
    return page


def map_box(page) -> dict[str, float]:
    """The map's frame on the page: the first canvas as wide as the map (the toolbar sits
    above the frame inside the canvas's box, the colour bar to the right)."""
    for c in page.locator("canvas").all():
        b = c.bounding_box()
        if b and b["width"] >= W and b["height"] >= H:
            return {"x": b["x"], "y": b["y"] + b["height"] - H, "width": W, "height": H}
    raise AssertionError("no map canvas on the page")


def map_pixels(page, name: str, shots: Path) -> np.ndarray:
    png = page.screenshot(clip=map_box(page), path=str(shots / f"{name}.png"))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def colours(rgb: np.ndarray) -> int:
    return len(np.unique(rgb.reshape(-1, 3), axis=0))


def status(page) -> str:
    return page.get_by_text(re.compile(r"\| .* zoom .* centre")).first.inner_text()


def test_map_shows_the_field(page, shots: Path) -> None:
    page.screenshot(path=str(shots / "explorer-page.png"))
    rgb = map_pixels(page, "explorer-map", shots)
    assert rgb.shape[:2] == (H, W)
    assert colours(rgb) > 100, "the map is blank or nearly one colour"
    assert page.get_by_text("2020-01-01 00:00  (1/4)").is_visible()
    origin = page.url.split("/explore")[0]
    foreign = [u for u in page.requested if not u.startswith((origin, "data:", "blob:"))]
    assert not foreign, f"resources from elsewhere: {foreign}"


def test_player_advances_time(page, shots: Path) -> None:
    before = map_pixels(page, "explorer-t0", shots)
    page.locator("button.play").first.click()
    page.get_by_text("2020-01-01 06:00  (2/4)").wait_for()
    page.locator("button.pause").first.click()
    page.wait_for_timeout(300)  # the image of the step the player stopped at
    after = map_pixels(page, "explorer-played", shots)
    assert colours(after) > 100
    assert (np.abs(after.astype(int) - before.astype(int)).sum(-1) > 30).mean() > 0.3
    page.locator("button.first").first.click()
    page.get_by_text(f"{str(TIMES[0])[:10]} 00:00  (1/4)").wait_for()


def test_click_shows_the_exact_cell_series(page, shots: Path) -> None:
    box = map_box(page)
    col, row = 451, 97  # a pixel of the (whole, plate carrée) map
    page.mouse.click(box["x"] + col + 0.5, box["y"] + row + 0.5)
    cell = page.get_by_text(re.compile(r"^cell \d+ of healpix-n128-nested"))
    cell.wait_for()
    page.screenshot(path=str(shots / "explorer-clicked.png"))
    lon, lat = view_lonlat(View("platecarree", W, H))
    want = int(nearest_index(tg.HEALPix(128), lon[row, col], lat[row, col]))
    assert cell.inner_text().startswith(f"cell {want} of healpix-n128-nested")
    values = h128()["2t"].values[:, want]
    assert f"value now: {values[0]:.6g} K" in cell.inner_text()
    # the chart beside the map has its line (Bokeh's default blue) and the red dot of now
    right = map_box(page)["x"] + W
    chart = [c for c in page.locator("canvas").all() if c.bounding_box()["x"] > right][0]
    png = np.asarray(Image.open(io.BytesIO(chart.screenshot())).convert("RGB")).astype(int)
    assert (np.abs(png - [0x1F, 0x77, 0xB4]).sum(-1) < 40).sum() > 100
    assert (np.abs(png - [255, 0, 0]).sum(-1) < 40).sum() > 20


def test_wheel_zooms_and_rerenders(page, shots: Path) -> None:
    box = map_box(page)
    page.mouse.move(box["x"] + W / 2, box["y"] + H / 2)
    for _ in range(3):
        page.mouse.wheel(0, -200)
    page.get_by_text(re.compile(r"platecarree zoom (?!1 )")).wait_for()
    zoom = float(re.search(r"zoom (\S+)", status(page)).group(1))
    assert zoom > 1.2
    rgb = map_pixels(page, "explorer-zoomed", shots)
    assert colours(rgb) > 100 and (rgb != np.array(BACKGROUND)).any(-1).all()
    page.get_by_role("button", name="Whole map").click()
    page.get_by_text("platecarree zoom 1 centre 0.00, 0.00").wait_for()


def test_globe_renders_and_rotates(page, shots: Path) -> None:
    select = page.locator("select", has=page.locator("option", has_text="Globe"))
    select.select_option(label="Globe (orthographic)")
    page.get_by_text(re.compile(r"orthographic zoom 1 centre")).wait_for()
    page.wait_for_timeout(300)
    rgb = map_pixels(page, "explorer-globe", shots)
    assert colours(rgb) > 100
    assert tuple(rgb[2, 2]) == BACKGROUND and tuple(rgb[H - 3, W - 3]) == BACKGROUND
    disc = rgb[H // 2 - 100 : H // 2 + 100, W // 2 - 100 : W // 2 + 100]
    assert (disc != np.array(BACKGROUND)).any(-1).all()  # the globe's face has no gap
    box = map_box(page)
    page.mouse.move(box["x"] + W / 2, box["y"] + H / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + W / 2 + 60, box["y"] + H / 2 + 30, steps=8)
    page.mouse.up()
    page.get_by_text(re.compile(r"orthographic zoom 1 centre -")).wait_for()
    rotated = map_pixels(page, "explorer-globe-rotated", shots)
    assert colours(rotated) > 100
    lon, lat = (float(v) for v in re.search(r"centre (\S+), (\S+)", status(page)).groups())
    assert lon < -5 and lat > 2  # dragged right and down: we look further west and north
