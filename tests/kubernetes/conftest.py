"""Fixtures for the chart tests: they need the real Helm 3 and Helm 4 binaries.

A test module that renders the chart opts in with
``pytestmark = pytest.mark.usefixtures("helm_binaries")``: without the binaries its tests are
skipped, saying how to get them (modules that need no Helm, e.g. evaluator unit tests, run).
"""

import pytest

from tests.helpers import helm


@pytest.fixture(scope="session")
def helm_binaries() -> dict[str, str]:
    """``{"3": path, "4": path}`` of the Helm binaries; skips when any is missing."""
    missing = helm.missing_helm()
    if missing:
        pytest.skip(
            f"Helm binaries missing ({', '.join(missing)}): run scripts/fetch-helm "
            "(scripts/setup --dev runs it)"
        )
    return {v: str(helm.helm_binary(v)) for v in helm.HELM_VERSIONS}
