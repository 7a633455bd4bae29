"""Who may do what: a matrix of actors x endpoints against the real multi-user platform.

Each row is one endpoint; each column an actor (anonymous, the owner ``alice``, another user
``bob``, ``mira`` who shares a project with alice, an admin, an admin's token narrowed to
``access:services``; for the registry and the desk also ``rita`` of the registry's reviewers
group and ``sam`` of the support group).  Later issues add their endpoints (registry,
accounting, data lake...) as rows here.  Expected statuses are sets because JupyterHub
answers "not yours" with 403 or 404 depending on the endpoint, and browser-like requests
without a token get redirected.

Writes send ``{}`` unless :data:`BODIES` names a body; rows whose write would change what
a later row reads (a review, a staff answer) leave out the actors it would succeed for.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.helpers.processing import register, submit, wait_job
from tests.helpers.registry import wait_routed
from tests.helpers.tiles import PUBLIC_COLLECTION as TILES_PUBLIC
from tests.helpers.tiles import TestItem, lake_test_item, private_item, remove_item

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

OK = {200, 201, 204}
DENIED = {401, 403, 404}
LOGIN = {302, 401, 403}  # anonymous: redirected to the login page or refused
REDIRECT = {302, 303, 307}  # a page that sends a logged-in user on

#: A hub group alice and mira (the "member" actor) are in: a project for accounting.
PROJECT = "authz-project"
#: The registry's reviewers (``rita``) and the desk's staff (``sam``): their hub groups.
REVIEWERS = "registry-reviewers"
SUPPORT = "support"
#: alice's integrated web application, visible to PROJECT's members only: its catalogue
#: entry and /services/<slug>/ behind the platform's sign-on.
PRIVATE_SLUG = "authz-private"
#: An entry of alice's waiting for review (state "evaluated"): the workflow's write rows.
PENDING_SLUG = "authz-pending"

# (method, path template, {actor: allowed statuses}); {owner} is alice's name.
MATRIX: list[tuple[str, str, dict[str, set[int]]]] = [
    ("GET", "hub/api/users", {"anon": DENIED, "owner": DENIED, "other": DENIED, "admin": OK}),
    ("GET", "hub/api/users/{owner}", {"anon": DENIED, "owner": OK, "other": DENIED, "admin": OK}),
    (
        "POST",
        "hub/api/users/{owner}/tokens",
        {"anon": DENIED, "owner": OK, "other": DENIED, "admin": OK},
    ),
    (
        "GET",
        "hub/api/users/{owner}/tokens",
        {"anon": DENIED, "owner": OK, "other": DENIED, "admin": OK},
    ),
    ("GET", "user/{owner}/api/status", {"anon": LOGIN, "owner": OK, "other": DENIED}),
    ("GET", "user/{owner}/api/contents", {"anon": LOGIN, "owner": OK, "other": DENIED}),
    ("GET", "user/{owner}/twinlab/api/info", {"anon": LOGIN, "owner": OK, "other": DENIED}),
    ("GET", "user/{owner}/twinlab/api/tutorials", {"anon": LOGIN, "owner": OK, "other": DENIED}),
    (
        "POST",
        "user/{owner}/twinlab/api/tutorials/01-getting-started.ipynb",
        {"anon": LOGIN, "owner": OK, "other": DENIED},
    ),
    (
        "GET",
        "services/dask-gateway/api/v1/clusters/",
        {"anon": DENIED, "owner": OK, "other": OK},
    ),
    ("GET", "hub/api/services", {"anon": DENIED, "owner": DENIED, "other": DENIED, "admin": OK}),
    # the data lake page's API (twinlab.serverext.lake): the server's owner only (the page
    # itself, behind jupyter-server-proxy, is checked in test_browse_api: the proxy answers
    # 500 to the GET-with-a-body these rows send)
    (
        "GET",
        "user/{owner}/twinlab/api/lake/collections",
        {"anon": LOGIN, "owner": OK, "other": DENIED},
    ),
    (
        "GET",
        "user/{owner}/twinlab/api/lake/search?limit=1",
        {"anon": LOGIN, "owner": OK, "other": DENIED},
    ),
    (
        "GET",
        "user/{owner}/twinlab/api/storage/buckets",
        {"anon": LOGIN, "owner": OK, "other": DENIED},
    ),
    (
        "GET",
        "user/{owner}/twinlab/api/storage/list?bucket=lake&limit=5",
        {"anon": LOGIN, "owner": OK, "other": DENIED},
    ),
    (
        "PUT",
        "user/{owner}/twinlab/api/storage/upload?key=authz/matrix.json",
        {"anon": LOGIN, "owner": OK, "other": DENIED},
    ),
    # hub services: every platform user may search the lake and read through the cache
    # (their access scope); anonymous callers never
    ("GET", "services/stac/collections", {"anon": DENIED, "owner": OK, "other": OK, "admin": OK}),
    ("GET", "services/stac/search?limit=1", {"anon": DENIED, "owner": OK, "other": OK}),
    ("GET", "services/cache/stats", {"anon": DENIED, "owner": OK, "other": OK, "admin": OK}),
    ("GET", "services/cache/metrics", {"anon": DENIED, "owner": OK, "other": OK, "admin": OK}),
    ("GET", "services/cache/health", {"anon": OK, "owner": OK, "other": OK}),
    (
        "GET",
        "services/cache/assets/nosuch/127.0.0.1:1/x",
        {"anon": DENIED, "owner": {404}, "other": {404}, "admin": {404}},
    ),
    ("POST", "services/cache/stats", {"anon": DENIED, "owner": {405}, "other": {405}}),
    # twinhub's hub pages: the help pages are the platform's public docs; set-password links
    # are made by admins and used with their token. Pages that take only the hub's cookie
    # (/hub/home: each user sees only their own; /hub/authorize: admins) are checked with
    # logged-in sessions in test_home_page.
    ("GET", "hub/help/", {"anon": OK, "owner": OK, "other": OK, "admin": OK}),
    ("GET", "hub/help/support", {"anon": OK, "owner": OK, "other": OK, "admin": OK}),
    (
        "POST",
        "hub/api/twinhub/users/{owner}/set-password-link",
        {"anon": DENIED, "owner": DENIED, "other": DENIED, "admin": OK},
    ),
    ("GET", "hub/set-password", {"anon": {400}, "owner": {400}, "other": {400}, "admin": {400}}),
    # accounting: one's own usage; a project's totals for its members; someone else's usage
    # and a project's per-member breakdown for admins; metrics need read:metrics (admins)
    (
        "GET",
        "services/accounting/api/v1/usage",
        {"anon": DENIED, "owner": OK, "other": OK, "member": OK, "admin": OK},
    ),
    (
        "GET",
        "services/accounting/api/v1/usage?user={owner}",
        {
            "anon": DENIED,
            "owner": OK,
            "other": {403},
            "member": {403},
            "admin": OK,
            "narrowed": {403},
        },
    ),
    (
        "GET",
        "services/accounting/api/v1/usage?project=" + PROJECT,
        {"anon": DENIED, "owner": OK, "other": {403}, "member": OK, "admin": OK},
    ),
    (
        "GET",
        "services/accounting/api/v1/usage?project=" + PROJECT + "&by=member",
        {"anon": DENIED, "owner": {403}, "other": {403}, "member": {403}, "admin": OK},
    ),
    (
        "GET",
        "services/accounting/api/v1/usage?project=" + PROJECT + "&user={owner}",
        {"anon": DENIED, "owner": OK, "other": {403}, "member": {403}, "admin": OK},
    ),
    (
        "GET",
        "services/accounting/metrics",
        {
            "anon": {401},
            "owner": {403},
            "other": {403},
            "member": {403},
            "admin": OK,
            "narrowed": {403},
        },
    ),
    ("GET", "services/accounting/health", {"anon": OK, "owner": OK, "other": OK, "admin": OK}),
    ("POST", "services/accounting/api/v1/usage", {"anon": DENIED, "owner": {405}, "admin": {405}}),
    # the Usage page (in the owner's server, behind its login) and its API
    (
        "GET",
        "user/{owner}/usage/",
        {"anon": LOGIN, "owner": OK, "other": DENIED, "narrowed": DENIED},
    ),
    (
        "GET",
        "user/{owner}/usage/api/usage",
        {"anon": LOGIN, "owner": OK, "other": DENIED, "narrowed": DENIED},
    ),
    # the service registry: the catalogue (OGC API - Records), the welcome page and its files
    # are anyone's; alice's project-only entry is seen by its members and admins; the REST
    # API needs a user; requests are seen by their provider, reviewers and admins (others:
    # 404); roles are checked before the state (403, then 409); metrics: read:metrics
    ("GET", "services/registry/", {"anon": OK, "owner": OK, "other": OK, "admin": OK}),
    ("GET", "services/registry/conformance", {"anon": OK, "owner": OK, "other": OK}),
    ("GET", "services/registry/collections", {"anon": OK, "owner": OK, "other": OK}),
    ("GET", "services/registry/collections/services", {"anon": OK, "owner": OK, "other": OK}),
    (
        "GET",
        "services/registry/collections/services/items?limit=5",
        {"anon": OK, "owner": OK, "other": OK, "member": OK, "admin": OK},
    ),
    (
        "GET",
        "services/registry/collections/services/items/" + PRIVATE_SLUG,
        {
            "anon": {404},
            "owner": OK,
            "other": {404},
            "member": OK,
            "reviewer": {404},
            "admin": OK,
            "narrowed": {404},
        },
    ),
    ("GET", "services/registry/welcome", {"anon": OK, "owner": OK, "other": OK, "admin": OK}),
    ("GET", "services/registry/static/registry.css", {"anon": OK, "owner": OK, "other": OK}),
    ("GET", "services/registry/health", {"anon": OK, "owner": OK, "other": OK}),
    (
        "GET",
        "services/registry/metrics",
        {
            "anon": {401},
            "owner": {403},
            "other": {403},
            "reviewer": {403},
            "admin": OK,
            "narrowed": {403},
        },
    ),
    # pages that need a login: the login button's target sends a user on to the welcome page
    ("GET", "services/registry/login", {"anon": LOGIN, "owner": REDIRECT, "other": REDIRECT}),
    (
        "GET",
        "services/registry/onboarding",
        {"anon": LOGIN, "owner": OK, "other": OK, "reviewer": OK, "admin": OK},
    ),
    (
        "GET",
        "services/registry/api/v1/vocabulary",
        {"anon": OK, "owner": OK, "other": OK, "admin": OK},
    ),
    (
        "GET",
        "services/registry/api/v1/entries",
        {"anon": OK, "owner": OK, "other": OK, "member": OK, "admin": OK, "narrowed": OK},
    ),
    (
        "GET",
        "services/registry/api/v1/entries/" + PRIVATE_SLUG,
        {
            "anon": {404},
            "owner": OK,
            "other": {404},
            "member": OK,
            "reviewer": {404},
            "admin": OK,
            "narrowed": {404},
        },
    ),
    (
        "GET",
        "services/registry/api/v1/entries/" + PRIVATE_SLUG + "/versions",
        {"anon": {404}, "owner": OK, "other": {404}, "member": OK, "admin": OK},
    ),
    (
        "GET",
        "services/registry/api/v1/requests",
        {"anon": {401}, "owner": OK, "other": OK, "reviewer": OK, "admin": OK, "narrowed": OK},
    ),
    # {} is no entry: every user may submit (400 for the body), nobody anonymously
    (
        "POST",
        "services/registry/api/v1/requests",
        {"anon": {401}, "owner": {400}, "other": {400}, "admin": {400}},
    ),
    (
        "GET",
        "services/registry/api/v1/requests/{request}",
        {
            "anon": {401},
            "owner": OK,
            "other": {404},
            "member": {404},
            "reviewer": OK,
            "admin": OK,
            "narrowed": {404},
        },
    ),
    (
        "POST",
        "services/registry/api/v1/requests/{request}/comments",
        {"anon": {401}, "owner": {201}, "other": {404}, "reviewer": {201}, "admin": {201}},
    ),
    # integrating is an admin's: the provider and a reviewer 403; an admin 409 (the request
    # is "evaluated", not "approved"); a narrowed admin token is nobody here (404)
    (
        "POST",
        "services/registry/api/v1/requests/{request}/transitions",
        {
            "anon": {401},
            "owner": {403},
            "other": {404},
            "member": {404},
            "reviewer": {403},
            "admin": {409},
            "narrowed": {404},
        },
    ),
    # reviewing is the reviewers' (admins are not reviewers); rita would approve: not here
    (
        "POST",
        "services/registry/api/v1/requests/{request}/reviews",
        {"anon": {401}, "owner": {403}, "other": {404}, "admin": {403}, "narrowed": {404}},
    ),
    # the entry changes only while changes are requested or integrated (409 now)
    (
        "PUT",
        "services/registry/api/v1/requests/{request}/entry",
        {"anon": {401}, "owner": {409}, "other": {404}, "reviewer": {403}, "admin": {409}},
    ),
    # the sign-on: a user the entry's visibility allows gets the cookie and is sent on
    (
        "GET",
        "services/registry/sso?next=/services/" + PRIVATE_SLUG + "/",
        {
            "anon": LOGIN,
            "owner": REDIRECT,
            "other": {403},
            "member": REDIRECT,
            "admin": REDIRECT,
            "narrowed": {403},
        },
    ),
    # the registered web service behind the sign-on (alice's; PROJECT's members only)
    (
        "GET",
        "services/" + PRIVATE_SLUG + "/",
        {
            "anon": LOGIN,
            "owner": OK,
            "other": {403},
            "member": OK,
            "reviewer": {403},
            "admin": OK,
            "narrowed": {403},
        },
    ),
    # the service desk: tickets are their owner's and the staff's (support group, admins);
    # another user's ticket is not found
    ("GET", "services/desk/health", {"anon": OK, "owner": OK, "other": OK}),
    ("GET", "services/desk/", {"anon": LOGIN, "owner": OK, "other": OK, "staff": OK}),
    ("GET", "services/desk/static/desk.css", {"anon": LOGIN, "owner": OK, "other": OK}),
    (
        "GET",
        "services/desk/metrics",
        {
            "anon": DENIED,
            "owner": {403},
            "other": {403},
            "staff": {403},
            "admin": OK,
            "narrowed": {403},
        },
    ),
    (
        "GET",
        "services/desk/api/v1/tickets",
        {"anon": {401}, "owner": OK, "other": OK, "staff": OK, "admin": OK, "narrowed": OK},
    ),
    (
        "POST",
        "services/desk/api/v1/tickets",
        {"anon": {401}, "owner": {400}, "other": {400}, "staff": {400}},
    ),
    (
        "GET",
        "services/desk/api/v1/tickets/{ticket}",
        {
            "anon": {401},
            "owner": OK,
            "other": {404},
            "member": {404},
            "staff": OK,
            "admin": OK,
            "narrowed": {404},
        },
    ),
    # a staff answer would mark the ticket answered: only the owner writes here
    (
        "POST",
        "services/desk/api/v1/tickets/{ticket}/messages",
        {"anon": {401}, "owner": {201}, "other": {404}, "member": {404}, "narrowed": {404}},
    ),
    # reopening an open ticket: 409 for who may, 404 for who may not see it
    (
        "POST",
        "services/desk/api/v1/tickets/{ticket}/transitions",
        {"anon": {401}, "owner": {409}, "other": {404}, "staff": {409}, "narrowed": {404}},
    ),
    (
        "POST",
        "services/desk/api/v1/tickets/{ticket}/attachments?filename=matrix.txt",
        {"anon": {401}, "owner": {201}, "other": {404}, "member": {404}},
    ),
    (
        "GET",
        "services/desk/api/v1/tickets/{ticket}/attachments/{attachment}",
        {
            "anon": {401},
            "owner": OK,
            "other": {404},
            "member": {404},
            "staff": OK,
            "admin": OK,
            "narrowed": {404},
        },
    ),
    # processing (issue 16): processes are every user's to list and run; a job and a
    # private user process are their owner's (and admins'); others get 404, never 403 (a
    # job id says nothing); writes that would change a later row leave out who may make
    # them; the runners' internal reports take their job's secret, never a hub token
    ("GET", "services/processing/health", {"anon": OK, "owner": OK, "other": OK}),
    (
        "GET",
        "services/processing/metrics",
        {"anon": {401}, "owner": {403}, "other": {403}, "admin": OK, "narrowed": {403}},
    ),
    (
        "GET",
        "services/processing/",
        {"anon": LOGIN, "owner": OK, "other": OK, "member": OK, "admin": OK, "narrowed": OK},
    ),
    ("GET", "services/processing/conformance", {"anon": LOGIN, "owner": OK, "other": OK}),
    ("GET", "services/processing/api", {"anon": LOGIN, "owner": OK, "other": OK}),
    (
        "GET",
        "services/processing/processes",
        {"anon": LOGIN, "owner": OK, "other": OK, "admin": OK, "narrowed": OK},
    ),
    ("GET", "services/processing/processes/echo", {"anon": LOGIN, "owner": OK, "other": OK}),
    (
        "GET",
        "services/processing/processes/{pproc}",
        {
            "anon": LOGIN,
            "owner": OK,
            "other": {404},
            "member": {404},
            "admin": OK,
            "narrowed": {404},
        },
    ),
    # {} deploys nothing: every user may try (400 for the body), nobody anonymously
    (
        "POST",
        "services/processing/processes",
        {"anon": DENIED, "owner": {400}, "other": {400}, "admin": {400}},
    ),
    # echo without its required input: 400 for every user (no job is made)
    (
        "POST",
        "services/processing/processes/echo/execution",
        {"anon": DENIED, "owner": {400}, "other": {400}, "admin": {400}, "narrowed": {400}},
    ),
    (
        "POST",
        "services/processing/processes/{pproc}/execution",
        {"anon": DENIED, "other": {404}, "member": {404}, "narrowed": {404}},
    ),
    (
        "DELETE",
        "services/processing/processes/{pproc}",
        {"anon": DENIED, "other": {404}, "member": {404}, "narrowed": {404}},
    ),
    (
        "GET",
        "services/processing/jobs",
        {"anon": LOGIN, "owner": OK, "other": OK, "member": OK, "admin": OK, "narrowed": OK},
    ),
    (
        "GET",
        "services/processing/jobs/{pjob}",
        {
            "anon": LOGIN,
            "owner": OK,
            "other": {404},
            "member": {404},
            "admin": OK,
            "narrowed": {404},
        },
    ),
    (
        "GET",
        "services/processing/jobs/{pjob}/results",
        {
            "anon": LOGIN,
            "owner": OK,
            "other": {404},
            "member": {404},
            "admin": OK,
            "narrowed": {404},
        },
    ),
    (
        "GET",
        "services/processing/jobs/{pjob}/logs",
        {"anon": LOGIN, "owner": OK, "other": {404}, "member": {404}, "admin": OK},
    ),
    # dismissing a finished job removes its record: only who may not (404)
    (
        "DELETE",
        "services/processing/jobs/{pjob}",
        {"anon": DENIED, "other": {404}, "member": {404}, "narrowed": {404}},
    ),
    (
        "GET",
        "services/processing/internal/jobs/{pjob}",
        {"anon": {401}, "owner": {401}, "other": {401}, "admin": {401}},
    ),
    (
        "POST",
        "services/processing/internal/jobs/{pjob}/events",
        {"anon": {401}, "owner": {401}, "admin": {401}},
    ),
    # tiles and VizLab (issue 15): the platform makes TILES_PUBLIC public, so anonymous
    # callers pass hub auth on the data routes and are refused there, item by item (401); a
    # lake item ({tlake}) is every user's; alice's item in her home bucket ({titem}) hers
    # alone (the object store decides, with the caller's keys), admins' too; the page always
    # needs a login
    ("GET", "services/tiles/health", {"anon": OK, "owner": OK, "other": OK}),
    (
        "GET",
        "services/tiles/metrics",
        {"anon": DENIED, "owner": DENIED, "other": DENIED, "narrowed": DENIED, "admin": OK},
    ),
    ("GET", "services/tiles/", {"anon": OK, "owner": OK, "other": OK}),
    ("GET", "services/tiles/conformance", {"anon": OK, "owner": OK, "other": OK}),
    ("GET", "services/tiles/tileMatrixSets/WorldCRS84Quad", {"anon": OK, "owner": OK}),
    ("GET", "services/tiles/collections", {"anon": OK, "owner": OK, "other": OK}),
    (
        "GET",
        "services/tiles/wmts?SERVICE=WMTS&REQUEST=GetCapabilities",
        {"anon": OK, "owner": OK, "other": OK},
    ),
    ("GET", "services/tiles/edr/collections", {"anon": OK, "owner": OK, "other": OK}),
    ("GET", "services/tiles/vizlab", {"anon": LOGIN, "owner": OK, "other": OK}),
    ("GET", "services/tiles/vizlab?item={tpublic}", {"anon": LOGIN, "owner": OK}),
    # the public collection's item: anyone
    (
        "GET",
        "services/tiles/collections/{tpublic}/2t/map/tiles/WorldCRS84Quad/0/0/0",
        {"anon": OK, "owner": OK, "other": OK},
    ),
    (
        "GET",
        "services/tiles/edr/collections/{tpublic}/position?coords=POINT(10 20)&parameter-name=2t",
        {"anon": OK, "owner": OK, "other": OK},
    ),
    # a lake item outside the public collections: every logged-in user
    (
        "GET",
        "services/tiles/collections/{tlake}/2t/map/tiles/WebMercatorQuad/1/0/1",
        {"anon": {401}, "owner": OK, "other": OK, "narrowed": OK, "admin": OK},
    ),
    (
        "GET",
        "services/tiles/wmts?SERVICE=WMTS&REQUEST=GetTile&LAYER={tlake}/2t&STYLE=default"
        "&FORMAT=image/png&TILEMATRIXSET=WorldCRS84Quad&TILEMATRIX=0&TILEROW=0&TILECOL=1",
        {"anon": {401}, "owner": OK, "other": OK},
    ),
    (
        "GET",
        "services/tiles/edr/collections/{tlake}/position?coords=POINT(-30 45)&parameter-name=2t",
        {"anon": {401}, "owner": OK, "other": OK},
    ),
    ("GET", "services/tiles/layers/{tlake}", {"anon": {401}, "owner": OK, "other": OK}),
    # alice's private item: alice and admins; bob, mira (her project's member: a project
    # gives no right to her home bucket) and an admin's narrowed token get 403
    *[
        (
            "GET",
            "services/tiles/" + route,
            {
                "anon": {401},
                "owner": OK,
                "other": {403},
                "member": {403},
                "narrowed": {403},
                "admin": OK,
            },
        )
        for route in (
            "collections/{titem}/2t/map/tiles/WebMercatorQuad/0/0/0",
            "collections/{titem}/2t/map/tiles/WorldCRS84Quad/0/0/1?datetime={ttime}",
            "wmts?SERVICE=WMTS&REQUEST=GetTile&LAYER={titem}/2t&STYLE=default&FORMAT=image/png"
            "&TILEMATRIXSET=WebMercatorQuad&TILEMATRIX=0&TILEROW=0&TILECOL=0",
            "wmts/1.0.0/{titem}/2t/default/{ttime}/WebMercatorQuad/0/0/0.png",
            "edr/collections/{titem}",
            "edr/collections/{titem}/position?coords=POINT(10 20)&parameter-name=2t",
            "edr/collections/{titem}/area?coords=POLYGON((0 0,10 0,10 10,0 10,0 0))"
            "&parameter-name=2t",
            "view/{titem}/2t.png?projection=orthographic&width=256&height=256",
            "legend/{titem}/2t.png",
            "layers/{titem}",
            "collections/{titem}/2t",
            "collections/{titem}/2t/map/tiles/WebMercatorQuad",
        )
    ],
]


#: Bodies of writes that need one to reach the check the row is about ((method, path): body).
BODIES: dict[tuple[str, str], dict] = {
    ("POST", "services/registry/api/v1/requests/{request}/comments"): {"comment": "matrix"},
    ("POST", "services/registry/api/v1/requests/{request}/transitions"): {"to": "integrated"},
    ("POST", "services/registry/api/v1/requests/{request}/reviews"): {
        "decision": "approved",
        "comment": "matrix",
    },
    ("POST", "services/desk/api/v1/tickets/{ticket}/messages"): {"body": "matrix"},
    ("POST", "services/desk/api/v1/tickets/{ticket}/transitions"): {"to": "open"},
    ("POST", "services/processing/processes/{pproc}/execution"): {"inputs": {"n": 1}},
    ("POST", "services/processing/internal/jobs/{pjob}/events"): {"events": []},
}

# Dask Gateway's own API takes hub tokens with its own scheme name.
SCHEMES = {"services/dask-gateway/api/": "jupyterhub"}


def scheme_for(path: str) -> str:
    return next((s for prefix, s in SCHEMES.items() if path.startswith(prefix)), "token")


class _Upstream(BaseHTTPRequestHandler):
    """alice's registered web service: answers every GET (a real upstream on loopback)."""

    def do_GET(self) -> None:
        body = b"upstream of " + PRIVATE_SLUG.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet test output
        pass


