"""Bring the embedded platform up and down for one state directory.

The CLI (``twinhub up/down/status``) is a thin layer over these functions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from traitlets.config import Config, PyFileConfigLoader
from traitlets.config.loader import DeferredConfig, LazyConfigValue

from . import __version__, parts
from .client.hubapi import HubAPIError, hub_request, resync_proxy_routes
from .config import Twinhub
from .errors import PlatformError, StartError
from .process.runtime import Runtime, world_reachable
from .process.supervisor import (
    COMPONENTS_FILE,
    SUPERVISOR_PID,
    Supervisor,
    TwinhubSupervisor,
    free_port,
    http_ready,
    kill_orphans,
    kill_pids,
    pid_alive,
    port_in_use,
    processes_of_instance,
    read_records,
    supervisor_pid,
)
from .spawn.os_accounts import RUNTIME_ROOT, remove_runtime_dirs

CONFIG_FILE = "twinhub_config.py"


def generate_config_text() -> str:
    lines = [
        "# twinhub configuration (traitlets). Generated on first run; uncomment to change.",
        "# Command-line flags of `twinhub up` override what is set here.",
        "# Options of JupyterHub's own classes (c.JupyterHub.*, c.Spawner.*, c.Authenticator.*)",
        "# set here are passed to the hub as they are.",
        "",
    ]
    for cls in parts.config_classes():
        lines.append(cls.class_config_section())
    return "\n".join(lines)


def check_writable(state_dir: Path) -> None:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe = state_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise PlatformError(
            f"state directory {state_dir} is not writable ({e.strerror or e}); "
            "choose another with --state DIR"
        ) from e


def load_config(state_dir: Path, overrides: Config, config_file: str | None = None) -> Config:
    """twinhub_config.py (generated if missing) merged with command-line overrides."""
    path = Path(config_file) if config_file else state_dir / CONFIG_FILE
    if not path.exists():
        if config_file:
            raise PlatformError(f"config file {path} does not exist")
        path.write_text(generate_config_text())
    if not config_file:
        # It may come to hold secrets, and the state dir is traversable by OS accounts.
        path.chmod(0o600)
    loader = PyFileConfigLoader(path.name, str(path.parent))
    try:
        cfg = loader.load_config()
    except Exception as e:  # a user's Python file: any error is theirs to fix
        raise PlatformError(f"cannot load {path}: {e}") from e
    cfg.merge(overrides)
    _resolve_lazy(cfg)
    return cfg


def _resolve_lazy(cfg: Config) -> None:
    """Turn ``c.X.y.extend(...)``-style values (LazyConfigValue: from the config file or
    ``--stac-source``) and command-line strings not yet parsed for their trait
    (``--TwinhubDataLake.enabled=False``) into plain values, so runtime.json holds what
    every process reads."""
    classes = {cls.__name__: cls for cls in parts.config_classes()}
    for section, values in cfg.items():
        if not isinstance(values, Config):
            continue
        for key, value in list(values.items()):
            if not isinstance(value, LazyConfigValue | DeferredConfig):
                continue
            trait = classes[section].class_traits().get(key) if section in classes else None
            if trait is None:
                continue  # JupyterHub's own sections: traitlets resolves them in the hub
            if isinstance(value, DeferredConfig):
                values[key] = value.get_value(trait)
            else:
                values[key] = value.get_value(trait.default())


def make_runtime(state_dir: Path, cfg: Config) -> Runtime:
    opts = Twinhub(config=cfg)
    # Resolve the mode once so every process agrees on it.
    cfg.Twinhub.mode = opts.mode
    return Runtime(
        state_dir=state_dir,
        config=cfg,
        ports={"public": opts.port},
        mode=opts.mode,
        ip=opts.ip,
        public_url=opts.public_url,
        instance_id=Runtime.make_instance_id(state_dir),
    )


def layout_state_dir(rt: Runtime) -> None:
    for sub in ("hub", "secrets", "logs", "run", "backups"):
        d = rt.path(sub)
        d.mkdir(mode=0o700, exist_ok=True)
        d.chmod(0o700)
    shared = rt.shared_dir
    if rt.mode == "multi-user":
        shared.mkdir(parents=True, exist_ok=True)
        shared.chmod(0o755)
    # OS accounts must traverse the state dir only when the shared dir lives inside it.
    inside = rt.mode == "multi-user" and shared.is_relative_to(rt.state_dir)
    rt.state_dir.chmod(0o711 if inside and world_reachable(rt.state_dir.parent) else 0o700)


def up(
    state_dir: Path,
    overrides: Config,
    config_file: str | None = None,
    say: Callable[[str], None] = print,
    wait: bool = True,
) -> int:
    """Start everything and (``wait``) run until Ctrl-C/SIGTERM; returns an exit status."""
    state_dir = state_dir.resolve()
    check_writable(state_dir)
    probe = Runtime(state_dir=state_dir, instance_id=Runtime.make_instance_id(state_dir))
    running = supervisor_pid(probe)
    if running:
        raise PlatformError(
            f"twinhub is already running for {state_dir} (pid {running}); "
            f"stop it first: twinhub down --state {state_dir}"
        )
    cfg = load_config(state_dir, overrides, config_file)
    rt = make_runtime(state_dir, cfg)
    if rt.mode == "personal" and os.geteuid() == 0:
        say(
            "note: personal mode as root: every server runs as root; only one platform user may spawn"
        )
    # A platform whose supervisor died (kill -9): its components go, its user servers stay
    # for the new hub to find, on the same ports.
    old = replace_stale_platform(state_dir, say)
    if port_in_use(rt.ip, rt.ports["public"]):
        raise PlatformError(
            f"port {rt.ports['public']} on {rt.ip} is already in use; "
            "choose another with --port N (or stop what uses it)"
        )
    platform_parts = parts.load()
    # Ports, and secrets out of the configuration, before runtime.json is written.
    for part in platform_parts:
        part.plan(rt)
    keep_servers = old is not None and _reuse_ports(rt, old)
    layout_state_dir(rt)
    if not keep_servers:
        # Leftovers of a crashed earlier run of this state dir would hold ports and accounts.
        stale = kill_orphans(rt)
        if stale:
            say(f"stopped {len(stale)} leftover process(es) of an earlier run: " + "; ".join(stale))
    rt.save()
    pid_file = rt.path(SUPERVISOR_PID)
    pid_file.write_text(str(os.getpid()))

    sup = Supervisor(rt, say=say)
    stop_requested: list[int] = []

    def on_signal(signum, _frame):
        stop_requested.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        say(f"twinhub {__version__}: starting in {rt.mode} mode, state in {state_dir}")
        t0 = time.monotonic()
        for part in platform_parts:
            part.prepare(rt, say)
        sup.start_all(
            [c for part in parts.start_order(platform_parts) for c in part.components(rt)]
        )
        if not _wait_url(rt.local_url + "hub/api/", 30):
            raise StartError("the hub does not answer through the proxy at " + rt.local_url)
        # The hub answers before it has given the proxy its services' routes: until then a
        # request to /services/<name>/ reaches the hub (404). Have it add them now.
        try:
            resync_proxy_routes(rt)
        except (HubAPIError, OSError) as e:
            raise StartError(f"the hub did not give the proxy its routes: {e}") from e
        say(f"twinhub is up at {rt.url} ({time.monotonic() - t0:.1f} s)")
        if keep_servers:
            sweep_orphans(rt, sup, say)
        background = [t for part in platform_parts if (t := part.after_up(rt, say))]
        sys.stdout.flush()
        if not wait:
            return 0
        stop_on_failure = TwinhubSupervisor(config=rt.config).stop_on_failure
        while not stop_requested:
            sup.watch()
            if sup.failed and stop_on_failure:
                say(
                    f"stopping the platform: {', '.join(sup.failed)} is down "
                    "(TwinhubSupervisor.stop_on_failure)"
                )
                return 1
            time.sleep(0.3)
        say("stopping (signal received)...")
        for t in background:
            if t.is_alive():
                say(f"  ({t.name} interrupted: it runs again at the next start)")
        return 0
    except StartError as e:
        say(f"error: {e}")
        return 1
    finally:
        hub = sup.running.get("hub")
        if hub is not None and hub.proc.poll() is None:
            stop_user_servers(rt, say)
        killed = sup.stop_all()
        if killed:
            say("had to kill: " + "; ".join(killed))
        _remove_runtime_dirs(rt)
        say("twinhub stopped")
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        for s, h in old.items():
            signal.signal(s, h)


def _wait_url(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_ready(url):
            return True
        time.sleep(0.2)
    return False


def load_runtime(state_dir: Path) -> Runtime:
    state_dir = state_dir.resolve()
    try:
        return Runtime.load(state_dir)
    except FileNotFoundError as e:
        raise PlatformError(f"no platform state in {state_dir} (never started there?)") from e


# -- what a dead supervisor left ------------------------------------------------------------
def live_records(rt: Runtime) -> dict[str, dict]:
    """The recorded components still running: only pids that carry this instance's marker
    (a recorded pid may since belong to an unrelated process)."""
    mine = {p for p, _ in processes_of_instance(rt.instance_id)}
    return {n: r for n, r in read_records(rt).items() if r.get("pid") in mine}


def stop_recorded(records: dict[str, dict], grace: float = 10.0) -> list[str]:
    """Stop recorded components in reverse start order, each with its own stop signal, then
    kill its process group; returns those that had to be killed."""
    killed = []
    for name, r in reversed(list(records.items())):
        pid = r["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, r.get("stop_signal", signal.SIGTERM))
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
        if pid_alive(pid):
            killed.append(f"{name} (pid {pid})")
        # Started in its own session: its pid is its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.05)
    return killed


def replace_stale_platform(state_dir: Path, say: Callable[[str], None]) -> Runtime | None:
    """Stop the components of an earlier run of ``state_dir`` whose supervisor died, leaving
    its user servers (and their kernels) for the new hub; returns that run's Runtime, or
    None when nothing of it runs."""
    try:
        old = Runtime.load(state_dir)
    except (OSError, ValueError):
        return None
    procs = processes_of_instance(old.instance_id)
    if not procs:
        return None
    live = live_records(old)
    say(
        f"found {len(procs)} process(es) of an earlier run whose supervisor is gone: "
        f"replacing its components ({', '.join(live) or 'none'}); user servers keep running"
    )
    killed = stop_recorded(live)
    if killed:
        say("  had to kill: " + "; ".join(killed))
    with contextlib.suppress(FileNotFoundError):
        old.path(COMPONENTS_FILE).unlink()
    return old


def _reuse_ports(rt: Runtime, old: Runtime) -> bool:
    """Take the earlier run's internal ports where free: running servers know the hub (and
    services) by them.  True when the hub's port could be kept."""
    reused = {}
    for key, port in old.ports.items():
        if key != "public" and not port_in_use("127.0.0.1", port):
            rt.ports[key] = reused[key] = port
    taken = set(reused.values()) | {rt.ports["public"]}
    for key, port in rt.ports.items():
        if key not in reused and key != "public" and port in taken:
            while rt.ports[key] in taken:
                rt.ports[key] = free_port()
            taken.add(rt.ports[key])
    return "hub" in reused


