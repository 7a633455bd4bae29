"""The checks behind tests/kubernetes/test_subchart_values.py: documented subchart keys
(the ``.keys`` files beside this module), keycloakx's templated strings, and the Secrets and
ConfigMaps that subchart values refer to. Pure functions of values and files: no Helm."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

SUBCHART_DIR = Path(__file__).parent

# keys CloudNativePG writes into the ``<cluster>-app`` Secret (pkg/specs/secrets.go, 1.30)
CNPG_APP_SECRET_KEYS = frozenset(
    [
        "username",
        "user",
        "password",
        "dbname",
        "host",
        "port",
        "pgpass",
        "uri",
        "jdbc-uri",
        "fqdn-uri",
        "fqdn-jdbc-uri",
    ]
)


def load_keys(path: Path) -> list[tuple[str, ...]]:
    """The key patterns of a ``.keys`` file, split into segments (``[]`` markers dropped)."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [tuple(line.removesuffix("[]").split(".")) for line in lines if line and line[0] != "#"]


def _segments_match(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    return all(p == "*" or p == s for p, s in zip(pattern, path, strict=False))


def documented(path: tuple[str, ...], patterns: list[tuple[str, ...]]) -> bool:
    """Whether the value at ``path`` (a leaf: scalar, list, empty map) is documented.

    A pattern ending in ``*`` is a free-form map: anything at any depth below it. Otherwise the
    path must be the pattern itself, or a map on the way to it (an empty ``hub.image: {}``).
    """
    for pattern in patterns:
        if pattern[-1] == "*":
            if len(path) >= len(pattern) - 1 and _segments_match(pattern[:-1], path):
                return True
        elif len(path) <= len(pattern) and _segments_match(pattern, path):
            return True
    return False


def leaf_paths(values: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of the leaves of a values tree; lists and empty maps are leaves."""
    if isinstance(values, dict) and values:
        out: list[tuple[str, ...]] = []
        for key, child in values.items():
            out += leaf_paths(child, (*prefix, str(key)))
        return out
    return [prefix]


def dependencies(chart_dir: Path) -> dict[str, dict]:
    """The chart's Chart.yaml ``dependencies`` by chart name."""
    meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    return {dep["name"]: dep for dep in meta.get("dependencies") or []}


def keys_file(chart: str, version: str) -> Path:
    """The documented-keys list of ``chart`` at ``version`` (it may not exist)."""
    return SUBCHART_DIR / f"{chart}-{version}.keys"


def helm_owned_keys(dep: dict) -> list[tuple[str, ...]]:
    """Keys Helm itself reads in a subchart's section: ``global`` and the condition path."""
    keys = [("global", "*")]
    for condition in str(dep.get("condition") or "").split(","):
        parts = condition.strip().split(".")
        if len(parts) > 1 and parts[0] == dep.get("alias", dep["name"]):
            keys.append(tuple(parts[1:]))
    return keys


def undocumented_keys(values: dict, dep: dict) -> list[str]:
    """The key paths under the section of dependency ``dep`` (a Chart.yaml entry) that its
    pinned version does not document."""
    chart = dep["name"]
    patterns = load_keys(keys_file(chart, str(dep["version"]))) + helm_owned_keys(dep)
    section = values.get(dep.get("alias", chart)) or {}
    return [".".join((chart, *p)) for p in leaf_paths(section) if not documented(p, patterns)]


# keycloakx 7.1.11 passes these through ``tpl``: they must be YAML *strings* (its templates
# and values.schema.json say so); a list there fails only when the real subchart renders.
KEYCLOAKX_TEMPLATED = {
    "extraEnv": list,
    "extraEnvFrom": list,
    "extraVolumes": list,
    "extraVolumeMounts": list,
    "extraInitContainers": list,
    "extraContainers": list,
    "volumeClaimTemplates": list,
    "affinity": dict,
    "lifecycleHooks": dict,
    "livenessProbe": dict,
    "readinessProbe": dict,
    "startupProbe": dict,
}


def keycloakx_type_errors(values: dict) -> list[str]:
    """keycloakx values given with the wrong type, or as strings that are not the YAML wanted."""
    section = values.get("keycloakx") or {}
    errors = []
    for key, parsed_type in KEYCLOAKX_TEMPLATED.items():
        value = section.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str):
            errors.append(f"keycloakx.{key}: a {type(value).__name__}, not a string")
        elif "{{" not in value:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                errors.append(f"keycloakx.{key}: not YAML ({exc.__class__.__name__})")
                continue
            if not isinstance(parsed, parsed_type):
                errors.append(f"keycloakx.{key}: YAML of a {type(parsed).__name__}")
    for key in ("command", "args"):
        if not isinstance(section.get(key, []), list):
            errors.append(f"keycloakx.{key}: must be a list")
    return errors


# ``kubectl ... create secret generic NAME --from-literal=KEY=...`` in a profile's comments:
# the Secrets that profile tells the operator to make before installing
_KUBECTL_SECRET = re.compile(
    r"kubectl\b[^\n]*?create secret generic (\S+)((?:\s+--from-literal=[^=\s]+=\S*)+)"
)
_FROM_LITERAL = re.compile(r"--from-literal=([^=\s]+)=")


def precreated_secrets(path: Path) -> dict[str, set[str]]:
    """Secret name -> keys, of the Secrets a values file's comments say to create first."""
    text = re.sub(r"\\\n\s*#", " ", path.read_text())  # join continued comment lines
    return {m[1]: set(_FROM_LITERAL.findall(m[2])) for m in _KUBECTL_SECRET.finditer(text)}


def refs(obj: object):
    """(kind, name, key or None) of every Secret/ConfigMap an env or volume spec refers to."""
    if isinstance(obj, dict):
        for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            if isinstance(obj.get(field), dict) and not obj[field].get("optional"):
                yield kind, obj[field].get("name"), obj[field].get("key")
        for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
            if isinstance(obj.get(field), dict) and not obj[field].get("optional"):
                yield kind, obj[field].get("name"), None
        for field, kind in (("secret", "Secret"), ("configMap", "ConfigMap")):
            source = obj.get(field)
            # an optional source may be missing (Kubernetes then mounts/sets nothing)
            if isinstance(source, dict) and not source.get("optional"):
                name = source.get("name") or source.get("secretName")
                items = source.get("items") or [{}]
                for item in items:
                    yield kind, name, item.get("key")
        for child in obj.values():
            yield from refs(child)
    elif isinstance(obj, list):
        for child in obj:
            yield from refs(child)


def enabled(values: dict, dep: dict) -> bool:
    """Whether Helm renders a subchart: its ``condition`` (first path that is set) or true."""
    for condition in str(dep.get("condition") or "").split(","):
        node: object = values
        for part in condition.strip().split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, bool):
            return node
    return True


