"""The curated images and the one environment lock (images/, scripts/lock, scripts/build-images).

The images cannot be built in CI (no container engine, no registry): these tests check what ties
them to the embedded platform instead. Every image installs with the lock; the lock covers every
distribution the extras ask for, at versions the extras accept; the running environment (the
suite runs in scripts/setup's $TWINHUB_VENV, made with `-c` the lock) holds exactly the lock's
versions, which is also what a fresh CI setup proves: the lock installs into a clean environment.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
LOCK = IMAGES / "environment" / "constraints.txt"
GPU_LOCK = IMAGES / "environment" / "constraints-gpu.txt"
CONTAINERFILES = {p.parent.name: p for p in sorted(IMAGES.glob("*/Containerfile"))}
#: Note lock.py writes beside a pin that scripts/setup uninstalls after installing.
REMOVED_NOTE = "removed by scripts/setup"
#: A venv's bootstrap copies (Debian's), which the lock leaves out; twinhub is the checkout.
NOT_LOCKED = {"twinhub", "setuptools", "wheel"}
#: The installer: locked (the images install it with -c), but scripts/setup upgrades it when it
#: makes the venv, before the lock applies, so a fresh environment may hold a newer one.
INSTALLER = "pip"


def read_pins(path: Path) -> dict[str, tuple[str, str]]:
    """canonical name -> (version, comment) of a constraints file; exact pins only."""
    pins: dict[str, tuple[str, str]] = {}
    for line in path.read_text().splitlines():
        spec, _, comment = line.partition("#")
        spec = spec.strip()
        if not spec:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", spec)
        assert m, f"{path.name}: not an exact pin: {line!r}"
        name = canonicalize_name(m[1])
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = (m[2], comment.strip())
    return pins


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def run_commands(containerfile: Path) -> list[str]:
    """The RUN instructions of a Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", containerfile.read_text())
    return [line[4:] for line in text.splitlines() if line.startswith("RUN ")]


def pip_installs(containerfile: Path) -> list[str]:
    """Every `pip install ...` command of the Containerfile's RUN instructions."""
    found = []
    for run in run_commands(containerfile):
        for part in re.split(r"&&|;|\|\|", run):
            if re.search(r"\bpip install\b", part):
                found.append(" ".join(part.split()))
    return found


def test_every_image_is_there():
    assert set(CONTAINERFILES) == {"hub", "user", "gpu"}


def test_every_pip_install_of_every_image_uses_the_lock():
    for name, path in CONTAINERFILES.items():
        installs = pip_installs(path)
        assert installs, f"{name}: no pip install found"
        # A stage may copy the lock alone (it needs nothing else of the checkout).
        copied = re.findall(
            r"^COPY images/environment/constraints\.txt (\S+)$", path.read_text(), re.M
        )
        locks = ["/tmp/src/images/environment/constraints.txt", *copied]
        for cmd in installs:
            used = re.findall(r"-c (\S+)", cmd)
            assert any(c in locks for c in used), f"{name}: installs without the lock: {cmd}"
            if "cupy" in cmd or "[gpu]" in cmd:
                assert "/tmp/src/images/environment/constraints-gpu.txt" in used, (
                    f"{name}: GPU packages without their pins: {cmd}"
                )


def test_each_image_installs_its_extra_from_the_checkout():
    wanted = {"hub": "[hub]", "user": "[lab]", "gpu": "[gpu]"}
    for name, extra in wanted.items():
        cmds = " ".join(pip_installs(CONTAINERFILES[name]))
        assert f'"/tmp/src{extra}"' in cmds, f"{name} does not install twinhub{extra}"
        assert "COPY . /tmp/src" in CONTAINERFILES[name].read_text()


def test_the_lock_pins_every_distribution_the_extras_need_at_an_accepted_version():
    pins = read_pins(LOCK)
    extras = project()["optional-dependencies"]
    reqs = list(project()["dependencies"])
    for extra in ("hub", "lab", "dev"):
        reqs += extras[extra]
    for text in reqs:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject) is not in the lock"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"the lock's {req.name}=={version} does not satisfy pyproject's {text!r}"
        )


def test_the_gpu_pins_cover_the_gpu_extra_and_do_not_repeat_the_lock():
    pins, gpu = read_pins(LOCK), read_pins(GPU_LOCK)
    assert not set(pins) & set(gpu), "pinned in both constraint files"
    both = {**pins, **gpu}
    for text in project()["optional-dependencies"]["gpu"] + ["cupy-cuda12x[ctk]"]:
        req = Requirement(text)
        version = both[canonicalize_name(req.name)][0]
        assert req.specifier.contains(version, prereleases=True), f"{text} vs {version}"


