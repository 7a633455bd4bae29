"""Checks of the chart's configuration that need no Helm binary: the generated parts of
values.schema.json are current, and the strict validator of tests/helpers/helm.py reports
what it must. (The dask-gateway extraConfig is executed by tests/unit/hub/test_gateway_kube.py.)"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest

from tests.helpers import helm


def test_generated_schema_parts_are_current():
    """twinhub.config sections and kubespawner_override keys in values.schema.json are
    generated from the traits (helm/twinhub/schema/gen_config_schema.py): a new or renamed
    trait makes the schema stale until it is regenerated."""
    env = dict(os.environ)
    paths = [str(helm.REPO / "hub"), str(helm.REPO / "extensions" / "twinlab")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    script = helm.CHART_DIR / "schema" / "gen_config_schema.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--check"],
        cwd=helm.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"values.schema.json is stale:\n{proc.stdout}{proc.stderr}"


def test_validate_reports_unknown_kinds_and_fields():
    """The strict validator itself: an unknown field and an unlisted custom resource are
    errors, a correct object is not, a skipped kind is the caller's word."""
    pod = {"containers": [{"name": "c", "image": "busybox"}]}
    good = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod}
    bad = copy.deepcopy(good)
    bad["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    custom = {"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w"}}
    for version in ("1.31", "1.34"):
        assert helm.validate([good], version) == []
        errors = helm.validate([bad, custom], version)
        assert any("imagePullPolicyy" in e for e in errors), errors
        assert any(e.startswith("not validated: Widget/w") for e in errors), errors
        assert helm.validate([custom], version, skip_kinds={"Widget"}) == []
    with pytest.raises(ValueError, match="1.2"):
        helm.validate([good], "1.2")