def _server_pids(rt: Runtime) -> set[int]:
    """Pids of the user servers the hub knows (its spawners' state)."""
    pids = set()
    for user in hub_request(rt, "GET", "/users?state=active") or []:
        for server in (user.get("servers") or {}).values():
            pid = (server.get("state") or {}).get("pid")
            if pid:
                pids.add(int(pid))
    return pids


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _ancestors(pid: int) -> list[int]:
    chain = []
    for _ in range(64):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if pid <= 1:
            break
        chain.append(pid)
    return chain


def sweep_orphans(rt: Runtime, sup: Supervisor, say: Callable[[str], None]) -> list[str]:
    """Kill processes of this instance that belong neither to a component nor to a user
    server the hub knows (what an earlier run left half-started)."""
    try:
        keep = _server_pids(rt)
    except HubAPIError as e:
        say(f"  (cannot list user servers, no orphan sweep: {e})")
        return []
    keep |= {r.proc.pid for r in sup.running.values()}
    # Only what is older than the new hub: a server it is starting now has no pid in its
    # state yet.
    hub = sup.running.get("hub")
    born = _start_ticks(hub.proc.pid) if hub else None
    orphans = [
        (pid, cmd)
        for pid, cmd in processes_of_instance(rt.instance_id)
        if pid not in keep
        and not keep.intersection(_ancestors(pid))
        and born is not None
        and (_start_ticks(pid) or born) < born
    ]
    if orphans:
        kill_pids([p for p, _ in orphans])
        say(f"  stopped {len(orphans)} orphan(s): " + "; ".join(f"{p} {c}" for p, c in orphans))
    return [f"pid {p}: {c}" for p, c in orphans]


