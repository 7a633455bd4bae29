"""Derive a subchart's documented value key paths from its values schema or values.yaml.

Usage (run where the upstream chart can be downloaded, e.g. after ``helm pull --untar``)::

    python extract_keys.py jupyterhub/values.schema.yaml \
        --source "jupyterhub/zero-to-jupyterhub-k8s@4.4.0 jupyterhub/values.schema.yaml" \
        > jupyterhub-4.4.0.keys

Output: ``# source:`` header lines, then one dotted key path per line, sorted:

- ``a.b.c``  a documented key (a leaf, or an object whose members are listed too);
- ``a.b.*``  a free-form map (labels, annotations, extraConfig, resources, traitlets config):
  any key, at any depth, below ``a.b``; ``*`` in the middle (``a.*.c``) is one arbitrary key;
- ``a.b[]``  a list (its items are not checked).

A JSON Schema (``values.schema.json``/``.yaml``) is preferred: its ``properties`` are the
documented keys and ``additionalProperties``/``patternProperties`` mark free-form maps. Charts
without a full schema (keycloakx, cloudnative-pg) are read from values.yaml: a non-empty map
is walked, an empty map ``{}`` is free-form, a list is ``[]``, anything else a leaf.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def _types(node: dict) -> set[str]:
    kind = node.get("type")
    if isinstance(kind, list):
        return set(kind)
    return {kind} if kind else set()


def schema_keys(node: dict, prefix: str = "") -> set[str]:
    """Key paths documented by a JSON Schema ``node`` (the schema of the value at ``prefix``)."""
    keys: set[str] = set()
    types = _types(node)
    props = node.get("properties") or {}
    extra = node.get("additionalProperties")
    # a map-or-list (extraEnv) or an open object without listed members is free-form
    free_form = bool(node.get("patternProperties")) or extra is True or isinstance(extra, dict)
    if "object" in types and "array" in types:
        free_form = True
    if "object" in types and not props and extra is not False:
        free_form = True
    for name, child in props.items():
        path = f"{prefix}.{name}" if prefix else name
        keys |= schema_keys(child if isinstance(child, dict) else {}, path)
    if isinstance(extra, dict) and extra.get("properties"):
        # a map of objects with documented members (one arbitrary key, then those members)
        keys |= schema_keys(extra, f"{prefix}.*")
    elif free_form and prefix:
        keys.add(f"{prefix}.*")
    if "array" in types and "object" not in types and prefix:
        keys.add(f"{prefix}[]")
    if not keys and prefix:
        keys.add(prefix)
    return keys


def values_keys(value: object, prefix: str = "") -> set[str]:
    """Key paths present in a chart's default values (for charts without a full schema)."""
    if isinstance(value, dict):
        if not value:
            return {f"{prefix}.*"} if prefix else set()
        keys: set[str] = set()
        for name, child in value.items():
            keys |= values_keys(child, f"{prefix}.{name}" if prefix else str(name))
        return keys
    if isinstance(value, list):
        return {f"{prefix}[]"}
    return {prefix}


def extract(path: Path) -> set[str]:
    """Key paths from a values schema (``*.schema.json``/``*.schema.yaml``) or a values.yaml."""
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if ".schema." in path.name:
        return schema_keys(data)
    return values_keys(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="values.schema.json/.yaml or values.yaml")
    parser.add_argument(
        "--source", required=True, help="upstream repo@tag and path, for the header"
    )
    parser.add_argument(
        "--add", action="append", default=[], help="an extra documented key (README-only keys)"
    )
    args = parser.parse_args(argv)
    keys = extract(args.file) | set(args.add)
    sys.stdout.write(f"# source: {args.source}\n")
    if args.add:
        sys.stdout.write(f"# added by hand (documented outside that file): {' '.join(args.add)}\n")
    sys.stdout.write("".join(f"{key}\n" for key in sorted(keys)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
