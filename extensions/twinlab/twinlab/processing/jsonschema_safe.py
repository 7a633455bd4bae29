"""JSON Schema checks that stay inside the schema and bounded in time.

The processing service (root) checks inputs against schemas that users wrote. jsonschema's
default registry fetches a ``$ref`` it does not hold (http://, file://): a schema could make
the service read URLs and local files. Here every validator resolves references only within
its own schema (a registry whose retrieval always fails), and a schema that points outside
itself is refused before it is used. A user's schema may also not use the keywords whose cost
an input can blow up (a backtracking regular expression, pairwise uniqueness of big arrays,
format checks): :data:`USER_FORBIDDEN`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote

import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import validator_for

#: Keywords a user process's schema may not use (the service runs these checks; each can
#: take time without bound on one crafted input).
USER_FORBIDDEN = ("pattern", "patternProperties", "uniqueItems", "format")
#: Keywords naming another schema (or this one's base URI): only "#..." (within) is allowed.
REFERENCES = ("$ref", "$dynamicRef", "$recursiveRef", "$id")
#: Keywords whose object maps names (of properties, definitions) to subschemas: those keys
#: are names, not keywords ("properties": {"pattern": {...}} is a property called pattern).
NAME_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"}
)
#: Objects and arrays of a user's schema once its local references are inlined, at most:
#: 30 definitions each referring twice to the next would otherwise cost 2**30 checks per
#: input. A reference that leads back to itself (a recursive schema) is refused outright.
MAX_EXPANDED_NODES = 5000


class UnsafeSchema(ValueError):
    """A schema that is invalid, points outside itself, or uses a forbidden keyword."""


def _never_retrieve(uri: str) -> referencing.Resource:
    raise referencing.exceptions.NoSuchResource(ref=uri)


#: References resolve only within the schema (and the dialects' own meta-schemas, which
#: jsonschema adds from memory): nothing is ever fetched or read.
REGISTRY: referencing.Registry = referencing.Registry(retrieve=_never_retrieve)  # type: ignore[call-arg]


def _keywords(node: Any, path: str = "", names: bool = False) -> Iterator[tuple[str, str, Any]]:
    """``(path, key, value)`` of every key of every object in ``node`` (data such as
    ``enum`` values too: a local ``$ref`` may point anywhere in the document), except the
    keys of name maps."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not names:
                yield path, str(key), value
            yield from _keywords(value, f"{path}/{key}", not names and key in NAME_MAPS)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _keywords(value, f"{path}/{i}")


def _known_dialect(uri: str) -> bool:
    try:
        referencing.jsonschema.specification_with(uri)
    except referencing.jsonschema.UnknownDialect:
        return False
    return True


def check_references(schema: Any) -> None:
    """Refuse references (and ``$id``) that do not start with "#", and a ``$schema`` that is
    not a dialect jsonschema holds (it would be looked up by its URL)."""
    for path, key, value in _keywords(schema):
        where = f" (at {path})" if path else ""
        if key in REFERENCES and isinstance(value, str) and not value.startswith("#"):
            raise UnsafeSchema(
                f"{key} {value[:200]!r}{where} points outside the schema: only references "
                "within it ('#...') are allowed"
            )
        if key == "$schema" and isinstance(value, str) and not _known_dialect(value):
            raise UnsafeSchema(
                f"$schema {value[:200]!r}{where} is not a JSON Schema dialect (leave it out: "
                "draft 2020-12 is the default)"
            )


def _anchors(root: Any) -> dict[str, list[Any]]:
    """Objects by the anchors they declare ($anchor, $dynamicAnchor, an "#name" $id)."""
    out: dict[str, list[Any]] = {}
    for node in _nodes(root):
        if isinstance(node, dict):
            for key in ("$anchor", "$dynamicAnchor", "$id", "id"):
                name = node.get(key)
                if isinstance(name, str) and name:
                    out.setdefault(name.removeprefix("#"), []).append(node)
    return out


