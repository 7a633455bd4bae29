"""The catalogue (catalogue.py): who sees which process, the registration's checks, versions,
on a real database (SQLite and PostgreSQL); then the same over HTTP (``POST/DELETE
processes``) through the app of test_api.py (its fakes: the hub, its token check, the
backend)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import pickle
import threading
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from twinhub.db.models import ProcessingJob, UserProcess
from twinhub.services.asgi import BadRequest
from twinhub.services.hubauth import xsrf_token
from twinhub.services.processing import catalogue, store
from twinhub.services.processing.model import Caller
from twinlab.processing import schemas

from . import test_api as api
from .test_api import COOKIE, OGC_EXC, PREFIX, SERVICE_TOKEN, count, deploy_body

# The app fixture is test_api.py's (one definition of the fakes).
service = api.service
processing_settings = api.processing_settings
anyio_backend = api.anyio_backend

ALICE = Caller("alice", False, frozenset({"lab"}), ("lab",))
CAROL = Caller("carol", False, frozenset({"lab"}), ("lab",))
BOB = Caller("bob", False, frozenset(), ())
ROOT = Caller("root", True, frozenset(), ())
SETTINGS = SimpleNamespace(max_code_bytes=1024, max_user_processes=3)


def body(pid: str = "double", **more) -> dict:
    return {
        "id": pid,
        "inputs": {"x": {"schema": {"type": "number"}, "minOccurs": 0}},
        "outputs": {"y": {"schema": {"type": "number"}}},
        "code": base64.b64encode(pickle.dumps(len)).decode(),
        **more,
    }


def schema_body(schema: dict) -> dict:
    return body(inputs={"x": {"schema": schema}})


# Review 2, R1 and R8: what registered (201) before the fix.
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
DRAFT4_ID = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "definitions": {"a": {"id": "http://127.0.0.1:9/x", "type": "object"}},
    "properties": {"p": {"$ref": "#/definitions/a"}},
}


def test_templated_processes_come_first_in_order(twinhub_db):
    catalogue.register(twinhub_db, BOB, body("aaa"), SETTINGS)
    ids = [d["id"] for d in catalogue.processes(twinhub_db, BOB)]
    assert ids == [*schemas.PROCESS_IDS, "aaa"]
    assert catalogue.processes(twinhub_db, ALICE)[-1]["id"] == "point-series"


def test_visibility_private_project_admin(twinhub_db):
    catalogue.register(twinhub_db, ALICE, body("mine"), SETTINGS)
    catalogue.register(twinhub_db, ALICE, body("ours", visibility="project:lab"), SETTINGS)
    seen = {
        who.name: {d["id"] for d in catalogue.processes(twinhub_db, who)} - set(schemas.PROCESS_IDS)
        for who in (ALICE, CAROL, BOB, ROOT)
    }
    assert seen == {
        "alice": {"mine", "ours"},
        "carol": {"ours"},
        "bob": set(),
        "root": {"mine", "ours"},
    }
    with pytest.raises(BadRequest) as e:
        catalogue.describe(twinhub_db, CAROL, "mine")
    assert e.value.status == 404 and e.value.type_uri.endswith("/no-such-process")
    d = catalogue.describe(twinhub_db, CAROL, "ours")
    assert d["twinhub:owner"] == "alice" and d["twinhub:visibility"] == "project:lab"
    assert d["inputs"]["x"]["minOccurs"] == 0 and d["outputs"]["y"]["schema"] == {"type": "number"}


def test_description_has_the_ogc_shape(twinhub_db):
    d, new = catalogue.register(twinhub_db, ALICE, body(title="Double it"), SETTINGS)
    assert new
    assert d["title"] == "Double it" and d["version"] == "1"
    assert "async-execute" in d["jobControlOptions"]
    summary = catalogue.summary(d)
    assert "inputs" not in summary and summary["id"] == "double"


def test_new_version_by_the_owner_other_owner_409(twinhub_db):
    catalogue.register(twinhub_db, ALICE, body(), SETTINGS)
    d, new = catalogue.register(twinhub_db, ALICE, body(description="v2"), SETTINGS)
    assert not new and d["version"] == "2" and d["description"] == "v2"
    with pytest.raises(BadRequest) as e:
        catalogue.register(twinhub_db, BOB, body(), SETTINGS)
    assert e.value.status == 409
    assert store.get_user_process(twinhub_db, "double")["owner"] == "alice"


def test_cap_counts_new_processes_only(twinhub_db):
    for pid in ("p1", "p2", "p3"):
        catalogue.register(twinhub_db, ALICE, body(pid), SETTINGS)
    catalogue.register(twinhub_db, ALICE, body("p1", title="again"), SETTINGS)  # an update
    with pytest.raises(BadRequest) as e:
        catalogue.register(twinhub_db, ALICE, body("p4"), SETTINGS)
    assert e.value.status == 400 and "3 registered processes" in e.value.message
    catalogue.register(twinhub_db, BOB, body("p4"), SETTINGS)  # bob has his own cap


@pytest.mark.parametrize(
    ("doc", "status", "needle"),
    [
        ("x", 400, "JSON object"),
        (body(id=None), 400, "'id'"),
        (body(id="-lead"), 400, "'id'"),
        (body(id="x"), 400, "'id'"),
        (body("zonal-mean"), 409, "templated"),
        (body(inputs=[]), 400, "'inputs' must be an object"),
        (body(inputs={"x": {"title": "no schema"}}), 400, "'schema'"),
        (body(inputs={"x": {"schema": {"minimum": "low"}}}), 400, "not a valid JSON Schema"),
        (body(inputs={"x": {"schema": {}, "minOccurs": -1}}), 400, "minOccurs"),
        (body(inputs={"x": {"schema": {}, "maxOccurs": "many"}}), 400, "maxOccurs"),
        (body(inputs={f"i{n}": {"schema": {}} for n in range(65)}), 400, "at most 64"),
        (body(title=5), 400, "'title' must be a string"),
        (body(description="d" * 10_001), 400, "at most 10000"),
        (body(visibility="project:"), 403, "not one of your projects"),
        (body(visibility="everyone"), 400, "visibility"),
        (body(code=""), 400, "'code'"),
        (body(code=base64.b64encode(b"\x80" + b"x" * 2000).decode()), 413, "at most 1024"),
        # nothing the service would fetch or could spend unbounded time on (review H1, H2)
        (schema_body({"$ref": "http://127.0.0.1:9/s.json"}), 400, "inputs.x.schema: $ref"),
        (schema_body({"$ref": "file:///etc/passwd"}), 400, "points outside the schema"),
        (schema_body({"$id": "http://127.0.0.1:9/"}), 400, "inputs.x.schema: $id"),
        (schema_body({"$schema": "http://127.0.0.1:9/"}), 400, "not a JSON Schema dialect"),
        (schema_body({"pattern": "^(a+)+$"}), 400, "inputs.x.schema: the keyword 'pattern'"),
        (schema_body({"patternProperties": {"a": {}}}), 400, "keyword 'patternProperties'"),
        (schema_body({"items": {"uniqueItems": True}}), 400, "keyword 'uniqueItems'"),
        (schema_body({"properties": {"d": {"format": "date"}}}), 400, "keyword 'format'"),
        (body(outputs={"y": {"schema": {"format": "regex"}}}), 400, "outputs.y.schema"),
        (schema_body({"items": {"$ref": "#"}}), 400, "inputs.x.schema: a reference leads back"),
        # a local $ref to a name map (or data shaped like one) checks its names as keywords
        (schema_body(REDOS_BY_REF), 400, "the keyword 'pattern' (at /examples/0/properties)"),
        (schema_body(UNIQUE_BY_REF), 400, "keyword 'uniqueItems' (at /$defs/a/properties)"),
        (schema_body(DRAFT4_ID), 400, "inputs.x.schema: id 'http://127.0.0.1:9/x' (at /def"),
    ],
)
def test_registration_refusals(twinhub_db, doc, status, needle):
    with pytest.raises(BadRequest) as e:
        catalogue.register(twinhub_db, ALICE, doc, SETTINGS)
    assert e.value.status == status
    assert needle in e.value.message
    assert store.list_user_processes(twinhub_db) == []


def test_unbounded_max_occurs_and_defaults(twinhub_db):
    doc = body(inputs={"xs": {"schema": {"type": "number"}, "maxOccurs": "unbounded"}})
    spec = catalogue.parse_deploy(doc, ALICE, SETTINGS)
    assert spec["inputs"]["xs"]["maxOccurs"] == "unbounded"
    assert spec["inputs"]["xs"]["minOccurs"] == 1 and spec["inputs"]["xs"]["title"] == "xs"
    assert spec["title"] == "double" and spec["visibility"] == "private"
    assert spec["code"] == pickle.dumps(len)


def test_unregister_rules(twinhub_db):
    catalogue.register(twinhub_db, ALICE, body("ours", visibility="project:lab"), SETTINGS)
    for who, status in ((BOB, 404), (CAROL, 403)):
        with pytest.raises(BadRequest) as e:
            catalogue.unregister(twinhub_db, who, "ours")
        assert e.value.status == status
    with pytest.raises(BadRequest) as e:
        catalogue.unregister(twinhub_db, ROOT, "echo")
    assert e.value.status == 403
    catalogue.unregister(twinhub_db, ROOT, "ours")
    assert store.get_user_process(twinhub_db, "ours") is None
    with pytest.raises(BadRequest) as e:
        catalogue.unregister(twinhub_db, ALICE, "ours")
    assert e.value.status == 404


# -- user processes -------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_register_list_run_and_remove_a_private_process(service):
    r = await service.call("POST", "processes", json=deploy_body())
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/services/processing/processes/my-proc"
    d = r.json()
    assert d["id"] == "my-proc" and d["version"] == "1" and d["twinhub:owner"] == "alice"
    ids = [p["id"] for p in (await service.call("GET", "processes")).json()["processes"]]
    assert "my-proc" in ids
    bob_ids = [
        p["id"]
        for p in (await service.call("GET", "processes", token="bob-token")).json()["processes"]
    ]
    assert "my-proc" not in bob_ids
    for token in ("bob-token", "carol-token"):
        r = await service.call("GET", "processes/my-proc", token=token)
        assert r.status_code == 404 and r.json()["type"] == OGC_EXC + "no-such-process"
        r = await service.call(
            "POST", "processes/my-proc/execution", token=token, json={"inputs": {"x": 1}}
        )
        assert r.status_code == 404
    assert (await service.call("GET", "processes/my-proc", token="root-token")).status_code == 200
    # the owner runs it; a new version by the owner keeps the id
    job = await service.submit("my-proc", {"x": 2})
    assert job["processID"] == "my-proc"
    r = await service.call("POST", "processes", json=deploy_body(title="Mine v2"))
    assert r.status_code == 200 and r.json()["version"] == "2"
    # another user cannot take the id, nor remove it
    r = await service.call("POST", "processes", token="bob-token", json=deploy_body())
    assert r.status_code == 409
    r = await service.call("DELETE", "processes/my-proc", token="bob-token")
    assert r.status_code == 404
    r = await service.call("DELETE", "processes/my-proc")
    assert r.status_code == 204
    assert (await service.call("GET", "processes/my-proc")).status_code == 404
    assert count(service.ctx.db_url, UserProcess) == 0


@pytest.mark.anyio
async def test_project_process_is_seen_by_members_only(service):
    r = await service.call("POST", "processes", json=deploy_body(visibility="project:lab"))
    assert r.status_code == 201
    assert (await service.call("GET", "processes/my-proc", token="carol-token")).status_code == 200
    assert (await service.call("GET", "processes/my-proc", token="bob-token")).status_code == 404
    r = await service.call("DELETE", "processes/my-proc", token="carol-token")
    assert r.status_code == 403 and "alice" in r.json()["description"]
    r = await service.call("POST", "processes", json=deploy_body("p2", visibility="project:other"))
    assert r.status_code == 403 and "not one of your projects" in r.json()["description"]
    r = await service.call("DELETE", "processes/my-proc", token="root-token")
    assert r.status_code == 204


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (deploy_body("echo"), 409, "templated"),
        (deploy_body("Bad_Id"), 400, "'id' must match"),
        (deploy_body(code="%%%"), 400, "base64"),
        (deploy_body(code=base64.b64encode(b"import os").decode()), 400, "not a pickle"),
        (deploy_body(code=base64.b64encode(b"\x80" * 4000).decode()), 413, "at most 2048"),
        (deploy_body(outputs={}), 400, "at least one output"),
        (deploy_body(inputs={"x": {"schema": {"type": "nope"}}}), 400, "not a valid JSON Schema"),
        (deploy_body(inputs={"1x": {"schema": {}}}), 400, "not a name"),
        (deploy_body(inputs={"x": {"schema": {}, "extra": 1}}), 400, "unknown key"),
        (deploy_body(visibility="public"), 400, "visibility"),
        (deploy_body(runtime="docker"), 400, "unknown key(s) ['runtime']"),
        (deploy_body(python="three"), 400, "'python'"),
    ],
)
@pytest.mark.anyio
async def test_bad_registrations_store_nothing(service, body, status, needle):
    r = await service.call("POST", "processes", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["description"]
    assert count(service.ctx.db_url, UserProcess) == 0


@pytest.mark.anyio
async def test_registration_caps_and_header_token(service):
    for pid in ("p1", "p2"):
        assert (await service.call("POST", "processes", json=deploy_body(pid))).status_code == 201
    r = await service.call("POST", "processes", json=deploy_body("p3"))
    assert r.status_code == 400 and "the limit" in r.json()["description"]
    # a browser session (cookie + the page's XSRF value) may not register code
    cookie = "alice-token"
    r = await service.client.post(
        PREFIX + "processes",
        json=deploy_body("p4"),
        headers={
            "Cookie": f"{COOKIE}={cookie}",
            "X-Twinhub-XSRF": xsrf_token(SERVICE_TOKEN, cookie),
            "Sec-Fetch-Site": "same-origin",
        },
    )
    assert r.status_code == 403 and "header" in r.json()["description"]
    assert count(service.ctx.db_url, UserProcess) == 2


# -- listing never reads code (review M9) ---------------------------------------------------------
@contextlib.contextmanager
def statements():
    """Every SQL statement any engine runs meanwhile."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def test_listing_and_describing_never_read_code(twinhub_db):
    catalogue.register(twinhub_db, ALICE, body("ours", visibility="project:lab"), SETTINGS)
    with statements() as seen:
        assert "ours" in [d["id"] for d in catalogue.processes(twinhub_db, CAROL)]
        assert catalogue.describe(twinhub_db, CAROL, "ours")["twinhub:owner"] == "alice"
        with pytest.raises(BadRequest):
            catalogue.unregister(twinhub_db, CAROL, "ours")
    reads = [q for q in seen if "processing_user_processes" in q and "SELECT" in q.upper()]
    assert reads and not [q for q in reads if "processing_user_processes.code" in q]
    assert all("code" not in row for row in store.list_user_processes(twinhub_db))
    assert "code" not in store.get_user_process(twinhub_db, "ours", code=False)
    # the runner's start still reads it
    assert store.get_user_process(twinhub_db, "ours")["code"] == pickle.dumps(len)


