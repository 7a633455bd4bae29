"""twinlab.processing.schemas: the templated process descriptions and input validation."""

from __future__ import annotations

import datetime as dt
import time

import jsonschema
import pytest

from twinlab.processing import jsonschema_safe as safe
from twinlab.processing import schemas
from twinlab.processing.schemas import (
    PROCESS_IDS,
    TEMPLATED,
    InputError,
    describe_user_process,
    parse_datetime,
    target_cells,
    validate_inputs,
)

UTC = dt.UTC


def test_every_templated_process_is_described_with_valid_schemas() -> None:
    assert tuple(TEMPLATED) == PROCESS_IDS
    for pid, d in TEMPLATED.items():
        assert d["id"] == pid
        assert d["jobControlOptions"] == ["sync-execute", "async-execute", "dismiss"]
        assert d["outputTransmission"] == ["value", "reference"]
        assert d["version"] and d["title"] and d["description"]
        assert isinstance(d["twinhub:cluster"], bool)
        for io in (*d["inputs"].values(), *d["outputs"].values()):
            jsonschema.Draft202012Validator.check_schema(io["schema"])
            assert io["title"]
        for name in d["twinhub:item_inputs"]:
            assert name in d["inputs"]
        if d["twinhub:datetime_input"]:
            assert d["twinhub:datetime_input"] in d["inputs"]
        if pid != "echo":
            assert "collection" in d["inputs"]
            assert d["inputs"]["collection"]["minOccurs"] == 0
            assert d["twinhub:cluster"] is True


# OGC API - Processes' schema.yaml (the OpenAPI 3.0 schema object the test suite validates
# process descriptions with): the keys it allows, and which of them hold schemas
OGC_SCHEMA_KEYS = {
    "title", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
    "maxProperties", "minProperties", "required", "enum", "type", "not", "allOf", "oneOf",
    "anyOf", "items", "properties", "additionalProperties", "description", "format",
    "default", "nullable", "readOnly", "writeOnly", "example", "deprecated",
    "contentMediaType", "contentEncoding", "contentSchema",
}  # fmt: skip
OGC_TYPES = {"array", "boolean", "integer", "number", "object", "string"}


def ogc_schema_problems(schema: object, where: str = "") -> list[str]:
    """Why ``schema`` is not a schema object of OGC's schema.yaml (empty: it is)."""
    if not isinstance(schema, dict):
        return [f"{where}: not an object"]
    problems = [f"{where}.{k}: not allowed" for k in schema if k not in OGC_SCHEMA_KEYS]
    if "type" in schema and schema["type"] not in OGC_TYPES:
        problems.append(f"{where}.type: {schema['type']!r}")
    for key in ("exclusiveMinimum", "exclusiveMaximum", "uniqueItems"):
        if key in schema and not isinstance(schema[key], bool):
            problems.append(f"{where}.{key}: must be a boolean")
    for key in ("not", "items"):
        if key in schema:
            problems += ogc_schema_problems(schema[key], f"{where}.{key}")
    for key in ("allOf", "oneOf", "anyOf"):
        for i, sub in enumerate(schema.get(key, [])):
            problems += ogc_schema_problems(sub, f"{where}.{key}[{i}]")
    for name, sub in (schema.get("properties") or {}).items():
        problems += ogc_schema_problems(sub, f"{where}.properties.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += ogc_schema_problems(
            schema["additionalProperties"], f"{where}.additionalProperties"
        )
    return problems


def test_schemas_are_ogc_schema_objects() -> None:
    # the OGC test suite validates up to five process descriptions against schema.yaml
    for pid, d in TEMPLATED.items():
        for kind in ("inputs", "outputs"):
            for name, io in d[kind].items():
                assert ogc_schema_problems(io["schema"], f"{pid}.{name}") == []
    assert ogc_schema_problems({"const": 1, "exclusiveMinimum": 0}) == [
        ".const: not allowed",
        ".exclusiveMinimum: must be a boolean",
    ]


def test_zonal_mean_contract() -> None:
    d = TEMPLATED["zonal-mean"]
    assert {"item", "variable", "datetime"} <= set(d["inputs"])
    assert d["inputs"]["item"]["minOccurs"] == 1
    assert d["inputs"]["variable"]["minOccurs"] == 1
    assert d["inputs"]["datetime"]["minOccurs"] == 0
    assert d["twinhub:item_inputs"] == ["item"]
    assert d["twinhub:datetime_input"] == "datetime"
    assert set(d["outputs"]["zonal_mean"]["schema"]["required"]) == {"latitude", "time", "values"}


