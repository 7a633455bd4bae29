"""Which href ``twinlab.datalake.open`` reads for an item's asset: local items their own,
remote (federated) items only the platform cache's URL, and the server's token only ever
goes to that cache."""

from __future__ import annotations

import pystac
import pytest

from twinlab.datalake.items import choose_asset
from twinlab.datalake.opening import download_progress
from twinlab.datalake.remote import RemoteAssetRefused, asset_href, cache_headers, is_cache_href

CACHE = "http://127.0.0.1:8000/services/cache/"
REMOTE = "https://data.partner.example/climate/2t.zarr"
CACHED = CACHE + "assets/partner/data.partner.example/climate/2t.zarr"


def item(source: str | None, **asset: object) -> pystac.Item:
    props = {"datetime": "2030-01-01T00:00:00Z"}
    if source:
        props["twinhub:source"] = source
    doc = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "x",
        "geometry": None,
        "properties": props,
        "links": [],
        "assets": {"zarr": {"type": "application/vnd+zarr", **asset}},
    }
    return pystac.Item.from_dict(doc)


@pytest.fixture(autouse=True)
def server_env(monkeypatch):
    monkeypatch.setenv("TWINHUB_CACHE_URL", CACHE)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "server-token")


def pick(i: pystac.Item) -> str:
    key, a, _ = choose_asset(i)
    return asset_href(i, key, a)


def test_local_items_keep_their_own_href():
    assert pick(item(None, href="s3://lake/a.zarr")) == "s3://lake/a.zarr"
    assert pick(item("local", href="s3://lake/a.zarr")) == "s3://lake/a.zarr"


def test_remote_items_are_read_through_the_cache_only():
    i = item("partner", href=REMOTE, alternate={"cache": {"href": CACHED}})
    assert pick(i) == CACHED


def test_a_refused_asset_names_its_host():
    i = item("partner", href="http://10.0.0.5:9000/secret.zarr", **{"twinhub:refused": "no"})
    with pytest.raises(RemoteAssetRefused, match=r"10\.0\.0\.5:9000.*does not read"):
        pick(i)


def test_a_remote_asset_without_a_cache_link_is_refused():
    with pytest.raises(RemoteAssetRefused, match="no cache link"):
        pick(item("partner", href=REMOTE))


def test_a_cache_link_elsewhere_is_refused():
    # a remote document cannot point the token (or the read) at another host
    evil = "http://evil.example/services/cache/assets/partner/x"
    i = item("partner", href=REMOTE, alternate={"cache": {"href": evil}})
    with pytest.raises(RemoteAssetRefused, match="not under this platform's cache"):
        pick(i)


def test_without_the_cache_url_remote_items_cannot_be_opened(monkeypatch):
    monkeypatch.delenv("TWINHUB_CACHE_URL")
    i = item("partner", href=REMOTE, alternate={"cache": {"href": CACHED}})
    with pytest.raises(Exception, match="TWINHUB_CACHE_URL is not set"):
        pick(i)


def test_the_token_goes_to_the_cache_only():
    assert cache_headers(CACHED) == {"Authorization": "token server-token"}
    assert is_cache_href(CACHED)
    for other in (REMOTE, CACHE + "stats", "http://127.0.0.1:8001/services/cache/assets/x"):
        assert cache_headers(other) == {}, other


def test_download_progress_reports_without_tqdm(caplog, monkeypatch):
    import logging
    import sys

    # The curated environment has tqdm (panel/datashader bring it): hide it, as on a worker.
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    report = download_progress(CACHED)
    with caplog.at_level(logging.INFO, logger="twinlab.datalake.opening"):
        for done in range(0, 101, 10):
            report(done * 1_000_000, 100_000_000)
    assert "100% of 100 MB" in caplog.text
