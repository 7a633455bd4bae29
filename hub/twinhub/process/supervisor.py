"""One supervisor for every process of the embedded platform.

Starts :class:`~twinhub.process.components.Component` s in order, each in its own process session
with its own log file and pid file, waits for readiness while printing progress, and stops
them in reverse order.  Everything it starts carries ``TWINHUB_INSTANCE=<id>`` in its
environment so that, after a stop, leftovers (user servers, Dask schedulers and workers
started by children) can be found in ``/proc`` and killed, and reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from traitlets import Bool, Dict, Float, Integer
from traitlets.config import Configurable

from ..errors import StartError
from .components import Component
from .ports import PLATFORM_PORTS, pick_port
from .runtime import Runtime

COMPONENTS_FILE = "run/components.json"
SUPERVISOR_PID = "run/supervisor.pid"


class TwinhubSupervisor(Configurable):
    """What ``twinhub up`` does when one of its components exits on its own.

    Like systemd's ``Restart=`` or a Kubernetes restart policy: the component is restarted
    after a backoff that doubles with each recent restart; too many restarts within a window
    is a crash loop, and the supervisor gives up on that component (reported by ``twinhub
    status`` and in the log) while the rest of the platform, user servers included, keeps
    running.
    """

    restart = Bool(
        True,
        help="Restart a component that exits unexpectedly. False: leave it down (reported by "
        "`twinhub status`); see stop_on_failure.",
    ).tag(config=True)

    component_restart = Dict(
        value_trait=Bool(),
        help="Per-component override of `restart`, by component name, e.g. "
        "{'idle-culler': False}. Names as `twinhub status` lists them.",
    ).tag(config=True)

    backoff = Float(
        0.5, min=0.0, help="Seconds before the first restart of a component that exited."
    ).tag(config=True)

    backoff_max = Float(
        30.0,
        min=0.0,
        help="Longest wait before a restart: the backoff doubles with each restart within "
        "crash_loop_window, up to this.",
    ).tag(config=True)

    crash_loop_restarts = Integer(
        5,
        min=1,
        help="Restarts of one component within crash_loop_window after which the supervisor "
        "gives up on it (a crash loop): it stays down, the rest keeps running.",
    ).tag(config=True)

    crash_loop_window = Float(
        120.0,
        min=1.0,
        help="Seconds over which restarts are counted for the backoff and the crash-loop limit.",
    ).tag(config=True)

    stop_on_failure = Bool(
        False,
        help="Stop the whole platform (user servers included) when a component is given up "
        "on (crash loop, or exited with restart off) instead of keeping the rest running.",
    ).tag(config=True)

    def restarts(self, name: str) -> bool:
        """Whether component ``name`` is restarted when it exits."""
        return bool(self.component_restart.get(name, self.restart))


def free_port(ip: str = "127.0.0.1") -> int:
    """A port for a platform component (see :mod:`twinhub.process.ports` for why not port 0)."""
    return pick_port(PLATFORM_PORTS, ip)


def port_in_use(ip: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return True
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True once ``url`` answers 200 (a health endpoint; a proxy in front may answer 404
    before the service behind it is there)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


def http_ready(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> bool:
    """True once ``url`` answers with a status below 500."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (OSError, ValueError):
        return False


def processes_of_instance(instance_id: str) -> list[tuple[int, str]]:
    """(pid, command) of every process whose environment carries this instance id."""
    marker = f"TWINHUB_INSTANCE={instance_id}".encode()
    me = os.getpid()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            env = (d / "environ").read_bytes()
            if marker not in env.split(b"\0"):
                continue
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pid_alive(int(d.name)):
            found.append((int(d.name), cmd.strip()[:120]))
    return found


def kill_pids(pids: Iterable[int], grace: float = 5.0) -> None:
    pids = [p for p in pids if pid_alive(p)]
    for p in pids:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    for p in pids:
        if pid_alive(p):
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)


