"""Choosing loopback ports that stay free until their process binds them.

A port that is merely free *now* inside Linux's ephemeral range (32768-60999 by default)
can be taken as the source port of any outgoing connection before its process binds it;
with several components and servers starting at once that happened here.  Ports are
therefore drawn at random from ranges below it, and remembered within this process until
released.
"""

from __future__ import annotations

import os
import random
import socket

#: Platform components when run by an ordinary user (no privileged ports).
UNPRIVILEGED_PORTS = (10000, 19999)
#: Platform components when run as root: below Linux's ip_unprivileged_port_start, where no
#: other local user can bind. A component restarts on its old port (the hub and the proxy
#: know it), so in the gap between its death and its restart a user's process could otherwise
#: bind that port and receive the requests (and tokens) meant for it.
PRIVILEGED_PORTS = (600, 1023)


def _root_only(port_range: tuple[int, int]) -> bool:
    """Whether only root may bind ``port_range`` here (and this process is root)."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            start = int(f.read())
    except (OSError, ValueError):
        start = 1024
    return port_range[1] < start


# Platform components (proxy API, hub, gateway, object store, services...).
PLATFORM_PORTS = PRIVILEGED_PORTS if _root_only(PRIVILEGED_PORTS) else UNPRIVILEGED_PORTS
# User servers.
SERVER_PORTS = (20000, 32000)

_claimed: set[int] = set()


class NoFreePort(RuntimeError):
    pass


def pick_port(port_range: tuple[int, int] = PLATFORM_PORTS, ip: str = "127.0.0.1") -> int:
    """A port in ``port_range`` that binds now and was not handed out by this process."""
    lo, hi = port_range
    for _ in range(500):
        port = random.randint(lo, hi)
        if port in _claimed:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((ip, port))
            except OSError:
                continue
        _claimed.add(port)
        return port
    raise NoFreePort(f"no free port between {lo} and {hi} on {ip}")


def release_port(port: int | None) -> None:
    _claimed.discard(port)  # type: ignore[arg-type]
