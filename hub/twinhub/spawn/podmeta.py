"""Who a pod belongs to and which project pays for it, on Kubernetes: one pair of keys for
user servers' pods (:class:`twinhub.spawn.kube.TwinhubKubeSpawner`), Dask scheduler and
worker pods (:mod:`twinhub.gateway.kube`) and accounting's Prometheus backend, which reads
them through kube-state-metrics.

Labels hold label-safe slugs (KubeSpawner's escaping, as for its username label): what
selectors and NetworkPolicies match. Annotations hold the names themselves, which a label
value cannot always carry (``Ocean Science``, ``dana@example.org``): what accounting charges.
"""

from __future__ import annotations

from kubespawner.slugs import is_valid_label, safe_slug

USER_KEY = "twinhub.io/user"
PROJECT_KEY = "twinhub.io/project"


def labels(user: str, project: str | None) -> dict[str, str]:
    """The label-safe user and project labels (no project label without a project)."""
    out = {USER_KEY: safe_slug(user, is_valid=is_valid_label)}
    if project:
        out[PROJECT_KEY] = safe_slug(project, is_valid=is_valid_label)
    return out


def annotations(user: str, project: str | None) -> dict[str, str]:
    """The same keys holding the names themselves."""
    out = {USER_KEY: user}
    if project:
        out[PROJECT_KEY] = project
    return out
