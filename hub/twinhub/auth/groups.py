"""Hub group names of Keycloak's groups and realm roles (the hub side's one spelling)."""

from __future__ import annotations

ROLE_GROUP_PREFIX = "realm-role:"


def hub_group(path: str) -> str:
    """JupyterHub group for a Keycloak group path: '/projects/climate-adaptation' ->
    'projects:climate-adaptation' (hub group names are path segments of its REST API)."""
    return path.strip().strip("/").replace("/", ":")


def role_group(role: str) -> str:
    """JupyterHub group of the holders of a Keycloak realm role."""
    return ROLE_GROUP_PREFIX + role
