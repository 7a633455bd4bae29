"""CQL2 text parsed in child processes with a deadline (twinhub.services.datalake.cql2_text):
the parser's exponential backtracking on malformed nested filters and its crashes cost a
child, never the STAC process."""

from __future__ import annotations

import asyncio
import time

import pytest

from twinhub.services.datalake.cql2_text import TextParser
from twinhub.services.datalake.input_limits import BadRequest, LimitError


def test_text_becomes_json_and_errors_name_the_problem():
    async def go():
        p = TextParser(timeout=10)
        try:
            doc = await p.to_json("eo:cloud_cover < 10 AND NOT (id = 'x')")
            assert doc["op"] == "and" and doc["args"][1]["op"] == "not"
            with pytest.raises(LimitError, match="not valid CQL2"):
                await p.to_json("a = = 1")
        finally:
            await p.close()

    asyncio.run(go())


def test_a_slow_malformed_filter_costs_its_child_only():
    """24 levels around a syntax error take cql2 about 30 s (2^n backtracking): the parse is
    cut at the deadline, its child killed, and the next filter is served by a fresh one."""
    slow = "(" * 24 + "a = = 1" + ")" * 24

    async def go():
        p = TextParser(timeout=0.5, workers=1)
        try:
            await p.to_json("a = 1")  # the child is up
            t0 = time.monotonic()
            with pytest.raises(LimitError, match="more than 0.5 s to parse"):
                await p.to_json(slow)
            assert time.monotonic() - t0 < 5
            assert p.children[0].proc is None  # killed
            assert (await p.to_json("b = 2"))["op"] == "="
        finally:
            await p.close()

    asyncio.run(go())


def test_a_crashing_filter_costs_its_child_only():
    deep = "(" * 3000 + "1=1" + ")" * 3000  # SIGSEGV in cql2 (the guard refuses it before)

    async def go():
        p = TextParser(timeout=30, workers=1)
        try:
            with pytest.raises(LimitError, match="parser failed"):
                await p.to_json(deep)
            assert (await p.to_json("c = 3"))["op"] == "="
        finally:
            await p.close()

    asyncio.run(go())


def test_one_caller_cannot_fill_the_queue_and_a_full_queue_answers_503():
    """Slow filters of one user cost that user (429 past PER_CALLER); others still queue, and
    past the waiting bound the answer is 503 rather than an ever longer wait."""
    slow = "(" * 24 + "a = = 1" + ")" * 24

    async def go():
        p = TextParser(timeout=1.0, workers=1, max_waiting=1)
        try:
            await p.to_json("a = 1")
            mallory = [asyncio.create_task(p.to_json(slow, "mallory")) for _ in range(2)]
            await asyncio.sleep(0.1)
            with pytest.raises(BadRequest, match="filters parsing already") as e:
                await p.to_json(slow, "mallory")
            assert e.value.status == 429
            with pytest.raises(BadRequest, match="busy") as e:
                await p.to_json("b = 2", "alice")  # 1 parsing + 1 waiting: full
            assert e.value.status == 503
            for t in mallory:
                with pytest.raises(LimitError):
                    await t
            assert (await p.to_json("b = 2", "alice"))["op"] == "="  # room again
        finally:
            await p.close()

    asyncio.run(go())


def test_a_cancelled_parse_does_not_answer_the_next_one():
    slow = "(" * 22 + "a = = 1" + ")" * 22

    async def go():
        p = TextParser(timeout=30, workers=1)
        try:
            t = asyncio.create_task(p.to_json(slow, "x"))
            await asyncio.sleep(0.3)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            doc = await p.to_json("c = 3", "x")
            assert doc == {"op": "=", "args": [{"property": "c"}, 3]}
        finally:
            await p.close()

    asyncio.run(go())
