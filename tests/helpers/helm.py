"""Render, lint and validate the twinhub Helm chart (``helm/twinhub``) with real Helm binaries.

    from tests.helpers import helm
    objects = helm.render("production", helm="4", extra={"twinhub": {"publicUrl": "https://x"}})
    hub_cm = helm.find(objects, "ConfigMap", "twinhub-runtime")
    assert helm.validate(objects, "1.34", skip_kinds={"Cluster"}) == []

Helm 3 and Helm 4 are the official binaries that ``scripts/fetch-helm`` puts under
``.tools/helm3/helm`` and ``.tools/helm4/helm``. The chart's subcharts (z2jh, dask-gateway,
keycloakx, CloudNativePG) cannot be downloaded here (no chart repository is reachable), so
every helm command runs on a copy of the chart whose ``Chart.yaml`` has no ``dependencies``:
what is rendered is twinhub's own templates only, with the full values (subchart sections
included) still checked by ``values.schema.json``.
"""

from __future__ import annotations

import atexit
import copy
import functools
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "twinhub"
HELM_VERSIONS = ("3", "4")
PROFILES = ("default", "minimal", "gpu", "production")


class HelmError(RuntimeError):
    """A helm command failed; ``stderr`` is what helm said."""

    def __init__(self, args: list[str], returncode: int, stdout: str, stderr: str):
        super().__init__(f"{' '.join(args)} exited {returncode}:\n{stderr.strip()}")
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def helm_binary(helm: str = "3") -> Path:
    """Path of the Helm ``helm`` ("3" or "4") binary (it may not exist: see ``missing_helm``)."""
    if helm not in HELM_VERSIONS:
        raise ValueError(f"helm must be one of {HELM_VERSIONS}, not {helm!r}")
    return REPO / ".tools" / f"helm{helm}" / "helm"


def missing_helm() -> list[str]:
    """The helm binaries that are not there (``scripts/fetch-helm`` fetches them)."""
    return [str(helm_binary(v)) for v in HELM_VERSIONS if not helm_binary(v).is_file()]


def _profile_file(profile: str) -> Path | None:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, not {profile!r}")
    return None if profile == "default" else CHART_DIR / "values" / f"{profile}.yaml"


def _load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def merge_values(base: dict, override: dict) -> dict:
    """``override`` merged onto a copy of ``base`` the way Helm coalesces values files: maps
    merge key by key, anything else (lists included) is replaced, and a null deletes the key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def chart_values(profile: str = "default", extra: dict | None = None) -> dict:
    """The chart's values.yaml merged with ``values/<profile>.yaml`` and then ``extra``."""
    values = _load_yaml(CHART_DIR / "values.yaml")
    profile_file = _profile_file(profile)
    if profile_file is not None:
        values = merge_values(values, _load_yaml(profile_file))
    return merge_values(values, extra or {})


