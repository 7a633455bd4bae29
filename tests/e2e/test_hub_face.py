"""twinhub's face in headless Chromium (Playwright) as a brand-new user of the real multi-user
platform: log in, land on /hub/home (screenshot: the platform's name, the server card, the
projects, the links), start the server with an explicit click, see it running on the home
page, stop it with the Stop button, and open the help pages from the navigation.

Screenshots go to ``$TWINHUB_SCREENSHOTS`` (tests/e2e/conftest.py) to be looked at.
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.helpers.browser import log_in

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]

USER = "facefirst"
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def browser_page(multiuser_platform, browser_context):
    return browser_context.new_page()


def test_new_user_lands_on_home_starts_with_a_click_and_finds_help(
    multiuser_platform, browser_page, shots
) -> None:
    p = multiuser_platform
    if p.api("GET", f"/users/{USER}", user="admin").status_code != 404:
        pytest.skip(f"{USER} existed before this module: its password is unknown")
    r = requests.put(
        p.url + "services/projects/api/projects/face-first",
        json={"profiles": ["small-cpu", "large-cpu"], "max_servers_per_user": 1, "cpu_hours": 500},
        headers={"Authorization": f"token {p.token('admin')}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    password = p.add_user(USER, groups=("face-first",))
    page = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    log_in(page, p.url, USER, password)
    page.wait_for_url("**/hub/home")
    assert page.title() == "twinhub"
    assert page.locator("#twinhub-logo img").evaluate("i => i.naturalWidth") > 0
    assert page.get_by_text(f"Welcome to twinhub, {USER}").is_visible()
    assert page.locator("#twinhub-server").get_attribute("data-state") == "stopped"
    assert page.locator('[data-project="face-first"]').is_visible()
    assert page.locator("#twinhub-named-servers").count() == 0
    assert page.locator('[data-service="stac"]').is_visible()
    page.screenshot(path=str(shots / "home-new-user.png"), full_page=True)
    # Nothing started by the login.
    servers = p.api("GET", f"/users/{USER}", user="admin").json()["servers"]
    assert servers == {}

    # The explicit click: Large CPU, Start.
    page.check("#home-profile-large-cpu")
    page.click("#twinhub-start")
    page.wait_for_url(f"**/user/{USER}/**", timeout=TIMEOUT_MS)
    page.goto(p.url + "hub/home")
    assert page.locator("#twinhub-server").get_attribute("data-state") == "running"
    assert page.locator("#twinhub-server-profile").inner_text() == "Large CPU"
    page.screenshot(path=str(shots / "home-running.png"), full_page=True)

    # Stop from the home page.
    page.click("#twinhub-server .twinhub-stop")
    page.wait_for_selector('#twinhub-server[data-state="stopped"]', timeout=TIMEOUT_MS)
    deadline = time.monotonic() + 30
    while p.api("GET", f"/users/{USER}", user="admin").json()["servers"]:
        assert time.monotonic() < deadline, "server still there after Stop"
        time.sleep(0.5)

    # Help from the navigation, then support.
    page.click("#twinhub-nav-help")
    page.wait_for_url("**/hub/help/")
    assert page.locator("#twinhub-help-index a", has_text="Projects and allocations").count() == 1
    page.click("#twinhub-help-index a >> text=Getting help")
    page.wait_for_url("**/hub/help/support")
    assert page.locator("#twinhub-help-body h1").inner_text() == "Getting help"
    page.screenshot(path=str(shots / "help-support.png"), full_page=True)
    assert not errors, errors


def test_admin_gives_a_user_from_the_admin_page_a_way_in(multiuser_platform, browser_page, shots):
    p = multiuser_platform
    name = "faceinvite"
    if p.api("GET", f"/users/{name}", user="admin").status_code != 404:
        pytest.skip(f"{name} existed before this module")
    page = browser_page
    page.context.clear_cookies()
    log_in(page, p.url, "admin", p.admin_password)
    page.wait_for_url("**/hub/home")
    # What the admin page's "Add Users" sends.
    r = p.api("POST", "/users", user="admin", json={"usernames": [name]})
    assert r.status_code == 201, r.text
    page.goto(p.url + "hub/admin")
    assert page.locator("#twinhub-admin-accounts").is_visible()
    page.click("#twinhub-nav-accounts")
    page.wait_for_url("**/hub/authorize")
    page.click(f'#no-way-in tr[data-user="{name}"] button')
    link = page.locator("#twinhub-link-url").input_value()
    page.screenshot(path=str(shots / "accounts-link.png"), full_page=True)

    page.context.clear_cookies()
    page.goto(link)
    page.fill("#new_password", "invited-user-password-1")
    page.fill("#new_password_confirm", "invited-user-password-1")
    page.click("#set_password_submit")
    assert page.locator("#twinhub-message").inner_text() == "Password set: you can log in now."
    page.click("text=Go to login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", "invited-user-password-1")
    page.click("[type=submit]")
    page.wait_for_url("**/hub/home")
    assert page.get_by_text(f"Welcome to twinhub, {name}").is_visible()
