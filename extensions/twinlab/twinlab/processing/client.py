"""The processing service from a notebook: list, describe, register and unregister processes.

Talks to the platform's OGC API - Processes service (``/services/processing/``) with the
server's token (``Authorization: token $JUPYTERHUB_API_TOKEN``), so the service answers for
the server's user. Jobs (execution, status, results) are :mod:`twinlab.processing.job`.
Nothing numerical is imported here: ``import twinlab.processing`` stays cheap.
"""

from __future__ import annotations

import base64
import inspect
import re
import sys
import sysconfig
import types
import typing
from pathlib import Path
from typing import Any, Final

import requests

from twinlab import environment
from twinlab.contract import ENV_HUB_API_URL, ENV_SERVICES

__all__ = [
    "Client",
    "ProcessingError",
    "default_client",
    "describe",
    "processes",
    "quote_id",
    "register",
    "schema_of",
    "unregister",
]

#: The service's name in ``$TWINHUB_SERVICES``.
SERVICE: Final = "processing"
#: The service straight (a job's runner gets it; a notebook has ``$TWINHUB_SERVICES``).
ENV_PROCESSING_URL: Final = "TWINHUB_PROCESSING_URL"
#: Processes asked for per request (the service's most).
PAGE: Final = 1000
#: Seconds to wait for one answer of the service.
TIMEOUT: Final = 60.0
#: What a process id may look like (the service's rule; checked here to fail before sending).
PROCESS_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
#: Python types accepted as an input/output declaration -> their JSON Schema type.
TYPE_SCHEMAS: Final[dict[type, str]] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    tuple: "array",
    dict: "object",
}


class ProcessingError(ValueError):
    """The service refused or failed (``status``: its HTTP status, 0 when not reached); the
    message is the service's own description."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def service_url() -> str:
    """The service's root with a trailing slash: ``$TWINHUB_SERVICES``' ``processing``, else
    ``$TWINHUB_PROCESSING_URL`` (a job's runner), else the hub's URL + ``services/processing/``."""
    url = environment.services().get(SERVICE) or environment.text(ENV_PROCESSING_URL)
    if not url:
        hub_api = environment.text(ENV_HUB_API_URL).rstrip("/")
        if hub_api.endswith("/hub/api"):
            url = hub_api[: -len("hub/api")] + "services/processing/"
    if not url:
        raise ProcessingError(
            f"no processing service: ${ENV_SERVICES} lists none and ${ENV_HUB_API_URL} is not "
            "set (this is not a twinhub server): pass Client(url=..., token=...)"
        )
    return url if url.endswith("/") else url + "/"


def _description(resp: requests.Response) -> str:
    """The service's message of an error answer (``description``), else its first bytes."""
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for key in ("description", "detail", "title", "message"):
            if isinstance(doc.get(key), str) and doc[key]:
                return str(doc[key])
    return resp.text.strip()[:300] or resp.reason or "no reason given"


class Client:
    """One processing service and the token to use it with.

    ``url``/``token`` default to what the hub set in this server (see :func:`service_url`,
    ``$JUPYTERHUB_API_TOKEN``). The module's functions use :func:`default_client`.
    """

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = TIMEOUT
    ) -> None:
        self.url = (url.rstrip("/") + "/") if url else service_url()
        if not self.url.startswith(("http://", "https://")):
            raise ProcessingError(f"the processing service URL {self.url!r} is not http(s)")
        self.token = environment.hub_token() if token is None else token
        self.timeout = timeout
        self.session = requests.Session()
        # The token goes to the platform's service only: not through a proxy named in the
        # environment, not replaced from ~/.netrc.
        self.session.trust_env = False
        self.session.headers["Accept"] = "application/json"
        if self.token:
            self.session.headers["Authorization"] = f"token {self.token}"

    def __repr__(self) -> str:
        return f"<twinlab.processing.Client {self.url}>"

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        """``method`` on ``path`` (relative to the service's root); an answer of 300 or more
        (redirects are not followed) raises :class:`ProcessingError` with the service's
        description."""
        url = self.url + path.lstrip("/")
        try:
            # never follow a redirect: the token would go along to wherever it points
            resp = self.session.request(
                method, url, timeout=self.timeout, allow_redirects=False, **kw
            )
        except requests.RequestException as e:
            raise ProcessingError(
                f"the processing service is not reachable at {self.url}: {e}"
            ) from None
        if resp.status_code >= 300:
            raise ProcessingError(
                f"{_description(resp)} ({method} {path}: {resp.status_code})", resp.status_code
            )
        return resp

    def get_json(self, path: str, **params: Any) -> Any:
        resp = self.request("GET", path, params={k: v for k, v in params.items() if v is not None})
        try:
            return resp.json()
        except ValueError:
            raise ProcessingError(
                f"the service answered no JSON at {path}: {resp.text[:200]!r}"
            ) from None

    # -- processes -------------------------------------------------------------------------
    def processes(self) -> list[dict[str, Any]]:
        """Summaries (``id``, ``title``, ``description``, ``version``...) of every process
        you may run: the templated ones, yours, and your projects' ones."""
        found: list[dict[str, Any]] = []
        while True:
            doc = self.get_json("processes", limit=PAGE, offset=len(found))
            page = doc.get("processes") if isinstance(doc, dict) else None
            if not isinstance(page, list):
                raise ProcessingError("the service's process list has no 'processes' list")
            found += page
            if len(page) < PAGE:
                return found

    def describe(self, process_id: str) -> dict[str, Any]:
        """The process's full description: its inputs and outputs with their JSON Schemas."""
        return self.get_json(f"processes/{quote_id(process_id)}")

    def register(
        self,
        fn: typing.Callable[..., Any],
        inputs: dict[str, Any] | None = None,
        outputs: dict[str, Any] | None = None,
        *,
        id: str | None = None,  # noqa: A002 - the process's id, as OGC names it
        title: str | None = None,
        description: str | None = None,
        project: str | None = None,
        cluster: bool = True,
    ) -> dict[str, Any]:
        """Register ``fn`` as a process of yours (see :func:`register`); its description."""
        body = registration(
            fn,
            inputs,
            outputs,
            id=id,
            title=title,
            description=description,
            project=project,
            cluster=cluster,
        )
        resp = self.request("POST", "processes", json=body)
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("id") == body["id"] and "inputs" in doc:
            return doc
        return self.describe(body["id"])

    def unregister(self, process_id: str) -> None:
        """Remove a process you registered (its finished jobs stay)."""
        self.request("DELETE", f"processes/{quote_id(process_id)}")