def test_echo_follows_what_the_ogc_suite_sends() -> None:
    d = TEMPLATED["echo"]
    first = next(iter(d["inputs"].values()))
    assert first["schema"] == {"type": "string"}  # the suite sends "teststring"
    assert d["twinhub:cluster"] is False
    # every non-string input is optional: the suite leaves them out
    for name, spec in d["inputs"].items():
        if spec["schema"].get("type") != "string":
            assert spec["minOccurs"] == 0, name
    # outputs carry the inputs' names (the suite matches them), the pause excepted
    assert set(d["outputs"]) == set(d["inputs"]) - {"pause"}
    got = validate_inputs(d, {"stringInput": "teststring", "pause": 5})
    assert got == {"stringInput": "teststring", "pause": 5}
    full = {
        "stringInput": "x",
        "doubleInput": 1.5,
        "integerInput": 3,
        "booleanInput": True,
        "arrayInput": [1, 2],
        "objectInput": {"a": [1, {"b": None}]},
    }
    assert validate_inputs(d, full) == {**full, "pause": 0}


def test_defaults_are_filled_and_inputs_copied() -> None:
    given = {"item": "i", "variables": ["2t"], "target": {"type": "healpix", "nside": 8}}
    got = validate_inputs(TEMPLATED["regrid"], given)
    assert got["method"] == "nearest"
    assert got["target"] == {"type": "healpix", "nside": 8, "nest": True}
    assert given["target"] == {"type": "healpix", "nside": 8}  # the caller's dict untouched
    got = validate_inputs(TEMPLATED["climatology"], {"item": "i", "variable": "2t"})
    assert got["statistic"] == "mean"


def test_qualified_values_are_unwrapped() -> None:
    got = validate_inputs(
        TEMPLATED["zonal-mean"],
        {"item": {"value": "i", "mediaType": "text/plain"}, "variable": "2t"},
    )
    assert got["item"] == "i"


@pytest.mark.parametrize(
    ("pid", "inputs", "message"),
    [
        ("zonal-mean", {"variable": "2t"}, "input 'item' is required"),
        ("zonal-mean", {"item": 3, "variable": "2t"}, "input 'item'"),
        ("zonal-mean", {"item": "i", "variable": "2t", "foo": 1}, "unknown input 'foo'"),
        ("zonal-mean", {"item": "i", "variable": "2t", "datetime": "2020-13-01"}, "'datetime'"),
        (
            "zonal-mean",
            {"item": "i", "variable": "2t", "datetime": "2021-01-01/2020-01-01"},
            "start is after end",
        ),
        ("zonal-mean", {"item": "i", "variable": "2t", "datetime": "../.."}, "no start and no end"),
        ("zonal-mean", {"item": "", "variable": "2t"}, "input 'item'"),
        ("zonal-mean", {"item": {"href": "s3://x"}, "variable": "2t"}, "by reference"),
        (
            "regrid",
            {"item": "i", "variables": [], "target": {"type": "latlon", "resolution": 1}},
            "input 'variables'",
        ),
        (
            "regrid",
            {"item": "i", "variables": ["a"], "target": {"type": "healpix", "nside": 6}},
            "input 'target'",
        ),
        (
            "regrid",
            {"item": "i", "variables": ["a"], "target": {"type": "latlon", "resolution": 0.7}},
            "does not divide",
        ),
        (
            "regrid",
            {"item": "i", "variables": ["a"], "target": {"type": "cube", "n": 3}},
            "input 'target'",
        ),
        (
            "regrid",
            {
                "item": "i",
                "variables": ["a"],
                "target": {"type": "octahedral", "n": 8},
                "method": "cubic",
            },
            "input 'method'",
        ),
        ("area-mean", {"item": "i", "variable": "v"}, "exactly one"),
        (
            "area-mean",
            {
                "item": "i",
                "variable": "v",
                "bbox": [0, 0, 1, 1],
                "polygon": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
            },
            "exactly one",
        ),
        ("area-mean", {"item": "i", "variable": "v", "bbox": [0, 10, 20, 5]}, "input 'bbox'"),
        ("area-mean", {"item": "i", "variable": "v", "bbox": [0, 10, 20]}, "input 'bbox'"),
        ("area-mean", {"item": "i", "variable": "v", "bbox": [-200, 0, 20, 5]}, "input 'bbox'"),
        (
            "area-mean",
            {
                "item": "i",
                "variable": "v",
                "polygon": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]},
            },
            "not closed",
        ),
        (
            "area-mean",
            {"item": "i", "variable": "v", "polygon": {"type": "Point", "coordinates": [0, 0]}},
            "input 'polygon'",
        ),
        (
            "climatology",
            {"item": "i", "variable": "v", "statistic": "percentile"},
            "'percentile' is required",
        ),
        ("climatology", {"item": "i", "variable": "v", "percentile": 50}, "applies only"),
        (
            "climatology",
            {"item": "i", "variable": "v", "statistic": "percentile", "percentile": 101},
            "input 'percentile'",
        ),
        ("climatology", {"item": "i", "variable": "v", "statistic": "median"}, "input 'statistic'"),
        ("point-series", {"item": "i", "variable": "v", "points": []}, "input 'points'"),
        ("point-series", {"item": "i", "variable": "v", "points": [[0, 91]]}, "input 'points'"),
        ("point-series", {"item": "i", "variable": "v", "points": [[0]]}, "input 'points'"),
        ("echo", {"stringInput": 5}, "input 'stringInput'"),
        ("echo", {"stringInput": "s", "pause": 61}, "input 'pause'"),
        ("echo", {"stringInput": "s", "arrayInput": ["a"]}, "input 'arrayInput'[0]"),
    ],
)
def test_bad_inputs_name_the_input(pid: str, inputs: dict, message: str) -> None:
    with pytest.raises(InputError) as err:
        validate_inputs(TEMPLATED[pid], inputs)
    assert message in str(err.value)