@functools.cache
def stripped_chart() -> Path:
    """A copy of the chart (made once per process) without subchart dependencies."""
    if not (CHART_DIR / "Chart.yaml").is_file():
        raise FileNotFoundError(f"no chart at {CHART_DIR}")
    workdir = Path(tempfile.mkdtemp(prefix="twinhub-chart-"))
    atexit.register(shutil.rmtree, workdir, True)
    # helm requires the directory to carry the chart's name
    chart = workdir / CHART_DIR.name
    shutil.copytree(CHART_DIR, chart, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    meta = _load_yaml(chart / "Chart.yaml")
    meta.pop("dependencies", None)
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return chart


def _freeze(value: Any) -> Any:
    """A hashable, order-independent key for a values dict (for the render cache)."""
    return json.dumps(value, sort_keys=True, default=str)


def _values_args(profile: str, extra: dict | None, workdir: Path) -> list[str]:
    args = []
    profile_file = _profile_file(profile)
    if profile_file is not None:
        args += ["-f", str(stripped_chart() / "values" / profile_file.name)]
    if extra:
        extra_file = workdir / "extra.yaml"
        extra_file.write_text(yaml.safe_dump(extra))
        args += ["-f", str(extra_file)]
    return args


def run_helm(helm: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run the Helm ``helm`` binary with ``args``; raise :class:`HelmError` when it fails."""
    cmd = [str(helm_binary(helm)), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise HelmError(cmd, proc.returncode, proc.stdout, proc.stderr)
    return proc


@functools.cache
def _render_text(profile: str, helm: str, extra_key: str, release: str, namespace: str) -> str:
    extra = json.loads(extra_key)
    with tempfile.TemporaryDirectory(prefix="twinhub-values-") as tmp:
        args = ["template", release, str(stripped_chart()), "--namespace", namespace]
        args += _values_args(profile, extra, Path(tmp))
        return run_helm(helm, args).stdout


def render(
    profile: str = "default",
    helm: str = "3",
    extra: dict | None = None,
    release: str = "twinhub",
    namespace: str = "twinhub",
) -> list[dict]:
    """``helm template`` of the stripped chart (no subcharts, see the module docstring) with
    ``values/<profile>.yaml`` and ``extra`` as values files; the parsed objects (empty
    documents dropped). Successful renders are cached per process: each call gets fresh
    copies, so callers may modify what they get."""
    text = _render_text(profile, helm, _freeze(extra or {}), release, namespace)
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


@functools.cache
def _values_chart() -> Path:
    """A copy of the stripped chart whose only template prints the computed values."""
    chart = Path(tempfile.mkdtemp(prefix="twinhub-values-chart-")) / CHART_DIR.name
    atexit.register(shutil.rmtree, chart.parent, True)
    shutil.copytree(stripped_chart(), chart, ignore=shutil.ignore_patterns("templates"))
    (chart / "templates").mkdir()
    (chart / "templates" / "values.json").write_text("{{ toJson .Values }}\n")
    return chart


def helm_values(profile: str = "default", helm: str = "3", extra: dict | None = None) -> dict:
    """The values as Helm itself computes them for the profile and ``extra`` (the chart's
    templates replaced by one that prints ``.Values``): the reference for ``chart_values``."""
    with tempfile.TemporaryDirectory(prefix="twinhub-values-") as tmp:
        args = ["template", "twinhub", str(_values_chart())]
        args += _values_args(profile, extra, Path(tmp))
        out = run_helm(helm, args).stdout.splitlines()
        return json.loads("\n".join(line for line in out if not line.startswith(("---", "#"))))


def lint(profile: str = "default", helm: str = "3", extra: dict | None = None) -> str:
    """``helm lint --strict`` of the stripped chart with the profile's values; helm's output."""
    with tempfile.TemporaryDirectory(prefix="twinhub-values-") as tmp:
        args = ["lint", "--strict", str(stripped_chart()), *_values_args(profile, extra, Path(tmp))]
        return run_helm(helm, args).stdout


def find(objects: list[dict], kind: str, name: str) -> dict:
    """The object of ``kind`` named ``name``; KeyError naming it and what there is otherwise."""
    for obj in objects:
        if obj.get("kind") == kind and obj.get("metadata", {}).get("name") == name:
            return obj
    have = sorted(f"{o.get('kind')}/{o.get('metadata', {}).get('name')}" for o in objects)
    raise KeyError(f"no {kind} named {name!r} among the rendered objects: {', '.join(have)}")


# -- kubernetes-validate (strict): the OpenAPI schemas of each Kubernetes release ---------------


def k8s_versions() -> list[str]:
    """The Kubernetes versions (major.minor) whose schemas kubernetes-validate ships."""
    return sorted({kv_utils.major_minor(v) for v in kv_utils.all_versions()}, key=_version_key)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@functools.cache
def _registry(version: str) -> Registry:
    defs = kv_utils.schema_contents(
        f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json", version
    )
    return Resource.from_contents(defs) @ Registry()


@functools.cache
def _validator(version: str, kind: str, api_version: str) -> jsonschema.Validator | None:
    """A strict validator for one kind (None when there is no schema), cached because loading
    a schema and its 1.5 MB of definitions is what makes validation slow."""
    # the file naming kubernetes-validate uses: networking.k8s.io/v1 -> networking-v1
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    name = f"kubernetes-json-schema/v{version}.0-local-strict/{kind.lower()}-{api}.json"
    try:
        schema = kv_utils.schema_contents(name, version)
    except FileNotFoundError:
        return None
    registry = Resource.from_contents(schema) @ _registry(version)
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def validate(
    objects: list[dict], k8s_version: str, skip_kinds: frozenset | set = frozenset()
) -> list[str]:
    """Errors (strings) of ``objects`` against Kubernetes ``k8s_version`` (major.minor, one
    that kubernetes-validate ships) in strict mode: unknown fields are errors. A kind with
    no schema there (custom resources) is an error "not validated: ..." unless it is in
    ``skip_kinds``: nothing passes unchecked without the caller saying so."""
    version = kv_utils.major_minor(k8s_version.removeprefix("v"))
    if version not in k8s_versions():
        raise ValueError(f"kubernetes-validate ships no schemas for {version}: {k8s_versions()}")
    errors = []
    for obj in objects:
        kind, api_version = obj.get("kind", ""), obj.get("apiVersion", "")
        where = f"{kind}/{obj.get('metadata', {}).get('name')}"
        if kind in skip_kinds:
            continue
        validator = _validator(version, kind, api_version)
        if validator is None:
            errors.append(f"not validated: {where} ({api_version} has no schema in {version})")
            continue
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path))):
            path = ".".join(str(p) for p in err.path)
            errors.append(f"{where} ({version}): {path}: {err.message}")
    return errors
