"""The processes a caller may run: the templated ones and the user processes they may see,
and the registration (OGC API - Processes Part 2 style deploy) of user processes.

Who sees a user process: its owner; with visibility ``project:<name>`` the members of that
project (hub group); admins (acting as such). Everyone else gets the same 404 as for an id
that does not exist, so ids of others' private processes do not leak. The pickled code is
stored as sent and never unpickled here: it runs only in a runner, as the user who executes
it (twinlab.processing.runner).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from jsonschema import SchemaError
from jsonschema.validators import validator_for

from twinlab.processing import jsonschema_safe, schemas

from ..asgi import BadRequest
from . import store
from .model import OGC_EXCEPTIONS, Caller

#: OGC exception types (OGC API - Processes Part 1, "exception types").
NO_SUCH_PROCESS = OGC_EXCEPTIONS + "no-such-process"

#: A user process's id: lower case, digits and dashes, 2..63 characters.
PROCESS_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
#: An input's or output's name (a Python keyword argument of the function).
IO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
PYTHON_VERSION = re.compile(r"[0-9]{1,2}(\.[0-9]{1,3}){0,2}[a-z0-9+]{0,8}")
#: Bounds of a registration's fields (besides the code's, a setting).
MAX_TITLE = 200
MAX_DESCRIPTION = 10_000
MAX_SOURCE = 200_000
MAX_IO = 64
MAX_OCCURS = 10_000
#: Keys a registration may carry.
DEPLOY_KEYS = frozenset(
    {
        "id", "title", "description", "inputs", "outputs", "visibility", "code", "source",
        "python", "cluster",
    }
)  # fmt: skip
IO_KEYS = frozenset({"schema", "title", "description", "minOccurs", "maxOccurs"})
#: Pickles (protocol 2 and later, what cloudpickle writes) begin with PROTO.
PICKLE_PROTO = 0x80


class ProcessError(BadRequest):
    """A refusal carrying an OGC exception type (``no-such-process``, ``no-such-job``...)."""

    def __init__(self, message: str, status: int, type_uri: str, title: str) -> None:
        super().__init__(message, status)
        self.type_uri = type_uri
        self.title = title


def no_such_process(process_id: str) -> ProcessError:
    return ProcessError(f"no process {process_id[:100]!r}", 404, NO_SUCH_PROCESS, "No such process")


# -- who sees what ------------------------------------------------------------------------------
def can_see(row: dict[str, Any], caller: Caller) -> bool:
    """Whether ``caller`` may see (and run) the user process ``row``."""
    if caller.admin or row["owner"] == caller.name:
        return True
    vis = row["visibility"]
    return vis.startswith("project:") and vis.split(":", 1)[1] in caller.groups


def user_description(row: dict[str, Any]) -> dict[str, Any]:
    """A stored user process as the API describes it: its description, its version as
    stored, and who owns it and who sees it (twinhub's own fields)."""
    doc = dict(row["description"])
    doc["id"] = row["id"]
    doc["version"] = str(row["version"])
    doc["twinhub:owner"] = row["owner"]
    doc["twinhub:visibility"] = row["visibility"]
    doc["twinhub:user_process"] = True
    if row.get("source"):
        doc["twinhub:source"] = row["source"]
    return doc


def templated(process_id: str) -> dict[str, Any] | None:
    doc = schemas.TEMPLATED.get(process_id)
    return None if doc is None else dict(doc)


def processes(db_url: str, caller: Caller) -> list[dict[str, Any]]:
    """Every process ``caller`` may run: the templated ones (in their fixed order), then
    the user processes they see, by id."""
    out = [dict(schemas.TEMPLATED[p]) for p in schemas.PROCESS_IDS if p in schemas.TEMPLATED]
    rows = sorted(store.list_user_processes(db_url), key=lambda r: r["id"])
    out += [user_description(r) for r in rows if can_see(r, caller)]
    return out


def describe(db_url: str, caller: Caller, process_id: str) -> dict[str, Any]:
    """The description of one process ``caller`` may run; else :func:`no_such_process`."""
    doc = templated(process_id)
    if doc is not None:
        return doc
    if not PROCESS_ID.fullmatch(process_id):
        raise no_such_process(process_id)
    row = store.get_user_process(db_url, process_id, code=False)
    if row is None or not can_see(row, caller):
        raise no_such_process(process_id)
    return user_description(row)


def summary(description: dict[str, Any]) -> dict[str, Any]:
    """A process summary (the process list's entries): the description without its inputs
    and outputs."""
    return {k: v for k, v in description.items() if k not in ("inputs", "outputs")}


# -- registration -----------------------------------------------------------------------------
def _text(doc: dict[str, Any], name: str, limit: int, default: str = "") -> str:
    v = doc.get(name, default)
    if v is None:
        return default
    if not isinstance(v, str):
        raise BadRequest(f"'{name}' must be a string, not {type(v).__name__}")
    if len(v) > limit:
        raise BadRequest(f"'{name}' has {len(v)} characters (at most {limit})")
    return v


def _occurs(where: str, spec: dict[str, Any], key: str, default: int) -> int | str:
    v = spec.get(key, default)
    if key == "maxOccurs" and v == "unbounded":
        return v
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_OCCURS:
        raise BadRequest(f"{where}.{key} must be an integer 0..{MAX_OCCURS}, not {v!r}")
    return v


def _io(kind: str, value: Any, *, occurs: bool) -> dict[str, dict[str, Any]]:
    """A registration's ``inputs`` or ``outputs``: ``{name: {"schema", "title"?,
    "description"?, "minOccurs"?, "maxOccurs"?}}``; every schema a valid JSON Schema."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise BadRequest(f"'{kind}' must be an object of name -> {{\"schema\": ...}}")
    if len(value) > MAX_IO:
        raise BadRequest(f"'{kind}' has {len(value)} entries (at most {MAX_IO})")
    out: dict[str, dict[str, Any]] = {}
    for name, spec in value.items():
        where = f"{kind}.{str(name)[:64]}"
        if not IO_NAME.fullmatch(name):
            raise BadRequest(
                f"{kind}: {str(name)[:64]!r} is not a name (letters, digits, '_'; not "
                "starting with a digit; at most 64)"
            )
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise BadRequest(f"{where} must be an object with a 'schema' (a JSON Schema)")
        unknown = sorted(str(k) for k in spec if k not in IO_KEYS)
        if unknown:
            raise BadRequest(f"{where}: unknown key(s) {unknown}; allowed: {sorted(IO_KEYS)}")
        schema = spec["schema"]
        # The service checks inputs against it: nothing it may fetch (a $ref to a URL or a
        # file), no keyword an input can make slow (a backtracking pattern...).
        try:
            jsonschema_safe.check_user_schema(schema)
        except jsonschema_safe.UnsafeSchema as e:
            raise BadRequest(f"{where}.schema: {e}") from None
        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as e:
            raise BadRequest(f"{where}.schema is not a valid JSON Schema: {e.message}") from None
        item: dict[str, Any] = {
            "title": _text(spec, "title", MAX_TITLE, name),
            "description": _text(spec, "description", MAX_DESCRIPTION),
            "schema": schema,
        }
        if occurs:
            item["minOccurs"] = _occurs(where, spec, "minOccurs", 1)
            item["maxOccurs"] = _occurs(where, spec, "maxOccurs", 1)
        out[name] = item
    return out


def _visibility(value: Any, caller: Caller) -> str:
    if value in (None, "", "private"):
        return "private"
    if isinstance(value, str) and value.startswith("project:"):
        project = value.split(":", 1)[1]
        if project in caller.projects:
            return value
        mine = ", ".join(caller.projects) or "none"
        raise BadRequest(
            f"visibility {value[:300]!r}: {project[:255]!r} is not one of your projects ({mine})",
            403,
        )
    raise BadRequest(f"visibility must be 'private' or 'project:<name>', not {str(value)[:300]!r}")


def _code(value: Any, max_bytes: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise BadRequest("'code' must be the function pickled by cloudpickle, base64-encoded")
    # The decoded size is known before decoding: refuse a huge one without decoding it.
    if len(value) * 3 // 4 > max_bytes + 3:
        raise BadRequest(
            f"'code' is about {len(value) * 3 // 4} bytes once decoded (at most {max_bytes})",
            413,
        )
    try:
        code = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("'code' is not valid base64") from None
    if len(code) > max_bytes:
        raise BadRequest(f"'code' is {len(code)} bytes once decoded (at most {max_bytes})", 413)
    if not code or code[0] != PICKLE_PROTO:
        raise BadRequest("'code' is not a pickle (cloudpickle.dumps of the function)")
    return code


def parse_deploy(doc: Any, caller: Caller, settings: Any) -> dict[str, Any]:
    """A registration body checked and normalized: ``{"id", "visibility", "description",
    "code", "source", "python"}`` (the description in the process description's shape).
    Refusals: 400 (a field), 403 (a project not the caller's), 413 (the code's size)."""
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(str(k)[:64] for k in doc if k not in DEPLOY_KEYS)
    if unknown:
        raise BadRequest(f"unknown key(s) {unknown}; allowed: {sorted(DEPLOY_KEYS)}")
    process_id = doc.get("id")
    if not isinstance(process_id, str) or not PROCESS_ID.fullmatch(process_id):
        raise BadRequest(
            f"'id' must match {PROCESS_ID.pattern} (lower case letters, digits, '-'), not "
            f"{str(process_id)[:100]!r}"
        )
    if process_id in schemas.PROCESS_IDS:
        raise BadRequest(f"'{process_id}' is a templated process's id: choose another", 409)
    inputs = _io("inputs", doc.get("inputs"), occurs=True)
    outputs = _io("outputs", doc.get("outputs"), occurs=False)
    if not outputs:
        raise BadRequest("'outputs' must name at least one output")
    python = _text(doc, "python", 16)
    if python and not PYTHON_VERSION.fullmatch(python):
        raise BadRequest(f"'python' is not a Python version: {python!r}")
    cluster = doc.get("cluster", True)
    if not isinstance(cluster, bool):
        raise BadRequest(f"'cluster' must be true or false, not {str(cluster)[:40]!r}")
    return {
        "id": process_id,
        "title": _text(doc, "title", MAX_TITLE, process_id) or process_id,
        "description": _text(doc, "description", MAX_DESCRIPTION),
        "inputs": inputs,
        "outputs": outputs,
        "visibility": _visibility(doc.get("visibility"), caller),
        "code": _code(doc.get("code"), settings.max_code_bytes),
        "source": _text(doc, "source", MAX_SOURCE),
        "python": python,
        "cluster": cluster,
    }


def register(db_url: str, caller: Caller, doc: Any, settings: Any) -> tuple[dict, bool]:
    """Store a user process (new, or a new version of the caller's own). Returns its
    description and whether it is new. Another user's id: 409; past
    ``max_user_processes``: 400. Nothing is stored on a refusal."""
    spec = parse_deploy(doc, caller, settings)
    existing = store.get_user_process(db_url, spec["id"], code=False)
    if existing is not None and existing["owner"] != caller.name:
        raise BadRequest(f"process id {spec['id']!r} is taken by another user", 409)
    if existing is None and store.count_user_processes(db_url, caller.name) >= (
        settings.max_user_processes
    ):
        raise BadRequest(
            f"you have {settings.max_user_processes} registered processes (the limit): "
            "remove one first (DELETE processes/<id>)"
        )
    version = (existing["version"] + 1) if existing else 1
    try:
        description = schemas.describe_user_process(
            spec["id"], spec["title"], spec["description"], spec["inputs"], spec["outputs"],
            str(version), cluster=spec["cluster"],
        )  # fmt: skip
    except schemas.InputError as e:  # (parse_deploy refuses these first)
        raise BadRequest(str(e)) from None
    try:
        row = store.save_user_process(
            db_url,
            id=spec["id"],
            owner=caller.name,
            visibility=spec["visibility"],
            description=description,
            code=spec["code"],
            source=spec["source"],
            python=spec["python"],
        )
    except store.Taken:  # registered by another user in between
        raise BadRequest(f"process id {spec['id']!r} is taken by another user", 409) from None
    return user_description(row), existing is None


def unregister(db_url: str, caller: Caller, process_id: str) -> None:
    """Remove a user process: its owner or an admin (project members who see it: 403;
    others and templated ids: 404 / 403)."""
    if process_id in schemas.PROCESS_IDS:
        raise BadRequest(f"{process_id!r} is a templated process: it cannot be removed", 403)
    row = (
        store.get_user_process(db_url, process_id, code=False)
        if PROCESS_ID.fullmatch(process_id)
        else None
    )
    if row is None or not can_see(row, caller):
        raise no_such_process(process_id)
    if row["owner"] != caller.name and not caller.admin:
        raise BadRequest(
            f"process {process_id!r} is {row['owner']}'s: only they (or an admin) may remove it",
            403,
        )
    store.delete_user_process(db_url, process_id)
