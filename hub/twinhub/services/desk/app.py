"""The ``desk`` service: support tickets over REST, the desk's page, metrics (FastAPI).

``uvicorn --factory twinhub.services.desk.app:create_app`` (the supervisor's ``desk``
component). Under ``/services/desk/``:

=============================================  ================================================
``GET  ""``                                    the page (browsers; ``f=html``) or JSON:
                                               ``{"user", "staff", "tickets", "services",
                                               "projects", "links"}``
``POST api/v1/tickets``                        a new ticket (any user): ``subject``, ``body``,
                                               ``service``?, ``project``?, ``email``? -> 201
``GET  api/v1/tickets[?state=]``               own tickets; staff: everybody's
``GET  api/v1/tickets/{id}``                   owner or staff (else 404): messages, attachments
``POST api/v1/tickets/{id}/messages``          ``{"body"}``: owner -> open, staff -> answered
``POST api/v1/tickets/{id}/transitions``       ``{"to": "closed" | "open"}`` (owner or staff)
``POST api/v1/tickets/{id}/attachments``       ``?filename=``, the file as the raw body -> 201
``GET  api/v1/tickets/{id}/attachments/{aid}`` the file, as a download (never rendered here)
``GET  metrics``                               Prometheus text (tokens with ``read:metrics``)
``GET  health``                                no credentials
=============================================  ================================================

Staff are members of ``TwinhubDesk.support_group`` and hub admins calling with an admin's
token (a browser's sign-on token carries no admin scope: on the page, admins are staff
only as members of the group). Mails: a new ticket and an owner's message to an answered
ticket go to the group's members, staff answers and state changes to the owner.
Every request but ``health`` passes :class:`~twinhub.services.hubauth.HubAuthMiddleware`
(token, or the browser's sign-on cookie; cookie writes need the page's XSRF header), after
the request limits (bodies up to ``max_attachment_bytes``). Errors are JSON ``{"code",
"description"}``; a refused call stores nothing. Users (not staff) have caps: open tickets,
tickets and messages per hour (429), attachment bytes in all (413); every ticket holds at
most ``max_messages`` messages, staff's included (429).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import unicodedata
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from twinlab.contract import ENV_HUB_API_URL, ENV_HUB_TOKEN

from ... import __version__
from ...process.runtime import Runtime
from ..asgi import (
    ASGIApp,
    BadRequest,
    Receive,
    RequestLimitsMiddleware,
    Scope,
    Send,
    error_body,
    header,
)
from ..hubauth import HubAuthMiddleware
from . import SERVICE_PREFIX, TwinhubDesk, pages, store
from .context import Desk
from .metrics import REGISTRY, TICKETS

log = logging.getLogger("twinhub.desk")

PUBLIC_PATHS = ("health",)
METRICS_SCOPE = "read:metrics"
#: A JSON body (a ticket, a message) is at most this large: max_body_chars characters of
#: up to 4 UTF-8 bytes, escaped, plus the other fields.
JSON_OVERHEAD = 16 * 1024
#: Uploads travel as this media type inside the service (their own type moves to the
#: request's state): raw bytes, not JSON, so the request limits do not depth-check them.
UPLOAD_MEDIA = "application/octet-stream"
SUBJECT_MAX = 200
EMAIL_MAX = 320
FILENAME_MAX = 255
_EMAIL = re.compile(r"[^@\s<>,;\"]{1,64}@[^@\s<>,;\"]{1,255}\.[^@\s<>,;\"]{1,63}")
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MEDIA = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")


# -- input -----------------------------------------------------------------------------------
def json_object(raw: bytes, max_bytes: int) -> dict[str, Any]:
    if len(raw) > max_bytes:
        raise BadRequest(f"request body larger than {max_bytes} bytes (the limit)", 413)
    try:
        doc = json.loads(raw or b"null")
    except ValueError as e:
        raise BadRequest(f"the body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    return doc


def text_field(doc: dict[str, Any], name: str, max_chars: int, *, required: bool = True) -> str:
    """A string field, stripped; one of more than ``max_chars`` characters: 400."""
    v = doc.get(name)
    if v is None or v == "":
        if required:
            raise BadRequest(f"{name!r} is required")
        return ""
    if not isinstance(v, str):
        raise BadRequest(f"{name!r} must be a string, not {type(v).__name__}")
    v = v.strip()
    if required and not v:
        raise BadRequest(f"{name!r} must not be blank")
    if len(v) > max_chars:
        raise BadRequest(f"{name!r} has {len(v)} characters (at most {max_chars})")
    if _CONTROLS.search(v):
        raise BadRequest(f"{name!r} holds control characters")
    return v


def subject_field(doc: dict[str, Any]) -> str:
    v = text_field(doc, "subject", SUBJECT_MAX)
    if "\n" in v or "\r" in v or "\t" in v:  # it becomes a mail's Subject header
        raise BadRequest("'subject' must be one line")
    return v


def email_field(doc: dict[str, Any]) -> str:
    v = text_field(doc, "email", EMAIL_MAX, required=False)
    if v and not _EMAIL.fullmatch(v):
        raise BadRequest(f"'email' is not a mail address: {v[:100]!r}")
    return v


def clean_filename(raw: str) -> str:
    """The last path component, controls and quotes out, at most 255 characters; "": none."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C" and ch not in '"')
    name = name.strip().lstrip(".")
    return name[:FILENAME_MAX]