def test_the_running_environment_is_the_lock():
    """The environment the suite runs in ($TWINHUB_VENV) holds exactly the lock's versions."""
    pins = read_pins(LOCK)
    installed: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name not in NOT_LOCKED | {INSTALLER}:
            installed.setdefault(name, dist.version)
    differ = {
        n: (v, pins[n][0] if n in pins else None)
        for n, v in installed.items()
        if n not in pins or pins[n][0] != v
    }
    assert not differ, f"installed vs locked (run scripts/setup --dev, then scripts/lock): {differ}"
    missing = {
        n
        for n, (_, note) in pins.items()
        if n not in installed and n != INSTALLER and REMOVED_NOTE not in note
    }
    assert not missing, f"locked but not installed: {sorted(missing)}"


def test_pins_absent_from_the_environment_are_the_ones_scripts_setup_removes():
    setup = (ROOT / "scripts" / "setup").read_text()
    uninstalled = {
        canonicalize_name(n) for n in re.findall(r'pip" uninstall -y -qq ([A-Za-z0-9._-]+)', setup)
    }
    noted = {n for n, (_, note) in read_pins(LOCK).items() if REMOVED_NOTE in note}
    assert noted <= uninstalled, f"noted as removed but scripts/setup keeps: {noted - uninstalled}"
    # The user image drops the same packages as the embedded platform (start-up time).
    user = " ".join(run_commands(CONTAINERFILES["user"]))
    for name in noted:
        assert re.search(rf"pip uninstall -y( -q)? {name}\b", user), f"user image keeps {name}"


def test_the_hub_image_is_built_on_the_z2jh_hub_image_of_the_charts_jupyterhub_dependency():
    m = re.search(r"^ARG HUB_BASE=quay\.io/jupyterhub/k8s-hub:(\S+)$", _text("hub"), re.M)
    assert m, "the hub image's base is not z2jh's hub image"
    script = (ROOT / "scripts" / "build-images").read_text()
    assert f"HUB_BASE:-quay.io/jupyterhub/k8s-hub:{m[1]}" in script
    chart = ROOT / "helm" / "twinhub" / "Chart.yaml"
    if not chart.exists():
        pytest.skip("helm/twinhub/Chart.yaml not written yet")
    deps = yaml.safe_load(chart.read_text()).get("dependencies") or []
    versions = [d["version"] for d in deps if d["name"] == "jupyterhub"]
    assert versions == [m[1]], f"Chart.yaml's jupyterhub {versions} vs hub image base {m[1]}"


def test_the_user_image_is_the_embedded_environment_on_debian():
    text = _text("user")
    assert re.search(r"^ARG BASE=docker\.io/library/debian:bookworm-slim$", text, re.M)
    assert "r-base-core" in text and "r-cran-irkernel" in text
    assert "twinhub.install_jupyter_config" in text
    assert re.search(r"^ARG INSTALL_JULIA=", text, re.M), "no way to skip Julia"
    assert re.search(r"^USER \$\{NB_UID\}$", text, re.M) and "ARG NB_UID=1000" in text
    assert re.search(r'^CMD \["jupyterhub-singleuser"\]$', text, re.M)
    # jupyterhub-singleuser is jupyterhub's: from the lab extra or installed beside it.
    lab = {
        canonicalize_name(Requirement(r).name) for r in project()["optional-dependencies"]["lab"]
    }
    installs = " ".join(pip_installs(CONTAINERFILES["user"]))
    assert "jupyterhub" in lab or re.search(r'"/tmp/src\[lab\]" jupyterhub\b', installs)
    # node only in the build stage: the final stage starts at the last FROM.
    final = text[text.rindex("\nFROM ") :]
    assert "nodejs" not in final and "npm" not in final


def test_the_budgets_of_the_readme_are_the_ones_scripts_build_images_checks():
    readme = (IMAGES / "README.md").read_text()
    script = (ROOT / "scripts" / "build-images").read_text()
    for name in ("user", "gpu", "hub"):
        m = re.search(rf"^\| `{name}` \|.*\| ([\d.]+) GB \|$", readme, re.M)
        assert m, f"README states no budget for {name}"
        assert f"[{name}]={round(float(m[1]) * 1e9)}" in script, f"{name}: budgets differ"


def test_the_gpu_constraints_resolve_with_the_lock(tmp_path):
    """pip resolves the GPU packages with both constraint files (a dry run: no CUDA here)."""
    report = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--report",
        str(report),
        "-c",
        str(LOCK),
        "-c",
        str(GPU_LOCK),
        *project()["optional-dependencies"]["gpu"],
        "cupy-cuda12x[ctk]",
    ]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    pins = {**read_pins(LOCK), **read_pins(GPU_LOCK)}
    got = {
        canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    assert "cupy-cuda12x" in got and "nvidia-cublas-cu12" in got
    unpinned = {n: v for n, v in got.items() if n not in pins or pins[n][0] != v}
    assert not unpinned, f"resolved outside the pins: {unpinned}"


def _text(image: str) -> str:
    return CONTAINERFILES[image].read_text()
