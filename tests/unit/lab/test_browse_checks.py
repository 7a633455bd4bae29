"""Input checks of the data lake page (twinlab.browse, twinlab.serverext.lake): what a
quick-look may read and how much, keys, ids, and S3 client failures as clear errors.

Quick-looks are drawn from a real NetCDF file; S3 failures are botocore's own, against a
port nothing listens on and with no credentials at all."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from tornado import web

from twinlab.browse import quicklook as ql
from twinlab.browse import storage as st
from twinlab.serverext.lake import _check_id

CACHE = "http://127.0.0.1:8000/services/cache/"


@pytest.fixture
def platform_env(monkeypatch):
    """The environment a twinhub user server gets: its buckets and the cache's URL."""
    doc = {"home_bucket": "home-alice", "lake_bucket": "lake", "project_buckets": ["proj-x"]}
    monkeypatch.setenv("TWINHUB_STORAGE", json.dumps(doc))
    monkeypatch.setenv("TWINHUB_CACHE_URL", CACHE)


@pytest.mark.parametrize(
    "href",
    [
        "s3://lake/climate-dt/a.zarr",
        "s3://home-alice/x.grib2",
        "s3://proj-x/deep/path/y.nc",
        CACHE + "assets/era5/data.example.org/2t.grib2",
    ],
)
def test_the_users_buckets_and_the_cache_are_readable(platform_env, href):
    assert ql.check_href(href) == href


@pytest.mark.parametrize(
    ("href", "words"),
    [
        ("/etc/passwd", "local file"),
        ("file:///etc/passwd", "local file"),
        ("FILE:///home/alice/.ssh/id_rsa.nc", "local file"),
        ("relative/x.zarr", "local file"),
        ("s3://home-bob/x.zarr", "bucket 'home-bob', not one of this user's buckets"),
        ("s3://lake.evil/x.zarr", "not one of this user's buckets"),
        ("s3://lake/../home-bob/x.zarr", "'.' or '..' segment"),
        ("http://169.254.169.254/latest/meta-data.nc", "host '169.254.169.254'"),
        ("http://127.0.0.1:8081/hub/api/users.nc", "only under the platform's cache"),
        (CACHE + "assets/../../../hub/api/x.nc", "only under the platform's cache"),
        (CACHE + "assets/%2e%2e/%2e%2e/hub/x.nc", "only under the platform's cache"),
        (CACHE + "metrics", "only under the platform's cache"),
        ("ftp://example.org/x.grib", "ftp://"),
        ("gs://bucket/x.zarr", "gs://"),
    ],
)
def test_other_hrefs_are_refused_naming_why(platform_env, href, words):
    with pytest.raises(ql.QuicklookRefused) as e:
        ql.check_href(href)
    assert words in str(e.value)


def test_no_bucket_is_readable_outside_a_twinhub_server(monkeypatch):
    monkeypatch.delenv("TWINHUB_STORAGE", raising=False)
    with pytest.raises(ql.QuicklookRefused, match="none configured"):
        ql.check_href("s3://lake/x.zarr")


# ---- quick-looks of real files ---------------------------------------------------------------
@pytest.fixture(scope="module")
def netcdf(tmp_path_factory):
    import pandas as pd
    import xarray as xr

    lat, lon = np.arange(90, -91, -10.0), np.arange(0, 360, 10.0)
    values = np.random.default_rng(0).normal(280, 10, size=(2, lat.size, lon.size))
    ds = xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values, {"units": "K"})},
        coords={
            "time": pd.date_range("2020-01-01", periods=2, freq="6h"),
            "latitude": lat,
            "longitude": lon,
        },
    )
    path = tmp_path_factory.mktemp("ql") / "field.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def _item(href: str, iid: str) -> dict:
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": iid,
        "collection": "c",
        "geometry": None,
        "properties": {"datetime": "2020-01-01T00:00:00Z"},
        "assets": {"data": {"href": href, "type": "application/x-netcdf"}},
        "links": [],
    }


def test_a_local_file_is_drawn_only_when_the_check_allows_it(platform_env, netcdf):
    """The same readable file: refused by the page's check, drawn without it (so the check
    is what stops it, not a missing or unreadable file)."""
    for href in (str(netcdf), netcdf.as_uri()):
        with pytest.raises(ql.QuicklookRefused, match="local file"):
            ql.quicklook(_item(href, "refused-" + href[:4]), None, None, "0")
    png = ql.quicklook(_item(str(netcdf), "allowed"), None, None, "0", check=lambda _h: None)
    assert png.startswith(b"\x89PNG")