@pytest.fixture(scope="module")
def upstream():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()
    srv.server_close()


def _registry(p, method: str, path: str, token: str, **kw) -> requests.Response:
    url = p.url + "services/registry/api/v1/" + path
    return requests.request(
        method, url, headers={"Authorization": f"token {token}"}, timeout=60, **kw
    )


def _submit_and_wait(p, slug: str, visibility: str, endpoint: str) -> str:
    """alice submits a web application; returns its id once the platform evaluated it."""
    entry = {
        "name": f"authz {slug}",
        "slug": slug,
        "provider": "authz org",
        "description": "An entry of the authorization matrix.",
        "thematic_areas": ["climate-adaptation"],
        "kind": "web-application",
        "endpoints": [{"url": endpoint, "type": "other"}],
        "licence": "MIT",
        "contact": "alice@example.org",
        "visibility": visibility,
    }
    r = _registry(p, "POST", "requests", p.token("alice"), json={"entry": entry})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    deadline = time.monotonic() + 60
    while (state := _registry(p, "GET", f"requests/{rid}", p.token("alice")).json()["state"]) == (
        "submitted"
    ):
        assert time.monotonic() < deadline, f"{slug} not evaluated within a minute"
        time.sleep(0.5)
    assert state == "evaluated", state
    return rid


