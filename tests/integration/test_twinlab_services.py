"""twinlab.services() and the info endpoint's ``registry`` key in real user servers of the
multi-user platform: entries onboarded through the registry's REST API (submitted,
evaluated by the platform, approved by a reviewer, integrated by an admin) appear for the
users their visibility allows, asked with each server's own token; the info document (read
by anyone the server is shared with) lists no project entries."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.helpers.kernel import run_code

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

#: The hub group the project-only entry is for.
PROJECT = "tlfarm"
REVIEWERS = "registry-reviewers"
ENTRY = {
    "provider": "twinlab test org",
    "description": "Yields by **region**.",
    "thematic_areas": ["agriculture"],
    "kind": "dataset",
    "endpoints": [],
    "documentation": "",
    "licence": "CC-BY-4.0",
    "contact": "data@example.org",
    "keywords": ["crops"],
}


def _registry(p, method: str, path: str, token: str, **kw) -> requests.Response:
    return requests.request(
        method,
        p.url + "services/registry/api/v1/" + path,
        headers={"Authorization": f"token {token}"},
        timeout=60,
        **kw,
    )


def _onboard(p, slug: str, name: str, visibility: str, provider: str, reviewer: str) -> None:
    """Submit, wait for the platform's evaluation, approve, integrate: the whole workflow."""
    entry = {**ENTRY, "slug": slug, "name": name, "visibility": visibility}
    r = _registry(p, "POST", "requests", p.token(provider), json={"entry": entry})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    deadline = time.monotonic() + 60
    while (state := _registry(p, "GET", f"requests/{rid}", p.token(provider)).json()["state"]) == (
        "submitted"
    ):
        assert time.monotonic() < deadline, "not evaluated within a minute"
        time.sleep(0.5)
    assert state == "evaluated"
    r = _registry(
        p,
        "POST",
        f"requests/{rid}/reviews",
        p.token(reviewer),
        json={"decision": "approved", "comment": "fine"},
    )
    assert r.status_code == 200, r.text
    r = _registry(
        p, "POST", f"requests/{rid}/transitions", p.token("admin"), json={"to": "integrated"}
    )
    assert r.status_code == 200 and r.json()["state"] == "integrated", r.text


@pytest.fixture(scope="module")
def site(multiuser_platform):
    p = multiuser_platform
    admin = p.token("admin")
    for name, groups in (("tlprov", ()), ("tlrev", (REVIEWERS,)), ("tlmem", ()), ("tlout", ())):
        if p.api("GET", f"/users/{name}", token=admin).status_code == 404:
            p.add_user(name, groups=groups)
    p.api("POST", f"/groups/{REVIEWERS}", token=admin)  # 409 when it exists
    r = p.api("POST", f"/groups/{REVIEWERS}/users", token=admin, json={"users": ["tlrev"]})
    assert r.status_code == 200, r.text
    p.api("POST", f"/groups/{PROJECT}", token=admin)
    r = p.api("POST", f"/groups/{PROJECT}/users", token=admin, json={"users": ["tlmem"]})
    assert r.status_code == 200, r.text
    _onboard(p, "tl-open-data", "Open yields", "public", "tlprov", "tlrev")
    _onboard(p, "tl-farm-data", "Farm yields", f"project:{PROJECT}", "tlprov", "tlrev")
    return p


def _info_registry(p, user: str) -> dict:
    url = p.spawn(user)
    r = requests.get(
        url + "twinlab/api/info", headers={"Authorization": f"token {p.token(user)}"}, timeout=60
    )
    assert r.status_code == 200, r.text
    return r.json()["registry"]


def test_info_lists_public_entries_but_not_another_projects(site) -> None:
    doc = _info_registry(site, "tlout")
    assert "error" not in doc, doc
    assert doc["url"].endswith("/services/registry/")
    slugs = {s["slug"] for s in doc["services"]}
    assert "tl-open-data" in slugs and "tl-farm-data" not in slugs
    open_data = next(s for s in doc["services"] if s["slug"] == "tl-open-data")
    assert open_data["name"] == "Open yields" and open_data["kind"] == "dataset"
    assert open_data["thematic_areas"] == ["agriculture"]
    assert open_data["visibility"] == "public"


def test_info_leaves_out_even_the_owners_own_project_entries(site) -> None:
    """Whoever the owner shares the server with reads the info document too: project
    entries stay out of it (the kernel's twinlab.services() lists them, below)."""
    doc = _info_registry(site, "tlmem")
    assert "error" not in doc, doc
    slugs = {s["slug"] for s in doc["services"]}
    assert "tl-open-data" in slugs and "tl-farm-data" not in slugs
    assert all(s["visibility"] in ("public", "users") for s in doc["services"])


def test_twinlab_services_in_the_users_kernel(site) -> None:
    url = site.spawn("tlmem")
    code = (
        "import json, twinlab\n"
        "found = twinlab.services()\n"
        "print(json.dumps([[s.slug, s.visibility, type(s).__name__] for s in found]))\n"
    )
    rows = json.loads(run_code(url, site.token("tlmem"), code))
    assert ["tl-farm-data", f"project:{PROJECT}", "Service"] in rows
    assert ["tl-open-data", "public", "Service"] in rows
