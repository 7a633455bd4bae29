"""A first-come, first-served queue in front of server starts (in the hub process).

Thirty users who log in at the same moment used to start thirty Jupyter servers at once; on a
2-core machine none of them got to listen within JupyterHub's 60 s ``start_timeout``, and
every spawn failed.  Here at most ``slots`` starts (OS account, cgroup, process, until it
listens) run at a time; the others wait in order and are told how many are ahead of them.
Starting them one pair at a time takes each a few seconds, so the whole burst succeeds.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


def default_slots() -> int:
    """Starts that run at once when not configured: one per CPU this process may use, >= 2."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(2, cpus)


class StartQueue:
    """At most ``slots`` holders at once; the others wait first-come, first-served.

    ``await acquire(on_position)`` returns the seconds waited once the caller holds a slot;
    ``release()`` hands it to the longest waiter.  ``on_position(ahead, running)`` is called
    whenever the caller's place changes while it waits (``ahead``: waiters before it).
    A waiter that is cancelled (spawn stopped, timed out) leaves the queue, and a slot handed
    to it just then goes on to the next one.
    """

    def __init__(self, slots: int, poll: float = 0.5) -> None:
        if slots < 1:
            raise ValueError(f"a start queue needs at least one slot, not {slots}")
        self.slots = slots
        self.poll = poll
        self.running = 0
        self._waiters: list[asyncio.Future] = []

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, on_position: Callable[[int, int], None] | None = None) -> float:
        loop = asyncio.get_running_loop()
        if self.running < self.slots and not self._waiters:
            self.running += 1
            return 0.0
        t0 = loop.time()
        turn = loop.create_future()
        self._waiters.append(turn)
        last = None
        try:
            while not turn.done():
                place = (self._waiters.index(turn), self.running)
                if place != last and on_position is not None:
                    on_position(*place)
                last = place
                # Polled rather than notified: a place only changes when a start ends.
                await asyncio.wait([turn], timeout=self.poll)
        except BaseException:
            if turn in self._waiters:
                self._waiters.remove(turn)
            elif turn.done() and not turn.cancelled():
                self.release()  # handed a slot it will never use
            raise
        return loop.time() - t0

    def release(self) -> None:
        while self._waiters:
            turn = self._waiters.pop(0)
            if not turn.done():
                turn.set_result(None)  # the slot passes on: ``running`` stays the same
                return
        self.running = max(0, self.running - 1)


_queues: dict[int, StartQueue] = {}


def start_queue(slots: int) -> StartQueue:
    """The hub's queue for ``slots`` concurrent starts (one per configured size)."""
    slots = slots or default_slots()
    if slots not in _queues:
        _queues[slots] = StartQueue(slots)
    return _queues[slots]
