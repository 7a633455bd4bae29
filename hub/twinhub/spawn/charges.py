"""Charge files: what each running source (a server run, a Dask cluster) is charged to.

Written only by trusted root processes -- the hub's spawner and the Dask gateway -- never by
user code, in a root-owned 0700 directory (``<state>/run/accounting/charges/``); read by the
accounting service's meter (:mod:`twinhub.services.accounting.meter`), which also removes
them once a source has ended and its last counters are stored. One JSON file per source:

``{source_id, user, project, kind, name, started_at, ended_at, cgroups, uid, pid, profile,
gpus, extra}``

``cgroups``: ``{"cpu": dir, "memory": [dir or glob, ...], "leaves": [dir, ...]}`` -- ``cpu``
holds the CPU counter (``cpuacct.usage`` on cgroup v1, ``cpu.stat`` on v2), ``memory`` the
working set(s), ``leaves`` the accounting cgroups the meter removes after its final read.
Empty: no cgroups (per-process accounting from ``pid`` and ``uid``).

Every write is atomic (temporary file + rename), so a reader never sees half a file and a
kill -9 of the writer leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from . import resource_limits

#: Below this uid: system accounts, never a platform user's dedicated one.
FIRST_USER_UID = 1000

#: Where the charge files live, relative to the state dir.
CHARGES_DIR = "run/accounting/charges"

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def new_run_id() -> str:
    """12 hex digits naming one run of a server (its source id and cgroup leaf)."""
    return uuid.uuid4().hex[:12]


def server_source_id(user: str, servername: str, run_id: str) -> str:
    return f"server:{user}/{servername}#{run_id}"


def cluster_source_id(cluster_name: str) -> str:
    return f"cluster:{cluster_name}"


@dataclass(frozen=True)
class Charge:
    """One source and who/what it is charged to (the content of one charge file)."""

    source_id: str
    user: str
    project: str | None
    kind: str  # "server", "named-server", "cluster", "job"
    name: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    cgroups: dict[str, Any] = field(default_factory=dict)
    uid: int | None = None
    pid: int | None = None
    profile: str = ""
    gpus: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("started_at", "ended_at"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Charge:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("started_at", "ended_at"):
            if values.get(key):
                values[key] = _aware(datetime.fromisoformat(values[key]))
        return cls(**values)


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def file_name(source_id: str) -> str:
    """The charge file's name: the source id made safe, plus a hash keeping names distinct."""
    safe = _SAFE.sub("_", source_id)
    return f"{safe}-{uuid.uuid5(uuid.NAMESPACE_URL, source_id).hex[:8]}.json"


def ensure_dir(directory: str | Path) -> Path:
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)  # also when it existed with looser rights
    return d


