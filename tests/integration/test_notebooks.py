"""Every tutorial in notebooks/ runs, cell by cell, in a real user server of the platform,
and shows no warning: nothing on stderr (where Python's warnings go), no red box."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import websocket

from tests.helpers.kernel import KernelError, shutdown_kernel, start_kernel
from tests.helpers.platform import wait_for_seed

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
# What each tutorial must show, beyond running without an error.
EXPECTED = {
    "01-getting-started.ipynb": ["nbuser small-cpu", "2 workers", "global mean 274.66"],
    "02-data-lake.ipynb": ["items of 2 m temperature", "HEALPix nside 128", "GRIB grid: HEALPix"],
    "vizlab.ipynb": ["same cell as nearest_index: True"],
}


def run_cell(url: str, token: str, kernel: str, code: str, timeout: float) -> list[dict]:
    """Run ``code``; every output message of it (stream, display_data, execute_result),
    as JupyterLab would show them: ``{"msg_type", "content"}``.  An error raises."""
    session = uuid.uuid4().hex
    ws = websocket.create_connection(
        f"{url.rstrip('/').replace('http', 'ws', 1)}/api/kernels/{kernel}/channels"
        f"?session_id={session}",
        header=[f"Authorization: token {token}"],
        timeout=timeout,
    )
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
              "session": session, "version": "5.3", "date": ""}  # fmt: skip
    content = {"code": code, "silent": False, "store_history": False,
               "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}  # fmt: skip
    outputs: list[dict] = []
    try:
        ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": {},
                            "content": content, "channel": "shell", "buffers": []}))  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            mtype, body = msg["header"]["msg_type"], msg.get("content", {})
            if mtype == "error":
                raise KernelError(body["ename"], body["evalue"], body["traceback"])
            if mtype in ("stream", "display_data", "execute_result"):
                outputs.append({"msg_type": mtype, "content": body})
            if mtype == "status" and body.get("execution_state") == "idle":
                return outputs
        raise TimeoutError(f"cell did not finish within {timeout} s")
    finally:
        ws.close()


def text_of(outputs: list[dict]) -> str:
    parts = []
    for o in outputs:
        c = o["content"]
        parts.append(c["text"] if o["msg_type"] == "stream" else c["data"].get("text/plain", ""))
    return "\n".join(parts)


def warnings_in(outputs: list[dict]) -> list[str]:
    """What JupyterLab shows in a red box: stderr (Python's warnings, logging's default)."""
    return [
        o["content"]["text"]
        for o in outputs
        if o["msg_type"] == "stream" and o["content"]["name"] == "stderr"
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_in_a_user_server(multiuser_platform, path):
    p = multiuser_platform
    wait_for_seed(p)  # the data-lake tutorial reads the sample data
    if p.api("GET", "/users/nbuser", user="admin").status_code == 404:
        p.add_user("nbuser")
    url = p.spawn("nbuser")
    token = p.token("nbuser")
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert cells, f"{path.name} has no code"
    kernel = start_kernel(url, token)
    text, warned = [], []
    try:
        for i, cell in enumerate(cells):
            source = "".join(cell["source"])
            try:
                outputs = run_cell(url, token, kernel, source, timeout=240)
            except Exception as e:
                raise AssertionError(f"{path.name} cell {i} failed: {e}\n{source}") from e
            text.append(text_of(outputs))
            warned += [f"cell {i}: {w}" for w in warnings_in(outputs)]
    finally:
        shutdown_kernel(url, token, kernel)
        p.stop_server("nbuser")
    assert not warned, f"{path.name} shows warnings:\n" + "\n".join(warned)
    out = "\n".join(text)
    for needle in EXPECTED.get(path.name, []):
        assert needle in out, f"{path.name}: {needle!r} not in output:\n{out}"