def _registry_and_desk(p, upstream: str) -> dict[str, str]:
    """alice's integrated project-only web application, her request waiting for review,
    and her desk ticket with one attachment: the rows' {request}, {ticket}, {attachment}."""
    rid = _submit_and_wait(p, PRIVATE_SLUG, f"project:{PROJECT}", upstream)
    r = _registry(
        p,
        "POST",
        f"requests/{rid}/reviews",
        p.token("rita"),
        json={"decision": "approved", "comment": "matrix"},
    )
    assert r.status_code == 200, r.text
    r = _registry(
        p,
        "POST",
        f"requests/{rid}/transitions",
        p.token("admin"),
        json={"to": "integrated", "upstream": upstream, "allow_private": True},
    )
    assert r.status_code == 200, r.text
    wait_routed(p.url, PRIVATE_SLUG)
    pending = _submit_and_wait(p, PENDING_SLUG, "users", upstream)

    desk = p.url + "services/desk/api/v1/tickets"
    alice = {"Authorization": f"token {p.token('alice')}"}
    r = requests.post(
        desk, headers=alice, json={"subject": "matrix", "body": "a ticket"}, timeout=60
    )
    assert r.status_code == 201, r.text
    ticket = r.json()["id"]
    r = requests.post(
        f"{desk}/{ticket}/attachments",
        params={"filename": "notes.txt"},
        headers={**alice, "Content-Type": "text/plain"},
        data=b"attached",
        timeout=60,
    )
    assert r.status_code == 201, r.text
    return {"request": pending, "ticket": str(ticket), "attachment": str(r.json()["id"])}


