"""The spawners of the two platform modes, and the hub configuration that picks one.

- :class:`PersonalSpawner` (``Twinhub.mode = "personal"``): every server runs as the OS
  user who started the platform.  As root that would make every platform user root, so
  only one platform user (the first to start a server) may have a server then.
- :class:`MultiUserSpawner` (``"multi-user"``, the default as root): one OS account per
  platform user (``twin-<name>``), created on first spawn; see :mod:`twinhub.spawn.os_accounts`.

What both share (profiles, limits, the start queue, start-up failures) is
:class:`twinhub.spawn.spawner.TwinhubSpawner`. In Kubernetes (``rt.deployment``) the hub uses
:class:`twinhub.spawn.kube.TwinhubKubeSpawner` instead, with the same profiles and hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyterhub.spawner import set_user_setuid
from traitlets import Integer, Unicode

from ..config import Twinhub
from ..plugin import Part
from ..process.runtime import Runtime
from . import os_accounts, profiles, resource_limits, startqueue
from .choices import http_error
from .spawner import TwinhubSpawner, TwinhubSpawnerConfig

__all__ = ["MultiUserSpawner", "PersonalSpawner", "SpawnPart", "private_runtime_dir"]


class PersonalSpawner(TwinhubSpawner):
    """Every server as the OS user running the hub (one person on their machine)."""

    def _owner_file(self) -> Path:
        return Path(self.state_dir) / "personal_owner.json"

    async def prepare_user(self) -> tuple[int | None, str]:
        if os.geteuid() == 0:
            self._claim_root_owner()
        return None, pwd.getpwuid(os.geteuid()).pw_dir

    def _claim_root_owner(self) -> None:
        """As root, the first platform user to start a server owns the platform."""
        f = self._owner_file()
        try:
            owner = json.loads(f.read_text())["user"]
        except (OSError, ValueError, KeyError):
            owner = self.user.name
            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"user": owner}, fh)
        if owner != self.user.name:
            raise http_error(
                403,
                f"This platform runs in personal mode as root, so every server would run as "
                f"root: only {owner!r} may start one. Ask the administrator to run it in "
                f"multi-user mode (Twinhub.mode = 'multi-user') to serve several users.",
            )

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        pw = pwd.getpwuid(os.geteuid())
        env["USER"] = pw.pw_name
        env["HOME"] = pw.pw_dir
        env["SHELL"] = pw.pw_shell or "/bin/bash"
        return env

    def user_preexec(self) -> Callable[[], None] | None:
        return None

    def get_args(self) -> list[str]:
        args = super().get_args()
        if os.geteuid() == 0:
            args.append("--ServerApp.allow_root=True")
        return args

    async def move_certs(self, paths: dict) -> dict:
        return paths  # same OS user: nothing to hand over


class MultiUserSpawner(TwinhubSpawner):
    """One OS account per platform user, created on first spawn.

    Isolation between users beyond file permissions: kernels talk ZeroMQ over Unix sockets
    (``KernelManager.transport = "ipc"``) in a 0700 runtime directory of the account, so no
    other account can reach them (over TCP loopback anyone could subscribe to a kernel's
    IOPub); the server's own TCP port answers only with the hub's OAuth/token checks; and
    each account's processes are capped (:class:`twinhub.spawn.resource_limits.TwinhubUserLimits`).
    """

    user_prefix = Unicode(
        "twin-", help="Prefix of OS account names (from Twinhub.user_prefix)."
    ).tag(config=True)
    home_root = Unicode(
        "/home", help="Where OS account homes are created (from Twinhub.home_root)."
    ).tag(config=True)
    runtime_root = Unicode(
        os_accounts.RUNTIME_ROOT,
        help="Where each OS account gets its private (0700) Jupyter runtime directory, "
        "<runtime_root>/<instance>/<uid>: kernel connection files and IPC sockets. Keep it "
        "short: a Unix socket path holds at most 107 bytes.",
    ).tag(config=True)
    max_processes = Integer(
        1024, min=0, help="See TwinhubUserLimits.max_processes (copied by configure_hub)."
    ).tag(config=True)

    account: os_accounts.Account | None = None

    async def prepare_user(self) -> tuple[int | None, str]:
        try:
            os_accounts.os_account_name(self.user.name, self.user_prefix)
        except ValueError as e:
            raise http_error(400, f"Cannot start a server: {e}") from None
        self._event(f"Preparing OS account for {self.user.name}.", 10)
        self.account = await asyncio.to_thread(
            os_accounts.ensure_account,
            self.user.name,
            self.state_dir,
            self.user_prefix,
            self.home_root,
        )
        pw = pwd.getpwnam(self.account.name)
        runtime = self._runtime_path(pw.pw_uid)
        await asyncio.to_thread(private_runtime_dir, runtime, pw.pw_uid, pw.pw_gid)
        self._event("Kernels listen on private Unix sockets of your account only.", 12)
        if self.max_processes:
            self._event(f"At most {self.max_processes} processes/threads for your account.", 14)
        return self.account.uid, self.account.home

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        name = self.account.name if self.account else self._os_name()
        pw = pwd.getpwnam(name)
        env["USER"] = name
        env["HOME"] = pw.pw_dir
        env["SHELL"] = pw.pw_shell or "/bin/bash"
        env["JUPYTER_RUNTIME_DIR"] = str(self._runtime_path(pw.pw_uid))
        return env

    def _runtime_path(self, uid: int) -> Path:
        """This server's private runtime dir: one per server, removed when it stops."""
        leaf = str(uid)
        if self.name:  # a named server: short and distinct whatever the name
            leaf += "-" + hashlib.sha1(self.name.encode()).hexdigest()[:8]
        return Path(self.runtime_root) / self.instance_id / leaf

    async def stop(self, now: bool = False) -> None:
        await super().stop(now=now)
        # Its kernels' connection files and sockets go with the server.
        with contextlib.suppress(KeyError, ValueError):
            # The account may be gone already (purged): the uid of this spawn still names it.
            uid = self.account.uid if self.account else pwd.getpwnam(self._os_name()).pw_uid
            d = self._runtime_path(uid)
            await asyncio.to_thread(shutil.rmtree, d, True)
            with contextlib.suppress(OSError):  # the instance's dir, once no server uses it
                d.parent.rmdir()

    def get_args(self) -> list[str]:
        # ZeroMQ over Unix sockets in JUPYTER_RUNTIME_DIR: no TCP port other users could reach.
        return [*super().get_args(), "--KernelManager.transport=ipc"]

    def _os_name(self) -> str:
        return os_accounts.os_account_name(self.user.name, self.user_prefix)

    def user_preexec(self) -> Callable[[], None] | None:
        switch = set_user_setuid(self.account.name if self.account else self._os_name())
        nproc = self.max_processes

        def preexec() -> None:
            if nproc:  # before setuid: as root any hard limit can be set
                resource_limits.limit_processes(nproc)
            switch()

        return preexec

    async def move_certs(self, paths: dict) -> dict:
        raise http_error(500, "internal_ssl is not supported by twinhub's multi-user spawner")


