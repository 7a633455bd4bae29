"""A FAKE kube config for constructing KubeSpawner where there is no cluster.

KubeSpawner loads a kube config when it is constructed; this one names an address where
nothing listens and which no test calls (there is no Kubernetes API server here, and nothing
pretends to be one). What the tests exercise is KubeSpawner's and twinhub's real code.

    use_fake_kube_config(tmp_path, monkeypatch)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes_asyncio.config import kube_config

FAKE_KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "http://127.0.0.1:9"}}]
users: [{name: fake, user: {token: fake}}]
contexts: [{name: fake, context: {cluster: fake, user: fake}}]
current-context: fake
"""


def use_fake_kube_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write the fake kube config under ``tmp_path`` and make it the default one."""
    path = tmp_path / "fake-kubeconfig"
    path.write_text(FAKE_KUBECONFIG)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    return path