def clean_media_type(raw: str) -> str:
    """The upload's media type (``type/subtype``, lower case, no parameters), else
    ``application/octet-stream``: whatever it says, it is served as a download."""
    media = raw.split(";", 1)[0].strip().lower()
    return media if _MEDIA.fullmatch(media) else UPLOAD_MEDIA


def content_disposition(filename: str) -> str:
    ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_") or "attachment"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


# -- the app ---------------------------------------------------------------------------------
def build_api(desk: Desk) -> FastAPI:
    """The routes (no authentication here: :func:`create_app` wraps it)."""
    s = desk.settings
    p = SERVICE_PREFIX
    api = p + "api/v1/"
    json_max = s.max_body_chars * 4 + JSON_OVERHEAD

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with httpx.AsyncClient(
            headers={"Authorization": f"token {desk.token}"}, timeout=30
        ) as client:
            desk.hub = client
            try:
                yield
            finally:
                await desk.mailer.drain()

    app = FastAPI(
        title="twinhub desk",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.desk = desk

    @app.exception_handler(BadRequest)
    async def _refused(_request: Request, e: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(e.status, e.message), status_code=e.status)

    @app.exception_handler(store.DeskError)
    async def _desk_refused(_request: Request, e: store.DeskError) -> JSONResponse:
        headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
        return JSONResponse(error_body(e.status, e.message), status_code=e.status, headers=headers)

    @app.get(p + "health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get(p + "metrics")
    async def metrics(request: Request) -> Response:
        who = request.state.hub_user
        if METRICS_SCOPE not in (who.get("scopes") or ()):
            raise BadRequest(
                f"metrics need a token with the scope {METRICS_SCOPE!r}; the token of "
                f"{who.get('name')!r} lacks it",
                403,
            )
        for state, n in (await asyncio.to_thread(store.counts_by_state, desk.db_url)).items():
            TICKETS.labels(state).set(n)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get(p)
    async def landing(request: Request) -> Response:
        me = await desk.caller(request)
        return await pages.landing(desk, request, me)

    @app.get(p + "static/{name:path}", include_in_schema=False)
    async def static(name: str) -> Response:
        return pages.static_file(name)

    # -- tickets ---------------------------------------------------------------------------
    @app.get(api + "tickets")
    async def list_tickets(
        request: Request,
        state: str | None = None,
        owner: str | None = None,
        service: str | None = None,
        project: str | None = None,
    ) -> dict[str, Any]:
        """Own tickets; staff: everybody's, optionally one user's (``owner``). Filters:
        ``state``, ``service``, ``project``."""
        me = await desk.caller(request)
        if state is not None and state not in store.STATES:
            raise BadRequest(f"unknown state {state!r}: one of {', '.join(store.STATES)}")
        if owner is not None and not me.staff and owner != me.name:
            raise BadRequest(f"only support staff may list the tickets of {owner!r}", 403)
        rows = await asyncio.to_thread(
            store.list_tickets,
            desk.db_url,
            owner=me.viewer if me.viewer is not None else owner,
            state=state,
            service=service,
            project=project,
        )
        return {"tickets": rows}

    @app.post(api + "tickets", status_code=201)
    async def create_ticket(request: Request) -> dict[str, Any]:
        me = await desk.caller(request)
        doc = json_object(await request.body(), json_max)
        subject = subject_field(doc)
        body = text_field(doc, "body", s.max_body_chars)
        email = email_field(doc)
        service = text_field(doc, "service", 64, required=False) or None
        project = text_field(doc, "project", 255, required=False) or None
        if service and service not in {e["slug"] for e in await desk.services_for(me)}:
            raise BadRequest(f"no service {service!r} in the registry that you may use")
        if project and project not in await desk.projects_of(me):
            raise BadRequest(f"{project!r} is not one of your projects")
        ticket = await asyncio.to_thread(
            store.create_ticket,
            desk.db_url,
            owner=me.name,
            subject=subject,
            body=body,
            service=service,
            project=project,
            email=email,
            caps=me.caps(s),
        )
        await desk.notify_new(ticket, body)
        return ticket

    @app.get(api + "tickets/{ticket_id}")
    async def get_ticket(request: Request, ticket_id: int) -> dict[str, Any]:
        me = await desk.caller(request)
        return await asyncio.to_thread(store.get_ticket, desk.db_url, ticket_id, viewer=me.viewer)

    @app.post(api + "tickets/{ticket_id}/messages", status_code=201)
    async def add_message(request: Request, ticket_id: int) -> dict[str, Any]:
        me = await desk.caller(request)
        doc = json_object(await request.body(), json_max)
        body = text_field(doc, "body", s.max_body_chars)
        message, ticket, before = await asyncio.to_thread(
            store.add_message,
            desk.db_url,
            ticket_id,
            author=me.name,
            staff=me.staff,
            body=body,
            caps=me.caps(s),
            max_messages=s.max_messages,
        )
        if message["staff"]:
            desk.notify_owner(ticket, "answer", body)
        elif before == "answered":
            # Back in the staff's queue after their answer: tell them, or it waits unseen.
            # (Follow-ups to a still-open ticket are not mailed: staff have it in view.)
            await desk.notify_staff(ticket, "reply", body)
        return {"message": message, "ticket": ticket}

    @app.post(api + "tickets/{ticket_id}/transitions")
    async def transition(request: Request, ticket_id: int) -> dict[str, Any]:
        me = await desk.caller(request)
        doc = json_object(await request.body(), json_max)
        to = doc.get("to")
        if not isinstance(to, str) or not to:
            raise BadRequest("'to' is required: the state to move the ticket to")
        ticket, _before = await asyncio.to_thread(
            store.transition,
            desk.db_url,
            ticket_id,
            to=to,
            actor=me.name,
            staff=me.staff,
            caps=me.caps(s),
        )
        if me.name != ticket["owner"]:  # the owner knows what they did themselves
            desk.notify_owner(ticket, "state")
        return ticket

    # -- attachments -----------------------------------------------------------------------
    @app.post(api + "tickets/{ticket_id}/attachments", status_code=201)
    async def add_attachment(request: Request, ticket_id: int, filename: str = "") -> Any:
        me = await desk.caller(request)
        name = clean_filename(filename)
        if not name:
            raise BadRequest("'filename' (a query parameter) is required: the file's name")
        data = await request.body()
        if len(data) > s.max_attachment_bytes:  # the request limits' cap may be larger
            raise BadRequest(
                f"attachment of {len(data)} bytes is larger than {s.max_attachment_bytes} "
                "bytes (the limit)",
                413,
            )
        if not data:
            raise BadRequest("the attachment is empty: send the file as the request's body")
        media = clean_media_type(request.scope.get("state", {}).get("upload_type", ""))
        return await asyncio.to_thread(
            store.add_attachment,
            desk.db_url,
            ticket_id,
            uploader=me.name,
            staff=me.staff,
            filename=name,
            content_type=media,
            data=data,
            max_attachments=s.max_attachments,
            caps=me.caps(s),
        )

    @app.get(api + "tickets/{ticket_id}/attachments/{attachment_id}")
    async def get_attachment(request: Request, ticket_id: int, attachment_id: int) -> Response:
        me = await desk.caller(request)
        a = await asyncio.to_thread(
            store.get_attachment, desk.db_url, ticket_id, attachment_id, viewer=me.viewer
        )
        return Response(
            a["data"],
            media_type=a["content_type"],
            headers={
                "Content-Disposition": content_disposition(a["filename"]),
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "sandbox",
                "Cache-Control": "private, no-store",
            },
        )

    return app


class UploadTypes:
    """Outermost: an upload's ``Content-Type`` moves to ``scope["state"]["upload_type"]`` and
    the request travels on as ``application/octet-stream`` (raw bytes the request limits do
    not read as JSON: a binary file full of brackets is no deeply nested JSON)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and scope.get("path", "").endswith("/attachments")
        ):
            scope.setdefault("state", {})["upload_type"] = header(scope, b"content-type")
            scope["headers"] = [
                (k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-type"
            ] + [(b"content-type", UPLOAD_MEDIA.encode())]
        await self.app(scope, receive, send)


def create_app(rt: Runtime | None = None) -> ASGIApp:
    """The service app; ``rt`` defaults to the running platform's ($TWINHUB_STATE)."""
    rt = rt or Runtime.load()
    settings = TwinhubDesk(config=rt.config)
    hub_api = os.environ.get(ENV_HUB_API_URL, rt.hub_api_url).rstrip("/")
    desk = Desk(rt, settings, hub_api, os.environ.get(ENV_HUB_TOKEN, ""))
    app = build_api(desk)
    authed = HubAuthMiddleware(
        app, prefix=SERVICE_PREFIX, public_paths=PUBLIC_PATHS, xsrf_writes=True
    )
    limited = RequestLimitsMiddleware(
        authed,
        max_body_bytes=max(
            settings.max_attachment_bytes, settings.max_body_chars * 4 + JSON_OVERHEAD
        ),
        raw_body_types=frozenset({UPLOAD_MEDIA}),
    )
    return UploadTypes(limited)
