"""CQL2 text turned into CQL2 JSON in a child process, with a deadline.

The ``cql2`` text parser backtracks: a *malformed* filter nested n levels deep costs about
2^n steps (24 levels: 30 s of CPU), well inside the 64 levels a filter may have, and a
crash of the parser (SIGSEGV) would take its process with it. So the STAC API never parses
CQL2 text in its own process: the guard sends each text filter here, gets CQL2 JSON back
(which ``cql2`` reads in linear time) and passes that on. A parse that overruns
:data:`PARSE_TIMEOUT` kills its child (a fresh one starts for the next filter) and answers
400; so does a child that dies.

``python -m twinhub.services.datalake.cql2_text`` is the child: one JSON request per line
on stdin (``{"text": ...}``), one JSON answer per line on stdout (``{"json": ...}`` or
``{"error": ...}``). It exits when its stdin closes (its parent is gone).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from .input_limits import BadRequest, LimitError

#: Seconds a filter may take to parse (a valid one takes well under a millisecond).
PARSE_TIMEOUT = 2.0
#: Children parsing at once: a slow filter holds one, the others serve everyone else.
WORKERS = 2
#: Filters waiting for a child at most (beyond: 503, try again): a burst of slow filters
#: must not queue everyone's searches behind it for long.
MAX_WAITING = 8
#: Filters one caller may have parsing or waiting at once (a notebook's few threads).
PER_CALLER = 2
#: Seconds a parser child may take to start (Python and cql2's import), apart from the
#: parse's own deadline.
START_TIMEOUT = 30.0
#: The child's first line: it is ready to parse.
READY = b"ready"


class _Child:
    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()

    async def parse(self, text: str, timeout: float) -> dict[str, Any]:
        if self.proc is None or self.proc.returncode is not None:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                limit=16 * 1024 * 1024,  # one answer per line: the JSON of a 64 KiB filter
            )
            # The child says when it has imported cql2: its start (seconds on a loaded
            # machine) must not count against the parse's own deadline.
            assert self.proc.stdout is not None
            try:
                ready = await asyncio.wait_for(self.proc.stdout.readline(), START_TIMEOUT)
            except TimeoutError:
                ready = b""
            except BaseException:  # cancelled while it starts: a half-started child goes
                await self.stop()
                raise
            if ready.strip() != READY:
                await self.stop()
                raise LimitError("the CQL2 parser did not start; try again")
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps({"text": text}).encode() + b"\n")
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        except TimeoutError:
            await self.stop()
            raise LimitError(
                f"filter took more than {timeout:g} s to parse (is it malformed and deeply "
                "nested?); check its syntax"
            ) from None
        except (OSError, ValueError):  # the child went away while we wrote or read
            line = b""
        except BaseException:  # cancelled mid-parse: its answer must not reach the next one
            await self.stop()
            raise
        if not line:
            await self.stop()
            raise LimitError("the CQL2 parser failed on this filter; check its syntax")
        answer = json.loads(line)
        if "error" in answer:
            raise LimitError(f"filter is not valid CQL2: {answer['error'][:300]}")
        return answer["json"]

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


class TextParser:
    """CQL2 text -> CQL2 JSON, in :data:`WORKERS` child processes (started on first use).

    One caller (a user) has at most :data:`PER_CALLER` filters parsing or waiting at a time,
    and at most :data:`MAX_WAITING` filters wait in all: one user's slow filters cost that user, not
    everyone's searches.
    """

    def __init__(
        self, timeout: float = PARSE_TIMEOUT, workers: int = WORKERS, max_waiting: int = MAX_WAITING
    ) -> None:
        self.timeout = timeout
        self.children = [_Child() for _ in range(workers)]
        self.max_waiting = max_waiting
        self._next = 0
        self._pending: dict[str, int] = {}

    async def to_json(self, text: str, caller: str = "") -> dict[str, Any]:
        if caller and self._pending.get(caller, 0) >= PER_CALLER:
            raise BadRequest(
                f"you have {PER_CALLER} filters parsing already: wait for their answers",
                429,
            )
        child = next((c for c in self.children if not c.lock.locked()), None)
        if child is None:  # all busy: queue on the next one in turn, if the queue has room
            if sum(self._pending.values()) >= len(self.children) + self.max_waiting:
                raise BadRequest("the CQL2 parser is busy; try again in a few seconds", 503)
            child = self.children[self._next % len(self.children)]
            self._next += 1
        self._pending[caller] = self._pending.get(caller, 0) + 1
        try:
            async with child.lock:
                return await child.parse(text, self.timeout)
        finally:
            self._pending[caller] -= 1
            if not self._pending[caller]:
                del self._pending[caller]

    async def close(self) -> None:
        for c in self.children:
            await c.stop()


def main() -> None:
    import cql2  # only in the child process: the service's own process never parses text

    sys.stdout.write(READY.decode() + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        try:
            expr = cql2.parse_text(json.loads(line)["text"])
            answer: dict[str, Any] = {"json": expr.to_json()}
        except Exception as e:  # a bad filter: its message goes back to the user
            answer = {"error": str(e) or type(e).__name__}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
