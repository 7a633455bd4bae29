"""The embedded job backend: each job's runner is a local process of the user's OS account.

- Its own session (it outlives a restart of the service) and, where cgroups are usable
  (:mod:`twinhub.spawn.resource_limits`, as the gateway runs Dask schedulers/workers), its own
  cgroup limited to :attr:`LocalJobBackend.memory` and :attr:`~LocalJobBackend.cores`:
  :meth:`~LocalJobBackend.stop` kills the whole cgroup, so a child that left the runner's
  session (``setsid``, a double fork) dies with it. Without cgroups, ``stop`` kills what it
  can still tell apart: the account's processes started since the runner that are in its
  session or process group or carry the job's id in their environment.
- Started through :data:`LAUNCH`, a fresh single-threaded interpreter that joins the cgroup
  and caps the account's processes while still root, then becomes the user and execs the
  runner. The cgroup must be joined *before* any code of the user runs (Python reads the
  user's site-packages at start-up: joining from here after the start could be raced), and
  joining needs root, which ``Popen(user=...)`` drops before any hook runs; a
  ``preexec_fn`` in this threaded service could deadlock the child. So the service forks
  nothing but that launcher, without a hook.
- Its stdout/stderr go to ``<state>/processing/jobs/<id>/runner.log``, a file in a 0700
  directory of root's that the user cannot reach (only the inherited descriptor): the
  service reads its tail, trims it past :attr:`~LocalJobBackend.max_log_bytes` at each
  watch (:meth:`~LocalJobBackend.alive`) and removes the directory in
  :meth:`~LocalJobBackend.cleanup`. The file itself is the user's (owner and group): its
  blocks count against the user's disk quota, not root's (whose reserved blocks a runner
  writing, or ``fallocate``-ing past the end, between two trims could otherwise use up);
  the trim also looks at the blocks allocated (``st_blocks``), not only at the size.
  Not a pipe to the service: the runner must outlive a restart of the service, and a pipe
  read by nobody blocks (or kills) its writer. Not ``RLIMIT_FSIZE``: it would kill the
  runner, and limit every file it writes (and does not bound ``fallocate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from traitlets import Bool, Float, Integer, List, Unicode

from ...config import Twinhub
from ...spawn import charges, os_accounts, resource_limits
from ...spawn.resource_limits import TwinhubUserLimits
from ..accounting import charges_dir
from ..accounting.config import is_enabled as accounting_enabled
from . import outputs
from .backend import ENV_JOB_ID, LOG_NAME, RUNNER_MODULE, BackendError, JobBackend, log
from .context import ProcessingContext

#: The launcher (``python -I -S -c LAUNCH <json> <argv...>``), run as root: join the cgroups,
#: cap the account's processes, switch to the account, exec the runner. Any failure is
#: written to the error pipe (closed by a successful exec) for :meth:`LocalJobBackend.start`.
LAUNCH = """\
import json, os, resource, sys
a = json.loads(sys.argv[1])
try:
    pid = str(os.getpid()).encode()
    for path in a["join"]:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)
    if a["nproc"]:
        resource.setrlimit(resource.RLIMIT_NPROC, (a["nproc"], a["nproc"]))
    if a["uid"] is not None:
        os.setgroups(a["groups"])
        os.setgid(a["gid"])
        os.setuid(a["uid"])
    os.set_inheritable(a["fd"], False)
    os.execv(sys.argv[2], sys.argv[2:])
except BaseException as e:
    os.write(a["fd"], ("%s: %s (%s)" % (type(e).__name__, e, sys.argv[2])).encode()[:2000])
    os._exit(127)
