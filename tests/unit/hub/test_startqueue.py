"""The start queue in front of server starts: bounded, first-come first-served, cancel-safe."""

from __future__ import annotations

import asyncio

import pytest

from twinhub.spawn.startqueue import StartQueue, default_slots


def run(coro):
    return asyncio.run(coro)


def test_at_most_slots_hold_at_once_and_all_get_through_in_order():
    async def main():
        q = StartQueue(2, poll=0.01)
        holding, most, order = 0, 0, []
        places: dict[int, list[int]] = {}

        async def start(i: int) -> None:
            nonlocal holding, most
            await q.acquire(lambda ahead, running: places.setdefault(i, []).append(ahead))
            try:
                holding += 1
                most = max(most, holding)
                order.append(i)
                await asyncio.sleep(0.02)
            finally:
                holding -= 1
                q.release()

        tasks = []
        for i in range(8):
            tasks.append(asyncio.create_task(start(i)))
            await asyncio.sleep(0)  # queued in this order
        await asyncio.gather(*tasks)
        return q, most, order, places

    q, most, order, places = run(main())
    assert most == 2
    assert order == list(range(8))
    assert q.running == 0 and q.waiting == 0
    # The first two never waited; the last one was told 5 were ahead, then fewer.
    assert 0 not in places and 1 not in places
    assert places[7][0] == 5 and places[7][-1] <= 1
    assert places[7] == sorted(places[7], reverse=True)


def test_a_cancelled_waiter_leaves_the_queue_and_frees_nothing_it_did_not_hold():
    async def main():
        q = StartQueue(1, poll=0.01)
        await q.acquire()
        waiter = asyncio.create_task(q.acquire())
        nxt = asyncio.create_task(q.acquire())
        await asyncio.sleep(0.05)
        assert q.waiting == 2
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert q.waiting == 1
        q.release()  # the slot goes to the next one, not to the cancelled one
        await asyncio.wait_for(nxt, 1)
        assert q.running == 1 and q.waiting == 0
        q.release()
        return q

    q = run(main())
    assert q.running == 0


def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_goes_on():
    async def main():
        q = StartQueue(1, poll=0.01)
        await q.acquire()
        waiter = asyncio.create_task(q.acquire())
        nxt = asyncio.create_task(q.acquire())
        await asyncio.sleep(0.05)
        q.release()  # hands the slot to `waiter`...
        waiter.cancel()  # ...which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.wait_for(nxt, 1)
        assert q.running == 1 and q.waiting == 0

    run(main())


def test_slots_must_be_positive_and_default_to_the_cpus():
    with pytest.raises(ValueError):
        StartQueue(0)
    assert default_slots() >= 2


def test_hub_timeouts_are_sized_from_the_queue(tmp_path):
    """JupyterHub's start_timeout counts from the request: it must cover a full queue."""
    from traitlets.config import Config

    from twinhub.process.runtime import Runtime
    from twinhub.spawn.modes import MultiUserSpawner, SpawnPart

    conf = Config(
        {
            "TwinhubSpawnerConfig": {
                "enforce_limits": "off",  # no cgroup side effects here
                "concurrent_starts": 3,
                "start_timeout": 50,
                "max_pending_spawns": 10,
            }
        }
    )
    c = Config()
    SpawnPart().configure_hub(c, Runtime(tmp_path, conf, mode="multi-user", instance_id="i1"))
    assert c.JupyterHub.concurrent_spawn_limit == 10  # a burst of 10 is never answered 429
    # Bound: the last waits at most ceil(10 / 3) rounds of starts of <= 50 s, then starts.
    assert c.Spawner.start_timeout == 50 * (1 + 4)
    assert c.Spawner.http_timeout == 50
    sp = MultiUserSpawner(config=c)
    assert (sp.concurrent_starts, sp.server_start_timeout) == (3, 50)

    c = Config()
    off = Config({"TwinhubSpawnerConfig": {"enforce_limits": "off"}})
    SpawnPart().configure_hub(c, Runtime(tmp_path, off, mode="multi-user", instance_id="i1"))
    assert c.TwinhubSpawner.concurrent_starts == default_slots()
    assert c.JupyterHub.concurrent_spawn_limit == 100
