"""Choosing loopback ports that stay free until their process binds them.

A port that is merely free *now* inside Linux's ephemeral range (32768-60999 by default)
can be taken as the source port of any outgoing connection before its process binds it;
with several components and servers starting at once that happened here.  Ports are
therefore drawn at random from ranges below it, and remembered within this process until
released.
"""

from __future__ import annotations

import random
import socket

# Platform components (proxy API, hub, gateway, object store...).
PLATFORM_PORTS = (10000, 19999)
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
