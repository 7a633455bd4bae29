"""The size of a home directory, walked so that nothing its user does redirects the walk.

A user owns everything under their home and may swap any directory for a symbolic link at
any moment, also between the walk listing a directory and entering it. So no path is ever
resolved twice: the walk holds an open file descriptor of each directory it is in, opens a
subdirectory relative to it with ``O_NOFOLLOW`` (a link in its place fails to open) and
enters it only if it is the very directory listed (same device and inode: a directory moved
into its place is not entered either). Stats are ``fstatat`` relative to that descriptor,
never following a link. Other file systems are not entered (``du -x``): mount points named
in ``/proc/self/mountinfo`` are not even stat'ed (a hung FUSE mount would block the stat),
and anything else on another device is skipped.

Bounded: at most ``max_entries`` entries, ``seconds`` of walking and :data:`MAX_DEPTH`
levels (one descriptor per level); beyond, the figure is a lower bound (``truncated``).

Stdlib only: :mod:`.backend_storage` runs this file as a script (``python -I -S -c``) in a
child process as the home's uid, killed after a timeout (a hung file system), and reads
the JSON it prints.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

#: Deepest directory level entered (each level holds one open descriptor while walked).
MAX_DEPTH = 200
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass
class Walk:
    """What one walk counted."""

    bytes: int = 0
    entries: int = 0
    truncated: bool = False  # stopped at a bound (entries, time or depth): a lower bound
    unreadable: int = 0  # directories that could not be opened or listed (not counted in)
    swapped: int = 0  # directories replaced between listing and entering (not entered)


def before_enter(dir_fd: int, name: str) -> None:
    """Called between listing a directory and entering its subdirectory ``name``: nothing
    here; the point where a test swaps the directory for a link (a fake race)."""


def mount_points(root: str) -> set[str]:
    """Mount points under ``root`` (exclusive), as this process' mount table lists them."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    prefix = root.rstrip("/") + "/"
    out = set()
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:
            # Blanks, tabs, newlines and backslashes are written as octal escapes.
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point.startswith(prefix):
                out.add(point.rstrip("/"))
    return out


def tree_size(
    root: str | os.PathLike[str],
    max_entries: int,
    seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Walk:
    """Allocated bytes under ``root`` like ``du -x -s`` (blocks, hard links once, links not
    followed), see the module doc. A ``root`` that is a symbolic link counts as the link."""
    root = os.path.abspath(os.fspath(root))
    try:
        fd = os.open(root, DIR_FLAGS)
    except OSError as e:
        if e.errno != errno.ENOTDIR:
            return Walk()  # missing or unreadable: nothing counted
        try:
            st = os.lstat(root)  # a file, or a link (not followed)
        except OSError:
            return Walk()
        return Walk(st.st_blocks * 512, 1)
    top = os.fstat(fd)
    w = Walk(top.st_blocks * 512, 1)
    deadline = None if seconds is None else clock() + seconds
    # Paths only name entries to compare with the mount table (which has real paths); every
    # open and stat is relative to a directory's descriptor.
    base = os.path.realpath(root)
    mounts = mount_points(base)
    seen: set[tuple[int, int]] = set()
    stop = False  # the entries or time bound reached: the walk ends

    def listing(dir_fd: int, path: str) -> list[tuple[str, int, int]]:
        """Count ``dir_fd``'s entries; its subdirectories on the same device to enter."""
        nonlocal stop
        subdirs = []
        with os.scandir(dir_fd) as it:  # scandir works on a duplicate: dir_fd stays open
            for entry in it:
                if w.entries >= max_entries or (deadline is not None and clock() >= deadline):
                    w.truncated = stop = True
                    break
                w.entries += 1
                if f"{path}/{entry.name}" in mounts:
                    continue  # another file system (du -x), not even stat'ed
                try:
                    st = entry.stat(follow_symlinks=False)  # fstatat(dir_fd, name, NOFOLLOW)
                except OSError:
                    continue  # gone meanwhile
                if st.st_dev != top.st_dev:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append((entry.name, st.st_dev, st.st_ino))
                elif st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                w.bytes += st.st_blocks * 512
        return subdirs

    stack: list[tuple[int, str, list[tuple[str, int, int]]]] = []
    try:
        stack.append((fd, base, []))
        try:
            stack[-1] = (fd, base, listing(fd, base))
        except OSError:
            w.unreadable += 1
        while stack:
            dir_fd, path, subdirs = stack[-1]
            if not subdirs or stop:
                os.close(stack.pop()[0])
                continue
            name, dev, ino = subdirs.pop()
            if len(stack) >= MAX_DEPTH:
                w.truncated = True  # not entered; the rest of the walk goes on
                continue
            before_enter(dir_fd, name)
            try:
                sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    w.swapped += 1  # a link or a file in its place now
                elif e.errno != errno.ENOENT:
                    w.unreadable += 1
                continue
            st = os.fstat(sub)
            if (st.st_dev, st.st_ino) != (dev, ino):
                os.close(sub)
                w.swapped += 1
                continue
            stack.append((sub, f"{path}/{name}", []))
            try:
                stack[-1] = (sub, f"{path}/{name}", listing(sub, f"{path}/{name}"))
            except OSError:
                w.unreadable += 1
    finally:
        for dir_fd, _, _ in stack:
            os.close(dir_fd)
    return w


def main(argv: list[str]) -> int:
    """``<root> <max_entries> <seconds>`` -> the :class:`Walk` as JSON on stdout."""
    root, max_entries, seconds = argv[1], int(argv[2]), float(argv[3])
    with contextlib.suppress(OSError):
        os.nice(10)  # a background measurement: after the user's own work
    print(json.dumps(asdict(tree_size(root, max_entries, seconds))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