def _tiles(p) -> tuple[dict[str, str], list[TestItem]]:
    """Items of the tiles rows: alice's private one in her home bucket (her keys), a lake
    item outside the public collections and one inside: {titem}, {ttime}, {tlake},
    {tpublic}."""
    mine = private_item(p, "alice", "authz-tiles-alice")
    lake = lake_test_item(p, "authz-tiles-lake", "authz-tiles-lake")
    public = lake_test_item(p, "authz-tiles-public", TILES_PUBLIC)
    ids = {
        "titem": mine.item_id,
        "ttime": mine.times[0],
        "tlake": "authz-tiles-lake",
        "tpublic": "authz-tiles-public",
    }
    return ids, [mine, lake, public]


def _matrix_process(n: int) -> dict:
    """alice's private user process (registered by value, as twinlab.processing does)."""
    return {"n": n}


def _processing(p) -> dict[str, str]:
    """alice's finished echo job and her private user process: {pjob}, {pproc}."""
    r = register(
        p, "alice", _matrix_process, pid="authz-private-proc",
        inputs={"n": {"schema": {"type": "integer"}}}, outputs={"n": {"schema": {"type": "integer"}}},
    )  # fmt: skip
    assert r.status_code in (200, 201), r.text
    job = submit(p, "alice", "echo", {"stringInput": "matrix"})
    doc, _ = wait_job(p, "alice", job, timeout=180)
    assert doc["status"] == "successful", doc
    return {"pjob": job, "pproc": "authz-private-proc"}


