"""What the single-user server spawners of the embedded platform share.

The two modes' spawners (:mod:`twinhub.spawn.modes`: one OS user for everyone, or one OS
account per platform user) derive from :class:`TwinhubSpawner`.  Both run ``<prefix>/bin/jupyterhub-singleuser`` from the platform's environment, apply the
chosen profile (:mod:`twinhub.spawn.profiles`: env, memory/CPU limits through
:mod:`twinhub.spawn.resource_limits`), write the server's output to ``<state>/logs/servers/<name>.log``, and
``start()`` returns only once the server listens, so a server that dies at start-up fails
the spawn with its own last log lines instead of JupyterHub's opaque 500 (JupyterHub 6.1
calls ``Future.exception()`` on a still-running spawn future when the process died after
``slow_spawn_timeout``: InvalidStateError in ``BaseHandler.spawn_single_user``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Bool, Enum, Integer, Unicode, default
from traitlets.config import Configurable

from twinlab.contract import ENV_LIMITS_ENFORCED, ENV_PROJECT, ENV_SERVICES

from ..process.ports import SERVER_PORTS, NoFreePort, pick_port, release_port
from . import charges, os_accounts, profiles, resource_limits, startqueue
from .choices import SpawnerChoices, http_error

__all__ = [
    "TwinhubSpawner",
    "TwinhubSpawnerConfig",
]

# Never passed to user servers: users must not learn where platform state lives.
_HIDDEN_ENV = ("TWINHUB_STATE",)


class TwinhubSpawnerConfig(Configurable):
    """Platform-level options of the spawners (``c.TwinhubSpawnerConfig.*``)."""

    enforce_limits = Enum(
        ["auto", "require", "off"],
        "auto",
        help="auto: enforce profile memory/CPU limits with cgroups where the machine allows, "
        "else advisory; require: refuse to start servers whose limits cannot be enforced; "
        "off: never create cgroups (limits are only passed as MEM_LIMIT/CPU_LIMIT).",
    ).tag(config=True)

    log_tail_lines = Integer(
        20, help="Lines of a server's log quoted to the user when it fails to start."
    ).tag(config=True)

    concurrent_starts = Integer(
        0,
        min=0,
        help="Servers started at the same time (OS account creation, process start, until it "
        "listens). Further spawns wait their turn in a first-come, first-served queue and see "
        "'Queued: N ahead of you' in their progress. 0: one per CPU, at least 2.",
    ).tag(config=True)

    start_timeout = Integer(
        120,
        min=1,
        help="Seconds a server may take to start once it leaves the start queue (account, "
        "cgroup, process, listening; then again to answer HTTP). Time spent queued does not "
        "count: JupyterHub's Spawner.start_timeout is sized from this and the queue.",
    ).tag(config=True)

    max_pending_spawns = Integer(
        100,
        min=1,
        help="Spawns that may be pending at once, starting or queued: the largest burst of "
        "spawn requests the platform accepts (all answered 201/202). One more is answered 429 "
        "with Retry-After (JupyterHub's concurrent_spawn_limit).",
    ).tag(config=True)


class TwinhubSpawner(SpawnerChoices, LocalProcessSpawner):
    """Common part of both modes: profiles, env, limits, server log, start-up failures."""

    state_dir = Unicode(
        "", help="Platform state directory (set by configure_hub; never given to servers)."
    ).tag(config=True)
    instance_id = Unicode(
        "default",
        help="Platform instance id: names this platform's cgroups (set by configure_hub).",
    ).tag(config=True)
    accounting_dir = Unicode(
        "",
        help="Directory of the accounting charge files (twinhub.spawn.charges), set by the "
        "accounting service's configure_service; '' when accounting is off. When set, every "
        "server runs in an accounting cgroup (limits or not) and has a charge file.",
    ).tag(config=True)
    detect_gpu = Bool(
        True, help="Offer GPU profiles only when a GPU is detected (from Twinhub.detect_gpu)."
    ).tag(config=True)
    enforce_limits = Enum(
        ["auto", "require", "off"],
        "auto",
        help="See TwinhubSpawnerConfig.enforce_limits (copied by configure_hub).",
    ).tag(config=True)
    log_tail_lines = Integer(
        20, help="See TwinhubSpawnerConfig.log_tail_lines (copied by configure_hub)."
    ).tag(config=True)
    concurrent_starts = Integer(
        0, help="See TwinhubSpawnerConfig.concurrent_starts (copied by configure_hub)."
    ).tag(config=True)
    server_start_timeout = Integer(
        120, help="See TwinhubSpawnerConfig.start_timeout (copied by configure_hub)."
    ).tag(config=True)

    # Spawns queued ahead of this one while it waits to start (None: not queued).
    queue_ahead: int | None = None

    # -- profiles ---------------------------------------------------------------------
    def offered_profiles(self) -> list[dict]:
        """The profiles this machine offers (GPU ones only where a GPU is detected)."""
        return profiles.offered_profiles(self.profiles, self.detect_gpu)

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Callable:
        return _apply_profile

    def _limits(self) -> resource_limits.Limits:
        return resource_limits.Limits.from_profile(self.profile.get("limits"))

    # -- environment, arguments ---------------------------------------------------------
    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        for name in _HIDDEN_ENV:
            env.pop(name, None)
        if self.profile:
            # A profile may not override what the hub sets for the server's own auth.
            env.update(
                {
                    k: v
                    for k, v in profiles.profile_env(self.profile).items()
                    if not k.startswith("JUPYTERHUB_")
                }
            )
        env[ENV_SERVICES] = json.dumps(self.services, sort_keys=True)
        # Informational (the hub's records say what is charged where): the default project
        # of the Dask clusters this server makes (twinlab.clusters.client).
        env[ENV_PROJECT] = self.project or self.personal_project
        cg = getattr(self, "_cgroup", None)
        env[ENV_LIMITS_ENFORCED] = "1" if cg is not None and cg.enforced else "0"
        return env

    # -- progress -------------------------------------------------------------------------
    def _event(self, message: str, progress: int | None = None) -> None:
        self.log.info("%s: %s", self._log_name, message)
        event: dict[str, Any] = {"message": message}
        if progress is not None:
            event["progress"] = progress
        self._events.append(event)

    @property
    def _events(self) -> list[dict]:
        if not hasattr(self, "_event_list"):
            self._event_list: list[dict] = []
        return self._event_list

    async def progress(self):  # type: ignore[override]
        """Spawn progress events (account, limits, start-up) as they happen."""
        sent = 0
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            if not self._spawn_pending:
                break
            await asyncio.sleep(0.1)

    # -- the parts each mode provides ---------------------------------------------------
    async def prepare_user(self) -> tuple[int | None, str]:
        """Make sure the server can run; return (uid to run as or None for self, home)."""
        raise NotImplementedError

    def user_preexec(self) -> Callable[[], None] | None:
        raise NotImplementedError

    # -- start / stop -------------------------------------------------------------------
    @property
    def _safe_name(self) -> str:
        raw = self.user.name + (f"-{self.name}" if self.name else "")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", raw)
        if safe != raw:  # keep distinct names distinct after sanitising
            safe += "-" + hashlib.sha1(raw.encode()).hexdigest()[:6]
        return safe

    @property
    def log_path(self) -> Path:
        return Path(self.state_dir) / "logs" / "servers" / f"{self._safe_name}.log"

    def _setup_limits(self) -> None:
        self._setup_limit_cgroup()
        if self.accounting_dir:
            self._setup_accounting()

    def _setup_limit_cgroup(self) -> None:
        lim = self._limits()
        self._cgroup = None
        if not (lim.memory or lim.cpu):
            self._event("No resource limits in this profile.", 20)
            return
        if self.enforce_limits == "off":
            reason = "cgroup enforcement is switched off (TwinhubSpawnerConfig.enforce_limits)"
            support = resource_limits.CgroupSupport("", reason=reason)
        else:
            support = resource_limits.detect(f"twinhub-{self.instance_id}")
        cg = resource_limits.ServerCgroup(support, self._safe_name, lim)
        if cg.enforced:
            try:
                cg.create()
            except OSError as e:
                cg = resource_limits.ServerCgroup(
                    resource_limits.CgroupSupport("", reason=f"cannot set up cgroup: {e}"),
                    cg.leaf,
                    lim,
                )
        self._cgroup = cg
        if cg.enforced:
            self._event(f"Limits {lim.describe()} enforced (cgroup {support.kind}).", 20)
        elif self.enforce_limits == "require":
            raise http_error(
                500,
                f"Limits {lim.describe()} cannot be enforced on this machine "
                f"({cg.support.reason}) and the platform requires enforced resource_limits.",
            )
        else:
            self._event(f"Limits {lim.describe()} are advisory only: {cg.support.reason}.", 20)

    def _setup_accounting(self) -> None:
        """Open this run's charge file and, where cgroups work, its accounting cgroup."""
        limits_cg = self._cgroup if self._cgroup is not None and self._cgroup.enforced else None
        uid = getattr(self, "_run_uid", None)
        self._acct, self._charge = charges.open_server_charge(
            self.accounting_dir,
            user=self.user.name,
            name=self.name,
            safe_name=self._safe_name,
            project=self.project or self.personal_project,
            uid=os.getuid() if uid is None else uid,
            profile=str(self.profile.get("slug", "")),
            gpus=self._limits().gpu,
            group=f"twinhub-{self.instance_id}-acct" if self.enforce_limits != "off" else "",
            limits=limits_cg,
        )

    async def _end_accounting(self, final_cpu: dict[str, float] | None = None) -> None:
        """Kill what is left in this server's accounting cgroups and mark its charge ended;
        the meter reads the last counters, then removes the leaves and the file. The user's
        last source ended: what is left of their dedicated account goes too (processes no
        cgroup held, detached from the server: unmetered otherwise). ``final_cpu``: removed
        limits cgroup -> its last CPU counter (where the charge metered it)."""
        if not self.accounting_dir:
            return
        self._acct = self._charge = None
        uids = set()
        # From the files, not memory: the hub may have restarted since the spawn.
        for c in charges.find_open(
            self.accounting_dir, user=self.user.name, name=self.name, kind="server"
        ):
            leaves = (c.cgroups or {}).get("leaves") or []
            if leaves:
                await asyncio.to_thread(resource_limits.kill_cgroup_procs, leaves)
            last = (final_cpu or {}).get(str((c.cgroups or {}).get("cpu", "")))
            charges.end(self.accounting_dir, c.source_id, final_cpu=last)
            uids.add(c.uid)
        for uid in uids:
            n = await asyncio.to_thread(
                charges.end_leftovers, self.accounting_dir, user=self.user.name, uid=uid
            )
            if n:
                self.log.info(
                    "%s: killed %d leftover process(es) of uid %s", self._log_name, n, uid
                )

    def make_preexec_fn(self, name: str) -> Callable[[], None]:
        join = self._cgroup.join_paths() if self._cgroup and self._cgroup.enforced else []
        acct = getattr(self, "_acct", None)
        if acct is not None:
            join = join + acct.join_paths()
        inner = self.user_preexec()

        def preexec() -> None:
            # Join the cgroup first, while still root: after setuid it is not allowed.
            if join:
                resource_limits.join_cgroup(join)
            if inner is not None:
                inner()

        return preexec

    async def start(self) -> tuple[str, int]:
        self._event_list = []
        self._event(f"Starting a {self.profile.get('display_name', 'default')} server.", 5)
        queue = startqueue.start_queue(self.concurrent_starts)
        try:
            waited = await queue.acquire(self._queued)
        finally:
            self.queue_ahead = None
        try:
            if waited:
                self._event(f"Your turn after {waited:.0f} s in the queue.", 8)
            return await asyncio.wait_for(self._start_now(), self.server_start_timeout)
        except TimeoutError:
            await self._end_accounting()
            raise http_error(500, self._timeout_message()) from None
        except BaseException:
            await self._end_accounting()
            raise
        finally:
            queue.release()

    def _queued(self, ahead: int, running: int) -> None:
        self.queue_ahead = ahead  # read by hub_handlers for the 202 answer
        self._event(
            f"Queued: {ahead} server{'s' if ahead != 1 else ''} ahead of you, "
            f"{running} starting now.",
            2,
        )

    def _timeout_message(self) -> str:
        msg = (
            f"Your server did not start within {self.server_start_timeout} s of its turn "
            "(time queued is not counted; TwinhubSpawnerConfig.start_timeout)."
        )
        if self.proc is not None and self.proc.poll() is None:
            msg += f" Last lines of its log:\n{self._log_tail()}"
        return msg

    async def _start_now(self) -> tuple[str, int]:
        try:
            self._run_uid, home = await self.prepare_user()
        except os_accounts.AccountError as e:
            raise http_error(
                500, f"Cannot prepare the OS account for {self.user.name!r}: {e}"
            ) from e
        await asyncio.to_thread(self._setup_limits)
        log = self.log_path
        # Private like the rest of <state>/logs: servers' output may hold tokens in URLs.
        log.parent.parent.mkdir(mode=0o700, exist_ok=True)
        log.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.popen_kwargs = {"stdout": fd, "stderr": subprocess.STDOUT, "cwd": home}
        release_port(self.port)
        try:
            self.port = pick_port(SERVER_PORTS)
        except NoFreePort as e:
            raise http_error(503, f"{e}; try again later") from e
        try:
            ip, port = await super().start()
        except BlockingIOError as e:  # exec refused: the account is at its process limit
            limit = getattr(self, "max_processes", 0)
            raise http_error(
                429,
                f"Your account already runs the most processes allowed ({limit}): stop some "
                f"kernels, terminals or Dask clusters, then start your server again.",
            ) from e
        finally:
            os.close(fd)
        charge = getattr(self, "_charge", None)
        if charge is not None:  # the root of its process tree, for per-process accounting
            self._charge = dataclasses.replace(charge, pid=self.pid)
            await asyncio.to_thread(charges.write, self.accounting_dir, self._charge)
        self._event("Server process started, waiting for it to listen.", 50)
        await self._wait_listening(ip or "127.0.0.1", port)
        self._event("Server is listening.", 90)
        return ip, port

    async def _wait_listening(self, ip: str, port: int) -> None:
        """Return once the server accepts connections; fail with its log if it exits."""
        while True:
            status = self.proc.poll() if self.proc is not None else 0
            if status is not None:
                raise http_error(500, self._exit_message(status))
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 0.5)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        return "\n".join(lines[-self.log_tail_lines :]) or "(no output)"

    def _exit_message(self, status: int) -> str:
        tail = self._log_tail()
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        return f"Your server {how} while starting. Last lines of its log:\n{tail}"

    async def poll(self) -> int | None:
        had_process = self.proc is not None or bool(self.pid)
        status = await super().poll()
        if status is not None and had_process:
            # Died on its own (OOM, crash, purged account): JupyterHub will not call stop(),
            # so remove the group here, with any kernels it left behind.
            await self._remove_cgroup()
        return status

    async def _remove_cgroup(self) -> None:
        if getattr(self, "_cgroup", None) is None and self.enforce_limits != "off":
            # Hub restarted since the spawn: the group has a deterministic name.
            support = resource_limits.detect(f"twinhub-{self.instance_id}")
            self._cgroup = resource_limits.ServerCgroup(
                support, self._safe_name, resource_limits.Limits()
            )
        cg, self._cgroup = self._cgroup, None
        final: dict[str, float] = {}
        if cg is not None and cg.support.kind and any(d.exists() for d in cg.dirs):
            cpu = await asyncio.to_thread(cg.kill_and_remove)
            final = {str(d): cpu for d in cg.dirs if cpu is not None}
        await self._end_accounting(final)

    async def stop(self, now: bool = False) -> None:
        await super().stop(now=now)
        release_port(self.port)
        await self._remove_cgroup()


