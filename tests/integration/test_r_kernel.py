"""The R kernel beside Python in the real embedded platform (issue 13's check): a user server
lists both kernels, starts IRkernel through its REST API, runs R cells over the websocket,
reports R errors as errors; in multi-user mode, as the user's own OS account, which installs
a package into its own library in its home (docs/kernels.md)."""

from __future__ import annotations

import os
import pwd
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests

from tests.helpers.kernel import KernelError, execute, shutdown_kernel, start_kernel
from tests.helpers.platform import Platform

# A hung cell fails in minutes, not at the suite's 10-minute limit.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# The OS-account prefix of the session platform (tests/helpers/platform.py).
PREFIX = os.environ.get("TWINHUB_TEST_USER_PREFIX") or "twin-"
# A package made and installed in the test, from source: CRAN cannot be reached here.
PACKAGE = """
d <- file.path(tempdir(), "twinhubdemo"); dir.create(file.path(d, "R"), recursive = TRUE)
writeLines(c("Package: twinhubdemo", "Version: 0.1", "Title: Demo", "Description: A demo.",
             "License: MIT", "Author: twinhub", "Maintainer: twinhub <nobody@example.org>"),
           file.path(d, "DESCRIPTION"))
writeLines("export(answer)", file.path(d, "NAMESPACE"))
writeLines("answer <- function() 6L * 7L", file.path(d, "R", "answer.R"))
install.packages(d, repos = NULL, type = "source", quiet = TRUE)
cat(find.package("twinhubdemo"))
"""


def settled(url: str, token: str, kernel: str) -> None:
    """Wait until the server no longer counts the kernel busy.

    Each execute() opens a new websocket. The server "nudges" a new connection's IOPub
    before passing it on, but not while it counts the kernel busy (jupyter_server's
    channels.py: a busy kernel is assumed connected); its count lags the kernel's own idle by
    a moment, and IRkernel answers a quick cell so fast that the not-yet-subscribed IOPub
    missed every message of one here: the cell never finished."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = requests.get(
            f"{url}api/kernels/{kernel}", headers={"Authorization": f"token {token}"}, timeout=30
        )
        r.raise_for_status()
        if r.json()["execution_state"] != "busy":
            return
        time.sleep(0.05)


def run(url: str, token: str, kernel: str, code: str, timeout: float = 60) -> str:
    """tests.helpers.kernel.execute, once the kernel has :func:`settled`."""
    settled(url, token, kernel)
    return execute(url, token, kernel, code, timeout=timeout)


@pytest.fixture(scope="module")
def personal(personal_platform: Platform) -> Iterator[tuple[str, str]]:
    """The personal platform's one user's server: its URL and the user's token."""
    p = personal_platform
    url = p.spawn("admin")
    yield url, p.token("admin")
    p.stop_server("admin")


@pytest.fixture
def r_kernel(personal: tuple[str, str]) -> Iterator[str]:
    url, token = personal
    kernel = start_kernel(url, token, "ir")
    yield kernel
    shutdown_kernel(url, token, kernel)


def test_a_server_offers_python_and_one_r(personal: tuple[str, str]) -> None:
    url, token = personal
    auth = {"Authorization": f"token {token}"}
    r = requests.get(url + "api/kernelspecs", headers=auth, timeout=30)
    r.raise_for_status()
    doc = r.json()
    specs = doc["kernelspecs"]
    assert {"python3", "ir"} <= set(specs), f"{sorted(specs)}: has scripts/setup run?"
    assert doc["default"] == "python3"
    # One R tile: no second R spec beside "ir" (twinhub's replaces Debian's by its name).
    assert [n for n, s in specs.items() if s["spec"]["language"].lower() == "r"] == ["ir"]
    ir = specs["ir"]["spec"]
    assert (ir["display_name"], ir["language"]) == ("R", "R")
    # twinhub's spec (install_jupyter_config), not Debian's system-wide one: Debian's R by
    # its absolute path, the user's library made before IRkernel starts.
    assert ir["argv"][0] == shutil.which("R") and "R_LIBS_USER" in ir["argv"][3]
    # The Launcher's R tile shows IRkernel's logo, served by the server.
    logo = requests.get(
        urljoin(url, specs["ir"]["resources"]["logo-64x64"]), headers=auth, timeout=30
    )
    assert logo.status_code == 200 and logo.headers["Content-Type"] == "image/png"


def test_an_r_kernel_runs_cells_and_reports_errors(
    personal: tuple[str, str], r_kernel: str
) -> None:
    url, token = personal
    assert run(url, token, r_kernel, "cat(sum(1:10))") == "55"
    with pytest.raises(KernelError) as err:
        run(url, token, r_kernel, 'stop("no such dataset")')
    assert err.value.ename == "ERROR" and "no such dataset" in err.value.evalue
    # The kernel lives on after an error (IRkernel shows values as display_data, which
    # execute() does not collect: print() them).
    assert run(url, token, r_kernel, "x <- 21L; print(x * 2L)") == "[1] 42\n"
    kernels = requests.get(
        url + "api/kernels", headers={"Authorization": f"token {token}"}, timeout=30
    ).json()
    assert {k["id"]: k["name"] for k in kernels}[r_kernel] == "ir"


def test_an_r_cell_can_be_interrupted(personal: tuple[str, str], r_kernel: str) -> None:
    """JupyterLab's stop button: the server signals the kernel, the cell ends, R lives on."""
    url, token = personal
    auth = {"Authorization": f"token {token}"}
    assert run(url, token, r_kernel, "cat(1)") == "1"  # IRkernel is up

    def interrupt_when_busy() -> None:
        # The running cell is what is interrupted, not an idle kernel.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = requests.get(f"{url}api/kernels/{r_kernel}", headers=auth, timeout=30)
            if r.json()["execution_state"] == "busy":
                time.sleep(0.5)
                requests.post(f"{url}api/kernels/{r_kernel}/interrupt", headers=auth, timeout=30)
                return
            time.sleep(0.1)

    settled(url, token, r_kernel)  # so that "busy" is the next cell's
    thread = threading.Thread(target=interrupt_when_busy)
    thread.start()
    t0 = time.monotonic()
    try:
        out = run(url, token, r_kernel, 'Sys.sleep(60); cat("slept")', timeout=40)
    finally:
        thread.join()
    assert out == "" and time.monotonic() - t0 < 25
    assert run(url, token, r_kernel, "cat(1 + 1)") == "2"


@pytest.mark.multiuser
def test_an_os_account_runs_r_and_installs_packages_into_its_home(
    multiuser_platform: Platform,
) -> None:
    p, name = multiuser_platform, "rkernel"
    p.add_user(name)
    url, token = p.spawn(name), p.token(name)
    home = Path(pwd.getpwnam(PREFIX + name).pw_dir)
    kernel = start_kernel(url, token, "ir")
    try:
        who = run(url, token, kernel, 'cat(Sys.info()[["effective_user"]], .libPaths()[1])')
        user, library = who.split(" ")
        assert user == PREFIX + name and Path(library).is_relative_to(home / "R")
        installed = Path(run(url, token, kernel, PACKAGE, timeout=120))
        assert installed.parent == Path(library)
        assert installed.stat().st_uid == pwd.getpwnam(PREFIX + name).pw_uid
    finally:
        shutdown_kernel(url, token, kernel)
    # A new kernel finds it: the library is the user's, kept in the home.
    kernel = start_kernel(url, token, "ir")
    try:
        assert run(url, token, kernel, "library(twinhubdemo); cat(answer())") == "42"
    finally:
        shutdown_kernel(url, token, kernel)
        p.stop_server(name)