def test_inputs_must_be_an_object() -> None:
    with pytest.raises(InputError, match="JSON object"):
        validate_inputs(TEMPLATED["echo"], ["x"])
    with pytest.raises(InputError, match="'stringInput' is required"):
        validate_inputs(TEMPLATED["echo"], None)


def test_parse_datetime() -> None:
    assert parse_datetime("2020-01-01T06:00:00Z") == (
        dt.datetime(2020, 1, 1, 6, tzinfo=UTC),
        dt.datetime(2020, 1, 1, 6, tzinfo=UTC),
    )
    start, end = parse_datetime("2020-01-01/2020-01-31")
    assert start == dt.datetime(2020, 1, 1, tzinfo=UTC)
    assert end == dt.datetime(2020, 1, 31, 23, 59, 59, 999999, tzinfo=UTC)  # whole last day
    assert parse_datetime("2020-02") == (
        dt.datetime(2020, 2, 1, tzinfo=UTC),
        dt.datetime(2020, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
    )
    assert parse_datetime("../2020-01-01T00:00:00+01:00") == (
        None,
        dt.datetime(2019, 12, 31, 23, tzinfo=UTC),
    )
    assert parse_datetime("2020-12/..") == (dt.datetime(2020, 12, 1, tzinfo=UTC), None)
    for bad in ("yesterday", "2020-01-01/2020-01-02/2020-01-03", "", 5):
        with pytest.raises(InputError):
            parse_datetime(bad)  # type: ignore[arg-type]


def test_target_cells_match_the_grids() -> None:
    from twinlab.grids import HEALPix, LatLon, Octahedral

    assert target_cells({"type": "healpix", "nside": 64}) == HEALPix(64).size
    assert target_cells({"type": "octahedral", "n": 1280}) == Octahedral(1280).size == 6599680
    assert target_cells({"type": "octahedral", "n": 24}) == Octahedral(24).size
    assert target_cells({"type": "latlon", "resolution": 0.25}) == LatLon(0.25).size


def test_user_process_description() -> None:
    d = describe_user_process(
        "my-mean",
        "My mean",
        "Mean of numbers",
        {
            "xs": {"type": "array", "items": {"type": "number"}},
            "scale": float,
            "label": {"schema": {"type": "string", "default": "a"}},
        },
        {"mean": float},
        "0.1",
    )
    assert d["twinhub:kind"] == "user"
    assert d["inputs"]["scale"]["schema"] == {"type": "number"}
    assert d["inputs"]["xs"]["minOccurs"] == 1
    assert d["inputs"]["label"]["minOccurs"] == 0
    assert d["outputs"]["mean"]["schema"] == {"type": "number"}
    assert set(d) >= {
        "id",
        "title",
        "description",
        "version",
        "jobControlOptions",
        "outputTransmission",
    }
    assert validate_inputs(d, {"xs": [1, 2], "scale": 2}) == {
        "xs": [1, 2],
        "scale": 2,
        "label": "a",
    }
    with pytest.raises(InputError, match="input 'xs'"):
        validate_inputs(d, {"xs": ["a"], "scale": 2})
    with pytest.raises(InputError, match="unknown input"):
        validate_inputs(d, {"xs": [], "scale": 2, "other": 1})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("Bad Id", {}, {"y": int}), "process id"),
        (("ok", {"x": {"type": "nonsense"}}, {"y": int}), "invalid JSON Schema"),
        (("ok", {"x": object}, {"y": int}), "has no JSON Schema"),
        (("ok", {"1x": int}, {"y": int}), "Python identifier"),
        (("ok", {}, {}), "at least one output"),
    ],
)
def test_bad_user_process_descriptions(args: tuple, message: str) -> None:
    pid, inputs, outputs = args
    with pytest.raises(InputError, match=message):
        describe_user_process(pid, "t", "d", inputs, outputs, "1")