def test_a_field_over_the_byte_cap_is_refused(platform_env, netcdf, monkeypatch):
    monkeypatch.setenv("TWINLAB_QUICKLOOK_MAX_BYTES", "1000")  # one field: 19*36*8 bytes
    with pytest.raises(ql.QuicklookTooLarge, match="over the quick-look limit of 1000 bytes"):
        ql.quicklook(_item(str(netcdf), "big"), None, None, "0", check=lambda _h: None)
    monkeypatch.setenv("TWINLAB_QUICKLOOK_MAX_BYTES", "not-a-number")
    assert ql.max_bytes() == ql.MAX_BYTES


def test_a_copy_over_the_byte_cap_stops_and_leaves_nothing(tmp_path, monkeypatch):
    """GRIB files are copied whole before ecCodes reads them: the copy stops at the cap
    (here through fsspec's local filesystem, the same copy loop as from S3 or the cache)."""
    import fsspec

    from twinlab.datalake import opening

    monkeypatch.setenv("TWINLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(opening, "COPY_BLOCK", 4096)
    src = tmp_path / "big.grib2"
    src.write_bytes(b"\0" * 20_000)
    fs = fsspec.filesystem("file")
    with pytest.raises(ql.QuicklookTooLarge, match="20000 bytes, over the quick-look limit"):
        opening.local_copy(str(src), fs=fs, progress=ql.byte_cap(10_000))
    assert list((tmp_path / "cache").iterdir()) == []  # no partial copy left
    assert opening.local_copy(str(src), fs=fs, progress=ql.byte_cap(20_000)).stat().st_size


# ---- keys and ids ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("a\x85b", "control characters"),  # C1 (NEL)
        ("a\x9bb", "control characters"),  # C1 (CSI: terminal escapes)
        ("a\x00b", "control characters"),
        ("a//b", "empty segment"),
        ("a/b/", "ends in '/'"),
        ("a/./b", "'.' or '..' segment"),
        ("/a", "must not start with '/'"),
    ],
)
def test_bad_keys_are_refused(key, words):
    with pytest.raises(st.StorageError) as e:
        st.check_key(key)
    assert e.value.status == 400 and words in e.value.message


def test_prefixes_may_end_in_a_slash_but_not_have_empty_segments():
    assert st.check_prefix("climate-dt/") == "climate-dt/"
    assert st.check_prefix("") == ""
    assert st.check_key("a/b.bin") == "a/b.bin"
    assert st.check_key("é/ü-ok.nc") == "é/ü-ok.nc"  # non-control non-ASCII is fine
    for bad in ("a//", "//", "a/\x90/"):
        with pytest.raises(st.StorageError):
            st.check_prefix(bad)


@pytest.mark.parametrize("value", ["a\x85b", "a\x9fb", "a\x1bb", "a/b", ".."])
def test_bad_ids_are_refused(value):
    with pytest.raises(web.HTTPError) as e:
        _check_id(value, "item")
    assert e.value.status_code == 400 and "not a valid id" in e.value.log_message


# ---- S3 failures that are not answers of the object store ------------------------------------
@pytest.fixture
def s3_env(monkeypatch, tmp_path):
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "FSSPEC_S3_ENDPOINT_URL",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    doc = {"endpoint": f"http://127.0.0.1:{port}", "home_bucket": "home-alice"}
    monkeypatch.setenv("TWINHUB_STORAGE", json.dumps(doc))
    st.client.cache_clear()
    yield port
    st.client.cache_clear()


def test_no_credentials_is_a_503_naming_it(s3_env):
    with pytest.raises(st.StorageError) as e:
        st.list_objects("home-alice")
    assert e.value.status == 503 and "no S3 credentials" in e.value.message


def test_an_unreachable_object_store_is_a_503_naming_it(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    st.client.cache_clear()
    with pytest.raises(st.StorageError) as e:
        st.stat("home-alice", "x.bin")
    assert e.value.status == 503 and "cannot reach the object store" in e.value.message
    assert str(s3_env) in e.value.message
