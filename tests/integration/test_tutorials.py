"""The platform's tutorials in a real multi-user server: copied once into ~/tutorials at the
first start, a user's edits and deletions survive a restart, the Launcher's endpoint lists
them to the server's owner only, and the JupyterLab extension and settings are served."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

SOURCE = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(p.name for p in SOURCE.glob("*.ipynb"))


def _get(url: str, token: str, **kw) -> requests.Response:
    return requests.get(url, headers={"Authorization": f"token {token}"}, timeout=60, **kw)


def _call(method: str, url: str, token: str, **kw) -> requests.Response:
    h = {"Authorization": f"token {token}"}
    return requests.request(method, url, headers=h, timeout=60, **kw)


@pytest.fixture(scope="module")
def tut_user(multiuser_platform):
    p = multiuser_platform
    for name in ("tutuser", "tutother"):
        if p.api("GET", f"/users/{name}", user="admin").status_code == 404:
            p.add_user(name)
    yield "tutuser"
    p.stop_server("tutuser")


def test_tutorials_copied_once_edits_and_deletions_survive(multiuser_platform, tut_user):
    p = multiuser_platform
    assert len(NOTEBOOKS) >= 2, "the test edits one tutorial and deletes another"
    edited, deleted = NOTEBOOKS[0], NOTEBOOKS[1]
    url, token = p.spawn(tut_user), p.token(tut_user)

    # first start: every tutorial is in ~/tutorials, and the endpoint lists them
    r = _get(url + "api/contents/tutorials", token)
    assert r.status_code == 200, r.text
    assert sorted(f["name"] for f in r.json()["content"] if f["type"] == "notebook") == NOTEBOOKS
    listing = _get(url + "twinlab/api/tutorials", token).json()
    assert [t["name"] for t in listing["tutorials"]] == NOTEBOOKS
    first = listing["tutorials"][0]
    assert first["path"] == f"tutorials/{edited}" and first["present"] is True
    heading = next(
        line.lstrip("#").strip()
        for c in json.loads((SOURCE / edited).read_text())["cells"]
        if c["cell_type"] == "markdown"
        for line in "".join(c["source"]).splitlines()
        if line.startswith("#")
    )
    assert first["title"] == heading

    # the user edits one tutorial and deletes another
    nb = _get(url + f"api/contents/tutorials/{edited}", token).json()
    nb["content"]["cells"].append(
        {"cell_type": "markdown", "metadata": {}, "source": "my own note, keep it"}
    )
    r = _call(
        "PUT",
        url + f"api/contents/tutorials/{edited}",
        token,
        json={"type": "notebook", "format": "json", "content": nb["content"]},
    )
    assert r.status_code == 200, r.text
    assert _call("DELETE", url + f"api/contents/tutorials/{deleted}", token).status_code == 204

    # next start: the edit survives, the deleted one stays deleted
    p.stop_server(tut_user)
    url = p.spawn(tut_user)
    cells = _get(url + f"api/contents/tutorials/{edited}", token).json()["content"]["cells"]
    assert cells[-1]["source"] == "my own note, keep it"
    assert _get(url + f"api/contents/tutorials/{deleted}", token).status_code == 404
    present = {
        t["name"]: t["present"]
        for t in _get(url + "twinlab/api/tutorials", token).json()["tutorials"]
    }
    assert present == {n: n != deleted for n in NOTEBOOKS}

    # the Launcher card of a deleted tutorial copies it back; never over the user's file
    r = _call("POST", url + f"twinlab/api/tutorials/{deleted}", token)
    assert r.status_code == 201 and r.json()["restored"] is True, r.text
    assert _get(url + f"api/contents/tutorials/{deleted}", token).status_code == 200
    r = _call("POST", url + f"twinlab/api/tutorials/{edited}", token)
    assert r.status_code == 200 and r.json()["restored"] is False
    cells = _get(url + f"api/contents/tutorials/{edited}", token).json()["content"]["cells"]
    assert cells[-1]["source"] == "my own note, keep it"
    r = _call("POST", url + "twinlab/api/tutorials/not-a-tutorial.ipynb", token)
    assert r.status_code == 404 and "not-a-tutorial.ipynb" in r.json()["message"]


def test_tutorials_endpoint_only_for_the_owner(multiuser_platform, tut_user):
    p = multiuser_platform
    url = p.spawn(tut_user)
    assert requests.get(url + "twinlab/api/tutorials", timeout=30).status_code == 403
    other = p.token("tutother")
    assert _get(url + "twinlab/api/tutorials", other).status_code == 403
    assert _call("POST", url + f"twinlab/api/tutorials/{NOTEBOOKS[0]}", other).status_code == 403


def test_lab_serves_the_twinhub_extension_and_settings(multiuser_platform, tut_user):
    p = multiuser_platform
    url, token = p.spawn(tut_user), p.token(tut_user)
    page = _get(url + "lab", token)
    assert page.status_code == 200
    config = json.loads(
        re.search(
            r'<script id="jupyter-config-data" type="application/json">(.*?)</script>',
            page.text,
            re.S,
        ).group(1)  # fmt: skip
    )
    names = [e["name"] for e in config["federated_extensions"]]
    assert "@twinhub/lab" in names and "dask-labextension" in names
    assert config["hubPrefix"] == "/hub/"  # where the Help menu's links point
    ext = next(e for e in config["federated_extensions"] if e["name"] == "@twinhub/lab")
    assert _get(url + f"lab/extensions/@twinhub/lab/{ext['load']}", token).status_code == 200
    # no Jupyter-news popup, no update check: the platform's defaults
    r = _get(url + "lab/api/settings/@jupyterlab/apputils-extension:notification", token)
    props = r.json()["schema"]["properties"]
    assert props["fetchNews"]["default"] == "false"
    assert props["checkForUpdates"]["default"] is False
