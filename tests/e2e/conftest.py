"""Fixtures of the browser tests: headless Chromium (Playwright) driving the real platform.

- ``shots``: the folder screenshots go to, ``$TWINHUB_SCREENSHOTS`` or a pytest tmp dir (look
  at them: a blank page is a failure).
- ``browser_context``: one Chromium context per module (1400x1000, downloads accepted), its
  default timeout the module's ``TIMEOUT_MS``.

Uses the system Chromium (``/usr/bin/chromium``); never ``playwright install``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def shots(request, tmp_path_factory) -> Path:
    out = os.environ.get("TWINHUB_SCREENSHOTS")
    name = request.module.__name__.rsplit(".", 1)[-1]
    d = Path(out) if out else tmp_path_factory.mktemp(f"{name}-screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def browser_context(request) -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright  # only the browser tests need it

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        ctx.set_default_timeout(getattr(request.module, "TIMEOUT_MS", 90_000))
        try:
            yield ctx
        finally:
            ctx.close()
            browser.close()