def private_runtime_dir(d: Path, uid: int, gid: int) -> Path:
    """Make ``d`` a directory only ``uid`` can enter, under root-owned 0711 parents.

    Made by root before the server starts; an entry there that is not a plain directory
    (only root can create one) is refused rather than used.
    """
    for attempt in range(3):
        d.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        for parent in (d.parent.parent, d.parent):
            st = os.lstat(parent)
            if st.st_uid != 0 or not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o022:
                raise os_accounts.AccountError(
                    f"{parent} must be a directory owned by root, not writable by others"
                )
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:  # the parent was just removed by another server's stop
            if attempt == 2:
                raise
            continue
        break
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode):
        raise os_accounts.AccountError(f"{d} is not a directory")
    os.chown(d, uid, gid, follow_symlinks=False)
    os.chmod(d, 0o700)  # a directory (checked above) that only root could have made
    return d


class SpawnPart(Part):
    """The spawner of the platform's mode, its profiles and per-user resource_limits."""

    name = "spawn"
    settings = (TwinhubSpawnerConfig, resource_limits.TwinhubUserLimits)

    def configure_hub(self, c: Any, rt: Runtime) -> None:
        """Apply the spawner of ``rt.mode`` (Kubernetes: :mod:`twinhub.spawn.kube`'s) to the
        JupyterHub config ``c``.

        Raises ValueError (ProfileError) naming a bad option before changing anything.
        """
        tw = Twinhub(config=rt.config)
        cfg = TwinhubSpawnerConfig(config=rt.config)
        per_user = resource_limits.TwinhubUserLimits(config=rt.config)
        valid_profiles = profiles.validate_profiles(tw.profiles)
        if rt.deployment == "kubernetes":
            self._configure_kubernetes(c, rt, valid_profiles)
            return
        if rt.mode == "multi-user" and not re.fullmatch(r"[a-z][a-z0-9_-]*|", tw.user_prefix):
            raise ValueError(
                f"Twinhub.user_prefix {tw.user_prefix!r} is not valid for OS account names: use "
                "lowercase letters, digits, '-' or '_', starting with a letter (default 'twin-')"
            )
        instance_id = rt.instance_id or Runtime.make_instance_id(rt.state_dir)

        c.JupyterHub.spawner_class = (
            MultiUserSpawner if rt.mode == "multi-user" else PersonalSpawner
        )
        c.Spawner.cmd = [rt.bin("jupyterhub-singleuser")]
        c.TwinhubSpawner.state_dir = str(rt.state_dir)
        c.TwinhubSpawner.instance_id = instance_id
        c.TwinhubSpawner.profiles = valid_profiles
        c.TwinhubSpawner.detect_gpu = tw.detect_gpu
        c.TwinhubSpawner.enforce_limits = cfg.enforce_limits
        c.TwinhubSpawner.log_tail_lines = cfg.log_tail_lines
        # Burst of first-time users: starts queue (startqueue), so JupyterHub's own timeout, which
        # counts from the request, must cover the wait of the last in a full queue plus its start.
        slots = cfg.concurrent_starts or startqueue.default_slots()
        c.TwinhubSpawner.concurrent_starts = slots
        c.TwinhubSpawner.server_start_timeout = cfg.start_timeout
        c.JupyterHub.concurrent_spawn_limit = cfg.max_pending_spawns
        c.Spawner.start_timeout = cfg.start_timeout * (1 + -(-cfg.max_pending_spawns // slots))
        c.Spawner.http_timeout = cfg.start_timeout
        c.MultiUserSpawner.user_prefix = tw.user_prefix
        c.MultiUserSpawner.home_root = tw.home_root
        c.MultiUserSpawner.max_processes = per_user.max_processes
        if cfg.enforce_limits != "off":
            # One hub per instance: empty groups of this instance are leftovers of a killed hub.
            resource_limits.remove_stale(f"twinhub-{instance_id}")

    def _configure_kubernetes(self, c: Any, rt: Runtime, valid_profiles: list[dict]) -> None:
        """KubeSpawner with twinhub's profiles (twinhub.spawn.kube). z2jh's configuration
        keeps the rest: the user image (singleuser.image; the chart fills each profile's
        kubespawner_override.image, the GPU image for GPU profiles), start timeout, storage,
        concurrent spawn limit. Nothing of the local process spawners applies (command from
        the platform's environment, OS accounts, cgroups, start queue)."""
        # By name: kubespawner's Kubernetes client is imported only where it is used.
        c.JupyterHub.spawner_class = "twinhub.spawn.kube.TwinhubKubeSpawner"
        c.TwinhubKubeSpawner.profiles = valid_profiles
