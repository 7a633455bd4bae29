"""The multi-user gateway backend's working directories (real chown, as root).

Upstream ``LocalBackend.setup_working_directory`` does ``paths.extend(path)`` for the TLS
files, so it chowns every *character* of their paths to the user -- ``/`` included.  These
tests pin that upstream bug (so we notice when the fix lands and the subclass can go) and
prove ``TwinhubLocalBackend`` chowns exactly the cluster's own tree.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from types import SimpleNamespace

import pytest
from dask_gateway_server.backends import local as upstream
from dask_gateway_server.tls import new_keypair

from twinhub.gateway.backend import TwinhubLocalBackend

ACCOUNT = "twin-gwtest1"


@pytest.fixture(scope="module")
def account():
    if os.geteuid() != 0:
        pytest.skip("needs root to create an OS account and chown")
    created = subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", ACCOUNT],
                             capture_output=True, text=True)  # fmt: skip
    assert created.returncode in (0, 9), created.stderr  # 9: exists already
    upstream.getpwnam.cache_clear()
    yield pwd.getpwnam(ACCOUNT)
    if created.returncode == 0:
        subprocess.run(["userdel", ACCOUNT], check=True)


def cluster(name: str) -> SimpleNamespace:
    cert, key = new_keypair(name)
    return SimpleNamespace(name=name, username="gwtest1", tls_cert=cert, tls_key=key, state={})


def test_upstream_chowns_each_character_of_the_cert_paths(tmp_path, monkeypatch, account):
    # A recording stand-in for os.chown (a fake): running upstream for real would chown '/'.
    calls: list[str] = []
    monkeypatch.setattr(upstream.os, "chown", lambda p, uid, gid, **kw: calls.append(p))
    backend = upstream.LocalBackend(clusters_directory=str(tmp_path))
    backend.setup_working_directory(SimpleNamespace(**{**vars(cluster("c1")), "username": ACCOUNT}))
    assert "/" in calls, calls  # the bug: single characters of '/tmp/.../dask.crt'


def test_twinhub_backend_chowns_exactly_the_cluster_tree(tmp_path, monkeypatch, account):
    root_before = os.stat("/")
    # One-letter names in the cwd are what upstream's bug would chown as relative paths.
    monkeypatch.chdir(tmp_path)
    for ch in "tmpdask":
        (tmp_path / ch).touch()
    clusters = tmp_path / "clusters"
    clusters.mkdir(mode=0o711)
    backend = TwinhubLocalBackend(clusters_directory=str(clusters), account_prefix="twin-")
    workdir = backend.setup_working_directory(cluster("c2"))

    assert workdir == str(clusters / "c2")
    after = os.stat("/")
    assert (after.st_uid, after.st_gid, after.st_mode) == (
        root_before.st_uid, root_before.st_gid, root_before.st_mode,
    )  # fmt: skip
    for ch in "tmpdask":
        assert (tmp_path / ch).stat().st_uid == 0
    assert clusters.stat().st_uid == 0
    expected = {
        "": 0o700, ".certs": 0o700, "logs": 0o700, ".certs/dask.crt": 0o600, ".certs/dask.pem": 0o600,
    }  # fmt: skip
    for rel, mode in expected.items():
        st = os.stat(os.path.join(workdir, rel))
        assert (st.st_uid, st.st_gid) == (account.pw_uid, account.pw_gid), rel
        assert stat.S_IMODE(st.st_mode) == mode, (rel, oct(st.st_mode))
    # Nothing else under the cluster tree, nothing chowned outside it.
    found = {
        os.path.relpath(os.path.join(d, f), workdir)
        for d, ds, fs in os.walk(workdir)
        for f in ds + fs
    }
    assert found == set(expected) - {""}


def test_unknown_account_is_a_clear_error(tmp_path):
    backend = TwinhubLocalBackend(clusters_directory=str(tmp_path), account_prefix="twin-")
    c = cluster("c3")
    c.username = "nosuchuser"
    with pytest.raises(Exception, match="no OS account 'twin-nosuchuser'"):
        backend.setup_working_directory(c)
    assert not (tmp_path / "c3").exists()


def test_service_identities_get_no_clusters(tmp_path):
    from dask_gateway_server.backends.base import PublicException

    backend = TwinhubLocalBackend(clusters_directory=str(tmp_path), account_prefix="twin-")
    with pytest.raises(PublicException, match="cannot run clusters for 'service:culler'"):
        backend._account("service:culler")
