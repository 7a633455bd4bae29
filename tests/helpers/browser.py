"""What the browser tests do again and again (their fixtures: tests/e2e/conftest.py)."""

from __future__ import annotations


def log_in(page, hub_url: str, user: str, password: str) -> None:
    """Log in through the hub's own login form, as a person would."""
    page.goto(hub_url + "hub/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("[type=submit]")
    page.wait_for_url(lambda u: "/hub/login" not in u)
