"""The twinhub chart (twinhub's own templates; the subcharts cannot be downloaded here, see
tests/helpers/helm.py) rendered with the real Helm 3 and Helm 4 for every value profile:
rendering, Kubernetes schema validation (strict), ``helm lint --strict``, values.schema.json,
production rules (PDBs, resources, probes, security contexts) and secrets hygiene.

Custom resources have no schema in kubernetes-validate: ``CUSTOM_KINDS`` lists them and which
test validates them against their operator's CRD instead.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import json
import re

import pytest

from tests.helpers import helm

pytestmark = pytest.mark.usefixtures("helm_binaries")

# Kubernetes versions validated against (both shipped by kubernetes-validate 1.37.0, which
# has 1.25 to 1.37): the oldest and a recent minor that current managed clusters run.
K8S_VERSIONS = ("1.31", "1.34")

# kind -> (apiVersion, where it is validated instead): not validated by kubernetes-validate.
CUSTOM_KINDS = {
    "Cluster": ("postgresql.cnpg.io/v1", "against CloudNativePG's CRD (test_subchart_values)"),
}

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
PINNED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
SELECTOR_LABELS = PINNED_LABELS[:3]

# Mappings under twinhub: whose keys are data (label names, resource names, env names,
# KubeSpawner traits, Kubernetes objects checked after rendering by kubernetes-validate),
# not names of the chart's own options: a new key there is legitimate, so the misspelt-key
# walk leaves them out. Dotted paths; "[]" stands for a list item; fnmatch patterns.
FREE_FORM = (
    "*.nodeSelector",
    "*.resources.requests",
    "*.resources.limits",
    "*.tolerations[]*",
    "*.annotations",
    "*.labels",
    "twinhub.profiles[].env",
    "twinhub.profiles[].kubespawner_override.*",  # trait values (its keys are checked)
    "twinhub.networkPolicy.*Egress[]*",  # s3Egress, upstreamEgress, databaseEgress...
    "twinhub.config.*.*",
)


def _key(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _pod_spec(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def _pod_labels(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return obj["spec"]["template"]["metadata"].get("labels", {})


def _workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def _secret_values(obj: dict) -> dict[str, str]:
    """A Secret's data (decoded) and stringData, by key."""
    out = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    out.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
    return out


# -- rendering -----------------------------------------------------------------------------------


@pytest.mark.parametrize("helm_version", helm.HELM_VERSIONS)
@pytest.mark.parametrize("profile", helm.PROFILES)
def test_profile_renders(profile, helm_version):
    objects = helm.render(profile, helm=helm_version)
    keys = [_key(o) for o in objects]
    assert keys, f"{profile} rendered no objects"
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicates, f"objects rendered twice (the later one would win): {duplicates}"
    for obj in objects:
        namespace = obj["metadata"].get("namespace")
        if namespace == "twinhub-jobs":
            # the processing job namespace's own objects (test_processing_chart.py)
            component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
            assert component in ("processing", "processing-jobs"), _key(obj)
            continue
        assert namespace in (None, "twinhub"), _key(obj)


def _normalised(objects: list[dict]) -> dict:
    """Objects by (kind, name) with what each render generates anew masked: generated Secret
    values and the checksums of them in pod annotations."""
    out = {}
    for obj in copy.deepcopy(objects):
        if obj["kind"] == "Secret":
            for field in ("data", "stringData"):
                obj[field] = {k: "<generated>" for k in obj.get(field) or {}}
        for meta in [obj["metadata"]] + (
            [obj["spec"]["template"]["metadata"]] if obj["kind"] in WORKLOAD_KINDS[:3] else []
        ):
            for name in meta.get("annotations") or {}:
                if name.startswith("checksum/"):
                    meta["annotations"][name] = "<checksum>"
        out[_key(obj)] = obj
    return out


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_helm3_and_helm4_render_the_same(profile):
    three = _normalised(helm.render(profile, helm="3"))
    four = _normalised(helm.render(profile, helm="4"))
    assert sorted(three) == sorted(four)
    differ = [k for k in three if three[k] != four[k]]
    assert not differ, f"Helm 3 and Helm 4 render these differently: {differ}"