def quote_id(process_id: str) -> str:
    if not isinstance(process_id, str) or not process_id or "/" in process_id:
        raise ProcessingError(f"not a process id: {process_id!r}")
    return requests.utils.quote(process_id, safe="")


# -- declaring inputs and outputs -----------------------------------------------------------
def schema_of(declared: Any) -> dict[str, Any]:
    """A JSON Schema from an input/output declaration: a schema (dict) as it is, a Python
    type (``int``, ``float``, ``str``, ``bool``, ``list``, ``dict``), ``list[int]``,
    ``dict[str, float]``, ``X | None``, or ``typing.Any``/``None`` (any JSON value)."""
    if declared is None or declared is typing.Any or declared is inspect.Parameter.empty:
        return {}
    if isinstance(declared, dict):
        return dict(declared)
    if isinstance(declared, type) and declared in TYPE_SCHEMAS:
        return {"type": TYPE_SCHEMAS[declared]}
    origin, args = typing.get_origin(declared), typing.get_args(declared)
    if origin in (list, tuple, set, frozenset) or origin is typing.Sequence:
        items = [a for a in args if a is not Ellipsis]
        schema: dict[str, Any] = {"type": "array"}
        if len(set(items)) == 1:
            schema["items"] = schema_of(items[0])
        return schema
    if origin is dict:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = schema_of(args[1])
        return schema
    if origin in (typing.Union, types.UnionType):
        kinds = [schema_of(a) for a in args if a is not type(None)]
        if len(kinds) == 1 and type(None) in args:
            return {"anyOf": [kinds[0], {"type": "null"}]}
        return {"anyOf": kinds}
    raise ProcessingError(
        f"cannot declare {declared!r}: give a JSON Schema (a dict) or one of "
        "int, float, str, bool, list, dict (or list[...], dict[str, ...])"
    )


def _parameters(fn: typing.Callable[..., Any]) -> list[inspect.Parameter]:
    """``fn``'s inputs: its parameters but a leading ``ctx`` (the runner passes the job's
    context there) and ``*args``/``**kwargs``."""
    params = list(inspect.signature(fn).parameters.values())
    if params and params[0].name == "ctx":
        params = params[1:]
    return [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _inputs(fn: typing.Callable[..., Any], inputs: dict[str, Any] | None) -> dict[str, Any]:
    """The description's inputs: declared ones, else from ``fn``'s annotations; a parameter
    with a default is optional (``minOccurs`` 0) and its default goes into the schema."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: declare inputs= instead
        hints = {}
    params = {p.name: p for p in _parameters(fn)}
    names = list(inputs) if inputs is not None else list(params)
    out: dict[str, Any] = {}
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise ProcessingError(f"input name {name!r} is not a Python identifier")
        declared = inputs[name] if inputs is not None else hints.get(name, params[name].annotation)
        schema = schema_of(declared)
        param = params.get(name)
        optional = param is not None and param.default is not inspect.Parameter.empty
        if optional and "default" not in schema and _jsonable(param.default):
            schema["default"] = param.default
        out[name] = {"title": name, "schema": schema, "minOccurs": 0 if optional else 1}
        if param is None and not any(
            p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()
        ):
            raise ProcessingError(f"input {name!r} is not a parameter of {fn.__name__}()")
    return out


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, dict))


def _outputs(outputs: dict[str, Any] | None) -> dict[str, Any]:
    """The description's outputs (default: one output ``result``, any JSON value)."""
    declared = {"result": None} if outputs is None else outputs
    if not declared:
        raise ProcessingError("a process needs at least one output")
    out = {}
    for name, kind in declared.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ProcessingError(f"output name {name!r} is not a Python identifier")
        out[name] = {"title": name, "schema": schema_of(kind)}
    return out


def _installed(module: types.ModuleType) -> bool:
    """True when ``module`` can be imported by the job's runner: built in, or a file of
    this Python's installation (stdlib, site-packages), not a file beside the notebook."""
    path = getattr(module, "__file__", None)
    if not path:  # built in or frozen: every Python has it
        return True
    where = Path(path).resolve()
    roots = {
        Path(p).resolve()
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(key))
    }
    return any(where.is_relative_to(root) for root in roots)


