"""Memory / CPU limits of single-user servers, enforced with Linux cgroups where possible.

Each server gets its own cgroup (a leaf named after the platform user and server) in which
``memory`` and ``cpu`` limits are written before the server process joins it, from the
``preexec_fn`` of its ``Popen`` (so every kernel it starts inherits the limits).

Where the limits can go:

- cgroup v2 (unified ``/sys/fs/cgroup``): a ``twinhub-<id>`` group under the root of the
  hierarchy, with ``+memory +cpu`` in its parent's ``cgroup.subtree_control``.  That needs
  root and a hierarchy whose root may delegate controllers; inside a container whose cgroup
  holds processes the kernel refuses (the "no internal processes" rule) and limits become
  advisory.
- cgroup v1 (separate ``memory`` and ``cpu`` hierarchies, as on this project's build machine):
  a ``twinhub-<id>`` group *under the hub's own cgroup* in each hierarchy, so the platform
  stays inside whatever limits its own supervisor set.

When neither works the limits are *advisory*: they are still passed to the server as
``MEM_LIMIT`` / ``CPU_LIMIT`` (like KubeSpawner) and ``TWINHUB_LIMITS_ENFORCED=0``, and the
spawn progress says why.

Per *user* (multi-user mode, :class:`TwinhubUserLimits`): a cap on the processes and threads
of each OS account (``RLIMIT_NPROC``, counted per UID by the kernel, so it holds across the
user's server, kernels, terminals and Dask processes and needs no cgroup), set before the
switch to the account in every process the platform starts for the user.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from traitlets import Integer
from traitlets.config import Configurable

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Read for the cgroup mounts and this process's own cgroups (tests point them at fakes).
MOUNTS_FILE = "/proc/self/mounts"
OWN_CGROUP_FILE = "/proc/self/cgroup"
_CPU_PERIOD_US = 100_000
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B?)?\s*$", re.IGNORECASE)


def parse_memory(value: str | int | float | None) -> int | None:
    """Bytes from ``"2G"``, ``"512M"``, ``"1.5Gi"`` or a number (KubeSpawner's ByteSpecification
    meaning: K/M/G/T are powers of 1024).  ``None`` / ``""`` means no limit."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"memory limit {value!r} is not a size such as '2G'")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError(f"memory limit {value!r} must be positive")
        return int(value)
    m = _MEM_RE.match(str(value))
    if not m:
        raise ValueError(f"memory limit {value!r} is not a size such as '512M' or '2G'")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ValueError(f"memory limit {value!r} must be positive")
    return n


def parse_cpu(value: str | int | float | None) -> float | None:
    """CPUs as a float (``1``, ``0.5``, ``"500m"`` as in Kubernetes).  ``None`` means no limit."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"cpu limit {value!r} is not a number of CPUs")
    try:
        cpu = (
            float(value[:-1]) / 1000
            if isinstance(value, str) and value.endswith("m")
            else float(value)
        )
    except ValueError:
        raise ValueError(f"cpu limit {value!r} is not a number of CPUs such as 1 or 0.5") from None
    if cpu <= 0:
        raise ValueError(f"cpu limit {value!r} must be positive")
    return cpu


def human_bytes(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit] and n % (_UNITS[unit] // 1024 or 1) == 0:
            v = n / _UNITS[unit]
            return f"{v:g} {unit}iB"
    return f"{n} B"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one server (from its profile)."""

    cpu: float | None = None
    memory: int | None = None
    gpu: int = 0

    @classmethod
    def from_profile(cls, limits: dict | None) -> Limits:
        limits = limits or {}
        unknown = set(limits) - {"cpu", "memory", "gpu"}
        if unknown:
            raise ValueError(f"unknown limit(s) {sorted(unknown)}: use cpu, memory, gpu")
        gpu = limits.get("gpu", 0) or 0
        if not isinstance(gpu, int) or gpu < 0:
            raise ValueError(f"gpu limit {gpu!r} must be a whole number >= 0")
        return cls(parse_cpu(limits.get("cpu")), parse_memory(limits.get("memory")), gpu)

    def describe(self) -> str:
        parts = []
        if self.memory:
            parts.append(f"memory {human_bytes(self.memory)}")
        if self.cpu:
            parts.append(f"{self.cpu:g} CPU")
        if self.gpu:
            parts.append(f"{self.gpu} GPU")
        return ", ".join(parts) or "no limits"