def subchart_references(values: dict, deps: dict[str, dict]) -> list[tuple]:
    """(kind, name, key, where) of the Secrets/ConfigMaps the subchart values refer to
    (subcharts switched off by their Chart.yaml condition, in ``deps``, are left out)."""
    values = {
        name: section if enabled(values, deps.get(name, {"name": name})) else {}
        for name, section in values.items()
    }
    out = [(*ref, "jupyterhub") for ref in refs(values.get("jupyterhub") or {})]
    gateway = (values.get("dask-gateway") or {}).get("gateway") or {}
    auth = gateway.get("auth") or {}
    hub_auth = auth.get("jupyterhub") or {}
    if auth.get("type") == "jupyterhub" and not hub_auth.get("apiToken"):
        # the chart's defaults when unset (dask-gateway values.yaml)
        name = hub_auth.get("apiTokenFromSecretName") or "hub"
        key = hub_auth.get("apiTokenFromSecretKey") or "hub.services.dask-gateway.apiToken"
        out.append(("Secret", name, key, "dask-gateway.gateway.auth.jupyterhub"))
    keycloak = values.get("keycloakx") or {}
    database = keycloak.get("database") or {}
    if database.get("existingSecret"):
        key = database.get("existingSecretKey") or "password"
        out.append(("Secret", database["existingSecret"], key, "keycloakx.database"))
    for field in ("extraEnv", "extraEnvFrom", "extraVolumes"):
        text = keycloak.get(field) or ""
        # templated strings (``{{ }}``) are the subchart's business; plain YAML is read here
        if isinstance(text, str) and text and "{{" not in text:
            out += [(*ref, f"keycloakx.{field}") for ref in refs(yaml.safe_load(text))]
    return out