def stop_user_servers(rt: Runtime, say: Callable[[str], None], timeout: float = 60) -> int:
    """Stop every user server through the hub (its spawner cleans up: cgroups, clusters),
    waiting until none is active; returns how many were asked to stop."""
    try:
        users = hub_request(rt, "GET", "/users?state=active") or []
    except HubAPIError:
        return 0
    n = 0
    for user in users:
        name = quote(user["name"], safe="")
        for server in user.get("servers") or {}:
            path = (
                f"/users/{name}/servers/{quote(server, safe='')}"
                if server
                else f"/users/{name}/server"
            )
            try:
                hub_request(rt, "DELETE", path)
                n += 1
            except HubAPIError as e:
                say(f"  cannot stop the server of {user['name']}: {e}")
    if not n:
        return 0
    say(f"  stopping {n} user server(s)...")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not any(u.get("servers") for u in hub_request(rt, "GET", "/users?state=active")):
                break
        except HubAPIError:
            break
        time.sleep(0.3)
    return n


def _remove_runtime_dirs(rt: Runtime) -> None:
    """The servers' private runtime dirs (kernel sockets), once nothing of the instance runs."""
    root = rt.config.get("MultiUserSpawner", {}).get("runtime_root", RUNTIME_ROOT)
    remove_runtime_dirs(root, rt.instance_id)


