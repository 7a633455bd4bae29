"""Regenerate the one environment lock (run through `scripts/lock`).

constraints.txt pins every distribution of the working environment ($TWINHUB_VENV, made by
scripts/setup), so the embedded platform and the images install the same versions. The lock
is then checked against PyPI alone (no local wheel directories, no extra indexes), because the
images are built where only PyPI is configured:

* the `hub,lab,dev` extras resolve with the lock (every pin is served by PyPI); what the
  resolver adds that the environment lacks (scripts/setup uninstalls it again) is pinned too;
* the hub closure has a distribution for the hub image's Python (HUB_PYTHON, z2jh's k8s-hub);
* constraints-gpu.txt: the `gpu` extra plus CuPy's CUDA libraries (`cupy-cuda12x[ctk]`),
  resolved with the lock, pins of what the lock does not already hold.

Needs the network (PyPI); writes only the two constraint files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LOCK = HERE / "constraints.txt"
GPU_LOCK = HERE / "constraints-gpu.txt"
PYPI = "https://pypi.org/simple"
#: What the gpu image installs beside twinhub[gpu]: CuPy's CUDA runtime libraries as wheels.
GPU_EXTRA_REQUIREMENTS = ["cupy-cuda12x[ctk]"]
#: manylinux tags a glibc 2.36 system (Debian bookworm) accepts; pip does not expand them
#: when --platform is given.
PLATFORMS = [f"manylinux_2_{v}_x86_64" for v in range(5, 37)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]

HEADER = """\
# The one environment lock of twinhub: exact versions of every Python distribution of the
# working environment (scripts/setup's $TWINHUB_VENV, extras hub,lab,dev), all served by PyPI.
# Made by `scripts/lock` (images/environment/lock.py): pip freeze of the environment, then
# checked by resolving the extras against PyPI alone. Do not edit by hand: change
# pyproject.toml, run scripts/setup --dev, then scripts/lock.
# scripts/setup and every image (images/*/Containerfile) install with `-c` this file, so the
# embedded platform, the hub pods, user servers and Dask workers run the same versions.
"""

GPU_HEADER = """\
# GPU additions to constraints.txt (the gpu image only): twinhub's `gpu` extra and CuPy's CUDA
# libraries (cupy-cuda12x[ctk]: nvidia-* wheels), resolved against constraints.txt by
# `scripts/lock`. Installed with `-c constraints.txt -c constraints-gpu.txt`.
"""


def norm(name: str) -> str:
    """PEP 503 normalised name (what pip compares)."""
    return name.lower().replace("_", "-").replace(".", "-")


def pip(python: str, *args: str) -> subprocess.CompletedProcess[str]:
    # PyPI alone: ignore this machine's pip.conf, extra indexes and wheel directories.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    cmd = [python, "-m", "pip", "--isolated", "--disable-pip-version-check", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def resolve(python: str, reqs: list[str], constraints: list[Path], *extra: str) -> dict[str, str]:
    """name -> version pip would install (dry run against PyPI), or SystemExit with pip's words."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "report.json")
        cargs = [a for c in constraints for a in ("-c", str(c))]
        r = pip(
            python,
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--index-url",
            PYPI,
            "--report",
            str(report),
            *cargs,
            *extra,
            *reqs,
        )
        if r.returncode:
            sys.exit(f"pip could not resolve {reqs} with {cargs}:\n{r.stdout}{r.stderr}")
        items = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"]: i["metadata"]["version"] for i in items}


def frozen(python: str) -> dict[str, str]:
    """name -> version of the environment, editable installs (twinhub) left out; pip included."""
    out = subprocess.run(
        [python, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pins = {}
    for line in out.splitlines():
        name, sep, version = line.partition("==")
        if not sep:
            sys.exit(f"not a pin from PyPI: {line!r} (installed from a path or URL?)")
        # setuptools/wheel of a venv are Debian's bootstrap copies, not the environment's.
        if norm(name) not in {"twinhub", "setuptools", "wheel"}:
            pins[name] = version
    return pins


def write(path: Path, header: str, pins: dict[str, str], note: dict[str, str]) -> None:
    lines = [header]
    for name in sorted(pins, key=norm):
        why = note.get(name)
        lines.append(f"{name}=={pins[name]}" + (f"  # {why}" if why else ""))
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--python", default=sys.executable, help="the environment to freeze")
    ap.add_argument(
        "--hub-python",
        default=os.environ.get("HUB_PYTHON", "3.12"),
        help="Python version of the hub image's base (quay.io/jupyterhub/k8s-hub)",
    )
    args = ap.parse_args()

    pins = frozen(args.python)
    with tempfile.TemporaryDirectory() as tmp:
        draft = Path(tmp, "constraints.txt")
        write(draft, "", pins, {})
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        extras = project["optional-dependencies"]
        reqs = list(project["dependencies"])
        for extra in ("hub", "lab", "dev"):
            reqs += extras[extra]
        got = resolve(args.python, reqs, [draft])
        have = {norm(n) for n in pins}
        note = {}
        for name, version in got.items():
            if norm(name) not in have:
                pins[name] = version
                note[name] = "installed with the extras, then removed by scripts/setup"
        unused = sorted(n for n in pins if norm(n) not in {norm(g) for g in got} and n != "pip")
        if unused:
            print(f"lock: pinned but not needed by the extras (kept): {', '.join(unused)}")
        write(draft, "", pins, {})

        # The hub image: the hub closure needs a distribution for its Python (--no-deps: pip
        # refuses to resolve sdists for another interpreter; the closure is the same here).
        hub = resolve(args.python, project["dependencies"] + extras["hub"], [draft])
        tag = args.hub_python.replace(".", "")
        plats = [a for p in PLATFORMS for a in ("--platform", p)]
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write("".join(f"{n}=={v}\n" for n, v in hub.items()))
            f.flush()
            r = pip(
                args.python,
                "install",
                "--dry-run",
                "--ignore-installed",
                "--no-deps",
                "--quiet",
                "--index-url",
                PYPI,
                "--python-version",
                args.hub_python,
                "--implementation",
                "cp",
                *("--abi", f"cp{tag}", "--abi", "abi3", "--abi", "none"),
                *plats,
                "-r",
                f.name,
            )
        if r.returncode:
            sys.exit(
                f"the hub closure lacks distributions for Python {args.hub_python}:\n{r.stderr}"
            )

        gpu = resolve(args.python, extras["gpu"] + GPU_EXTRA_REQUIREMENTS, [draft])
    gpu_pins = {n: v for n, v in gpu.items() if norm(n) not in {norm(p) for p in pins}}
    write(LOCK, HEADER, pins, note)
    write(GPU_LOCK, GPU_HEADER, gpu_pins, {})
    print(f"lock: {len(pins)} pins in {LOCK.relative_to(ROOT)}, {len(gpu_pins)} in {GPU_LOCK.name}")


if __name__ == "__main__":
    main()