@pytest.mark.parametrize("helm_version", helm.HELM_VERSIONS)
@pytest.mark.parametrize("profile", helm.PROFILES)
def test_chart_values_merges_as_helm_does(profile, helm_version):
    """helm.chart_values (what tests reason about) equals the values Helm computes: maps
    merged, lists replaced, a null deleting the key."""
    first_profile = helm.chart_values(profile)["twinhub"]["profiles"][:1]
    extra = {
        "twinhub": {
            "publicUrl": "https://twinhub.example.org",
            "profiles": first_profile,
            "services": {"cache": {"replicas": 3}},
        },
        "keycloakx": {"args": None},
    }
    merged = helm.chart_values(profile, extra)
    assert "args" not in merged["keycloakx"] and merged["twinhub"]["profiles"] == first_profile
    assert merged == helm.helm_values(profile, helm=helm_version, extra=extra)


def test_pinned_labels_and_fixed_names():
    """Every object carries the pinned labels; names do not depend on the release name (one
    release per namespace, fixed names like z2jh's) while the instance label does."""
    for profile in helm.PROFILES:
        for obj in helm.render(profile):
            labels = obj["metadata"].get("labels") or {}
            missing = [k for k in PINNED_LABELS if k not in labels]
            assert not missing, f"{profile}: {_key(obj)} lacks labels {missing}"
            assert labels["app.kubernetes.io/name"] == "twinhub", _key(obj)
            assert labels["app.kubernetes.io/instance"] == "twinhub", _key(obj)
            if obj["kind"] in ("Deployment", "StatefulSet"):
                selector = obj["spec"]["selector"]["matchLabels"]
                assert sorted(selector) == sorted(SELECTOR_LABELS), _key(obj)
                pod = _pod_labels(obj)
                assert all(pod.get(k) == v for k, v in selector.items()), _key(obj)
    other = helm.render("default", release="other")
    assert sorted(map(_key, other)) == sorted(map(_key, helm.render("default")))
    assert {o["metadata"]["labels"]["app.kubernetes.io/instance"] for o in other} == {"other"}


# -- Kubernetes schemas ----------------------------------------------------------------------------


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("profile", helm.PROFILES)
def test_objects_validate_strictly(profile, k8s_version):
    objects = helm.render(profile)
    errors = helm.validate(objects, k8s_version, skip_kinds=set(CUSTOM_KINDS))
    assert not errors, "\n".join(errors)
    # what was skipped is exactly the listed custom resources, with their apiVersion
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            assert obj["apiVersion"] == CUSTOM_KINDS[obj["kind"]][0], _key(obj)


# -- helm lint -----------------------------------------------------------------------------------


@pytest.mark.parametrize("helm_version", helm.HELM_VERSIONS)
@pytest.mark.parametrize("profile", helm.PROFILES)
def test_lint_strict(profile, helm_version):
    out = helm.lint(profile, helm=helm_version)
    assert "0 chart(s) failed" in out, out


# -- values.schema.json ----------------------------------------------------------------------------


