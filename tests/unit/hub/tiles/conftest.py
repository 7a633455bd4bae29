"""Shared pieces of the tiles service's unit tests: a context over a multi-user runtime (no
platform), and the fakes of what cannot run in a unit test, each named so:

- :class:`FakeStac`: the STAC API's ``search`` (ids, collections, limit, paging by a
  ``token`` in the ``next`` link, as stac-fastapi does), served to ``ctx.stac`` through
  httpx's ASGITransport;
- :class:`FakeHubAuth`: the hub's token check (:data:`TOKENS`);
- :class:`FakeS3`: an S3 client's ``head_object`` answering from a table of who may read
  which bucket (the object store decides in the real service: tests/integration).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError
from fastapi import FastAPI
from jupyterhub.services.auth import HubOAuth
from traitlets.config import Config

from twinhub.process.runtime import Runtime
from twinhub.services.tiles import SERVICE_PREFIX
from twinhub.services.tiles.config import TwinhubTiles
from twinhub.services.tiles.context import TilesContext

SERVICE_TOKEN = "tiles-service-token"
ACCESS = "access:services!service=tiles"
LAKE = "lake"
TOKENS = {
    "alice-token": {"name": "alice", "kind": "user", "scopes": [ACCESS]},
    "bob-token": {"name": "bob", "kind": "user", "scopes": [ACCESS]},
    "root-token": {
        "name": "root",
        "kind": "user",
        "admin": True,
        "scopes": [ACCESS, "admin:users", "read:metrics"],
    },
}


class FakeHubAuth(HubOAuth):
    """Fake of the hub's token check (no hub in unit tests): :data:`TOKENS` only."""

    async def user_for_token(self, token, use_cache=True, session_id="", *, sync=True):
        model = TOKENS.get(token)
        return copy.deepcopy(model) if model else None


def fake_hub_auth() -> FakeHubAuth:
    return FakeHubAuth(
        api_token=SERVICE_TOKEN,
        api_url="http://hub.test/hub/api",
        oauth_client_id="service-tiles",
        oauth_redirect_uri="http://twin.test/services/tiles/oauth_callback",
        oauth_authorization_url="/hub/api/oauth2/authorize",
        access_scopes={ACCESS},
    )


def lake_item(
    item_id: str,
    collection: str = "climate-dt",
    *,
    href: str = "s3://lake/climate-dt/H128.zarr",
    variable: str = "2t",
    start: str = "2030-01-01T00:00:00Z",
    end: str = "2030-01-01T18:00:00Z",
    step: str | None = "PT6H",
) -> dict[str, Any]:
    """An item shaped like the sample data's (one variable, a Zarr and a GRIB asset)."""
    time_dim: dict[str, Any] = {"type": "temporal", "extent": [start, end]}
    if step:
        time_dim["step"] = step
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": item_id,
        "collection": collection,
        "bbox": [-180.0, -90.0, 180.0, 90.0],
        "geometry": None,
        "properties": {
            "datetime": start,
            "start_datetime": start,
            "end_datetime": end,
            "param": variable,
            "twinhub:grid": {"grid_type": "healpix", "nside": 128, "nest": True},
            "cube:dimensions": {
                "time": time_dim,
                "cell": {"type": "other", "extent": [0, 196607]},
            },
            "cube:variables": {
                variable: {
                    "type": "data",
                    "dimensions": ["time", "cell"],
                    "unit": "K",
                    "description": "2 metre temperature",
                }
            },
        },
        "assets": {
            "grib": {
                "href": href.replace(".zarr", ".grib2"),
                "type": "application/x-grib",
                "roles": ["data"],
            },
            "zarr": {"href": href, "type": "application/vnd+zarr", "roles": ["data"]},
        },
        "links": [],
    }


class FakeStac:
    """Fake of the STAC API's ``search`` (GET): ``items`` in insertion order; ``requests``
    records each query."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.requests: list[dict[str, str]] = []
        self.app = FastAPI()

        @self.app.get("/services/stac/search")
        async def search(
            ids: str = "", collections: str = "", limit: int = 10, token: int = 0
        ) -> Any:
            self.requests.append({"ids": ids, "collections": collections, "limit": str(limit)})
            found = [
                i
                for i in self.items
                if (not ids or i["id"] in ids.split(","))
                and (not collections or i["collection"] in collections.split(","))
            ]
            page = found[token : token + limit]
            links = []
            if token + limit < len(found):
                nxt = f"http://public.test/services/stac/search?limit={limit}&token={token + limit}"
                if collections:
                    nxt += f"&collections={collections}"
                links.append({"rel": "next", "href": nxt})
            return {"type": "FeatureCollection", "features": page, "links": links}


class FakeS3:
    """Fake of a user's S3 client: ``head_object`` succeeds on the buckets in ``readable``;
    ``calls`` records each (bucket, key)."""

    def __init__(self, readable: set[str]) -> None:
        self.readable = readable
        self.calls: list[tuple[str, str]] = []

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803 - boto's names
        self.calls.append((Bucket, Key))
        if Bucket in self.readable:
            return {"ContentLength": 1}
        raise ClientError(
            {"Error": {"Code": "403"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "HeadObject"
        )


def make_ctx(state_dir: Path, stac: FakeStac | None = None, **settings: Any) -> TilesContext:
    """A tiles context on a multi-user runtime; ``settings``: ``c.TwinhubTiles`` traits."""
    cfg = Config()
    cfg.TwinhubObjectStore.lake_bucket = LAKE
    for k, v in settings.items():
        setattr(cfg.TwinhubTiles, k, v)
    rt = Runtime(state_dir=state_dir, config=cfg, mode="multi-user", ports={"public": 9})
    ctx = TilesContext(
        rt=rt,
        settings=TwinhubTiles(config=cfg),
        hub_api="http://hub.test/hub/api",
        token=SERVICE_TOKEN,
        prefix=SERVICE_PREFIX,
        stac_url="http://stac.test/services/stac/",
    )
    if stac is not None:
        ctx.stac = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=stac.app),
            base_url=ctx.stac_url,
            headers={"Authorization": f"token {SERVICE_TOKEN}"},
        )
    return ctx


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake_stac() -> FakeStac:
    return FakeStac()