class RestartPolicy:
    """When to restart a component that exited (see :class:`TwinhubSupervisor`).

    The backoff doubles with each restart within the window; ``limit`` restarts within the
    window is a crash loop: :meth:`next_delay` answers None (give up).
    """

    def __init__(
        self,
        enabled: Callable[[str], bool] = lambda _name: True,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        limit: int = 5,
        window: float = 120.0,
    ) -> None:
        self.enabled = enabled
        self.backoff, self.backoff_max = backoff, backoff_max
        self.limit, self.window = limit, window

    @classmethod
    def from_config(cls, config) -> RestartPolicy:
        s = TwinhubSupervisor(config=config)
        return cls(s.restarts, s.backoff, s.backoff_max, s.crash_loop_restarts, s.crash_loop_window)

    def recent(self, restart_times: list[float], now: float) -> list[float]:
        return [t for t in restart_times if now - t < self.window]

    def next_delay(self, restart_times: list[float], now: float) -> float | None:
        """Seconds to wait before the next restart, or None for a crash loop."""
        n = len(self.recent(restart_times, now))
        if n >= self.limit:
            return None
        return min(self.backoff_max, self.backoff * 2**n)


@dataclass
class Running:
    component: Component
    proc: subprocess.Popen
    log_path: Path
    started: float
    # starting -> running; on exit: backoff -> starting (restart) | failed (restart off) |
    # gave-up (crash loop)
    state: str = "starting"
    restarts: int = 0
    restart_times: list[float] = field(default_factory=list)  # monotonic
    last_exit: dict | None = None
    next_start: float = 0.0  # monotonic, in state "backoff"

    @property
    def down(self) -> bool:
        return self.state in ("backoff", "failed", "gave-up")


