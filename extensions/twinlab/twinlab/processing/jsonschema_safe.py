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
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote

import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema import (
    Draft3Validator,
    Draft4Validator,
    Draft6Validator,
    Draft7Validator,
    Draft202012Validator,
    SchemaError,
)
from jsonschema.validators import validator_for

#: Keywords a user process's schema may not use (the service runs these checks; each can
#: take time without bound on one crafted input). Refused as any key anywhere in the schema,
#: also as the name of a property or definition: a local ``$ref`` may point at a name map
#: (or at data such as ``examples``) and have it checked as a schema.
USER_FORBIDDEN = ("pattern", "patternProperties", "uniqueItems", "format")
#: Keywords naming another schema (or this one's base URI): only "#..." (within) is allowed.
#: ``id`` is draft 4's ``$id`` (checked where the schema's dialect is draft 3 or 4).
REFERENCES = ("$ref", "$dynamicRef", "$recursiveRef", "$id", "id")
#: Keywords whose object maps names (of properties, definitions) to subschemas.
NAME_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"}
)
#: Objects and arrays of a user's schema once its local references are inlined, at most:
#: 30 definitions each referring twice to the next would otherwise cost 2**30 checks per
#: input. A reference that leads back to itself (a recursive schema) is refused outright.
MAX_EXPANDED_NODES = 5000
#: Checks of a job's inputs against their schemas, at most (:func:`work`: each schema value,
#: references inlined, times the input values at its depth). Measured on 2 cores: 0.2-1.5 us
#: a unit for plain schemas, up to ~8 us for a wide anyOf of objects: validate_inputs takes
#: 3 s of one thread at worst, where 1 MiB against a 2000-branch anyOf took hours. The templated
#: processes stay well inside with realistic inputs: 1000 points are 8k units, a polygon of
#: 10000 positions 80k, an echoed array of 100000 integers 200k.
MAX_WORK = 400_000
#: Keywords whose subschema (or each subschema of a list) checks the values one level down
#: (array items, property values, property names; also those of ``properties`` and
#: ``patternProperties``). Every other keyword's value applies at the same level (one
#: missing here would only make the count larger, never smaller).
_ONE_DOWN = frozenset(
    {"items", "prefixItems", "additionalItems", "unevaluatedItems", "contains",
     "additionalProperties", "unevaluatedProperties", "propertyNames"}
)  # fmt: skip
#: Dialects whose ``$id`` is spelled ``id``, and those where a "#..." ``$id`` is an anchor
#: (in the others, 2019-09 on, an ``$id`` below the root, even "#", starts a resource that
#: "#..." references inside resolve against, where these checks would not look).
_ID_DIALECTS = (Draft3Validator, Draft4Validator)
_ANCHOR_ID_DIALECTS = (Draft3Validator, Draft4Validator, Draft6Validator, Draft7Validator)


class UnsafeSchema(ValueError):
    """A schema that is invalid, points outside itself, or uses a forbidden keyword."""


def _never_retrieve(uri: str) -> referencing.Resource:
    raise referencing.exceptions.NoSuchResource(ref=uri)


#: References resolve only within the schema (and the dialects' own meta-schemas, which
#: jsonschema adds from memory): nothing is ever fetched or read.
REGISTRY: referencing.Registry = referencing.Registry(retrieve=_never_retrieve)  # type: ignore[call-arg]