class TwinhubUserLimits(Configurable):
    """Limits per platform user, whatever they run (``c.TwinhubUserLimits.*``)."""

    max_processes = Integer(
        1024,
        min=0,
        help="Most processes and threads (together) each user's OS account may run at once, "
        "across their server, kernels, terminals and Dask schedulers/workers (RLIMIT_NPROC, "
        "enforced by the kernel per account: a fork bomb stops there, other users are "
        "unaffected). Multi-user mode only. Raise it for thread-heavy work on many-core "
        "machines; 0: no limit.",
    ).tag(config=True)


def limit_processes(n: int) -> None:
    """Cap the processes of the account this process is about to become (``n`` > 0).

    Runs in a child before it switches to the user's account: as root the hard limit can be
    set to anything, and the user cannot raise it again.
    """
    resource.setrlimit(resource.RLIMIT_NPROC, (n, n))


# -- what the machine allows -------------------------------------------------------------


@dataclass(frozen=True)
class CgroupSupport:
    """Where server cgroups can be created: ``kind`` is "v2", "v1" or "" (advisory only)."""

    kind: str
    # v2: {"unified": parent}; v1: {"memory": parent, "cpu": parent}
    parents: dict[str, Path] = field(default_factory=dict)
    reason: str = ""


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(fstype, mountpoint, options) of every cgroup mount."""
    out = []
    with contextlib.suppress(OSError), open(MOUNTS_FILE) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                out.append((parts[2], parts[1], set(parts[3].split(","))))
    return out


def _own_cgroups() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError), open(OWN_CGROUP_FILE) as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                out[c] = path
    return out


def _enable_controllers(parent: Path, wanted: tuple[str, ...] = ("memory", "cpu")) -> str:
    """Enable ``wanted`` in ``parent/cgroup.subtree_control``; return "" or why not."""
    try:
        available = set((parent / "cgroup.controllers").read_text().split())
    except OSError as e:
        return f"cannot read {parent}/cgroup.controllers: {e.strerror}"
    missing = [c for c in wanted if c not in available]
    if missing:
        return f"cgroup v2 controller(s) {', '.join(missing)} not available in {parent}"
    enabled = set((parent / "cgroup.subtree_control").read_text().split())
    todo = [c for c in wanted if c not in enabled]
    if todo:
        try:
            (parent / "cgroup.subtree_control").write_text(" ".join("+" + c for c in todo))
        except OSError as e:
            # EBUSY: the parent holds processes and is not the root (no internal processes).
            return f"cannot enable {', '.join(todo)} in {parent}: {e.strerror}"
    return ""


def _detect_v2(mount: Path, group: str) -> CgroupSupport:
    parent = mount / group
    why = _enable_controllers(mount)
    if why:
        return CgroupSupport("", reason=why)
    try:
        parent.mkdir(exist_ok=True)
    except OSError as e:
        return CgroupSupport("", reason=f"cannot create {parent}: {e.strerror}")
    why = _enable_controllers(parent)
    if why:
        return CgroupSupport("", reason=why)
    return CgroupSupport("v2", {"unified": parent})


def _detect_v1(mounts: dict[str, Path], group: str) -> CgroupSupport:
    own = _own_cgroups()
    parents = {}
    for ctrl in ("memory", "cpu"):
        mine = mounts[ctrl] / own.get(ctrl, "/").lstrip("/")
        # Created on first use (ServerCgroup.create), removed with the last server.
        if not os.access(mine, os.W_OK):
            return CgroupSupport("", reason=f"cgroup v1 {mine} is not writable")
        parents[ctrl] = mine / group
    return CgroupSupport("v1", parents)


@lru_cache(maxsize=8)
def detect(group: str = "twinhub") -> CgroupSupport:
    """Find where this process may create server cgroups named ``<parent>/<group>/<leaf>``.

    For cgroup v2 this creates the ``group`` directory (to delegate controllers to it);
    cached per process.
    """
    if os.geteuid() != 0:
        return CgroupSupport("", reason="the hub does not run as root (no cgroup delegation)")
    mounts = _mounts()
    v2 = [Path(mp) for fs, mp, _ in mounts if fs == "cgroup2"]
    v1: dict[str, Path] = {}
    for fs, mp, opts in mounts:
        if fs == "cgroup":
            for ctrl in ("memory", "cpu"):
                if ctrl in opts:
                    v1.setdefault(ctrl, Path(mp))
    reasons = []
    for mount in v2:
        if (mount / "cgroup.controllers").exists():
            support = _detect_v2(mount, group)
            if support.kind:
                return support
            reasons.append(support.reason)
    if "memory" in v1 and "cpu" in v1:
        support = _detect_v1(v1, group)
        if support.kind:
            return support
        reasons.append(support.reason)
    if not mounts:
        reasons.append("no cgroup filesystem mounted")
    return CgroupSupport("", reason="; ".join(r for r in reasons if r) or "no usable cgroup")


# -- one server's cgroup -----------------------------------------------------------------


@dataclass
class ServerCgroup:
    """The cgroup(s) of one server: create with limits, join from preexec, kill, remove."""

    support: CgroupSupport
    leaf: str
    limits: Limits

    @property
    def enforced(self) -> bool:
        return bool(self.support.kind) and bool(self.limits.memory or self.limits.cpu)

    @property
    def dirs(self) -> list[Path]:
        return [p / self.leaf for p in self.support.parents.values()]

    def create(self) -> None:
        """Make the leaf group(s) and write the limits; raises OSError on failure."""
        lim = self.limits
        if self.support.kind == "v2":
            d = self.support.parents["unified"] / self.leaf
            d.mkdir(exist_ok=True)
            (d / "memory.max").write_text(str(lim.memory) if lim.memory else "max")
            # No swap: a server over its limit is OOM-killed instead of thrashing.
            with contextlib.suppress(OSError):
                (d / "memory.swap.max").write_text("0")
            quota = f"{int(lim.cpu * _CPU_PERIOD_US)} {_CPU_PERIOD_US}" if lim.cpu else "max"
            (d / "cpu.max").write_text(quota)
        elif self.support.kind == "v1":
            mem = self.support.parents["memory"] / self.leaf
            cpu = self.support.parents["cpu"] / self.leaf
            # The v1 group lives under the hub's own cgroup and is removed with the last
            # leaf (so nothing of ours outlives the hub there): recreate it as needed.
            mem.mkdir(parents=True, exist_ok=True)
            cpu.mkdir(parents=True, exist_ok=True)
            (mem / "memory.limit_in_bytes").write_text(str(lim.memory) if lim.memory else "-1")
            with contextlib.suppress(OSError):
                (mem / "memory.swappiness").write_text("0")
            (cpu / "cpu.cfs_period_us").write_text(str(_CPU_PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(
                str(int(lim.cpu * _CPU_PERIOD_US)) if lim.cpu else "-1"
            )
            # cpuacct co-mounted with cpu: the meter reads this leaf's counter, which must
            # start from zero even if a leaf of the same name outlived a crash.
            if (cpu / "cpuacct.usage").exists():
                with contextlib.suppress(OSError):
                    (cpu / "cpuacct.usage").write_text("0")

    def join_paths(self) -> list[str]:
        """Files the server process writes its pid to (computed before fork)."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                out.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return out

    def kill_and_remove(self, timeout: float = 5.0) -> float | None:
        """SIGKILL whatever is left in the group (stray kernels) and remove it; returns its
        final CPU counter (core-seconds; None: none), read once nothing runs in it: where
        the accounting meters this leaf (v2, v1 co-mounted) its last interval is not lost."""
        for d in self.dirs:
            if self.support.kind == "v2" and (d / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    (d / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + timeout
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        final = next((c for d in self.dirs if (c := cpu_seconds(d)) is not None), None)
        for d in self.dirs:
            with contextlib.suppress(OSError):
                d.rmdir()
            if self.support.kind == "v1":
                with contextlib.suppress(OSError):  # busy while other servers run: fine
                    d.parent.rmdir()
        return final


def cpu_seconds(cpu_dir: Path) -> float | None:
    """Cumulative CPU time (core-seconds) of a cgroup -- v1 ``cpuacct.usage`` (ns), v2
    ``cpu.stat`` ``usage_usec`` -- or None when it is gone or has neither."""
    try:
        return int((cpu_dir / "cpuacct.usage").read_text()) / 1e9
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return None
    try:
        for line in (cpu_dir / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    except (OSError, ValueError):
        return None
    return None


def join_cgroup(procs_files: list[str]) -> None:
    """Move the calling process into the given cgroups (runs in the child, before exec)."""
    pid = str(os.getpid())
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, pid.encode())
        finally:
            os.close(fd)


def remove_stale(group: str) -> list[str]:
    """Remove the empty server cgroups of ``group`` (left by a hub that was killed).

    Called when the hub starts; a group still holding processes cannot be removed (the
    kernel refuses), so running servers are never touched.  Returns the removed leaves.
    """
    support = detect(group)
    removed = []
    for parent in support.parents.values():
        if not parent.is_dir():
            continue
        for leaf in parent.iterdir():
            if leaf.is_dir():
                with contextlib.suppress(OSError):
                    leaf.rmdir()
                    removed.append(leaf.name)
        if support.kind == "v1":
            with contextlib.suppress(OSError):
                parent.rmdir()
    return sorted(set(removed))


# -- accounting cgroups --------------------------------------------------------------------
#
# With accounting on, every server and every Dask scheduler/worker runs in an accounting
# cgroup, limits or not, under ``twinhub-<id>-acct`` (a group of its own: ``remove_stale``
# never touches it). Its CPU counter (cgroup v1 ``cpuacct.usage``; v2 ``cpu.stat``, which
# exists without the cpu controller) counts every process in it, detached or not, and a
# parent keeps the usage of removed children: a cluster is one leaf with a child per
# process. The spawner and the gateway kill what is left at stop but never remove these
# leaves: the accounting meter does, after its last read.


@dataclass(frozen=True)
class AccountingSupport:
    """Where accounting cgroups go: ``kind`` "v1", "v2" or "" (none: per-process accounting)."""

    kind: str
    cpu: Path | None = None  # parent of the CPU-counter leaves
    memory: Path | None = None  # parent of the memory leaves (v2: the same as cpu)
    reason: str = ""
    # v1 with cpuacct mounted together with cpu (systemd's "cpu,cpuacct"): a process is in
    # one cgroup of that hierarchy, so joining an accounting leaf would take it out of its
    # CPU-limits leaf. There, a process with limits is metered in its limits leaf instead.
    cpu_shared: bool = False

    def meters_in_limits(self, limits: ServerCgroup | None) -> bool:
        """Whether a process with these enforced ``limits`` must be metered in its limits
        cgroup instead of an accounting leaf (v2: one cgroup per process; v1 co-mounted)."""
        if limits is None or not limits.enforced:
            return False
        return self.kind == "v2" or (
            self.kind == "v1" and self.cpu_shared and limits.support.kind == "v1"
        )


@lru_cache(maxsize=8)
def detect_accounting(group: str) -> AccountingSupport:
    """Find where accounting cgroups ``<parent>/<group>/<leaf>`` can be made (root only)."""
    if os.geteuid() != 0:
        return AccountingSupport("", reason="not root: no cgroups, per-process accounting")
    mounts = _mounts()
    own = _own_cgroups()
    v1: dict[str, Path] = {}
    shared = False
    unified: list[Path] = []
    for fs, mp, opts in mounts:
        if fs == "cgroup":
            for ctrl in ("cpuacct", "memory"):
                if ctrl in opts and ctrl not in v1:
                    v1[ctrl] = Path(mp)
                    shared = shared or (ctrl == "cpuacct" and "cpu" in opts)
        elif fs == "cgroup2":
            unified.append(Path(mp))
    if "cpuacct" in v1:
        cpu = v1["cpuacct"] / own.get("cpuacct", "/").lstrip("/")
        mem = v1["memory"] / own.get("memory", "/").lstrip("/") if "memory" in v1 else None
        if os.access(cpu, os.W_OK):
            writable = mem is not None and os.access(mem, os.W_OK)
            return AccountingSupport(
                "v1", cpu / group, mem / group if writable else None, cpu_shared=shared
            )
    for mount in unified:
        mine = mount / own.get("", "/").lstrip("/")
        base = mount if (mount / "cgroup.controllers").exists() else None
        if base is None or not os.access(mine, os.W_OK):
            continue
        # Memory only when the controller can be delegated; cpu.stat exists regardless.
        why = _enable_controllers(mount, ("memory",))
        parent = mount / group
        try:
            parent.mkdir(exist_ok=True)
        except OSError as e:
            return AccountingSupport("", reason=f"cannot create {parent}: {e.strerror}")
        if not why:
            why = _enable_controllers(parent, ("memory",))
        return AccountingSupport("v2", parent, None if why else parent)
    return AccountingSupport("", reason="no cpuacct or cgroup2 hierarchy usable")


@dataclass
class AccountingCgroup:
    """One source's accounting leaf (``leaf`` may be ``cluster/worker``: a child leaf)."""

    support: AccountingSupport
    leaf: str
    memory: bool = True  # False: the memory is in a limits cgroup already (v1)

    @property
    def cpu_dir(self) -> Path | None:
        return self.support.cpu / self.leaf if self.support.cpu else None

    @property
    def memory_dir(self) -> Path | None:
        if not self.memory or self.support.memory is None:
            return None
        return self.support.memory / self.leaf

    @property
    def dirs(self) -> list[Path]:
        return sorted({d for d in (self.cpu_dir, self.memory_dir) if d is not None})

    def create(self) -> None:
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)

    def join_paths(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs:
            for procs in [d / "cgroup.procs", *d.glob("*/cgroup.procs")]:
                with contextlib.suppress(OSError):
                    out.update(int(p) for p in procs.read_text().split())
        return out

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL what is left (stray or detached processes); the leaves stay for the meter."""
        kill_cgroup_procs(self.dirs, timeout)

    def charge_cgroups(self, memory: list[str] | None = None) -> dict:
        """The ``cgroups`` entry of the source's charge file."""
        mem = [str(self.memory_dir)] if self.memory_dir is not None else []
        return {
            "kind": self.support.kind,
            "cpu": str(self.cpu_dir) if self.cpu_dir else "",
            "memory": mem + list(memory or []),
            "leaves": [str(d) for d in self.dirs],
        }


def kill_cgroup_procs(dirs: list[Path] | list[str], timeout: float = 5.0) -> None:
    """SIGKILL every process in ``dirs`` and their child groups, without removing any."""

    def pids() -> set[int]:
        out: set[int] = set()
        for d in map(Path, dirs):
            for procs in [d / "cgroup.procs", *d.glob("*/cgroup.procs")]:
                with contextlib.suppress(OSError, ValueError):
                    out.update(int(p) for p in procs.read_text().split())
        return out

    deadline = time.monotonic() + timeout
    while (left := pids()) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def remove_accounting_group(group: str) -> list[str]:
    """Kill and remove every accounting leaf of ``group`` and the group itself.

    Only for a platform whose state is being deleted (``twinhub down --purge``): its usage
    records go with it, so unread counters no longer matter. Returns the removed dirs.
    """
    support = detect_accounting(group)
    removed = []
    for parent in {p for p in (support.cpu, support.memory) if p is not None}:
        if not parent.is_dir():
            continue
        dirs = sorted(
            (d for d in parent.rglob("*") if d.is_dir()),
            key=lambda d: len(d.parts),
            reverse=True,
        )
        kill_cgroup_procs(dirs)
        for d in [*dirs, parent]:
            with contextlib.suppress(OSError):
                d.rmdir()
                removed.append(str(d))
    return removed