def test_schemas_imports_no_numerical_stack() -> None:
    # the hub imports this module: it must not pull numpy/xarray in through it
    import subprocess
    import sys

    code = (
        "import sys, twinlab.processing.schemas; "
        "print(sorted(m for m in ('xarray', 'dask', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + schemas.__name__


# -- user schemas stay inside themselves and cheap to check (security review H1, H2) ---------------
@pytest.fixture
def counting_server():
    """A real HTTP server on localhost that counts the requests it gets (a $ref target)."""
    import http.server
    import threading

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"enum": ["served-by-the-server"]}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/schema.json", hits
    server.shutdown()
    server.server_close()


def stored_user_process(schema: dict, **kind: str) -> dict:
    """A user process's description as stored before registration refused ``schema``."""
    d = describe_user_process("old", "t", "", {"x": {"type": "string"}}, {"y": int}, "1")
    d["inputs"]["x"]["schema"] = schema
    d.update({f"twinhub:{k}": v for k, v in kind.items()})
    return d


def test_references_outside_the_schema_are_refused_and_never_fetched(
    counting_server, tmp_path, monkeypatch
) -> None:
    url, hits = counting_server
    secret = tmp_path / "secret.json"
    secret.write_text('{"enum": ["the-secret-value"]}')
    for ref in (url, secret.as_uri(), "other.json#/x"):
        with pytest.raises(InputError, match=r"input 'x': \$ref .* points outside the schema"):
            describe_user_process("p", "t", "", {"x": {"$ref": ref}}, {"y": int}, "1")
        for kind in ("user", "templated"):  # stored before the rule, and any description
            with pytest.raises(InputError, match="points outside the schema") as e:
                validate_inputs(stored_user_process({"$ref": ref}, kind=kind), {"x": "zz"})
            assert "the-secret-value" not in str(e.value)
    for key in ("$id", "$dynamicRef"):
        with pytest.raises(InputError, match=f"\\{key} .* points outside"):
            describe_user_process("p", "t", "", {"x": {key: url}}, {"y": int}, "1")
    with pytest.raises(InputError, match=r"\$schema .* is not a JSON Schema dialect"):
        describe_user_process("p", "t", "", {"x": {"$schema": url}}, {"y": int}, "1")
    # a reference hidden from the check (as in data a local $ref points into) is still
    # never fetched: the validators' registry retrieves nothing
    monkeypatch.setattr(schemas.safe, "check_references", lambda schema: None)
    for ref in (url, secret.as_uri()):
        with pytest.raises(InputError, match="cannot be resolved within the schema") as e:
            validate_inputs(stored_user_process({"$ref": ref}), {"x": "zz"})
        assert "the-secret-value" not in str(e.value)
    assert hits == []