def pickle_function(fn: typing.Callable[..., Any]) -> bytes:
    """``fn`` pickled with cloudpickle, *by value* when its module would not import on the
    runner (``__main__``, a module beside the notebook): the code travels with the job."""
    import cloudpickle  # start-up cost: loaded on first registration

    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    by_value = module is not None and module.__name__ != "__main__" and not _installed(module)
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(fn)
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)


def _default_id(fn: typing.Callable[..., Any]) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", getattr(fn, "__name__", "").lower()).strip("-")
    return name if PROCESS_ID.match(name) else ""


def registration(
    fn: typing.Callable[..., Any],
    inputs: dict[str, Any] | None = None,
    outputs: dict[str, Any] | None = None,
    *,
    id: str | None = None,  # noqa: A002 - the process's id, as OGC names it
    title: str | None = None,
    description: str | None = None,
    project: str | None = None,
    cluster: bool = True,
) -> dict[str, Any]:
    """The body of ``POST processes`` that registers ``fn`` (checked before sending);
    ``cluster`` is sent only when False (a service that cannot run a user process without
    a cluster then refuses the unknown key, rather than giving one silently)."""
    if not callable(fn):
        raise ProcessingError(f"register() needs a function, got {type(fn).__name__}")
    pid = id if id is not None else _default_id(fn)
    if not isinstance(pid, str) or not PROCESS_ID.match(pid):
        raise ProcessingError(
            f"process id {pid!r} must be 2 to 63 of a-z, 0-9 and '-', starting with a letter "
            "or digit: pass id=..."
        )
    if project is not None and (not isinstance(project, str) or not project):
        raise ProcessingError(f"project must be a project's name, got {project!r}")
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):  # defined in a console, or a built-in
        source = ""
    doc = inspect.getdoc(fn) or ""
    body: dict[str, Any] = {
        "id": pid,
        "title": title if title is not None else (doc.splitlines()[0] if doc else pid),
        "description": description if description is not None else doc,
        "inputs": _inputs(fn, inputs),
        "outputs": _outputs(outputs),
        "visibility": f"project:{project}" if project else "private",
        "code": base64.b64encode(pickle_function(fn)).decode("ascii"),
        "source": source,
        "python": ".".join(map(str, sys.version_info[:3])),
    }
    if not cluster:
        body["cluster"] = False
    return body


# -- the module's functions (the default client) --------------------------------------------
_default: Client | None = None


def default_client() -> Client:
    """The client of this server's processing service (made on first use)."""
    global _default
    if _default is None:
        _default = Client()
    return _default


def processes() -> list[dict[str, Any]]:
    """Summaries of every process you may run (``id``, ``title``, ``description``...)."""
    return default_client().processes()


def describe(process_id: str) -> dict[str, Any]:
    """A process's description: inputs and outputs with their JSON Schemas."""
    return default_client().describe(process_id)


def register(
    fn: typing.Callable[..., Any],
    inputs: dict[str, Any] | None = None,
    outputs: dict[str, Any] | None = None,
    *,
    id: str | None = None,  # noqa: A002 - the process's id, as OGC names it
    title: str | None = None,
    description: str | None = None,
    project: str | None = None,
    cluster: bool = True,
) -> dict[str, Any]:
    """Register ``fn`` as a process and return its description.

    ``inputs``/``outputs``: ``{name: JSON Schema or Python type}``; inputs default to
    ``fn``'s parameters (their annotations; a default makes one optional), outputs to one
    ``result``. ``fn`` returns a dict by output name (or, with one output, its value); a
    first parameter named ``ctx`` gets the job's context. The function is pickled (by value when its module is not installed)
    and runs as you, in your jobs; ``project=`` shares it with that project's members
    (default: private). ``id`` defaults to the function's name (``my_fn`` -> ``my-fn``).
    ``cluster=False``: the job gets no Dask cluster of its own (a quick start, for work
    that needs none).
    """
    return default_client().register(
        fn,
        inputs,
        outputs,
        id=id,
        title=title,
        description=description,
        project=project,
        cluster=cluster,
    )


def unregister(process_id: str) -> None:
    """Remove a process you registered."""
    default_client().unregister(process_id)
