"""twinhub.objectstore without a running store: names, keys, generated files, the table."""

from __future__ import annotations

import stat
import tomllib

import pytest
from sqlalchemy import inspect
from traitlets.config import Config

from twinhub import db, objectstore
from twinhub.objectstore import credentials, seaweed
from twinhub.runtime import Runtime


@pytest.fixture
def rt(tmp_path) -> Runtime:
    r = Runtime(state_dir=tmp_path, config=Config(), instance_id="t")
    for sub in ("secrets", "run"):
        (tmp_path / sub).mkdir(mode=0o700)
    for i, key in enumerate(seaweed.PORT_KEYS.values()):
        r.ports[key] = 40000 + i
    yield r
    db.dispose_engines()


@pytest.mark.parametrize(
    "parts",
    [("..",), ("a", "../b"), ("a/./b",), ("",), ("/abs",), ("a//b",), ("a\\b",), ("a\nb",)],
)
def test_safe_key_refuses_keys_that_walk_or_hide(parts):
    with pytest.raises(ValueError, match="object key part"):
        objectstore.safe_key(*parts)


def test_safe_key_joins_plain_parts():
    assert objectstore.safe_key("climate-dt", "2t/2020.zarr") == "climate-dt/2t/2020.zarr"


def test_home_bucket_names_are_valid_and_distinct():
    assert objectstore.home_bucket_name("home-", "olga") == "home-olga"
    odd = [objectstore.home_bucket_name("home-", n) for n in ("Ann_B", "ann.b", "ann@b", "x" * 80)]
    assert len(set(odd)) == len(odd)
    assert all(credentials.BUCKET_RE.match(b) and len(b) <= 63 for b in odd), odd
    with pytest.raises(ValueError, match="must not be empty"):
        objectstore.home_bucket_name("home-", "")


def test_identities_give_users_their_bucket_and_a_read_only_lake():
    doc = seaweed.identities(("AK", "SK"), [("olga", "OK", "OS", "home-olga")], "lake")
    admin, olga = doc["identities"]
    assert "Admin" in admin["actions"]
    assert sorted(olga["actions"]) == sorted(
        [
            "Read:lake",
            "List:lake",
            "Read:home-olga",
            "List:home-olga",
            "Write:home-olga",
            "Tagging:home-olga",
        ]
    )
    assert not any(a.startswith(("Write:lake", "Admin")) for a in olga["actions"])


def test_config_files_are_private_and_close_every_server(rt):
    seaweed.write_config(rt)
    conf = seaweed.conf_dir(rt)
    assert stat.S_IMODE(conf.stat().st_mode) == 0o700
    for f in conf.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    sec = tomllib.loads((conf / "security.toml").read_text())
    keys = [
        sec["jwt"]["signing"]["key"],
        sec["jwt"]["signing"]["read"]["key"],
        sec["jwt"]["filer_signing"]["key"],
        sec["jwt"]["filer_signing"]["read"]["key"],
    ]
    assert all(len(k) == 64 for k in keys) and len(set(keys)) == 4
    for section in ("master", "volume", "filer", "s3", "client"):
        assert sec["grpc"][section]["cert"] == str(conf / "grpc.crt")
    assert sec["grpc"]["ca"] == str(conf / "ca.crt")
    # The certificate chains to the CA (weed would refuse it otherwise).
    from cryptography import x509

    ca = x509.load_pem_x509_certificate((conf / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((conf / "grpc.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    argv = seaweed.argv(rt, "weed", 64)
    for flag in (
        "-disableHttp",
        "-webdav=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-ip.bind=127.0.0.1",
        "-s3.port=40000",
        "-s3.port.grpc=40007",
    ):
        assert flag in argv, flag
    # No secret on weed's command line.
    for f in (rt.secrets_dir).iterdir():
        assert f.read_text().strip() not in " ".join(argv)


def test_every_option_is_documented():
    for name, trait in objectstore.TwinhubObjectStore.class_traits(config=True).items():
        assert trait.help, name


def test_bad_lake_bucket_is_refused_by_name():
    with pytest.raises(Exception, match="lake_bucket 'Bad_Lake'"):
        objectstore.TwinhubObjectStore(lake_bucket="Bad_Lake")


def test_credentials_table_and_external_endpoint_without_keys(rt):
    db.upgrade(rt.db_url)
    assert "storage_credentials" in inspect(db.engine(rt.db_url)).get_table_names()
    rt.config.TwinhubObjectStore.endpoint_url = "https://s3.example.org"
    with pytest.raises(credentials.StorageError, match="external S3 endpoint"):
        objectstore.ensure_user(rt, "olga")
    with pytest.raises(credentials.StorageError, match="admin_access_key"):
        objectstore.admin_keys(rt)
    assert objectstore.endpoint(rt) == "https://s3.example.org"
    assert objectstore.components(rt) == []


def test_user_storage_repr_hides_the_secret():
    u = objectstore.UserStorage("olga", "AK", "very-secret", "home-olga")
    assert "very-secret" not in repr(u) and "very-secret" not in str(u)
