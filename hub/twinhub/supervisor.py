"""One supervisor for every process of the embedded platform.

Starts :class:`~twinhub.components.Component` s in order, each in its own process session
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
from dataclasses import dataclass
from pathlib import Path

from .components import Component
from .ports import PLATFORM_PORTS, pick_port
from .runtime import Runtime

COMPONENTS_FILE = "run/components.json"
SUPERVISOR_PID = "run/supervisor.pid"


class StartError(RuntimeError):
    """A component failed to start; the message says which and why."""


def free_port(ip: str = "127.0.0.1") -> int:
    """A port for a platform component (see :mod:`twinhub.ports` for why not port 0)."""
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


@dataclass
class Running:
    component: Component
    proc: subprocess.Popen
    log_path: Path
    started: float


class Supervisor:
    """Starts, watches and stops the platform's components for one state directory."""

    def __init__(self, rt: Runtime, say: Callable[[str], None] = print) -> None:
        self.rt = rt
        self.say = say
        self.running: dict[str, Running] = {}
        self._ready: set[str] = set()

    # -- records ---------------------------------------------------------------------------
    def _write_records(self) -> None:
        data = {
            name: {
                "pid": r.proc.pid,
                "port": r.component.port,
                "log": str(r.log_path),
                "ready_url": r.component.ready_url,
                "started": r.started,
            }
            for name, r in self.running.items()
        }
        f = self.rt.path(COMPONENTS_FILE)
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(f)

    # -- start -----------------------------------------------------------------------------
    def start(self, comp: Component, wait: bool = True) -> None:
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
        self.running[comp.name] = Running(comp, proc, log_path, time.time())
        (self.rt.run_dir / f"{comp.name}.pid").write_text(str(proc.pid))
        self._write_records()
        if wait:
            self._wait_ready(comp.name)

    def _is_ready(self, comp: Component) -> bool:
        if comp.ready is not None:
            return bool(comp.ready())
        if comp.ready_url:
            return http_ready(comp.ready_url)
        return True

    def _wait_ready(self, name: str) -> None:
        if name in self._ready:
            return
        r = self.running[name]
        timeout = float(self.rt.config.get("Twinhub", {}).get("start_timeout", 120))
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
    def dead_components(self) -> list[tuple[str, int]]:
        return [
            (n, r.proc.returncode) for n, r in self.running.items() if r.proc.poll() is not None
        ]

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
            # Whatever the component left in its own process group goes too.
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
    try:
        pid = int(rt.path(SUPERVISOR_PID).read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None