def _targets(root: Any, anchors: dict[str, list[Any]], ref: str) -> list[Any]:
    """What a local reference ("#", "#/json/pointer", "#anchor") names in ``root``."""
    fragment = unquote(ref[1:])
    if fragment and not fragment.startswith("/"):
        return anchors.get(fragment, [])
    node = root
    for part in fragment.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return []  # jsonschema refuses it when used (Unresolvable)
    return [node]


def _nodes(node: Any) -> Iterator[Any]:
    yield node
    for child in (
        node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    ):
        yield from _nodes(child)


def check_cost(schema: Any) -> None:
    """Refuse a schema whose local references lead back to themselves, or which holds more
    than :data:`MAX_EXPANDED_NODES` objects and arrays once they are inlined."""
    anchors = _anchors(schema)
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, dict | list):
            return 0
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in visiting:
            raise UnsafeSchema(
                "a reference leads back to itself: recursive schemas are not allowed"
            )
        visiting.add(id(node))
        total = 1
        children = list(node.values()) if isinstance(node, dict) else list(node)
        if isinstance(node, dict):
            for key in REFERENCES[:3]:  # $ref, $dynamicRef, $recursiveRef
                if isinstance(node.get(key), str):
                    children += _targets(schema, anchors, node[key])
        for child in children:
            total += size(child)
            if total > MAX_EXPANDED_NODES:
                raise UnsafeSchema(
                    f"the schema has more than {MAX_EXPANDED_NODES} objects and arrays once its "
                    "references are inlined"
                )
        visiting.discard(id(node))
        sizes[id(node)] = total
        return total

    size(schema)


def check_user_schema(schema: Any) -> None:
    """:func:`check_references`, none of :data:`USER_FORBIDDEN`, :func:`check_cost`."""
    try:
        _check_user_schema(schema)
    except RecursionError:
        raise UnsafeSchema("the schema is nested too deeply") from None


def _check_user_schema(schema: Any) -> None:
    check_references(schema)
    for path, key, _ in _keywords(schema):
        if key in USER_FORBIDDEN:
            where = f" (at {path})" if path else ""
            raise UnsafeSchema(
                f"the keyword {key!r}{where} is not allowed in a user process's schema "
                f"(none of {', '.join(USER_FORBIDDEN)}: their checks can take the service's "
                "time without bound); check such values in the function"
            )
    check_cost(schema)


def validator(schema: Any) -> Any:
    """A validator of ``schema`` (its ``$schema`` dialect, else 2020-12) that never leaves
    it. Raises :class:`UnsafeSchema` if the schema is invalid or points outside itself."""
    check_references(schema)
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as err:
        raise UnsafeSchema(f"invalid JSON Schema: {err.message}") from None
    return cls(schema, registry=REGISTRY)


def errors(schema: Any, value: Any) -> list[Any]:
    """The validation errors of ``value``; :class:`UnsafeSchema` for a reference the schema
    does not hold."""
    try:
        return list(validator(schema).iter_errors(value))
    except referencing.exceptions.Unresolvable as err:
        msg = f"a reference cannot be resolved within the schema: {str(err)[:300]}"
        raise UnsafeSchema(msg) from None
    except RecursionError:  # a reference to itself (refused for user schemas)
        raise UnsafeSchema("a reference leads back to itself") from None


def is_valid(schema: Any, value: Any) -> bool:
    """Whether ``value`` fits ``schema`` (False when the schema cannot be used)."""
    try:
        return not errors(schema, value)
    except UnsafeSchema:
        return False


def fill_defaults(schema: Any, value: Any) -> Any:
    """``value`` with the defaults of ``schema``'s object properties filled in (also those
    of the ``oneOf``/``anyOf`` branches it fits)."""
    if not isinstance(schema, Mapping):
        return value
    if isinstance(value, dict):
        for branch in list(schema.get("oneOf") or []) + list(schema.get("anyOf") or []):
            if isinstance(branch, Mapping) and is_valid(branch, value):
                value = fill_defaults(branch, value)
        props = schema.get("properties")
        if isinstance(props, Mapping):
            for key, sub in props.items():
                if key in value:
                    value[key] = fill_defaults(sub, value[key])
                elif isinstance(sub, Mapping) and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
    return value
