"""OS account names, the account registry, and real account creation/purge (root only)."""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
from pathlib import Path

import psutil
import pytest

from twinhub.process.runtime import Runtime
from twinhub.spawn import os_accounts
from twinhub.spawn.os_accounts import AccountError, os_account_name


@pytest.mark.parametrize(
    ("user", "prefix", "expected"),
    [("alice", "twin-", "twin-alice"), ("a1_b-c", "twin-", "twin-a1_b-c"), ("bob", "", "bob")],
)
def test_os_account_name_maps_with_prefix(user: str, prefix: str, expected: str) -> None:
    assert os_account_name(user, prefix) == expected


@pytest.mark.parametrize(
    ("user", "problem"),
    [
        ("root", "reserved"),
        ("postgres", "reserved"),
        ("hub", "reserved"),
        ("Alice", "not valid"),
        ("1alice", "not valid"),
        ("al ice", "not valid"),
        ("alice@example.org", "not valid"),
        ("", "not valid"),
        ("a" * 28, "too long"),
    ],
)
def test_os_account_name_refuses_with_reason(user: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as e:
        os_account_name(user)
    assert repr(user) in str(e.value)


def test_longest_name_fits_useradd_limit() -> None:
    assert len(os_account_name("a" * 27)) == os_accounts.MAX_OS_NAME


def test_existing_system_account_is_refused(tmp_path: Path) -> None:
    # A prefix-less mapping onto an existing system account (uid < 1000) must not be used.
    system = next(p for p in pwd.getpwall() if 0 < p.pw_uid < 1000 and p.pw_name.isalpha()
                  and p.pw_name not in os_accounts.RESERVED_NAMES)  # fmt: skip
    with pytest.raises(AccountError, match="system account"):
        os_accounts.ensure_account(system.pw_name, tmp_path, prefix="")
    assert os_accounts.recorded_accounts(tmp_path) == {}


@pytest.mark.multiuser
def test_account_creation_failure_names_the_cause(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating OS accounts needs root")
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(
        AccountError, match=r"cannot create home root .*file/homes: Not a directory"
    ):
        os_accounts.ensure_account(
            "zed", tmp_path, "tx-", home_root=str(tmp_path / "file" / "homes")
        )
    with pytest.raises(KeyError):
        pwd.getpwnam("tx-zed")


def test_purge_with_nothing_recorded_removes_nothing(tmp_path: Path) -> None:
    assert os_accounts.purge_accounts(Runtime(state_dir=tmp_path)) == []


@pytest.mark.multiuser
def test_create_record_and_purge_real_account(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating OS accounts needs root")
    prefix = "tu" + secrets.token_hex(2) + "-"
    home_root = tmp_path / "homes"
    acct = os_accounts.ensure_account("zoe", tmp_path, prefix=prefix, home_root=str(home_root))
    try:
        pw = pwd.getpwnam(prefix + "zoe")
        assert (acct.name, acct.uid, acct.home) == (pw.pw_name, pw.pw_uid, pw.pw_dir)
        assert pw.pw_dir == str(home_root / (prefix + "zoe")) and pw.pw_shell == "/bin/bash"
        st = os.stat(pw.pw_dir)
        assert (st.st_uid, st.st_mode & 0o777) == (pw.pw_uid, 0o700)
        # Second call: same account, not re-created.
        assert os_accounts.ensure_account("zoe", tmp_path, prefix, str(home_root)) == acct
        registry = tmp_path / os_accounts.ACCOUNTS_FILE
        assert registry.stat().st_mode & 0o777 == 0o600
        assert os_accounts.recorded_accounts(tmp_path)[acct.name]["platform_user"] == "zoe"
        # A process of that account (not our child: like a kernel left behind) is killed.
        out = subprocess.run(
            ["bash", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
            user=acct.uid, group=acct.gid, cwd="/", capture_output=True, text=True, check=True,
        )  # fmt: skip
        pid = int(out.stdout)
        assert psutil.Process(pid).uids().real == acct.uid
    finally:
        removed = os_accounts.purge_accounts(Runtime(state_dir=tmp_path))
    assert removed == [acct.name]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    with pytest.raises(KeyError):
        pwd.getpwnam(acct.name)
    assert not Path(acct.home).exists()
    assert os_accounts.recorded_accounts(tmp_path) == {}


def test_check_account_refuses_a_name_that_cannot_be_an_account(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'root' is reserved"):
        os_accounts.check_account("root", tmp_path)
    assert (
        os_accounts.check_account("nobody-has-this-name-x", tmp_path)
        == "twin-nobody-has-this-name-x"
    )


@pytest.mark.multiuser
def test_another_instances_account_is_refused_and_not_purged(tmp_path: Path) -> None:
    """Two platform instances on one host (two state dirs, same prefix): the second must not
    run its 'yan' as the first one's OS account, and its purge must not remove it."""
    if os.geteuid() != 0:
        pytest.skip("creating OS accounts needs root")
    prefix = "tu" + secrets.token_hex(2) + "-"
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    acct = os_accounts.ensure_account("yan", first, prefix, home_root=str(tmp_path / "homes"))
    try:
        for call in (os_accounts.check_account, os_accounts.ensure_account):
            with pytest.raises(AccountError) as e:
                call("yan", second, prefix)
            msg = str(e.value)
            assert repr(acct.name) in msg and "not made by this platform" in msg
            assert "user_prefix" in msg and str(second) in msg
        assert os_accounts.recorded_accounts(second) == {}
        # The first instance still uses it; the second's purge leaves it alone.
        assert os_accounts.ensure_account("yan", first, prefix) == acct
        assert os_accounts.purge_accounts(Runtime(state_dir=second)) == []
        assert pwd.getpwnam(acct.name).pw_uid == acct.uid
        # A registry entry whose account was re-created by someone else (other uid): refused,
        # and purge does not delete that other account.
        registry = os_accounts.recorded_accounts(second)
        registry[acct.name] = {"platform_user": "yan", "uid": acct.uid + 1, "home": acct.home}
        os_accounts._write_registry(second, registry)
        with pytest.raises(AccountError, match="re-created outside this platform"):
            os_accounts.check_account("yan", second, prefix)
        assert os_accounts.purge_accounts(Runtime(state_dir=second)) == []
        assert pwd.getpwnam(acct.name).pw_uid == acct.uid
    finally:
        assert os_accounts.purge_accounts(Runtime(state_dir=first)) == [acct.name]
    with pytest.raises(KeyError):
        pwd.getpwnam(acct.name)


def test_platform_names_refuse_this_hosts_system_accounts() -> None:
    system = next(
        (p.pw_name for p in pwd.getpwall()
         if 0 < p.pw_uid < 1000 and p.pw_name not in os_accounts.RESERVED_NAMES
         and os_accounts._VALID.match(p.pw_name) and len(p.pw_name) < 20),
        None,
    )  # fmt: skip
    if system is None:
        pytest.skip("no system account here beyond the reserved list")
    with pytest.raises(ValueError, match=f"{system!r} is reserved \\(a system account"):
        os_accounts.check_platform_name(system)
    assert os_accounts.check_platform_name("zoe") == "twin-zoe"
