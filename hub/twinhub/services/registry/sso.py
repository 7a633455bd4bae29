"""Sign-on: ``/services/registry/sso``, where a logged-in browser gets the signed cookie of one
integrated service (``twinhub-sso-<slug>``, read by the gateway, gateway.py) and is sent on.

The registry's hub login (its session cookie) is the proof: before a sign-on cookie is set,
the hub is asked afresh whether that session still holds, so that the hub's logout ends the
renewals at once. The visibility rule is the gateway's own (:meth:`SsoGateway.allowed`).
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from ..asgi import BadRequest, header
from ..hubauth import token_cookie_name
from . import entry as entries
from .context import RegistryContext
from .gateway import SsoGateway, client_scheme
from .gateway_rules import MAX_NEXT, SSO_COOKIE, SSO_MAX_AGE, path_refusal, sign_sso, split_path


def sso_router(ctx: RegistryContext, gateway: SsoGateway | None = None) -> APIRouter:
    """``GET sso?next=/services/<slug>/...``: the logged-in user gets the service's signed
    cookie and is sent on; ``gateway`` (its route and user caches) is made if not given."""
    router = APIRouter()
    gw = gateway or ctx.extras.get("gateway") or SsoGateway(ctx)

    @router.get("/sso", include_in_schema=False)
    async def sso(request: Request, next: str = "") -> RedirectResponse:
        user = request.scope.get("state", {}).get("hub_user")
        if not user:
            raise BadRequest("sign-on needs a logged-in user", 401)
        parts = split_path(next)
        if (
            len(next) > MAX_NEXT
            or parts is None
            or not next.startswith(f"/services/{parts[0]}/")
            or re.search(r"[\x00-\x1f\x7f\\]|//", next)
            or path_refusal(next.split("?", 1)[0]) is not None
        ):
            raise BadRequest("next must be a path under /services/<slug>/ of a registered service")
        slug = parts[0]
        route = await gw.route(slug)
        if route is None:
            raise BadRequest(f"no service {slug!r} is registered here")
        if not await _session_still_valid(gw, request, user):
            # the hub's logout revoked it (hub auth trusts a checked token for a minute):
            # drop the registry's session and come back here, through the hub's login
            again = RedirectResponse(str(request.url.path) + "?" + request.url.query, 302)
            again.delete_cookie(token_cookie_name(ctx.prefix), path=ctx.prefix)
            return again
        # a browser's session is the user's own; a header token counts as an admin's only
        # when its scopes say so (an admin's token narrowed to this service does not)
        full = not header(request.scope, b"authorization") or entries.registry_admin(user)
        await gw.allowed(user["name"], full, slug, route)
        expires = int(time.time()) + SSO_MAX_AGE
        resp = RedirectResponse(quote(next, safe="/?&=%:+,;@-._~!$'()*"), status_code=302)
        resp.set_cookie(
            SSO_COOKIE + slug,
            sign_sso(ctx.sso_key, user["name"], slug, expires),
            max_age=SSO_MAX_AGE,
            path=f"/services/{slug}/",
            httponly=True,
            samesite="lax",
            secure=client_scheme(request.scope) == "https",
        )
        return resp

    return router


async def _session_still_valid(gw: SsoGateway, request: Request, user: dict[str, Any]) -> bool:
    """For a browser session: whether the hub still honours its token (asked now, not
    from a cache), so that a sign-on cookie is never renewed after the hub's logout."""
    if (request.scope.get("state") or {}).get("auth_source") != "cookie":
        return True  # a header token: checked by hub auth as it came
    token = request.cookies.get(token_cookie_name(gw.ctx.prefix), "")
    try:
        model = await gw.hub_auth.user_for_token(token, use_cache=False, sync=False)
    except Exception as e:
        raise BadRequest(f"cannot reach the hub to check the session: {e}", 502) from e
    return bool(model) and model.get("name") == user.get("name")