def write(directory: str | Path, charge: Charge) -> Path:
    """Write (or replace) ``charge``'s file atomically."""
    d = ensure_dir(directory)
    path = d / file_name(charge.source_id)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(charge.to_json(), f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def read(directory: str | Path, source_id: str) -> Charge | None:
    try:
        data = json.loads((Path(directory) / file_name(source_id)).read_text())
    except (OSError, ValueError):
        return None
    return Charge.from_json(data)


def end(
    directory: str | Path,
    source_id: str,
    at: datetime | None = None,
    *,
    final_cpu: float | None = None,
) -> Charge | None:
    """Mark a source ended (kept for the meter's final read); None if there is no file.
    ``final_cpu``: the last value of its CPU counter, for a source whose cgroup went with
    its limits (``extra["final_cpu"]``, read by the meter when the cgroup is gone)."""
    charge = read(directory, source_id)
    if charge is None or charge.ended_at is not None:
        return charge
    extra = dict(charge.extra or {})
    if final_cpu is not None:
        extra["final_cpu"] = final_cpu
    ended = replace(charge, ended_at=_aware(at or datetime.now(UTC)), extra=extra)
    write(directory, ended)
    return ended


def remove(directory: str | Path, source_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (Path(directory) / file_name(source_id)).unlink()


def list_charges(directory: str | Path) -> list[Charge]:
    """Every charge file's content (unreadable or partial files skipped), oldest first."""
    d = Path(directory)
    out = []
    try:
        names = sorted(p for p in d.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except OSError:
        return []
    for p in names:
        try:
            out.append(Charge.from_json(json.loads(p.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(out, key=lambda c: c.started_at or datetime.min.replace(tzinfo=UTC))


def find_open(directory: str | Path, *, user: str, name: str, kind: str) -> list[Charge]:
    """Open (not ended) charges of ``user``'s ``kind`` source called ``name``."""
    return [
        c
        for c in list_charges(directory)
        if c.user == user and c.kind == kind and c.name == name and c.ended_at is None
    ]


def open_server_charge(
    directory: str | Path,
    *,
    user: str,
    name: str,
    safe_name: str,
    project: str,
    uid: int,
    profile: str,
    gpus: int,
    group: str,
    limits: resource_limits.ServerCgroup | None,
) -> tuple[resource_limits.AccountingCgroup | None, Charge]:
    """Open a new server run's charge (ending any left open by a hub that died) and make its
    accounting cgroup under ``group`` ("" : none, per-process accounting). ``limits``: the
    server's enforced limits cgroup, if any (it holds the memory on v1, everything on v2)."""
    for old in find_open(directory, user=user, name=name, kind="server"):
        end(directory, old.source_id)
    run_id = new_run_id()
    acct, cgroups = None, {}
    support = resource_limits.detect_accounting(group) if group else None
    if support is not None and limits is not None and support.meters_in_limits(limits):
        # One cgroup per process on v2, and in v1's co-mounted cpu,cpuacct hierarchy: the
        # limits leaf counts the CPU too; joining an accounting leaf there would lift the
        # CPU limit. Removed at stop with the limits: the CPU of the last interval is not
        # metered.
        cgroups = limits_cgroups(limits)
    elif support is not None and support.kind:
        acct = resource_limits.AccountingCgroup(
            support, f"{safe_name}-{run_id}", memory=limits is None
        )
        memory = []
        if limits is not None and "memory" in limits.support.parents:
            memory = [str(limits.support.parents["memory"] / limits.leaf)]
        cgroups = acct.charge_cgroups(memory)
    charge = Charge(
        source_id=server_source_id(user, name, run_id),
        user=user,
        project=project,
        kind="server",
        name=name,
        started_at=datetime.now(UTC),
        cgroups=cgroups,
        uid=uid,
        profile=profile,
        gpus=gpus,
    )
    # The file first: a leaf never exists without the charge saying whose it is.
    write(directory, charge)
    if acct is not None:
        try:
            acct.create()
        except OSError:
            acct, charge = None, replace(charge, cgroups={})
            write(directory, charge)
    return acct, charge


def limits_cgroups(limits: resource_limits.ServerCgroup) -> dict[str, Any]:
    """The ``cgroups`` of a source metered in its limits cgroup (no leaf of its own)."""
    parents = limits.support.parents
    if limits.support.kind == "v2":
        d = str(parents["unified"] / limits.leaf)
        return {"kind": "v2", "cpu": d, "memory": [d], "leaves": []}
    memory = [str(parents["memory"] / limits.leaf)] if "memory" in parents else []
    return {"kind": "v1", "cpu": str(parents["cpu"] / limits.leaf), "memory": memory, "leaves": []}


def _has_open(directory: str | Path, user: str, uid: int) -> bool:
    return any(
        c.ended_at is None and (c.uid == uid or c.user == user) for c in list_charges(directory)
    )


def end_leftovers(
    directory: str | Path, *, user: str, uid: int | None, timeout: float = 5.0
) -> int:
    """Once ``user``'s last open source has ended, SIGKILL what is left of their dedicated OS
    account ``uid`` (multi-user mode): processes detached from a stopped server where no
    cgroup held them, which no source would meter or stop. Returns how many were signalled.

    Nothing happens while any source of the user or the account is open (a cluster still
    running, a server starting: re-checked between rounds), nor for the platform's own
    account, root or a system account (personal mode: the user's processes are the hub's).
    """
    if uid is None or uid < FIRST_USER_UID or uid in (os.getuid(), os.geteuid()):
        return 0
    if os.geteuid() != 0:  # another account's processes are out of reach anyway
        return 0
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not _has_open(directory, user, uid):
        procs = []
        for p in psutil.process_iter(["uids", "status"]):
            uids = p.info["uids"]
            # Zombies are dead already (their parent reaps them; not waited for here: the
            # hub's and the gateway's own children are theirs to reap).
            if uids and uid in (uids.real, uids.effective) and p.info["status"] != "zombie":
                procs.append(p)
        if not procs:
            break
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
                killed.add(p.pid)
        time.sleep(0.05)
    return len(killed)