def test_local_references_and_known_dialects_work() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {"n": {"type": "integer", "minimum": 0}},
        "type": "object",
        "properties": {"n": {"$ref": "#/$defs/n"}},
    }
    d = describe_user_process("p", "t", "", {"x": schema}, {"y": int}, "1")
    assert validate_inputs(d, {"x": {"n": 3}}) == {"x": {"n": 3}}
    with pytest.raises(InputError, match=r"input 'x'\['n'\]"):
        validate_inputs(d, {"x": {"n": -1}})
    d = stored_user_process({"$ref": "#/$defs/missing"})
    with pytest.raises(InputError, match="cannot be resolved within the schema"):
        validate_inputs(d, {"x": 1})


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "string", "pattern": "^(a+)+$"}, "pattern"),
        ({"type": "object", "patternProperties": {"^(a+)+$": {}}}, "patternProperties"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "properties": {"r": {"format": "regex"}}}, "format"),
        ({"anyOf": [{"items": {"pattern": "x"}}]}, "pattern"),
        ({"$ref": "#/default", "default": {"pattern": "^(a+)+$"}}, "pattern"),
    ],
)
def test_user_schemas_may_not_use_costly_keywords(schema: dict, keyword: str) -> None:
    with pytest.raises(InputError, match=f"input 'x': the keyword '{keyword}'"):
        describe_user_process("p", "t", "", {"x": schema}, {"y": int}, "1")
    with pytest.raises(InputError, match=f"output 'y': the keyword '{keyword}'"):
        describe_user_process("p", "t", "", {"x": int}, {"y": schema}, "1")


def test_a_stored_user_schema_with_a_pattern_is_refused_before_matching() -> None:
    # registered before the rule: validation refuses the schema instead of running a
    # backtracking pattern (each more "a" doubles the time) on the service's loop
    d = stored_user_process({"type": "string", "pattern": "^(a+)+$"}, kind="user")
    with pytest.raises(InputError, match="input 'x': the keyword 'pattern'"):
        validate_inputs(d, {"x": "a" * 18 + "!"})
    # the templated processes keep their own (bounded) uniqueItems
    got = validate_inputs(
        TEMPLATED["regrid"],
        {"item": "i", "variables": ["a", "b"], "target": {"type": "healpix", "nside": 8}},
    )
    assert got["variables"] == ["a", "b"]


