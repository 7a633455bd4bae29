"""Source definitions and the origin checks that keep the platform to configured hosts."""

from __future__ import annotations

import pytest

from twinhub.services.datalake.sources import (
    SourceError,
    cache_path,
    href_from_cache_path,
    make_source,
    make_sources,
    origin,
    parse_source_arg,
)


def src(**kw):
    return make_source({"name": "ext", "url": "https://stac.example.org/api/v1", **kw})


@pytest.mark.parametrize(
    "url, want",
    [
        ("https://Stac.Example.org/x", "https://stac.example.org"),
        ("https://stac.example.org:443/x", "https://stac.example.org"),
        ("http://h:80", "http://h"),
        ("http://h:8080/a?b", "http://h:8080"),
        ("http://[::1]:9/x", "http://[::1]:9"),
    ],
)
def test_origin_normalises_scheme_host_and_default_ports(url, want):
    assert origin(url) == want


@pytest.mark.parametrize(
    "url, words",
    [
        ("ftp://h/x", "http(s)"),
        ("s3://lake/x", "http(s)"),
        ("http:///x", "host"),
        ("http://user:pw@h/x", "credentials"),
        ("http://h:99999/x", "port"),
        ("https://[", "not a valid URL"),  # urlsplit's own ValueError
        ("http://[::1/x", "not a valid URL"),
    ],
)
def test_origin_refuses_what_is_not_a_plain_http_url(url, words):
    with pytest.raises(SourceError, match=words.replace("(", r"\(").replace(")", r"\)")):
        origin(url)


def test_allows_only_the_source_and_its_asset_origins():
    s = src(asset_origins=["https://data.example.org:8443"])
    assert s.allows("https://stac.example.org/api/v1/search")
    assert s.allows("https://STAC.example.org:443/other/path")
    assert s.allows("https://data.example.org:8443/x.zarr")
    for bad in (
        "http://stac.example.org/api",  # other scheme
        "https://stac.example.org:444/api",  # other port
        "https://stac.example.org.evil.net/api",  # suffix trick
        "https://evil.net/?https://stac.example.org/",
        "https://user@stac.example.org/",  # credentials are refused
        "https://data.example.org/x",  # asset origin without its port
        "not a url",
        "https://[",
    ):
        assert not s.allows(bad), bad
    # API traffic and headers: the source's own origin only, not its asset origins
    assert s.is_own("https://STAC.example.org/x") and not s.is_own("https://[")
    assert not s.is_own("https://data.example.org:8443/x.zarr")


def test_scrub_blanks_header_values_and_their_credential_part():
    s = src(headers={"Authorization": "Bearer abcdef123", "X-Key": "k3y-value"})
    text = "got Bearer abcdef123, abcdef123 and k3y-value; Bearer is fine"
    assert s.scrub(text) == "got [redacted], [redacted] and [redacted]; Bearer is fine"


def test_make_source_checks_every_field_and_guesses_the_kind():
    assert src().kind == "api"
    assert make_source({"name": "s", "url": "http://h/catalog.json"}).kind == "static"
    for spec, words in [
        ({"name": "Bad Name", "url": "http://h"}, "name"),
        ({"name": "local", "url": "http://h"}, "name"),
        ({"name": "s", "url": "file:///etc"}, "http"),
        ({"name": "s", "url": "http://h", "kind": "ftp"}, "kind"),
        ({"name": "s", "url": "http://h", "collections": "abc"}, "collections"),
        ({"name": "s", "url": "http://h", "headers": {"a": 1}}, "headers"),
        ({"name": "s", "url": "http://h", "timeout": 0}, "timeout"),
        ({"name": "s", "url": "http://h", "colections": []}, "unknown key"),
    ]:
        with pytest.raises(SourceError, match=words):
            make_source(spec)
    with pytest.raises(SourceError, match="twice"):
        make_sources([{"name": "a", "url": "http://h"}, {"name": "a", "url": "http://i"}])


def test_headers_never_appear_in_the_public_view():
    s = src(headers={"Authorization": "Bearer secret"})
    assert "secret" not in repr(s) and "headers" not in s.public()
    assert s.to_dict()["headers"] == {"Authorization": "Bearer secret"}


def test_parse_source_arg():
    assert parse_source_arg("a=http://h:1/x") == {"name": "a", "url": "http://h:1/x"}
    for bad in ("bad", "=http://h", "a=", "a=ftp://h"):
        with pytest.raises(SourceError):
            parse_source_arg(bad)


def test_cache_paths_round_trip_and_only_name_configured_origins():
    s = src(asset_origins=["http://127.0.0.1:9000"])
    sources = {s.name: s}
    for href in (
        "https://stac.example.org/data/a b.zarr/zarr.json",
        "http://127.0.0.1:9000/objects/x.grib2?version=2",
    ):
        path, _, query = cache_path(s, href).partition("?")
        assert href_from_cache_path(sources, path, query) == href.replace(" ", "%20")
    with pytest.raises(SourceError, match="not on a configured origin"):
        cache_path(s, "http://127.0.0.2:9000/objects/x")
    for path, words in [
        ("other/stac.example.org/x", "unknown source"),
        ("ext/127.0.0.2:9000/x", "not a configured origin"),
        ("ext/stac.example.org/a/../../etc/passwd", r"'\.\.'"),
        ("ext/stac.example.org/a/%2e%2e/b", r"'\.\.'"),
        ("ext/stac.example.org/", "empty"),
    ]:
        with pytest.raises(SourceError, match=words):
            href_from_cache_path(sources, path)