def down(state_dir: Path, say: Callable[[str], None] = print, timeout: float = 60) -> int:
    rt = load_runtime(state_dir)
    pid = supervisor_pid(rt)
    if pid:
        say(f"stopping twinhub (supervisor pid {pid})...")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.2)
        if pid_alive(pid):
            say(f"supervisor did not stop in {timeout:.0f} s: killing it and its components")
            kill_pids([pid], grace=1)
    live = live_records(rt)
    if live:
        say(f"stopping components left without their supervisor: {', '.join(live)}")
        if "hub" in live:
            stop_user_servers(rt, say)
        killed = stop_recorded(live)
        if killed:
            say("had to kill components: " + "; ".join(killed))
    killed = kill_orphans(rt)
    if killed:
        say("had to kill: " + "; ".join(killed))
    _remove_runtime_dirs(rt)
    for f in (COMPONENTS_FILE, SUPERVISOR_PID):
        with contextlib.suppress(FileNotFoundError):
            rt.path(f).unlink()
    say("twinhub is down")
    return 0


def _component_line(name: str, r: dict) -> tuple[str, bool]:
    alive = pid_alive(r["pid"])
    health = "-"
    if alive and r.get("ready_url"):
        health = "ok" if http_ready(r["ready_url"]) else "not answering"
    elif alive:
        health = "ok"
    rec_state = r.get("state", "running")
    if rec_state == "gave-up":
        state = "GAVE-UP"
    elif rec_state in ("backoff", "starting") and r.get("restarts"):
        state = "restarting"
    elif rec_state == "failed" or not alive:
        state = "DOWN"
    else:
        state = "running"
    port = r.get("port") or "-"
    line = f"  {name:<14} {state:<10} pid {r['pid']:<8} port {port!s:<6} health {health:<4}"
    line += f" restarts {r.get('restarts', 0)}"
    last = r.get("last_exit")
    if last:
        code = last.get("code")
        how = f"signal {-code}" if isinstance(code, int) and code < 0 else f"code {code}"
        line += f" (last exit: {how}, {time.strftime('%F %T', time.localtime(last['at']))})"
    if rec_state == "gave-up":
        line += " -- crash loop: given up on (see its log)"
    return line, state == "running" and health == "ok"


def status(state_dir: Path, say: Callable[[str], None] = print) -> int:
    rt = load_runtime(state_dir)
    pid = supervisor_pid(rt)
    records = read_records(rt)
    if not pid:
        procs = processes_of_instance(rt.instance_id)
        if not procs:
            say(f"twinhub is not running ({rt.state_dir})")
            return 1
        live = live_records(rt)
        say(
            f"twinhub is not running ({rt.state_dir}): its supervisor is gone, but "
            f"{len(procs)} of its processes still run (components: {', '.join(live) or 'none'}); "
            "`twinhub up` replaces them, `twinhub down` stops them"
        )
        for name, r in live.items():
            say(_component_line(name, r)[0])
        return 1
    if not records:
        say(f"twinhub is not running ({rt.state_dir}): supervisor pid {pid} is still starting")
        return 1
    say(f"twinhub {rt.mode} mode at {rt.url} (supervisor pid {pid})")
    ok = True
    for name, r in records.items():
        line, healthy = _component_line(name, r)
        ok &= healthy
        say(line)
    for part in parts.load():
        for line in part.status_lines(rt):
            say(f"  {line}")
    return 0 if ok else 1
