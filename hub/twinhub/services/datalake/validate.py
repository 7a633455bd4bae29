"""Offline validation of STAC records against the core and extension JSON schemas.

Core STAC 1.1.0 schemas (and the GeoJSON ones they use) are pystac's bundled copies; the
datacube extension's schema is our own (``schemas/datacube-v2.2.0.json``, written from the
extension's documented field rules) registered under the official URI.  Nothing is ever
fetched: a ``$ref`` or an extension URI that is not bundled is an error, not a download.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match
from jsonschema_specifications import REGISTRY as METASCHEMAS
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

STAC_SCHEMAS = "https://schemas.stacspec.org/v1.1.0"
DATACUBE_URI = "https://stac-extensions.github.io/datacube/v2.2.0/schema.json"
#: extension schema URI -> our bundled file in twinhub.services.datalake.schemas
EXTENSIONS = {DATACUBE_URI: "datacube-v2.2.0.json"}
CORE = {
    "Feature": f"{STAC_SCHEMAS}/item-spec/json-schema/item.json",
    "Collection": f"{STAC_SCHEMAS}/collection-spec/json-schema/collection.json",
    "Catalog": f"{STAC_SCHEMAS}/catalog-spec/json-schema/catalog.json",
}


def _pystac_schema_dir() -> Path:
    import pystac.validation  # start-up cost: only validation (tests, tools) needs it

    return Path(pystac.validation.__file__).parent / "jsonschemas"


@lru_cache(maxsize=1)
def _registry() -> Registry:
    base = _pystac_schema_dir()
    resources_: list[tuple[str, Resource]] = []
    spec_dir = base / "stac-spec" / "v1.1.0"
    if not spec_dir.is_dir():
        raise RuntimeError(f"pystac's bundled STAC 1.1.0 schemas are missing ({spec_dir})")
    for f in sorted(spec_dir.glob("*.json")):
        folder = {"collection.json": "collection-spec", "catalog.json": "catalog-spec"}.get(
            f.name, "item-spec"
        )
        # register under the path other schemas' relative $refs resolve to (some bundled
        # files carry a slightly different $id, e.g. ".../json-schemacommonjson")
        resources_.append((f"{STAC_SCHEMAS}/{folder}/json-schema/{f.name}", _resource(f)))
    for f in sorted((base / "geojson").glob("*.json")):
        resources_.append((f"https://geojson.org/schema/{f.name}", _resource(f)))
    ours = resources.files("twinhub.services.datalake.schemas")
    for uri, name in EXTENSIONS.items():
        resources_.append(
            (uri, DRAFT7.create_resource(json.loads(ours.joinpath(name).read_text())))
        )
    # no `retrieve`: an unknown $ref raises instead of reaching for the network
    return METASCHEMAS.with_resources(resources_).crawl()


def _resource(path: Path) -> Resource:
    return DRAFT7.create_resource(json.loads(path.read_text()))


@lru_cache(maxsize=8)
def _validator(uri: str) -> jsonschema.protocols.Validator:
    schema = _registry().contents(uri)
    return jsonschema.Draft7Validator(schema, registry=_registry())


def validate_stac(obj: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first problem of a STAC Item/Collection/Catalog.

    Checks the core schema of its ``type``, then every schema in ``stac_extensions``
    (each must be bundled), then what JSON schema cannot say: datacube variables must
    use declared dimensions.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"a STAC object must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if kind not in CORE:
        raise ValueError(f"type: {kind!r} is not a STAC type (one of {', '.join(CORE)})")
    what = f"{kind} {obj.get('id', '<no id>')!r}"
    extensions = obj.get("stac_extensions", [])
    if not isinstance(extensions, list):
        raise ValueError(f"{what}: stac_extensions: must be a list of schema URIs")
    for uri in extensions:
        if uri not in EXTENSIONS:
            raise ValueError(
                f"{what}: stac_extensions: the schema {uri!r} is not bundled (offline "
                f"validation knows: {', '.join(EXTENSIONS)})"
            )
    for uri in [CORE[kind], *extensions]:
        error = best_match(_validator(uri).iter_errors(obj))
        if error is not None:
            path = "/".join(str(p) for p in error.absolute_path) or "<root>"
            raise ValueError(f"{what}: {path}: {_message(error)} (schema {uri})")
    if DATACUBE_URI in extensions:
        _check_cube_references(obj, what)


def _message(error: jsonschema.ValidationError) -> str:
    """The error's message, without dumping a whole object that failed an anyOf/oneOf."""
    if len(error.message) <= 200 or not error.context:
        return error.message
    reasons = sorted({c.message for c in error.context if len(c.message) <= 200})
    return "fits none of the allowed forms: " + "; ".join(reasons[:4])


def _check_cube_references(obj: dict[str, Any], what: str) -> None:
    places = [("properties", obj.get("properties"))] if obj.get("type") == "Feature" else []
    places.append(("", obj))
    for prefix, fields in places:
        if not isinstance(fields, dict) or "cube:variables" not in fields:
            continue
        dims = set(fields.get("cube:dimensions", {}))
        for name, var in fields["cube:variables"].items():
            for d in var.get("dimensions", []):
                if d not in dims:
                    path = "/".join(p for p in (prefix, "cube:variables", name, "dimensions") if p)
                    raise ValueError(
                        f"{what}: {path}: dimension {d!r} is not in cube:dimensions "
                        f"({', '.join(sorted(dims)) or 'none'})"
                    )