# -- schemas the service validates with (review H1, H2) -------------------------------------------
@pytest.fixture
def counting_server():
    """A real HTTP server on localhost counting its requests (what a $ref would fetch)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"enum": ["served"]}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/s.json", hits
    server.shutdown()
    server.server_close()


def store_as_before(db_url: str, pid: str, schema: dict) -> None:
    """A user process stored before registration refused ``schema`` (straight in the table)."""
    d = schemas.describe_user_process(pid, "t", "", {"x": {"type": "string"}}, {"y": int}, "1")
    d["inputs"]["x"]["schema"] = schema
    store.save_user_process(
        db_url, id=pid, owner="alice", visibility="private", description=d,
        code=pickle.dumps(len), source="", python="",
    )  # fmt: skip


@pytest.mark.anyio
async def test_the_service_never_fetches_a_schema_reference(service, counting_server, tmp_path):
    url, hits = counting_server
    secret = tmp_path / "secret.json"
    secret.write_text('{"enum": ["the-secret-value"]}')
    for ref in (url, secret.as_uri()):
        r = await service.call(
            "POST", "processes", json=deploy_body(inputs={"x": {"schema": {"$ref": ref}}})
        )
        assert r.status_code == 400, r.text
        assert "inputs.x.schema: $ref" in r.json()["description"]
        store_as_before(service.ctx.db_url, "old", {"$ref": ref})
        r = await service.call(
            "POST", "processes/old/execution", json={"inputs": {"x": "zz"}},
            headers={"Prefer": "respond-async"},
        )  # fmt: skip
        assert r.status_code == 400, r.text
        assert "input 'x'" in r.json()["description"]
        assert "the-secret-value" not in r.text
    assert hits == []
    assert count(service.ctx.db_url, ProcessingJob) == 0


@pytest.mark.anyio
async def test_a_backtracking_pattern_never_runs_in_the_service(service):
    body = deploy_body(inputs={"x": {"schema": {"type": "string", "pattern": "^(a+)+$"}}})
    r = await service.call("POST", "processes", json=body)
    assert r.status_code == 400 and "keyword 'pattern'" in r.json()["description"]
    store_as_before(service.ctx.db_url, "old", {"type": "string", "pattern": "^(a+)+$"})
    t = time.monotonic()
    r = await service.call(
        "POST", "processes/old/execution", json={"inputs": {"x": "a" * 30 + "!"}}
    )
    assert r.status_code == 400 and "keyword 'pattern'" in r.json()["description"]
    assert time.monotonic() - t < 5  # matching would take minutes (doubles per "a")


@pytest.mark.anyio
async def test_a_pattern_behind_a_reference_never_runs_in_the_service(service):
    # review 2 R1: registered (201), then "a" * 25 + "!" took 6 s holding the GIL
    r = await service.call(
        "POST", "processes", json=deploy_body(inputs={"x": {"schema": REDOS_BY_REF}})
    )
    assert r.status_code == 400, r.text
    assert "keyword 'pattern' (at /examples/0/properties)" in r.json()["description"]
    store_as_before(service.ctx.db_url, "old", REDOS_BY_REF)
    t = time.monotonic()
    r = await service.call(
        "POST", "processes/old/execution", json={"inputs": {"x": "a" * 27 + "!"}}
    )
    assert r.status_code == 400 and "keyword 'pattern'" in r.json()["description"]
    assert time.monotonic() - t < 5  # matching would take about 25 s
    assert count(service.ctx.db_url, ProcessingJob) == 0


# -- another user's process from a browser (review M8) --------------------------------------------
@pytest.mark.anyio
async def test_another_users_process_runs_with_a_token_not_a_browser_session(service):
    r = await service.call("POST", "processes", json=deploy_body(visibility="project:lab"))
    assert r.status_code == 201, r.text

    async def from_browser(user: str):
        cookie = f"{user}-token"
        return await service.client.post(
            PREFIX + "processes/my-proc/execution",
            json={"inputs": {"x": 1}},
            headers={
                "Cookie": f"{COOKIE}={cookie}",
                "X-Twinhub-XSRF": xsrf_token(SERVICE_TOKEN, cookie),
                "Sec-Fetch-Site": "same-origin",
                "Prefer": "respond-async",
            },
        )

    r = await from_browser("carol")  # a page on the origin could drive carol's session
    assert r.status_code == 403, r.text
    assert (
        "run another user's process with a token (twinlab.processing or the API)"
        in (r.json()["description"])
    )
    assert count(service.ctx.db_url, ProcessingJob) == 0
    # carol's token runs it; alice runs her own from her browser
    job = await service.submit("my-proc", {"x": 1}, token="carol-token")
    assert job["owner"] == "carol"
    r = await from_browser("alice")
    assert r.status_code == 201 and r.json()["owner"] == "alice"
    # templated processes need no token from a browser
    r = await service.client.post(
        PREFIX + "processes/echo/execution",
        json={"inputs": {"stringInput": "hi"}},
        headers={
            "Cookie": f"{COOKIE}=carol-token",
            "X-Twinhub-XSRF": xsrf_token(SERVICE_TOKEN, "carol-token"),
            "Prefer": "respond-async",
        },
    )
    assert r.status_code == 201, r.text