"""
#: Bytes of a trimmed log kept (its end), of :attr:`LocalJobBackend.max_log_bytes`.
KEEP_FRACTION = 0.5


class LocalJobBackend(JobBackend):
    """The runner as a local process of the user's OS account (personal: the platform's)."""

    command = List(
        Unicode(),
        help="The runner's argv; empty: this Python's `python -m twinlab.processing.runner` "
        "(the platform's environment, which user servers run from too).",
    ).tag(config=True)
    cgroups = Bool(
        None,
        allow_none=True,
        help="Run each runner in a cgroup of its own (memory and cores below; stop() kills "
        "everything in it). None: where cgroups are usable, unless "
        "TwinhubSpawnerConfig.enforce_limits is 'off'. Without one, stop() kills what it "
        "finds of the runner by session, process group and environment.",
    ).tag(config=True)
    memory = Unicode(
        "2G",
        help="Memory limit of a runner's cgroup (the runner and what it starts; a job's "
        "heavy work runs on its Dask cluster), e.g. '2G'. '': none.",
    ).tag(config=True)
    cores = Float(1.0, min=0.0, help="CPU limit (cores) of a runner's cgroup; 0: none.").tag(
        config=True
    )
    max_log_bytes = Integer(
        8 * 1024**2,
        min=4096,
        help="Size of a runner's log file (its stdout/stderr) past which the service trims "
        "it to its last half, at each check of the running jobs (poll_interval).",
    ).tag(config=True)

    def __init__(self, ctx: ProcessingContext, **kwargs: Any) -> None:
        super().__init__(ctx, **kwargs)
        # Runners this process started, to reap them (a dead child is a zombie until then).
        self._children: dict[int, subprocess.Popen] = {}
        # Exit statuses of runners reaped here (by pid): what output_tail says of their end.
        self._exits: dict[int, int] = {}

    def jobs_dir(self) -> Path:
        return self.ctx.rt.path("processing", "jobs")

    def _account(self, user: str) -> pwd.struct_passwd | None:
        """The OS account to run as (None: the platform's own user, personal mode)."""
        rt = self.ctx.rt
        if rt.mode != "multi-user":
            return None
        tw = Twinhub(config=rt.config)
        try:
            os_accounts.check_account(user, rt.state_dir, tw.user_prefix)
            account = os_accounts.ensure_account(user, rt.state_dir, tw.user_prefix, tw.home_root)
        except (ValueError, os_accounts.AccountError) as e:
            raise BackendError(f"cannot run jobs for {user!r}: {e}") from None
        return pwd.getpwnam(account.name)

    def _job_dir(self, job_id: str, pw: pwd.struct_passwd | None = None) -> tuple[Path, int]:
        """A fresh 0700 job dir of root's, and its log file's fd (for the runner's output),
        the file owned by ``pw``'s account (None: the service's own).

        The dir is root's, not the user's: the service reads, trims and removes what is in
        it, which the user must not be able to swap (a link, a FIFO that blocks the
        service's read). The file is the user's, so that what is written to it counts
        against their quota.
        """
        if not outputs.JOB_ID.fullmatch(job_id):
            raise BackendError(f"not a job id: {job_id!r}")
        parent = self.jobs_dir()
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        d = parent / job_id
        if d.is_symlink():
            d.unlink()
        elif d.exists():
            shutil.rmtree(d)  # an earlier attempt's
        os.mkdir(d, 0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND
        fd = os.open(d / LOG_NAME, flags, 0o600)
        if pw is not None:
            try:
                os.fchown(fd, pw.pw_uid, pw.pw_gid)
            except OSError:
                os.close(fd)
                raise
        return d, fd

    # -- the cgroup ------------------------------------------------------------------------
    def _cgroups_wanted(self) -> bool:
        if self.cgroups is not None:
            return bool(self.cgroups)
        spawner = self.ctx.rt.config.get("TwinhubSpawnerConfig", {})
        return spawner.get("enforce_limits", "auto") != "off"

    def _cgroup(self, job: dict) -> resource_limits.ServerCgroup | None:
        """The runner's cgroup, created with its limits; None: none usable (logged)."""
        if not self._cgroups_wanted():
            return None
        support = resource_limits.detect(f"twinhub-{self.ctx.rt.instance_id}")
        if not support.kind:
            log.info("job %s: runner without a cgroup (%s)", job["id"], support.reason)
            return None
        lim = resource_limits.Limits(
            cpu=self.cores or None, memory=resource_limits.parse_memory(self.memory or None)
        )
        leaf = f"processing-{job['id']}-{int(job.get('attempt') or 1)}"
        cg = resource_limits.ServerCgroup(support, leaf, lim)
        try:
            cg.create()
        except OSError as e:
            log.warning("job %s: runner without a cgroup: %s", job["id"], e)
            with contextlib.suppress(OSError):
                _remove_dirs([str(d) for d in cg.dirs])
            return None
        return cg

    # -- starting ----------------------------------------------------------------------------
    def _argv(self, pw: pwd.struct_passwd | None, cg: Any, err_fd: int) -> list[str]:
        runner = list(self.command) or [sys.executable, "-m", RUNNER_MODULE]
        if runner and not os.path.isabs(runner[0]):
            runner[0] = shutil.which(runner[0]) or runner[0]
        nproc = TwinhubUserLimits(config=self.ctx.rt.config).max_processes if pw else 0
        args = {
            "join": cg.join_paths() if cg is not None else [],
            "nproc": nproc,
            "uid": pw.pw_uid if pw is not None else None,
            "gid": pw.pw_gid if pw is not None else None,
            "groups": [g.gr_gid for g in grp.getgrall() if pw and pw.pw_name in g.gr_mem],
            "fd": err_fd,
        }
        return [sys.executable, "-I", "-S", "-c", LAUNCH, json.dumps(args), *runner]

    def _spawn(
        self, pw: pwd.struct_passwd | None, cg: Any, env: dict[str, str], fd: int
    ) -> subprocess.Popen:
        """Start the launcher; wait until it exec'd the runner or said why not (blocking)."""
        r, w = os.pipe()
        try:
            try:
                proc = subprocess.Popen(
                    self._argv(pw, cg, w),
                    env=env,
                    cwd=env["HOME"] if os.path.isdir(env["HOME"]) else "/",
                    stdin=subprocess.DEVNULL,
                    stdout=fd,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own session: a restart does not end it
                    close_fds=True,
                    pass_fds=(w,),
                )
            finally:
                os.close(w)
            with os.fdopen(r, "rb", closefd=False) as pipe:
                why = pipe.read().decode("utf-8", "replace")
        finally:
            os.close(r)
        if why:
            proc.wait()
            raise BackendError(f"the runner did not start: {why}")
        return proc

    async def start(self, job: dict, secret: str, token: tuple[str, str] | None = None) -> dict:
        pw = await asyncio.to_thread(self._account, str(job["owner"]))
        token, token_id = await self._token(job, token)
        cg, source, d = None, "", None
        try:
            env = await self._environment(job, secret, token)
            try:
                d, fd = await asyncio.to_thread(self._job_dir, str(job["id"]), pw)
            except OSError as e:
                raise BackendError(f"cannot prepare the runner's log: {e}") from e
            try:
                cg = await asyncio.to_thread(self._cgroup, job)
                # Before the runner exists: an open source of the user's, so the end of
                # their last cluster never takes the runner for a leftover to kill
                # (charges.end_leftovers), and the runner is metered like a server.
                source = await asyncio.to_thread(self._open_charge, job, pw, cg)
                proc = await asyncio.to_thread(self._spawn, pw, cg, env, fd)
            except (OSError, subprocess.SubprocessError) as e:
                raise BackendError(f"the runner did not start: {e}") from e
            finally:
                os.close(fd)
        except BaseException:
            if cg is not None:
                await asyncio.to_thread(cg.kill_and_remove)
            if d is not None:  # no handle is stored: nothing else would remove it
                await asyncio.to_thread(shutil.rmtree, d, True)
            if source:
                await asyncio.to_thread(self._end_charge, {"charge": source})
            await self._revoke(job, token_id)
            raise
        self._children[proc.pid] = proc
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            started = 0.0  # already gone: alive() says so, output_tail() says why
        return {
            "kind": "local",
            "pid": proc.pid,
            "started": started,
            "uid": pw.pw_uid if pw is not None else os.getuid(),
            "dir": str(d),
            "job": str(job["id"]),
            "cgroup": [str(p) for p in cg.dirs] if cg is not None else [],
            "token_id": token_id,
            "charge": source,
        }

    # -- accounting --------------------------------------------------------------------------
    def _accounting_dir(self) -> str:
        rt = self.ctx.rt
        return str(charges_dir(rt)) if accounting_enabled(rt) else ""

    def _open_charge(self, job: dict, pw: pwd.struct_passwd | None, cg: Any) -> str:
        """The runner's charge file (kind "job", metered in its cgroup); its source id, or
        "" with accounting off."""
        directory = self._accounting_dir()
        if not directory:
            return ""
        attempt = int(job.get("attempt") or 1)
        charge = charges.Charge(
            source_id=f"job:{job['id']}#{attempt}",
            user=str(job["owner"]),
            project=job.get("project") or None,
            kind="job",
            name=str(job.get("process_id") or ""),
            started_at=datetime.now(UTC),
            cgroups=charges.limits_cgroups(cg) if cg is not None else {},
            uid=pw.pw_uid if pw is not None else os.getuid(),
        )
        charges.write(directory, charge)
        return charge.source_id

    def holds(self, handle: dict) -> bool:
        if handle.get("kind") != "local":
            return False
        directory = self._accounting_dir()
        source = str(handle.get("charge") or "")
        if directory and source.startswith("job:"):
            charge = charges.read(directory, source)
            if charge is not None and charge.ended_at is None:
                return True
        d = Path(str(handle.get("dir") or "/nonexistent"))
        return d.is_dir() or any(p.exists() for p in self._cgroup_dirs(handle))

    def _end_charge(self, handle: dict) -> None:
        directory = self._accounting_dir()
        source = str(handle.get("charge") or "")
        if directory and source.startswith("job:"):
            charges.end(directory, source)

    # -- watching ----------------------------------------------------------------------------
    def _process(self, handle: dict) -> psutil.Process | None:
        """The runner's process if the handle still names it (same start time, same uid)."""
        pid = int(handle.get("pid") or 0)
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:  # reaped now
            self._exits[pid] = int(child.returncode)
            del self._children[pid]
            return None
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - float(handle.get("started") or 0)) > 0.05:
                return None  # a reused pid
            if p.uids().real != int(handle.get("uid", -1)):
                return None
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
            return p
        except (psutil.Error, ValueError):
            return None

    def alive(self, handle: dict) -> bool:
        if handle.get("kind") != "local":
            return False
        self._trim_log(handle)
        return self._process(handle) is not None

    def _log_fd(self, handle: dict, flags: int) -> int | None:
        """The runner's log, opened as root if it is still a plain file (else None)."""
        d = handle.get("dir")
        if not d:
            return None
        try:
            fd = os.open(Path(d) / LOG_NAME, flags | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def _over_cap(self, st: os.stat_result) -> bool:
        # Blocks too: fallocate(FALLOC_FL_KEEP_SIZE) allocates past the end, size unchanged.
        return max(st.st_size, st.st_blocks * 512) > self.max_log_bytes

    def _trim_log(self, handle: dict) -> None:
        """Past :attr:`max_log_bytes` (its size or the space it holds), keep the log's last
        part (the runner appends: its next line lands after it; a line written during the
        trim may be lost). Truncating frees every block, those past the end included."""
        with contextlib.suppress(OSError):
            if not self._over_cap(os.stat(Path(handle.get("dir") or "/nonexistent") / LOG_NAME)):
                return
            fd = self._log_fd(handle, os.O_RDWR)
            if fd is None:
                return
            try:
                size = os.fstat(fd).st_size
                keep = int(self.max_log_bytes * KEEP_FRACTION)
                tail = os.pread(fd, keep, max(0, size - keep))
                dropped = size - len(tail)
                note = (
                    f"[twinhub: runner log trimmed, {dropped} bytes dropped]\n" if dropped else ""
                )
                os.ftruncate(fd, 0)
                os.pwrite(fd, note.encode() + tail, 0)
            finally:
                os.close(fd)

    def output_tail(self, handle: dict, max_bytes: int = 4096) -> str:
        fd = self._log_fd(handle, os.O_RDONLY)
        tail = ""
        if fd is not None:
            with os.fdopen(fd, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_bytes))
                tail = f.read(max_bytes).decode("utf-8", "replace")
        # How it ended, when this process started it (a runner adopted after a restart is
        # not our child: its exit status is its parent's, gone).
        pid = int(handle.get("pid") or 0)
        child = self._children.get(pid)
        code = child.poll() if child is not None else self._exits.get(pid)
        if code is not None and code < 0:
            tail += f"\n(killed by signal {signal.Signals(-code).name})"
        elif code:
            tail += f"\n(exit status {code})"
        return tail

    # -- stopping ----------------------------------------------------------------------------
    def _cgroup_dirs(self, handle: dict) -> list[Path]:
        """The handle's cgroup leaves (only ones this backend names: never another's)."""
        job = str(handle.get("job") or "")
        return [
            Path(d)
            for d in handle.get("cgroup") or []
            if job and Path(d).name.startswith(f"processing-{job}-")
        ]

    def _members(self, handle: dict) -> list[psutil.Process]:
        """What is left of the runner: its cgroup's processes; without one, the account's
        processes started since the runner in its session or process group or with the
        job's id in their environment (a reused pid never matches: its start time)."""
        dirs = self._cgroup_dirs(handle)
        if dirs:
            out = []
            for pid in _cgroup_pids(dirs):
                with contextlib.suppress(psutil.Error):
                    out.append(psutil.Process(pid))
            return out
        pid, uid = int(handle.get("pid") or 0), int(handle.get("uid", -1))
        if pid <= 1:  # never group 0 or 1 (signalling those reaches everyone)
            return []
        since = float(handle.get("started") or 0) - 0.05
        leader_ok = True
        try:
            leader = psutil.Process(pid)
            # The pid names another process now: Linux reuses no pid while a group or
            # session of that id has members, so the runner's are gone.
            leader_ok = abs(leader.create_time() - since - 0.05) <= 0.05
            leader_ok = leader_ok and leader.uids().real == uid
        except psutil.NoSuchProcess:
            pass  # the runner is gone: what is left of its group still carries its id
        except psutil.Error:
            leader_ok = False
        job = str(handle.get("job") or "")
        out = []
        for p in psutil.process_iter():
            try:
                if p.pid == os.getpid() or p.uids().real != uid or p.create_time() < since:
                    continue
                ours = leader_ok and pid in (os.getpgid(p.pid), os.getsid(p.pid))
                if ours or (job and p.environ().get(ENV_JOB_ID) == job):
                    out.append(p)
            except (psutil.Error, OSError):
                continue
        return out

    def _signal(self, handle: dict, sig: int) -> int:
        procs = self._members(handle)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        return len(procs)

    def _kill_cgroup(self, handle: dict) -> None:
        """Kill everything in the runner's cgroup (``cgroup.kill`` on v2) and remove it."""
        dirs = self._cgroup_dirs(handle)
        for d in dirs:
            if (d / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    (d / "cgroup.kill").write_text("1")
        resource_limits.kill_cgroup_procs(dirs)
        _remove_dirs([str(d) for d in dirs])

    async def stop(self, handle: dict, grace: float = 3.0) -> None:
        if handle.get("kind") != "local":
            return
        if await asyncio.to_thread(self._signal, handle, signal.SIGTERM):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            while loop.time() < deadline:
                await asyncio.sleep(0.1)
                self._process(handle)  # reap our child as soon as it exits
                if not await asyncio.to_thread(self._members, handle):
                    break
            else:
                await asyncio.to_thread(self._signal, handle, signal.SIGKILL)
        await asyncio.to_thread(self._kill_cgroup, handle)
        for _ in range(20):
            self._process(handle)  # reap
            if not await asyncio.to_thread(self._members, handle):
                break
            await asyncio.sleep(0.1)
        await asyncio.to_thread(self._end_charge, handle)

    async def cleanup(self, handle: dict) -> None:
        if handle.get("kind") != "local":
            return
        await asyncio.to_thread(self._remove, handle)

    def _remove(self, handle: dict) -> None:
        _remove_dirs([str(d) for d in self._cgroup_dirs(handle)])
        d = Path(str(handle.get("dir") or ""))
        # Only a job dir of this backend's (the handle is the service's, but be exact).
        if d.parent != self.jobs_dir() or not outputs.JOB_ID.fullmatch(d.name):
            return
        if d.is_symlink():
            d.unlink()
        elif d.is_dir():
            shutil.rmtree(d, ignore_errors=True)


def _cgroup_pids(dirs: list[Path]) -> set[int]:
    """The processes in cgroups ``dirs`` and their child groups."""
    out: set[int] = set()
    for d in dirs:
        for procs in [d / "cgroup.procs", *d.glob("*/cgroup.procs")]:
            with contextlib.suppress(OSError, ValueError):
                out.update(int(p) for p in procs.read_text().split())
    return out


def _remove_dirs(dirs: list[str]) -> None:
    """rmdir each cgroup leaf (the kernel refuses one that still holds processes)."""
    for d in dirs:
        with contextlib.suppress(OSError):
            os.rmdir(d)
