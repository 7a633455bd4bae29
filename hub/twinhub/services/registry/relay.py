"""The gateway's byte relays (ASGI side ↔ upstream side): a streamed HTTP answer, a
websocket both ways, and a refused websocket handshake. Both relays bound each write to
the client, so that a client that stops reading lets go of its upstream connection."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import websockets

from ..asgi import Receive, Scope, Send, error_body

log = logging.getLogger("twinhub.registry.gateway")


async def stream_until_disconnect(
    resp: httpx.Response, receive: Receive, send: Send, send_timeout: float
) -> None:
    """Upstream's body to the client until it ends or the client goes away.

    The server's ``send`` does nothing once the client disconnected, so a relay that only
    sends would hold its upstream connection for as long as upstream streams (an SSE
    stream, forever). ``receive()`` says ``http.disconnect`` then: the relay is cancelled.
    A client that stays but stops reading blocks ``send`` (back-pressure): each chunk gets
    ``send_timeout`` seconds, then the upstream connection is let go."""

    async def forward() -> None:
        async for chunk in resp.aiter_raw():
            if chunk:
                msg = {"type": "http.response.body", "body": chunk, "more_body": True}
                await asyncio.wait_for(send(msg), send_timeout)
        await asyncio.wait_for(send({"type": "http.response.body", "body": b""}), send_timeout)

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    relaying = asyncio.ensure_future(forward())
    watching = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({relaying, watching}, return_when=asyncio.FIRST_COMPLETED)
        if relaying.done():
            try:
                relaying.result()  # its error, if any
            except TimeoutError:
                log.info("gateway: the client stopped reading; the upstream stream is closed")
        else:
            log.info("gateway: the client went away; the upstream stream is closed")
    finally:
        for t in (relaying, watching):
            t.cancel()
        await asyncio.gather(relaying, watching, return_exceptions=True)


async def deny_websocket(scope: Scope, send: Send, status: int, message: str) -> None:
    """Refuse a handshake: with an HTTP answer of ``status`` and the JSON error where the
    server has the denial-response extension, else a close before accept (a 403)."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = json.dumps(error_body(status, message)).encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.close", "code": 1013, "reason": message[:120]})


async def relay(receive: Receive, send: Send, upstream: Any, send_timeout: float) -> None:
    """Messages both ways until either side closes; the close code passes through. A client
    that does not read blocks ``send``: after ``send_timeout`` seconds on one message the
    relay ends and the upstream connection is closed (it would be held for nothing)."""

    async def client_to_upstream() -> None:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                await upstream.close(code=_sendable(msg.get("code", 1000)))
                return
            if msg.get("text") is not None:
                await upstream.send(msg["text"])
            elif msg.get("bytes") is not None:
                await upstream.send(msg["bytes"])

    async def upstream_to_client() -> None:
        try:
            async for data in upstream:
                key = "text" if isinstance(data, str) else "bytes"
                try:
                    await asyncio.wait_for(
                        send({"type": "websocket.send", key: data}), send_timeout
                    )
                except TimeoutError:
                    log.info("gateway websocket: the client stopped reading; closed")
                    await upstream.close(code=1001, reason="the client stopped reading")
                    return
        except websockets.exceptions.ConnectionClosed:
            pass
        # upstream's close frame (None: the connection was lost, 1006)
        code = _sendable(upstream.close_code or 1006, lost=1011)
        reason = upstream.close_reason or ("" if upstream.close_code else "upstream went away")
        await send({"type": "websocket.close", "code": code, "reason": reason})

    tasks = [
        asyncio.ensure_future(client_to_upstream()),
        asyncio.ensure_future(upstream_to_client()),
    ]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception() and not isinstance(
                t.exception(), websockets.exceptions.ConnectionClosed
            ):
                log.warning("gateway websocket relay: %s", t.exception())
    finally:
        for t in tasks:
            t.cancel()


def _sendable(code: int, lost: int = 1000) -> int:
    """A close code that may go in a close frame: 1005 (no code) → 1000; 1006, 1015 (the
    connection went) → ``lost``."""
    if code == 1005 or not 1000 <= code <= 4999:
        return 1000
    return lost if code in (1006, 1015) else code