def doubling(levels: int) -> dict:
    """Each definition refers twice to the next: 2**levels checks per value once inlined."""
    defs = {f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}] * 2} for i in range(levels)}
    return {"$defs": {**defs, f"d{levels}": {"type": "integer"}}, "$ref": "#/$defs/d0"}


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (doubling(30), "more than 5000 objects and arrays once its references are inlined"),
        ({"$ref": "#"}, "leads back to itself"),
        ({"type": "array", "items": {"$ref": "#"}}, "leads back to itself"),
        ({"$defs": {"a": {"$anchor": "A", "items": {"$ref": "#A"}}}, "$ref": "#A"}, "itself"),
    ],
)
def test_user_schemas_may_not_explode_or_recurse(schema: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        describe_user_process("p", "t", "", {"x": schema}, {"y": int}, "1")
    # stored before the rule: refused before any check runs (2**30 would take hours)
    with pytest.raises(InputError, match=message):
        validate_inputs(stored_user_process(schema, kind="user"), {"x": [[1]]})


def test_shared_local_definitions_are_fine() -> None:
    d = describe_user_process("p", "t", "", {"x": doubling(8)}, {"y": int}, "1")
    assert validate_inputs(d, {"x": 4}) == {"x": 4}


# -- review 2: a reference to a name map or data checked as a schema (R1, R8), cost (R3) ---
# A local $ref may point at any object of the document: a map of property names, or data
# (examples, const) shaped like one, is then checked as a schema, its names as keywords.
REDOS_BY_REF = {
    "type": "string",
    "default": "aaa",
    "examples": [{"properties": {"pattern": "^(a+)+$"}}],
    "$ref": "#/examples/0/properties",
}
UNIQUE_BY_REF = {
    "$defs": {"a": {"properties": {"uniqueItems": True}}},
    "$ref": "#/$defs/a/properties",
}


@pytest.mark.parametrize(
    ("schema", "keyword", "value"),
    [
        (REDOS_BY_REF, "pattern", "a" * 25 + "!"),  # 6 s of backtracking, doubling per "a"
        (UNIQUE_BY_REF, "uniqueItems", [{"k": i, "v": list(range(50))} for i in range(3000)]),
        (
            {"const": {"properties": {"format": "regex"}}, "$ref": "#/const/properties"},
            "format",
            "(",
        ),
        ({"properties": {"pattern": {"type": "integer"}}}, "pattern", {"pattern": 1}),
    ],
)
def test_names_in_maps_are_keywords_to_a_reference(schema: dict, keyword: str, value) -> None:
    with pytest.raises(InputError, match=f"input 'x': the keyword '{keyword}' .*not as a name"):
        describe_user_process("p", "t", "", {"x": schema}, {"y": int}, "1")
    t = time.monotonic()
    with pytest.raises(InputError, match=f"input 'x': the keyword '{keyword}'"):
        validate_inputs(stored_user_process(schema, kind="user"), {"x": value})
    assert time.monotonic() - t < 1  # refused before the check runs


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        # draft 4 spells $id "id": it would make "#..." references resolve elsewhere (R8)
        (
            {"$schema": "http://json-schema.org/draft-04/schema#",
             "definitions": {"a": {"id": "http://127.0.0.1:9/x", "type": "object"}}},
            r"id 'http://127.0.0.1:9/x' \(at /definitions/a\) points outside",
        ),
        # an $id below the root, even "#", starts a resource: "#/properties" inside it is
        # its own properties, not the document's (where the checks looked)
        (
            {"$defs": {"s": {"$id": "#", "$ref": "#/properties",
                             "properties": {"x": {"type": "integer"}}}}, "$ref": "#/$defs/s"},
            r"\$id '#' \(at /\$defs/s\): an \$id below the root is not allowed",
        ),
        # another dialect below the root ("id" and "$id" mean other things there)
        ({"$defs": {"s": {"$schema": "http://json-schema.org/draft-04/schema#"}}},
         r"\$schema \(at /\$defs/s\): a dialect is named only at the schema's root"),
        ({"$schema": {"x": 1}}, "is not a JSON Schema dialect"),
    ],
)  # fmt: skip
def test_ids_and_dialects_stay_at_the_root(schema: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        describe_user_process("p", "t", "", {"x": schema}, {"y": int}, "1")
    with pytest.raises(InputError, match=message):
        validate_inputs(stored_user_process(schema, kind="user"), {"x": {"x": 1}})


def test_ids_that_name_anchors_and_data_called_id_are_fine() -> None:
    draft7 = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": {"n": {"$id": "#num", "type": "integer"}},
        "properties": {"n": {"$ref": "#num"}},
        "default": {"id": "run-1", "n": 1},  # "id" is data in draft 7 (and 2020-12)
    }
    d = describe_user_process("p", "t", "", {"x": draft7}, {"y": int}, "1")
    assert validate_inputs(d, {}) == {"x": {"id": "run-1", "n": 1}}
    with pytest.raises(InputError, match=r"input 'x'\['n'\]"):
        validate_inputs(d, {"x": {"n": "one"}})
    root_id = {"$id": "#", "$defs": {"n": {"type": "integer"}}, "items": {"$ref": "#/$defs/n"}}
    d = describe_user_process("p", "t", "", {"x": root_id}, {"y": int}, "1")
    assert validate_inputs(d, {"x": [1, 2]}) == {"x": [1, 2]}


def indexed_doubling(levels: int, index: str) -> dict:
    """:func:`doubling` with its definitions in a list, referred to as ``index`` spells."""
    chain = [{"allOf": [{"$ref": "#/x-l/" + index.format(i + 1)}] * 2} for i in range(levels)]
    return {"x-l": [*chain, {"type": "integer"}], "$ref": "#/x-l/0"}  # (a list of data)


@pytest.mark.parametrize("index", ["%2B{}", "%20{}", "{}%20"])
def test_the_cost_counts_what_jsonschema_resolves(index: str) -> None:
    # referencing reads "#/x-l/%2B1" as index int("+1"): the count must follow it too,
    # or 2**30 checks hide behind references it thinks lead nowhere
    with pytest.raises(InputError, match="more than 5000 objects and arrays"):
        describe_user_process("p", "t", "", {"x": indexed_doubling(30, index)}, {"y": int}, "1")
    d = describe_user_process("p", "t", "", {"x": indexed_doubling(3, index)}, {"y": int}, "1")
    assert validate_inputs(d, {"x": 4}) == {"x": 4}  # jsonschema resolves them so
    with pytest.raises(InputError, match="is not of type 'integer'"):
        validate_inputs(d, {"x": "four"})


