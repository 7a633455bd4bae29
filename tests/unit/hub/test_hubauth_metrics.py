"""``hubauth.metrics_caller``: the one check of a service's ``metrics`` caller (accounting,
registry). The hub's token check is the faked edge (:class:`FakeHubAuth` answers from a
table, or fails as an unreachable hub would)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from twinhub.services.asgi import BadRequest
from twinhub.services.hubauth import METRICS_SCOPE, metrics_caller

USERS = {
    "prom": {"name": "prometheus", "scopes": [METRICS_SCOPE]},
    "user": {"name": "pat", "scopes": ["access:services"]},
}


class FakeHubAuth:
    """FAKE of ``HubAuth.user_for_token``: :data:`USERS`; ``down`` raises as a hub out of reach."""

    def __init__(self, down: bool = False) -> None:
        self.down = down

    async def user_for_token(self, token, use_cache=True, *, sync=True):
        if self.down:
            raise ConnectionError("connection refused")
        return USERS.get(token)


def call(authorization: str | None, down: bool = False):
    headers = [(b"authorization", authorization.encode())] if authorization else []
    request = SimpleNamespace(scope={"type": "http", "headers": headers})
    return asyncio.run(metrics_caller(FakeHubAuth(down), request))


@pytest.mark.parametrize("value", ["token prom", "Bearer prom", "TOKEN  prom "])
def test_a_token_with_read_metrics_passes(value):
    assert call(value)["name"] == "prometheus"


@pytest.mark.parametrize(
    "value, down, status, words",
    [
        (None, False, 401, "metrics need 'Authorization: token <t>'"),
        ("Basic prom", False, 401, "metrics need 'Authorization: token <t>'"),
        ("token nope", False, 401, "invalid or expired token"),
        ("token user", False, 403, "'read:metrics'; the token of 'pat' lacks it"),
        ("token prom", True, 502, "cannot check the token with the hub"),
    ],
)
def test_refusals(value, down, status, words):
    with pytest.raises(BadRequest) as e:
        call(value, down)
    assert e.value.status == status and words in e.value.message
