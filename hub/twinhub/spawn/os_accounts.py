"""OS accounts for platform users in multi-user mode.

A platform user ``alice`` runs as the OS account ``<prefix>alice`` (default ``twin-alice``),
created on first spawn the way The Littlest JupyterHub does.  The prefix means a platform
user can never *be* an existing system account (``root``, ``postgres``...).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..db.models import OsAccount
from ..db.schema import session

if TYPE_CHECKING:
    from ..process.runtime import Runtime

# Platform names that are refused outright, even with the prefix, because they are confusing
# or collide with service names.
RESERVED_NAMES = frozenset(
    {
        "root", "daemon", "bin", "sys", "sync", "games", "man", "lp",
        "mail", "news", "uucp", "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody",
        "postgres", "systemd-network", "systemd-resolve", "messagebus", "sshd", "_apt",
        "hub", "jupyterhub", "twinhub", "dask", "dask-gateway", "services", "service",
    }
)  # fmt: skip
# Linux useradd limits names to 32 chars; letters, digits, '-' and '_'; must start with a letter.
_VALID = re.compile(r"^[a-z][a-z0-9_-]*$")
MAX_OS_NAME = 32


def os_account_name(platform_user: str, prefix: str = "twin-") -> str:
    """Map a platform user name to its OS account name, refusing reserved or invalid names.

    Raises ValueError with a message naming the problem.
    """
    name = platform_user
    if name in RESERVED_NAMES:
        raise ValueError(f"user name {name!r} is reserved; choose another name")
    if not _VALID.fullmatch(name):
        raise ValueError(
            f"user name {name!r} is not valid: use lowercase letters, digits, '-' or '_', "
            "starting with a letter"
        )
    os_name = prefix + name
    if len(os_name) > MAX_OS_NAME:
        raise ValueError(
            f"user name {name!r} is too long: at most {MAX_OS_NAME - len(prefix)} characters"
        )
    return os_name


def check_platform_name(platform_user: str, prefix: str = "twin-") -> str:
    """:func:`os_account_name`, and also refuse the name of a system account of this host
    (uid < 1000, beyond the fixed reserved list): what every way of making a user checks."""
    os_name = os_account_name(platform_user, prefix)
    try:
        system = pwd.getpwnam(platform_user).pw_uid < 1000
    except KeyError:
        system = False
    if system:
        raise ValueError(
            f"user name {platform_user!r} is reserved (a system account on this host); "
            "choose another name"
        )
    return os_name


# -- creating, recording and purging accounts (multi-user mode) --------------------------

ACCOUNTS_FILE = "accounts.json"
# useradd/userdel lock /etc/passwd themselves but fail instead of waiting: serialise ours.
_lock = threading.Lock()


class AccountError(RuntimeError):
    """An OS account could not be created or used; the message names the problem."""


@dataclass(frozen=True)
class Account:
    platform_user: str
    name: str
    uid: int
    gid: int
    home: str


def _registry_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / ACCOUNTS_FILE


def recorded_accounts(state_dir: str | Path) -> dict[str, dict]:
    """OS account name -> record, for the accounts twinhub created in this state dir."""
    f = _registry_path(state_dir)
    if not f.exists():
        return {}
    return json.loads(f.read_text()).get("accounts", {})


def _write_registry(state_dir: str | Path, accounts: dict[str, dict]) -> None:
    f = _registry_path(state_dir)
    tmp = f.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"accounts": accounts}, fh, indent=2, sort_keys=True)
    tmp.replace(f)


def _run(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise AccountError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")


def ensure_account(
    platform_user: str,
    state_dir: str | Path,
    prefix: str = "twin-",
    home_root: str = "/home",
) -> Account:
    """Return the OS account of ``platform_user``, creating it on first use (needs root).

    Created like The Littlest JupyterHub does it: ``useradd`` with its own group, a home
    under ``home_root`` (mode 0700, so no other platform user can read it) and bash.
    An existing account of that name is used only if this platform (this state dir) made
    it: see :func:`check_account`.
    """
    name = os_account_name(platform_user, prefix)
    with _lock:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            pw = None
        if pw is None:
            if os.geteuid() != 0:
                raise AccountError(
                    f"cannot create OS account {name!r} for {platform_user!r}: the hub is not "
                    "root (multi-user mode needs root; use personal mode otherwise)"
                )
            home = Path(home_root) / name
            try:
                Path(home_root).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise AccountError(f"cannot create home root {home_root}: {e.strerror}") from e
            _run(["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/bash",
                  "--user-group", "--comment", f"twinhub user {platform_user}", name])  # fmt: skip
            pw = pwd.getpwnam(name)
            accounts = recorded_accounts(state_dir)
            accounts[name] = {"platform_user": platform_user, "uid": pw.pw_uid, "home": pw.pw_dir}
            _write_registry(state_dir, accounts)
        else:
            _check_existing(platform_user, pw, state_dir)
    home = Path(pw.pw_dir)
    if not home.is_dir():
        # Account exists but its home went missing (restored /etc/passwd, wiped /home).
        home.mkdir(mode=0o700, parents=True)
        os.chown(home, pw.pw_uid, pw.pw_gid)
    if os.geteuid() == 0 and home.stat().st_mode & 0o077:
        home.chmod(0o700)
    return Account(platform_user, name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def _check_existing(platform_user: str, pw: pwd.struct_passwd, state_dir: str | Path) -> None:
    name = pw.pw_name
    record = recorded_accounts(state_dir).get(name)
    if record is not None and record.get("uid", pw.pw_uid) == pw.pw_uid:
        return
    if pw.pw_uid < 1000:
        raise AccountError(
            f"OS account {name!r} exists and is a system account (uid {pw.pw_uid}); "
            f"refusing to run {platform_user!r}'s server as it"
        )
    # Another platform instance on this host (or a person) owns it: running this instance's
    # user as it would hand them each other's files and processes.
    made = f" ({pw.pw_gecos})" if pw.pw_gecos else ""
    why = (
        f"was re-created outside this platform (uid {pw.pw_uid}, recorded {record['uid']})"
        if record is not None
        else f"was not made by this platform (state dir {state_dir})"
    )
    raise AccountError(
        f"OS account {name!r}{made} already exists on this host and {why}; refusing to run "
        f"{platform_user!r}'s server as it. If it is a leftover, remove it (userdel -r "
        f"{name}); if another twinhub instance on this host uses it, give this instance its "
        "own Twinhub.user_prefix"
    )


def check_account(platform_user: str, state_dir: str | Path, prefix: str = "twin-") -> str:
    """The OS account name ``ensure_account`` would use, checked without creating anything.

    ValueError for a name that cannot be an OS account; AccountError for an existing account
    this platform did not make (a system account, another instance's user, a person's).
    Lets the hub refuse a spawn before anything else (storage) is made for the user.
    """
    name = os_account_name(platform_user, prefix)
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return name
    _check_existing(platform_user, pw, state_dir)
    return name


#: Where each OS account's servers get their private (0700) Jupyter runtime dirs:
#: ``<RUNTIME_ROOT>/<instance id>/<uid>`` (``MultiUserSpawner.runtime_root``).
RUNTIME_ROOT = "/run/twinhub"


def remove_runtime_dirs(root: str | Path, instance_id: str) -> bool:
    """Remove ``<root>/<instance_id>`` (every server's kernel sockets and connection files)
    once the platform has stopped: a hub that is not told to clean up its servers
    (``cleanup_servers = False``) never calls their ``stop()``. Only a root-owned real
    directory is removed; returns whether one was."""
    d = Path(root) / instance_id
    try:
        st = os.lstat(d)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        return False
    shutil.rmtree(d, ignore_errors=True)
    with contextlib.suppress(OSError):  # the root itself, once no instance uses it
        Path(root).rmdir()
    return True


def kill_account_processes(name: str, timeout: float = 5.0) -> int:
    """SIGKILL every process owned by OS account ``name``; returns how many were signalled."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return 0
    if uid == 0 or uid == os.geteuid():
        raise AccountError(f"refusing to kill the processes of {name!r} (uid {uid})")
    import psutil

    killed = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = [
            p
            for p in psutil.process_iter(["uids", "status"])
            # Zombies are dead already; their parent (the hub) reaps them.
            if p.info["uids"] and p.info["uids"].real == uid and p.info["status"] != "zombie"
        ]
        if not procs:
            break
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
                killed += 1
        psutil.wait_procs(procs, timeout=1)
    return killed


def purge_accounts(rt: Runtime) -> list[str]:
    """Remove every OS account twinhub created for this state dir (processes, home, group).

    Used by ``twinhub down --purge-users``; returns the account names removed.
    """
    removed = []
    with _lock:
        accounts = recorded_accounts(rt.state_dir)
        for name in sorted(accounts):
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                removed.append(name)  # removed by hand already
            else:
                # Only the account this instance made: one re-created since (same name,
                # another uid) belongs to someone else and is left alone.
                if pw.pw_uid == accounts[name].get("uid", pw.pw_uid):
                    kill_account_processes(name)
                    _run(["userdel", "--remove", name])
                    removed.append(name)
            del accounts[name]
            _write_registry(rt.state_dir, accounts)
    return removed


# -- the os_accounts table -------------------------------------------------------------
@dataclass(frozen=True)
class OsAccountRecord:
    platform_user: str
    os_name: str
    uid: int
    created_at: datetime


def _record(row: OsAccount) -> OsAccountRecord:
    return OsAccountRecord(row.platform_user, row.os_name, row.uid, row.created_at)


def record_os_account(db_url: str, platform_user: str, os_name: str, uid: int) -> OsAccountRecord:
    """Remember that ``platform_user`` runs as OS account ``os_name`` (``uid``).

    Recording the same mapping again updates the uid (an account re-created after removal);
    an OS name already recorded for a *different* platform user is refused (ValueError),
    because two platform users must never share files.
    """
    if not platform_user or not os_name:
        raise ValueError("platform_user and os_name must not be empty")
    if uid < 0:
        raise ValueError(f"uid must be >= 0, got {uid}")
    try:
        with session(db_url) as s:
            row = s.get(OsAccount, platform_user)
            if row is None:
                row = OsAccount(platform_user=platform_user, os_name=os_name, uid=uid)
                s.add(row)
            else:
                row.os_name, row.uid = os_name, uid
            s.flush()
            return _record(row)
    except IntegrityError as e:
        raise ValueError(
            f"OS account {os_name!r} is already recorded for another platform user"
        ) from e


def get_os_account(db_url: str, platform_user: str) -> OsAccountRecord | None:
    with session(db_url) as s:
        row = s.get(OsAccount, platform_user)
        return _record(row) if row else None


def list_os_accounts(db_url: str) -> list[OsAccountRecord]:
    """Every recorded mapping, by platform user name."""
    with session(db_url) as s:
        rows = s.scalars(select(OsAccount).order_by(OsAccount.platform_user)).all()
        return [_record(r) for r in rows]


def forget_os_account(db_url: str, platform_user: str) -> bool:
    """Drop the mapping of ``platform_user``; True when there was one."""
    with session(db_url) as s:
        row = s.get(OsAccount, platform_user)
        if row is None:
            return False
        s.delete(row)
        return True
