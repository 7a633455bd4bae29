"""Run code in a real Jupyter kernel of a (hub-spawned) server over its websocket API.

    from tests.helpers.kernel import run_code
    out = run_code("http://127.0.0.1:8000/user/alice/", token, "print(1 + 1)")  # "2\\n"

Output is what the code printed (stdout and stderr streams) followed by the repr of the last
expression, if any.  A Python error in the code raises :class:`KernelError`; a kernel that
dies (e.g. OOM-killed) raises :class:`KernelDied`.
"""

from __future__ import annotations

import json
import time
import uuid

import requests
import websocket


class KernelError(RuntimeError):
    """The code raised: ``ename``, ``evalue`` and ``traceback`` as the kernel reported them."""

    def __init__(self, ename: str, evalue: str, traceback: list[str]):
        super().__init__(f"{ename}: {evalue}")
        self.ename, self.evalue, self.traceback = ename, evalue, traceback


class KernelDied(RuntimeError):
    """The kernel process died while running the code."""


def _msg(msg_type: str, content: dict, session: str) -> dict:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "test",
            "session": session,
            "version": "5.3",
            "date": "",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": "shell",
        "buffers": [],
    }


def start_kernel(server_url: str, token: str, name: str = "python3") -> str:
    r = requests.post(
        server_url.rstrip("/") + "/api/kernels",
        json={"name": name},
        headers={"Authorization": f"token {token}"},
        timeout=60,
    )
    r.raise_for_status()
    return r.json()["id"]


def shutdown_kernel(server_url: str, token: str, kernel_id: str) -> None:
    requests.delete(
        f"{server_url.rstrip('/')}/api/kernels/{kernel_id}",
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )


def execute(server_url: str, token: str, kernel_id: str, code: str, timeout: float = 60) -> str:
    """Run ``code`` in an existing kernel; see the module doc for what is returned/raised."""
    ws_url = server_url.rstrip("/").replace("http", "ws", 1)
    session = uuid.uuid4().hex
    ws = websocket.create_connection(
        f"{ws_url}/api/kernels/{kernel_id}/channels?session_id={session}",
        header=[f"Authorization: token {token}"],
        timeout=timeout,
    )
    try:
        req = _msg("execute_request", {"code": code, "silent": False, "store_history": False,
                                       "user_expressions": {}, "allow_stdin": False,
                                       "stop_on_error": True}, session)  # fmt: skip
        ws.send(json.dumps(req))
        msg_id = req["header"]["msg_id"]
        out: list[str] = []
        result = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Short reads, so the deadline holds: the server's pings (every 30 s) would
            # otherwise keep one long read alive past it.
            ws.settimeout(max(0.1, min(5.0, deadline - time.monotonic())))
            try:
                msg = json.loads(ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            except websocket.WebSocketConnectionClosedException as e:
                raise KernelDied(f"kernel connection closed while running code: {e}") from e
            mtype = msg.get("msg_type") or msg["header"]["msg_type"]
            content = msg.get("content", {})
            if mtype == "status" and content.get("execution_state") in ("restarting", "dead"):
                raise KernelDied(f"kernel {content['execution_state']} while running code")
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if mtype == "stream":
                out.append(content["text"])
            elif mtype == "execute_result":
                result = content["data"].get("text/plain", "")
            elif mtype == "error":
                raise KernelError(content["ename"], content["evalue"], content["traceback"])
            elif mtype == "status" and content.get("execution_state") == "idle":
                return "".join(out) + result
        raise TimeoutError(f"code did not finish within {timeout} s")
    finally:
        ws.close()


def run_code(server_url: str, token: str, code: str, timeout: float = 60) -> str:
    """Start a kernel on ``server_url`` (``.../user/<name>/``), run ``code``, shut it down."""
    kernel_id = start_kernel(server_url, token)
    try:
        return execute(server_url, token, kernel_id, code, timeout=timeout)
    finally:
        shutdown_kernel(server_url, token, kernel_id)