async def _apply_profile(spawner: TwinhubSpawner, user_options: dict) -> None:
    """``apply_user_options`` hook: choose the profile and the project charged, refusing bad
    choices with a 400 (and what ``spawn_check`` refuses with a 403)."""
    offered = await spawner.profiles_for_user()
    try:
        project = profiles.choose_project(
            await spawner.projects_for_user(), user_options, spawner.personal_project
        )
    except profiles.ProfileError as e:
        if spawner.orm_spawner is not None:  # not the next spawn's defaults either
            spawner.orm_spawner.user_options = {}
        raise http_error(400, str(e)) from None
    # Before the check: spawn_check reads the chosen project here (its signature is kept).
    spawner.project = project
    why = await spawner.spawn_refusal(offered, user_options)
    if why:
        if spawner.orm_spawner is not None:  # not the next spawn's defaults either
            spawner.orm_spawner.user_options = {}
        raise http_error(403, why)
    try:
        slug = (user_options or {}).get("profile")
        known = {p["slug"] for p in spawner.profiles}
        if slug in known and slug not in {p["slug"] for p in offered}:
            gpu = any(p["slug"] == slug and p.get("gpu") for p in spawner.profiles)
            why = (
                "no GPU was detected on this machine"
                if gpu and not profiles.gpu_present()
                else "it is not available to you"
            )
            raise profiles.ProfileError(
                f"profile {slug!r} cannot be started: {why}; available: "
                + ", ".join(p["slug"] for p in offered)
            )
        profile = profiles.choose(offered, user_options)
    except profiles.ProfileError as e:
        # JupyterHub stored these options as the next spawn's defaults: forget them.
        if spawner.orm_spawner is not None:
            spawner.orm_spawner.user_options = {}
        raise http_error(400, str(e)) from None
    spawner.profile = profile
    lim = resource_limits.Limits.from_profile(profile.get("limits"))
    spawner.mem_limit = lim.memory
    spawner.cpu_limit = lim.cpu