@pytest.fixture(scope="module")
def actors(multiuser_platform, upstream):
    p = multiuser_platform
    for name, groups in (
        ("alice", ()),
        ("bob", ()),
        ("mira", ()),
        ("rita", (REVIEWERS,)),
        ("sam", (SUPPORT,)),
    ):
        if p.api("GET", f"/users/{name}", token=p.token("admin")).status_code == 404:
            p.add_user(name, groups=groups)
    for group, members in ((PROJECT, ["alice", "mira"]), (REVIEWERS, ["rita"]), (SUPPORT, ["sam"])):  # fmt: skip
        p.api("POST", f"/groups/{group}", token=p.token("admin"))  # 409 if it exists
        r = p.api("POST", f"/groups/{group}/users", token=p.token("admin"), json={"users": members})
        assert r.status_code == 200, r.text
    p.spawn("alice")
    tiles_ids, tiles_items = _tiles(p)
    ids = {**_registry_and_desk(p, upstream), **_processing(p), **tiles_ids}
    tokens = {
        "anon": None,
        "owner": p.token("alice"),
        "other": p.token("bob"),
        "member": p.token("mira"),
        "reviewer": p.token("rita"),
        "staff": p.token("sam"),
        "admin": p.token("admin"),
        # an admin's token narrowed to using services: no admin power, no one's server
        "narrowed": p.api(
            "POST",
            "/users/admin/tokens",
            token=p.token("admin"),
            json={"scopes": ["access:services"], "note": "authz matrix: narrowed"},
        ).json()["token"],
    }
    yield p, tokens, ids
    for item in tiles_items:  # other modules search the lake: its items must be the seed's
        remove_item(p, item)


@pytest.mark.parametrize(
    ("method", "path", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, _ in MATRIX]
)
def test_matrix(actors, method, path, expected):
    p, tokens, ids = actors
    url = p.url + path.format(owner="alice", **ids)
    body = BODIES.get((method, path), {})
    failures = []
    for actor, allowed in expected.items():
        tok = tokens[actor]
        headers = {"Authorization": f"{scheme_for(path)} {tok}"} if tok else {}
        r = requests.request(
            method,
            url,
            headers=headers,
            allow_redirects=False,
            timeout=30,
            # a GET carries no body: jupyter-server-proxy answers one with a 500
            json=None if method == "GET" else body,
        )
        if r.status_code not in allowed:
            failures.append(f"{actor}: {r.status_code} (allowed {sorted(allowed)})")
    assert not failures, f"{method} {path}: " + "; ".join(failures)
