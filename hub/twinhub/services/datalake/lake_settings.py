"""The data lake's settings (``c.TwinhubDataLake.*``): read by its part, its loader and the
cache (which fetches the assets of the same sources)."""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Dict, Integer, List, Unicode, validate
from traitlets.config import Configurable

from ...process.runtime import Runtime
from .sources import StacSource, make_sources

SEED_SIZES = ("small", "medium", "large")


class TwinhubDataLake(Configurable):
    """The STAC API of the data lake, its database and the sample data loaded into it."""

    enabled = Bool(True, help="Run the STAC API service at /services/stac/.").tag(config=True)
    database_url = Unicode(
        "",
        help="PostgreSQL (with PostGIS) for pgstac, as postgresql://user@host:port/db?passfile=F "
        "(the password in a libpq password file, never in the URL). Empty: the platform runs "
        "its own cluster under the state dir (unix socket only).",
    ).tag(config=True)
    seed = Unicode(
        "small",
        help="Sample data loaded into the lake and the STAC API on first start: one of "
        "small, medium, large; empty for none. Built once into seed_cache_dir and reused.",
    ).tag(config=True)
    seed_cache_dir = Unicode(
        "",
        help="Where built sample data is kept between platforms. Empty: $TWINHUB_SEED_CACHE or "
        "~/.cache/twinhub/seed.",
    ).tag(config=True)
    max_page_size = Integer(
        1000,
        min=1,
        help="Largest 'limit' a search or item listing may ask for; more is refused with 400.",
    ).tag(config=True)
    max_body_mb = Integer(
        16, min=1, help="Largest request body (an item, a bulk insert) the API accepts, in MB."
    ).tag(config=True)
    title = Unicode("twinhub data lake", help="Title of the STAC API's landing page.").tag(
        config=True
    )
    sources = List(
        Dict(),
        help="Federated STAC sources searched together with the lake through /services/stac/: "
        "dicts with 'name', 'url' (a STAC API root, or a static catalogue's catalog.json), "
        "optional 'kind' ('api'/'static', guessed from the URL), 'collections' (exposed ids; "
        "default all), 'headers' (e.g. Authorization; sent only to the source's own origin, "
        "never to its asset_origins nor after a redirect to another origin; never shown to "
        "users), 'asset_origins' (other scheme://host:port assets may be fetched from) and "
        "'timeout' (seconds, default 5). `twinhub up --stac-source NAME=URL` adds one.",
    ).tag(config=True)

    @validate("seed")
    def _check_seed(self, proposal: Any) -> str:
        if proposal.value not in ("", *SEED_SIZES):
            raise ValueError(
                f"TwinhubDataLake.seed must be one of {', '.join(SEED_SIZES)} or empty, "
                f"got {proposal.value!r}"
            )
        return proposal.value

    @validate("sources")
    def _check_sources(self, proposal: Any) -> list:
        make_sources(proposal.value)  # raises SourceError naming the bad field
        return proposal.value

    def stac_sources(self) -> list[StacSource]:
        """The configured sources as :class:`.sources.StacSource` objects."""
        return make_sources(self.sources)

    @property
    def embedded_db(self) -> bool:
        return not self.database_url


def settings(rt: Runtime) -> TwinhubDataLake:
    return TwinhubDataLake(config=rt.config)