class Supervisor:
    """Starts, watches (restarting what exits) and stops the platform's components for one
    state directory."""

    def __init__(
        self,
        rt: Runtime,
        say: Callable[[str], None] = print,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.rt = rt
        self.say = say
        self.policy = policy or RestartPolicy.from_config(rt.config)
        self.running: dict[str, Running] = {}
        self._ready: set[str] = set()
        # Components given up on (or down with restart off): see TwinhubSupervisor.stop_on_failure.
        self.failed: list[str] = []

    # -- records ---------------------------------------------------------------------------
    def _write_records(self) -> None:
        data = {
            name: {
                "pid": r.proc.pid,
                "port": r.component.port,
                "log": str(r.log_path),
                "ready_url": r.component.ready_url,
                "started": r.started,
                "state": r.state,
                "restarts": r.restarts,
                "last_exit": r.last_exit,
                # What `twinhub up` needs to stop these if this supervisor dies.
                "stop_signal": int(r.component.stop_signal),
            }
            for name, r in self.running.items()
        }
        f = self.rt.path(COMPONENTS_FILE)
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(f)

    # -- start -----------------------------------------------------------------------------
    def _spawn(self, comp: Component) -> tuple[subprocess.Popen, Path]:
        self.rt.logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = self.rt.logs_dir / f"{comp.name}.log"
        env = {
            # The platform's environment first: hub and services find their tools there.
            "PATH": f"{self.rt.prefix}/bin:" + os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": os.environ.get("HOME", "/root"),
            "TWINHUB_STATE": str(self.rt.state_dir),
            "TWINHUB_INSTANCE": self.rt.instance_id,
            "PYTHONUNBUFFERED": "1",
            **comp.env,
        }
        with open(log_path, "ab") as log:
            log.write(f"\n--- {time.strftime('%F %T')} starting {comp.name}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    comp.argv,
                    env=env,
                    cwd=comp.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as e:
                raise StartError(f"{comp.name}: cannot run {comp.argv[0]}: {e}") from e
        (self.rt.run_dir / f"{comp.name}.pid").write_text(str(proc.pid))
        return proc, log_path

    def start(self, comp: Component, wait: bool = True) -> None:
        proc, log_path = self._spawn(comp)
        self.running[comp.name] = Running(comp, proc, log_path, time.time())
        self._write_records()
        if wait:
            self._wait_ready(comp.name)

    def _is_ready(self, comp: Component) -> bool:
        if comp.ready is not None:
            return bool(comp.ready())
        if comp.ready_url:
            return http_ready(comp.ready_url)
        return True

    @property
    def start_timeout(self) -> float:
        return float(self.rt.config.get("Twinhub", {}).get("start_timeout", 120))

    def _wait_ready(self, name: str) -> None:
        if name in self._ready:
            return
        r = self.running[name]
        timeout = self.start_timeout
        # Counted from the process start: a background component was launched earlier.
        t0 = time.monotonic() - (time.time() - r.started)
        last_note = time.monotonic()
        while True:
            code = r.proc.poll()
            if code is not None:
                raise StartError(
                    f"{name} exited with code {code} while starting; last lines of "
                    f"{r.log_path}:\n{self.log_tail(name)}"
                )
            if self._is_ready(r.component):
                self.say(f"  {name:<14} ready in {time.monotonic() - t0:4.1f} s (pid {r.proc.pid})")
                self._ready.add(name)
                r.state = "running"
                self._write_records()
                return
            now = time.monotonic()
            if now - t0 > timeout:
                raise StartError(
                    f"{name} did not become ready within {timeout:.0f} s; last lines of "
                    f"{r.log_path}:\n{self.log_tail(name)}"
                )
            if now - last_note > 5:
                self.say(f"  {name:<14} still starting ({now - t0:.0f} s)...")
                last_note = now
            time.sleep(0.1)

    def log_tail(self, name: str, lines: int = 20) -> str:
        r = self.running.get(name)
        path = r.log_path if r else self.rt.logs_dir / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start_all(self, components: list[Component]) -> None:
        """Start components in order; on any failure stop what was started and re-raise."""
        background = [c for c in components if c.background]
        try:
            for comp in background:
                for dep in comp.after:
                    self._wait_ready(dep)
                self.say(f"  {comp.name:<14} starting (in the background)...")
                self.start(comp, wait=False)
            for comp in components:
                if not comp.background:
                    self.say(f"  {comp.name:<14} starting...")
                    self.start(comp)
            for comp in background:
                self._wait_ready(comp.name)
        except BaseException:
            self.stop_all()
            raise

    # -- watch -----------------------------------------------------------------------------
    def _note(self, r: Running, message: str) -> None:
        """Tell the operator, and leave the same line in the component's own log."""
        self.say(message)
        with contextlib.suppress(OSError), open(r.log_path, "a") as log:
            log.write(f"--- {time.strftime('%F %T')} supervisor: {message.strip()}\n")

    def watch(self) -> None:
        """One round of supervision (called every few tenths of a second): notice exits,
        restart after the backoff, notice restarted components becoming ready."""
        changed = False
        for name, r in self.running.items():
            now = time.monotonic()
            if r.state in ("starting", "running"):
                code = r.proc.poll()
                if code is not None:
                    self._exited(name, r, code, now)
                    changed = True
                elif r.state == "starting" and name not in self._ready:
                    changed |= self._check_restarted(name, r, now)
            elif r.state == "backoff" and now >= r.next_start:
                self._restart(name, r)
                changed = True
        if changed:
            self._write_records()

    def _exited(self, name: str, r: Running, code: int, now: float) -> None:
        uptime = time.time() - r.started
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        r.last_exit = {"code": code, "at": time.time(), "uptime": round(uptime, 1)}
        self._ready.discard(name)
        # What it left in its own process group (PostgreSQL backends, weed under its runner)
        # goes too: the new process must not find them holding ports, sockets or memory.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(r.proc.pid, signal.SIGKILL)
        self._decide(name, r, f"exited unexpectedly ({how})", now)

    def _decide(self, name: str, r: Running, what: str, now: float) -> None:
        """After an exit or a failed restart: restart later, or give up."""
        if not self.policy.enabled(name):
            r.state = "failed"
            self.failed.append(name)
            self._note(r, f"{name} {what}; restart is off: left down; last lines of its log:")
            self.say(self.log_tail(name, 10))
            return
        delay = self.policy.next_delay(r.restart_times, now)
        if delay is None:
            r.state = "gave-up"
            self.failed.append(name)
            n = len(self.policy.recent(r.restart_times, now))
            self._note(
                r,
                f"{name} {what} after {n} restarts within {self.policy.window:.0f} s: crash "
                "loop, giving up on it (the rest keeps running); last lines of its log:",
            )
            self.say(self.log_tail(name, 10))
            return
        r.state = "backoff"
        r.next_start = now + delay
        self._note(r, f"{name} {what}; restarting in {delay:.1f} s")

    def _restart(self, name: str, r: Running) -> None:
        comp = r.component
        r.restart_times.append(time.monotonic())
        r.restarts += 1
        try:
            if comp.before_restart is not None:
                comp.before_restart()
            proc, _ = self._spawn(comp)
        except Exception as e:  # counted as a restart: backoff, then crash loop
            self._decide(name, r, f"could not be restarted ({e})", time.monotonic())
            return
        r.proc, r.started, r.state = proc, time.time(), "starting"
        self._note(r, f"  {name:<14} restarting (restart {r.restarts}, pid {proc.pid})...")

    def _check_restarted(self, name: str, r: Running, now: float) -> bool:
        try:
            ready = self._is_ready(r.component)
        except Exception as e:  # a readiness check that raises is "not ready yet"
            ready = False
            self.say(f"  {name:<14} readiness check failed: {e}")
        if ready:
            self._ready.add(name)
            r.state = "running"
            self._note(
                r, f"  {name:<14} back in {time.time() - r.started:4.1f} s (restart {r.restarts})"
            )
            if r.component.after_restart is not None:
                try:
                    r.component.after_restart()
                except Exception as e:
                    self._note(r, f"  {name:<14} after-restart step failed: {e}")
            return True
        if time.time() - r.started > self.start_timeout:
            self._note(r, f"{name} did not become ready within {self.start_timeout:.0f} s")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(r.proc.pid, signal.SIGKILL)
            r.proc.wait()
            self._exited(name, r, r.proc.returncode, now)
            return True
        return False

    # -- stop ------------------------------------------------------------------------------
    def stop_all(self, grace: float = 15.0) -> list[str]:
        """Stop components in reverse order, then kill leftovers; returns what had to be killed."""
        killed: list[str] = []
        for name in reversed(list(self.running)):
            r = self.running[name]
            if r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.send_signal(r.component.stop_signal)
                try:
                    r.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    killed.append(f"{name} (pid {r.proc.pid}, did not stop in {grace:.0f} s)")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(r.proc.pid, signal.SIGKILL)
                    r.proc.wait()
            # Whatever the component left in its own process group goes too (a component
            # that is down had its group killed when it exited: its pid may be reused).
            if not r.down:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(r.proc.pid, signal.SIGKILL)
            with contextlib.suppress(FileNotFoundError):
                (self.rt.run_dir / f"{name}.pid").unlink()
        self.running.clear()
        self._ready.clear()
        killed += kill_orphans(self.rt)
        with contextlib.suppress(FileNotFoundError):
            self.rt.path(COMPONENTS_FILE).unlink()
        return killed


def kill_orphans(rt: Runtime) -> list[str]:
    """Kill every remaining process of this instance; describe each one killed."""
    leftovers = processes_of_instance(rt.instance_id)
    if not leftovers:
        return []
    kill_pids([p for p, _ in leftovers])
    return [f"pid {p}: {cmd}" for p, cmd in leftovers]


def read_records(rt: Runtime) -> dict[str, dict]:
    try:
        return json.loads(rt.path(COMPONENTS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def supervisor_pid(rt: Runtime) -> int | None:
    """The pid of this state dir's live ``twinhub up``, or None (also when the recorded pid
    now belongs to another program: pids are reused)."""
    try:
        pid = int(rt.path(SUPERVISOR_PID).read_text())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # not ours to read (another account): assume it is
    # Another account's process that reused the pid (and names twinhub) is not it either.
    return pid if owner == os.geteuid() and b"twinhub" in cmdline else None