def _dotted(path: tuple) -> str:
    return "".join("[]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _mappings(value, path=()):
    """(path, mapping) of every mapping in a values tree, lists' items included."""
    if isinstance(value, dict):
        yield path, value
        for key, child in value.items():
            yield from _mappings(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _mappings(child, (*path, i))


def _extra_inserting(values: dict, path: tuple, key: str) -> dict:
    """Values (for an extra file) that add ``key`` in the mapping at ``path`` and change nothing
    else: maps down to the first list, then that whole list (Helm replaces lists)."""
    extra: dict = {}
    here_extra, here_values = extra, values
    for i, step in enumerate(path):
        if isinstance(here_values[step], list):
            whole = copy.deepcopy(here_values[step])
            target = whole
            for inner in path[i + 1 :]:
                target = target[inner]
            target[key] = "x"
            here_extra[step] = whole
            return extra
        here_extra = here_extra.setdefault(step, {})
        here_values = here_values[step]
    here_extra[key] = "x"
    return extra


def _misspelt_cases() -> list[tuple[str, tuple, str]]:
    """(profile, path, misspelt key) for every option mapping under twinhub: in the values
    of any profile (each path once, from the first profile that has it)."""
    cases, seen = [], set()
    for profile in helm.PROFILES:
        values = helm.chart_values(profile)
        for path, mapping in _mappings(values["twinhub"], ("twinhub",)):
            dotted = _dotted(path)
            if dotted in seen or any(fnmatch.fnmatchcase(dotted, p) for p in FREE_FORM):
                continue
            seen.add(dotted)
            base = next(iter(mapping), path[-1] if isinstance(path[-1], str) else "item")
            cases.append((profile, path, f"{base}x"))
    return cases


@pytest.mark.parametrize("helm_version", helm.HELM_VERSIONS)
def test_schema_rejects_a_misspelt_key_at_every_level(helm_version):
    cases = _misspelt_cases()
    assert len(cases) > 10, cases  # the walk found the option tree
    accepted = []
    for profile, path, key in cases:
        extra = _extra_inserting(helm.chart_values(profile), path, key)
        try:
            helm.render(profile, helm=helm_version, extra=extra)
        except helm.HelmError as e:
            if key not in e.stderr:
                accepted.append(f"{_dotted(path)}.{key} ({profile}): failed without naming it: {e}")
        else:
            accepted.append(f"{_dotted(path)}.{key} ({profile}): accepted")
    assert not accepted, "\n".join(accepted)


BAD_VALUES = [
    # (what is wrong, extra values, the name the error must mention)
    ("unknown top-level key", {"twinhubx": {}}, "twinhubx"),
    ("replicas a string", {"twinhub": {"services": {"stac": {"replicas": "two"}}}}, "replicas"),
    ("replicas zero", {"twinhub": {"services": {"cache": {"replicas": 0}}}}, "replicas"),
    ("enabled a string", {"twinhub": {"networkPolicy": {"enabled": "yes"}}}, "enabled"),
    (
        "pullPolicy not an enum value",
        {"twinhub": {"image": {"pullPolicy": "Sometimes"}}},
        "pullPolicy",
    ),
    ("profiles not a list", {"twinhub": {"profiles": "gpu"}}, "profiles"),
    (
        "SMTP port out of range",
        {"twinhub": {"services": {"desk": {"smtp": {"port": 70000}}}}},
        "port",
    ),
    (
        "registryEgress peer not a peer",
        {"twinhub": {"networkPolicy": {"registryEgress": [{"cidr": "10.0.0.0/8"}]}}},
        "cidr",
    ),
    ("smtpEgress not a list", {"twinhub": {"networkPolicy": {"smtpEgress": "mail"}}}, "smtpEgress"),
    ("publicUrl a number", {"twinhub": {"publicUrl": 8080}}, "publicUrl"),
    ("unknown config section", {"twinhub": {"config": {"TwinhubProjectz": {}}}}, "TwinhubProjectz"),
    (
        "misspelt config trait",
        {"twinhub": {"config": {"TwinhubProjects": {"enabledd": True}}}},
        "enabledd",
    ),
]


@pytest.mark.parametrize("helm_version", helm.HELM_VERSIONS)
@pytest.mark.parametrize(("what", "extra", "named"), BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_schema_rejects_bad_values(what, extra, named, helm_version):
    with pytest.raises(helm.HelmError) as caught:
        helm.render("default", helm=helm_version, extra=extra)
    assert named in caught.value.stderr, caught.value.stderr


@pytest.mark.parametrize("helm_version", helm.HELM_VERSIONS)
def test_schema_accepts_twinhub_config(helm_version):
    """The positive control of the config checks above: a real section and trait pass."""
    extra = {"twinhub": {"config": {"TwinhubProjects": {"enabled": True}}}}
    assert helm.render("default", helm=helm_version, extra=extra)


# -- production rules: PDBs, resources, probes, security contexts ----------------------------------


def _effective(pod_ctx: dict, ctr_ctx: dict, key: str):
    return ctr_ctx.get(key, pod_ctx.get(key))


def _container_problems(obj: dict) -> list[str]:
    spec = _pod_spec(obj)
    pod_ctx = spec.get("securityContext") or {}
    problems = []
    containers = [(c, False) for c in spec.get("containers", [])]
    containers += [(c, True) for c in spec.get("initContainers") or []]
    for ctr, is_init in containers:
        where = f"{obj['kind']}/{obj['metadata']['name']} container {ctr['name']}"
        ctx = ctr.get("securityContext") or {}
        resources = ctr.get("resources") or {}
        for part in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(part) or {})
            if missing:
                problems.append(f"{where}: resources.{part} lacks {sorted(missing)}")
        if not is_init:
            for probe in ("livenessProbe", "readinessProbe"):
                if not ctr.get(probe):
                    problems.append(f"{where}: no {probe}")
        if _effective(pod_ctx, ctx, "runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if _effective(pod_ctx, ctx, "runAsUser") == 0:
            problems.append(f"{where}: runs as uid 0")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if ctx.get("privileged"):
            problems.append(f"{where}: privileged")
        if ctx.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if "ALL" not in ((ctx.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{where}: capabilities do not drop ALL")
        seccomp = _effective(pod_ctx, ctx, "seccompProfile") or {}
        if seccomp.get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
    return problems


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_every_container_has_resources_probes_and_a_locked_down_context(profile):
    """Every pod rendered here is twinhub's (the subcharts are not rendered), so every one
    gets the full rules: requests and limits, probes, non-root, read-only root filesystem,
    no privilege escalation, no capabilities, RuntimeDefault seccomp."""
    workloads = _workloads(helm.render(profile))
    assert workloads, f"{profile} renders no workloads"
    problems = [p for obj in workloads for p in _container_problems(obj)]
    assert not problems, "\n".join(problems)


def _pdbs_for(objects: list[dict], obj: dict) -> list[dict]:
    labels = _pod_labels(obj)
    return [
        pdb
        for pdb in objects
        if pdb["kind"] == "PodDisruptionBudget"
        and all(
            labels.get(k) == v
            for k, v in (pdb["spec"].get("selector", {}).get("matchLabels") or {}).items()
        )
    ]


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_pod_disruption_budgets_exactly_where_replicated(profile):
    objects = helm.render(profile)
    replicated = []
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pdbs = _pdbs_for(objects, obj)
        if obj["spec"].get("replicas", 1) > 1:
            replicated.append(obj)
            assert len(pdbs) == 1, f"{_key(obj)} has {len(pdbs)} PodDisruptionBudgets"
            spec = pdbs[0]["spec"]
            assert "minAvailable" in spec or "maxUnavailable" in spec, _key(pdbs[0])
        else:
            # minAvailable 1 over a single replica would block every node drain
            assert not pdbs, f"{_key(obj)} has one replica but a PodDisruptionBudget"
    if profile == "production":
        services = [o for o in replicated if o["metadata"]["name"].startswith("twinhub-")]
        assert services, "production runs no twinhub service with more than one replica"


# -- secrets hygiene -----------------------------------------------------------------------------

_SECRET_KEY = re.compile(r"(password|passwd|secret|token|credentials?|api_?key|access_?key)$", re.I)
_PLACEHOLDER = re.compile(r"^\$\{[A-Z0-9_]+\}$")
DEV_SECRETS = ("twinhub-dev-secret-change-me",)
# Keys of Secrets that hold names, not secrets (kubernetes.io/basic-auth's username).
NOT_SECRET_KEYS = {"username"}


def _secrets(objects: list[dict]) -> dict[tuple, dict[str, str]]:
    """Decoded values of every Secret by (kind, name) and key, minus NOT_SECRET_KEYS."""
    return {
        _key(o): {k: v for k, v in _secret_values(o).items() if k not in NOT_SECRET_KEYS}
        for o in objects
        if o["kind"] == "Secret"
    }


def _generated(profile: str) -> list[str]:
    """The Secret values that differ between Helm 3's and Helm 4's renders of ``profile``:
    the ones the chart generates (each render anew, as ``lookup`` finds no cluster)."""
    three, four = _secrets(helm.render(profile, helm="3")), _secrets(helm.render(profile, helm="4"))
    return [v for key, data in three.items() for k, v in data.items() if four[key].get(k) != v]


def _secret_like(value, path=""):
    """Paths of non-empty strings under keys named like secrets in a JSON document (an
    environment placeholder such as ${KEYCLOAK_TWINHUB_CLIENT_SECRET} is not a secret)."""
    if isinstance(value, dict):
        for key, child in value.items():
            here = f"{path}.{key}"
            if (
                isinstance(child, str)
                and child
                and _SECRET_KEY.search(str(key).replace("-", "_"))
                and not _PLACEHOLDER.match(child)
            ):
                yield here
            yield from _secret_like(child, here)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _secret_like(child, f"{path}[{i}]")


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_no_plain_text_secret_in_configmaps(profile):
    configmaps = [o for o in helm.render(profile) if o["kind"] == "ConfigMap"]
    assert any(o["metadata"]["name"] == "twinhub-runtime" for o in configmaps)
    generated = _generated(profile)
    problems = []
    for cm in configmaps:
        for name, text in (cm.get("data") or {}).items():
            where = f"ConfigMap/{cm['metadata']['name']} {name}"
            try:
                document = json.loads(text)
            except ValueError:
                document = None
            problems += [f"{where}: {p}" for p in _secret_like(document)]
            problems += [f"{where}: the dev secret {s!r}" for s in DEV_SECRETS if s in text]
            problems += [f"{where}: a generated Secret value" for v in generated if v in text]
    assert not problems, "\n".join(problems)


def _string_leaves(value):
    if isinstance(value, dict):
        for child in value.values():
            yield from _string_leaves(child)
    elif isinstance(value, list):
        for child in value:
            yield from _string_leaves(child)
    elif isinstance(value, str) and value:
        yield value


def test_default_secrets_are_generated_not_from_values():
    """By default the chart's Secrets hold generated values: none equals a string of the
    values, and each differs between two independent renders (Helm 3's and Helm 4's)."""
    leaves = set(_string_leaves(helm.chart_values("default")))
    secrets = _secrets(helm.render("default", helm="3"))
    generated = set(_generated("default"))
    assert ("Secret", "twinhub-secrets") in secrets
    problems = []
    for key, data in secrets.items():
        assert data, f"{key} holds nothing"
        for name, value in data.items():
            if value in leaves:
                problems.append(f"{key} {name}: a value from values.yaml")
            if value not in generated:
                problems.append(f"{key} {name}: the same in two renders (not generated)")
    assert not problems, "\n".join(problems)


def _secret_refs_renamed(value, old: str, new: str, parent: str = ""):
    """``value`` with references to the Secret ``old`` (secret volume sources, secretKeyRefs,
    dask-gateway's apiTokenFromSecretName, and the same inside YAML strings that subcharts
    template) pointing at ``new``; volume names stay."""
    if isinstance(value, dict):
        out = {}
        for key, child in value.items():
            refers = key == "apiTokenFromSecretName" or (
                key == "name" and parent in ("secret", "secretKeyRef")
            )
            out[key] = (
                new if refers and child == old else _secret_refs_renamed(child, old, new, key)
            )
        return out
    if isinstance(value, list):
        return [_secret_refs_renamed(child, old, new, parent) for child in value]
    if isinstance(value, str):
        return re.sub(rf"(secretKeyRef: \{{name: ){re.escape(old)}\b", rf"\g<1>{new}", value)
    return value


def test_existing_secret_replaces_the_generated_one():
    """With twinhub.existingSecret the chart makes no twinhub-secrets Secret and every pod's
    projected secrets volume reads the operator's Secret. The operator points the subcharts'
    references at it too (z2jh, dask-gateway and keycloakx do not template them; the chart
    fails the render until they agree)."""
    values = helm.chart_values()
    extra = {
        name: _secret_refs_renamed(values[name], "twinhub-secrets", "site-secrets")
        for name in ("jupyterhub", "dask-gateway", "keycloakx")
    }
    extra["twinhub"] = {"existingSecret": "site-secrets"}
    objects = helm.render("default", extra=extra)
    assert not [o for o in objects if _key(o) == ("Secret", "twinhub-secrets")]
    text = json.dumps(_workloads(objects))
    assert '"site-secrets"' in text and '"name": "twinhub-secrets"' in text  # the volume's name
    for obj in _workloads(objects):
        for volume in _pod_spec(obj).get("volumes") or []:
            for source in (volume.get("projected") or {}).get("sources", []):
                assert (source.get("secret") or {}).get("name") != "twinhub-secrets", _key(obj)
