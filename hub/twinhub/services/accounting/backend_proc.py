"""Per-process accounting for sources without cgroups (not root, or cgroups switched off).

Each source is the process tree under its charge's ``pid`` (and ``extra["pids"]``: a
cluster's scheduler and workers). Its CPU counter (core-seconds, method ``proc``) is

    C = sum over live processes of (utime + stime + cutime + cstime)      [/proc/<pid>/stat]
      + the last-seen times of processes that left without being reaped by a live ancestor

so a process reaped by its parent moves from the parent's live times to its ``cutime``
(counted once), and a detached process that exits (reparented to init, never reaped by
the tree) keeps what it was last seen using. In multi-user mode (a dedicated OS account per
user), processes of the user's account outside every tree -- detached with ``setsid`` and
double-forked -- are charged to the user's most recent open source; once the user's last
source ends, the hub or the gateway kills what is left of the account
(:func:`twinhub.spawn.charges.end_leftovers`), so nothing runs unmetered. The counter only
goes up (a high-water mark, kept in a small state file across restarts of the meter).

**What it can miss, and the bound**: a process that starts and exits between two samples
and is not reaped by a live process of the tree (detached, or its parent exited first):
at most its CPU time in one ``interval`` per such process; and the CPU a tracked process
used between its last sample and its exit (at most one interval of it). Memory (gauge, GiB)
is the RSS summed over the tree at each sample: shared pages are counted once per process
and a peak between samples is not seen. Processes of another account are never charged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from .readings import CPU, GPU, MEMORY, MeteredSource, Reading

log = logging.getLogger("twinhub.accounting.proc")
GIB = 1024**3


def _key(p: psutil.Process) -> str:
    return f"{p.pid}:{p.create_time():.2f}"


def _times(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


class ProcBackend:
    """CPU and memory of process trees, from /proc (psutil)."""

    name = "proc"

    def __init__(self, state_file: str | Path | None = None) -> None:
        self.state_file = Path(state_file) if state_file else None
        self.state: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.state_file is None:
            return {}
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self) -> None:
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_file.parent, prefix=".tmp-proc-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.state, f)
            os.replace(tmp, self.state_file)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            log.exception("cannot save %s", self.state_file)

    def read(self, sources: Sequence[MeteredSource], now: datetime) -> list[Reading]:
        mine = [m for m in sources if not (m.charge.cgroups or {}).get("cpu")]
        if not mine:
            return []
        trees = {m.source.source_id: self._tree(m) for m in mine}
        self._add_orphans(mine, trees)
        out: list[Reading] = []
        for m in mine:
            sid = m.source.source_id
            procs = trees[sid]
            cpu = self._counter(sid, procs)
            out.append(Reading(m.source, CPU, "counter", cpu, "proc", now))
            if m.ended:
                continue
            rss = 0
            for p in procs.values():
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            out.append(Reading(m.source, MEMORY, "gauge", rss / GIB, "proc", now))
            if m.charge.gpus:
                out.append(Reading(m.source, GPU, "gauge", float(m.charge.gpus), "allocation", now))
        live = {m.source.source_id for m in sources}
        for sid in [s for s in self.state if s not in live]:
            del self.state[sid]  # ended and removed by the meter
        self._save()
        return out

    @staticmethod
    def _tree(m: MeteredSource) -> dict[str, psutil.Process]:
        roots = [m.charge.pid, *(m.charge.extra or {}).get("pids", [])]
        out: dict[str, psutil.Process] = {}
        for pid in roots:
            if not pid:
                continue
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(int(pid))
                if m.charge.uid is not None and root.uids().real != m.charge.uid:
                    continue  # the pid was reused by someone else
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        out[_key(p)] = p
        return out

    @staticmethod
    def _add_orphans(mine: list[MeteredSource], trees: dict[str, dict[str, psutil.Process]]):
        """Processes of a user's own account outside every tree: the user's newest source."""
        own = os.getuid()
        newest: dict[int, str] = {}
        for m in mine:  # oldest first: the last one wins
            uid = m.charge.uid
            if uid is not None and uid not in (0, own) and not m.ended:
                newest[uid] = m.source.source_id
        if not newest:
            return
        taken = {k for t in trees.values() for k in t}
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                sid = newest.get(p.uids().real)
                if sid is not None and (k := _key(p)) not in taken:
                    trees[sid][k] = p

    def _counter(self, sid: str, procs: dict[str, psutil.Process]) -> float:
        st = self.state.setdefault(sid, {"base": 0.0, "seen": {}, "hwm": 0.0})
        seen: dict[str, list[float]] = st["seen"]
        now_seen: dict[str, list[float]] = {}
        live_pids = set()
        total = 0.0
        for k, p in procs.items():
            try:
                cpu, ppid = _times(p), p.ppid()
            except psutil.Error:
                continue  # vanished meanwhile: handled as gone below
            now_seen[k] = [float(ppid), cpu]
            live_pids.add(p.pid)
            total += cpu
        for k, (ppid, cpu) in seen.items():
            if k in now_seen:
                continue
            # Reaped by a live process of the tree: already in its cutime. Else keep it.
            if int(ppid) not in live_pids:
                st["base"] += cpu
        st["seen"] = now_seen
        value = max(st["hwm"], st["base"] + total)
        st["hwm"] = value
        return value