def test_inputs_too_large_for_their_schema_are_refused_before_the_check() -> None:
    wide = {"type": "array", "items": {"anyOf": [{"const": i} for i in range(2000)]}}
    d = describe_user_process("p", "t", "", {"x": wide}, {"y": int}, "1")
    assert validate_inputs(d, {"x": [1999] * 10}) == {"x": [1999] * 10}
    t = time.monotonic()  # 300 values would take seconds, a 1 MiB list hours
    with pytest.raises(InputError, match="these inputs are too large for this process's schema"):
        validate_inputs(d, {"x": [-1] * 300})
    assert time.monotonic() - t < 0.5
    # a schema applies at its depth: the count follows items/properties down, and names in
    # maps or data compared whole (const) are not read as keywords
    deep = {"type": "object", "properties": {"items": {"type": "array", "items": wide["items"]}}}
    for schema, value in [
        (deep, {"items": [-1] * 100}),
        ({"type": "array", "items": {"const": {"items": [0] * 5000}}}, [1] * 100),
        ({"dependentSchemas": {"items": wide}, "type": "object"}, {f"k{i}": 0 for i in range(50)}),
    ]:
        d = describe_user_process("p", "t", "", {"x": schema}, {"y": int}, "1")
        with pytest.raises(InputError, match="too large"):
            validate_inputs(d, {"x": value})
    # what is checked counts: an OGC qualified value unwrapped, each value of an input
    # taking several (maxOccurs), not only the value as sent
    several = describe_user_process(
        "p", "t", "", {"x": {"schema": wide["items"], "maxOccurs": "unbounded"}}, {"y": int}, "1"
    )
    for inputs in ({"x": {"value": [-1] * 300, "mediaType": "application/json"}}, None):
        d = describe_user_process("p", "t", "", {"x": wide}, {"y": int}, "1")
        if inputs is None:
            d, inputs = several, {"x": [-1] * 300}
        t = time.monotonic()
        with pytest.raises(InputError, match="too large"):
            validate_inputs(d, inputs)
        assert time.monotonic() - t < 0.5
    assert validate_inputs(several, {"x": [1999, {"value": 3}]}) == {"x": [1999, 3]}
    # the sum over inputs counts: each alone fits, together they do not
    optional = {"schema": {"type": "array", "items": {"type": "integer"}}, "minOccurs": 0}
    two = describe_user_process("p", "t", "", {"a": optional, "b": optional}, {"y": int}, "1")
    half = [0] * (safe.MAX_WORK // 4 - 1)  # 2 schema values + 2 x len each
    assert validate_inputs(two, {"a": half}) == {"a": half}
    with pytest.raises(InputError, match="too large"):
        validate_inputs(two, {"a": half, "b": half + [0, 0]})


def test_templated_processes_fit_the_work_bound_with_realistic_inputs() -> None:
    lake = {"item": "i", "variable": "2t", "datetime": "2020-01-01/2020-12-31"}
    ring = [[i * 0.036 - 180, 10.0] for i in range(9999)] + [[-180.0, 10.0]]
    polygon = {"type": "Polygon", "coordinates": [ring]}
    cases = [
        ("point-series", {**lake, "points": [[lon * 0.3, 45.0] for lon in range(1000)]}),
        ("area-mean", {**lake, "polygon": polygon}),
        ("regrid", {"item": "i", "variables": [f"v{i}" for i in range(32)],
                    "target": {"type": "healpix", "nside": 1024}}),
        ("echo", {"stringInput": "x" * 100_000, "arrayInput": list(range(100_000)),
                  "objectInput": {f"k{i}": i for i in range(50_000)}}),
    ]  # fmt: skip
    for pid, inputs in cases:
        validate_inputs(TEMPLATED[pid], inputs)
        spent = [safe.work(TEMPLATED[pid]["inputs"][n]["schema"], v) for n, v in inputs.items()]
        assert sum(spent) < safe.MAX_WORK * 0.6, pid
