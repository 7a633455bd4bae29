"""Every tutorial in notebooks/ runs, cell by cell, in a real user server of the platform."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.kernel import execute, shutdown_kernel, start_kernel
from tests.helpers.platform import wait_for_seed

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
# What each tutorial must show, beyond running without an error.
EXPECTED = {
    "01-getting-started.ipynb": ["nbuser small-cpu", "2 workers", "global mean 274.66"],
    "02-data-lake.ipynb": ["items of 2 m temperature", "HEALPix nside 128", "GRIB grid: HEALPix"],
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_in_a_user_server(multiuser_platform, path):
    p = multiuser_platform
    wait_for_seed(p)  # the data-lake tutorial reads the sample data
    if p.api("GET", "/users/nbuser", user="admin").status_code == 404:
        p.add_user("nbuser")
    url = p.spawn("nbuser")
    token = p.token("nbuser")
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert cells, f"{path.name} has no code"
    kernel = start_kernel(url, token)
    outputs = []
    try:
        for i, cell in enumerate(cells):
            source = "".join(cell["source"])
            try:
                outputs.append(execute(url, token, kernel, source, timeout=240))
            except Exception as e:
                raise AssertionError(f"{path.name} cell {i} failed: {e}\n{source}") from e
    finally:
        shutdown_kernel(url, token, kernel)
        p.stop_server("nbuser")
    text = "\n".join(outputs)
    for needle in EXPECTED.get(path.name, []):
        assert needle in text, f"{path.name}: {needle!r} not in output:\n{text}"