def _keywords(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """``(path, key, value)`` of every key of every object in ``node``: data such as
    ``enum`` values and the names in name maps too (a local ``$ref`` may point anywhere in
    the document and have it checked as a schema)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, str(key), value
            yield from _keywords(value, f"{path}/{key}")
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
    """Refuse references (and ``$id``) that do not start with "#", an ``$id`` below the root
    that starts a resource of its own, a ``$schema`` below the root (another dialect) or
    one that is not a dialect jsonschema holds (it would be looked up by its URL)."""
    dialect = Draft202012Validator
    if isinstance(schema, dict) and "$schema" in schema:
        named = schema["$schema"]
        if not isinstance(named, str) or not _known_dialect(named):
            raise UnsafeSchema(
                f"$schema {str(named)[:200]!r} is not a JSON Schema dialect (leave it out: "
                "draft 2020-12 is the default)"
            )
        dialect = validator_for(schema, default=Draft202012Validator)
    for path, key, value in _keywords(schema):
        where = f" (at {path})" if path else ""
        if key == "$schema" and path:
            raise UnsafeSchema(f"$schema{where}: a dialect is named only at the schema's root")
        if key == "id" and dialect not in _ID_DIALECTS or not isinstance(value, str):
            continue
        if key in REFERENCES and not value.startswith("#"):
            raise UnsafeSchema(
                f"{key} {value[:200]!r}{where} points outside the schema: only references "
                "within it ('#...') are allowed"
            )
        if key == "$id" and path and dialect not in _ANCHOR_ID_DIALECTS:
            raise UnsafeSchema(
                f"$id {value[:200]!r}{where}: an $id below the root is not allowed (use $anchor)"
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
    """What a local reference ("#", "#/json/pointer", "#anchor") names in ``root``, read
    as referencing.Resource.pointer does (else the count would miss what jsonschema uses);
    every object declaring the anchor, its name as written or percent-decoded."""
    fragment = ref[1:]
    if fragment and not fragment.startswith("/"):
        return anchors.get(fragment, []) + anchors.get(unquote(fragment), [])
    node = root
    for part in unquote(fragment).split("/")[1:] if fragment else ():
        try:
            if isinstance(node, list | str):
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            else:
                return []
        except (LookupError, ValueError):
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


def _levels(value: Any) -> list[int]:
    """JSON values (and object keys) of ``value`` per depth: [1, its items..., ...]."""
    levels: list[int] = []
    layer = [value]
    while layer:
        levels.append(len(layer))
        below: list[Any] = []
        for node in layer:
            if isinstance(node, dict):
                below.extend(node)  # keys (propertyNames checks them)
                below.extend(node.values())
            elif isinstance(node, list):
                below.extend(node)
        layer = below
    return levels


def work(schema: Any, value: Any, each: bool = False) -> int:
    """Checks of ``value`` (``each``: of each item of the list ``value``) against ``schema``,
    at most: each JSON value of the schema (its local references inlined) times the input
    values at the depth it applies to (a subschema of ``items``, ``properties``... one level
    down)."""
    levels = _levels(value)[1:] if each else _levels(value)
    anchors = _anchors(schema)
    memo: dict[tuple[int, int], int] = {}
    visiting: set[tuple[int, int]] = set()

    def cost(node: Any, depth: int) -> int:
        if depth >= len(levels):
            return 0  # no input value there to check
        if not isinstance(node, dict | list):
            return levels[depth]
        key = (id(node), depth)
        if key in memo:
            return memo[key]
        if key in visiting:
            raise UnsafeSchema("a reference leads back to itself")
        visiting.add(key)
        total = levels[depth]
        if isinstance(node, list):
            total += sum(cost(child, depth) for child in node)
        else:
            for k, child in node.items():
                if k in _ONE_DOWN:
                    total += cost(child, depth + 1)
                elif k in NAME_MAPS and isinstance(child, dict):  # names are not keywords
                    down = depth + (k in ("properties", "patternProperties"))
                    total += levels[depth] + sum(cost(c, down) for c in child.values())
                elif k in ("const", "enum"):  # compared whole with each input value
                    total += levels[depth] * sum(1 for _ in _nodes(child))
                else:
                    total += cost(child, depth)
            for k in REFERENCES[:3]:  # $ref, $dynamicRef, $recursiveRef: applied here
                if isinstance(node.get(k), str):
                    total += sum(cost(t, depth) for t in _targets(schema, anchors, node[k]))
        visiting.discard(key)
        memo[key] = total
        return total

    try:
        return cost(schema, 0)
    except RecursionError:
        raise UnsafeSchema("the schema is nested too deeply") from None


def check_work(checks: Iterable[tuple[Any, Any, bool]]) -> None:
    """Refuse ``(schema, value, each)`` checks that would take more than :data:`MAX_WORK`
    units together (:func:`work`)."""
    total = 0
    for schema, value, each in checks:
        total += work(schema, value, each)
        if total > MAX_WORK:
            raise UnsafeSchema(
                "these inputs are too large for this process's schema (checking them "
                f"would take more than {MAX_WORK} steps): send fewer or smaller values"
            )


def input_checks(
    declared: Mapping[str, Any], inputs: Mapping[str, Any], unwrap: Callable[[Any], Any]
) -> Iterator[tuple[Any, Any, bool]]:
    """``(schema, value, each)`` of every check of ``inputs`` against the ``declared`` OGC
    input descriptions: each value, unwrapped too (``unwrap``: an OGC qualified value),
    and each item of a list given to an input of several values (``maxOccurs`` > 1)."""
    for name, value in inputs.items():
        schema, most = declared[name].get("schema", {}), declared[name].get("maxOccurs", 1)
        yield schema, value, False
        if unwrap(value) is not value:
            yield schema, unwrap(value), False
        if (most == "unbounded" or (isinstance(most, int) and most > 1)) and isinstance(
            value, list
        ):
            yield schema, [unwrap(v) for v in value], True


def check_user_schema(schema: Any) -> None:
    """:func:`check_references`, none of :data:`USER_FORBIDDEN` (anywhere, names too),
    :func:`check_cost`."""
    try:
        _check_user_schema(schema)
    except RecursionError:
        raise UnsafeSchema("the schema is nested too deeply") from None


def _check_user_schema(schema: Any) -> None:
    check_references(schema)
    for path, key, _ in _keywords(schema):
        if key in USER_FORBIDDEN:
            where = f" (at {path})" if path else ""
            named = path.rsplit("/", 1)[-1] in NAME_MAPS
            raise UnsafeSchema(
                f"the keyword {key!r}{where} is not allowed in a user process's schema "
                f"(none of {', '.join(USER_FORBIDDEN)}: their checks can take the service's "
                "time without bound"
                + (
                    "; not as a name either: a reference could use the map as a schema"
                    if named
                    else ""
                )
                + "); check such values in the function"
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
