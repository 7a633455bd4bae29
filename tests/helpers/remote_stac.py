"""Remote STAC sources for federation tests, made from the sample data (the seed cache).

- :func:`build_static_catalogue`: a static catalogue (catalog.json -> collection -> items)
  of a subset of the seed under its own collection id and prefixed item ids, assets pointing
  at the seed's files served by the same server (Zarr absolute, GRIB relative hrefs), plus one
  item whose asset is on a host no source configures;
- :class:`StaticServer`: a real HTTP server (``python -m http.server``) in a subprocess,
  stoppable and restartable on the same port;
- :func:`start_pgstac_api`: a second real STAC API (stac-fastapi-pgstac on its own database
  of the test PostgreSQL cluster) loaded with another subset;
- :class:`FakeStacApi`: a FAKE remote API for edges no real server produces on demand: a
  ``next`` link to a foreign host, redirects to another origin, answers slower than the
  source's timeout.  :class:`CountingServer` stands on that foreign host and counts hits.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from tests.helpers.platform import free_port

FOREIGN_HOST = "127.0.0.2"  # loopback too, but not an origin any source configures


def seed_root() -> Path:
    from twinhub.services.datalake.seed import SEED_VERSION, default_cache_dir

    return default_cache_dir() / f"small-v{SEED_VERSION}"


def seed_items(root: Path) -> list[dict[str, Any]]:
    with open(root / "stac" / "items.ndjson") as f:
        return [json.loads(line) for line in f if line.strip()]


def pick(items: list[dict], grid: str, params: tuple[str, ...]) -> list[dict]:
    return [
        i
        for i in items
        if i["properties"]["twinhub:grid"]["id"] == grid and i["properties"]["param"] in params
    ]


def _object_path(href: str) -> str:
    """``s3://lake/climate-dt/...`` -> ``objects/climate-dt/...`` (the seed cache layout)."""
    assert href.startswith("s3://lake/"), href
    return "objects/" + href[len("s3://lake/") :]


def remote_item(item: dict, *, prefix: str, collection: str, origin: str, relative_grib: bool):
    it = copy.deepcopy(item)
    it["id"] = prefix + item["id"]
    it["collection"] = collection
    for key, a in it["assets"].items():
        path = _object_path(a["href"])
        a["href"] = f"../../{path}" if key == "grib" and relative_grib else f"{origin}/{path}"
    return it


def build_static_catalogue(
    out: Path,
    port: int,
    *,
    collection: str = "remote-climate-dt",
    prefix: str = "remote-",
    grid: str = "healpix-h128",
    params: tuple[str, ...] = ("2t", "tp"),
    foreign_port: int | None = None,
) -> dict[str, Any]:
    """Write the catalogue under ``out`` for a server on 127.0.0.1:``port``; returns what is
    in it: ``items`` (the served item dicts), ``foreign_id`` (the item with an asset on
    ``FOREIGN_HOST``), ``url`` (the root catalog.json)."""
    root = seed_root()
    origin = f"http://127.0.0.1:{port}"
    out.mkdir(parents=True, exist_ok=True)
    objects = out / "objects"
    if not objects.exists():
        objects.symlink_to(root / "objects", target_is_directory=True)
    base = json.loads((root / "stac" / "collections.json").read_text())[0]
    chosen = pick(seed_items(root), grid, params)
    items = [
        remote_item(i, prefix=prefix, collection=collection, origin=origin, relative_grib=True)
        for i in chosen
    ]
    foreign = remote_item(
        chosen[0], prefix=prefix + "foreign-", collection=collection, origin=origin,
        relative_grib=False,
    )  # fmt: skip
    fport = foreign_port or port
    for a in foreign["assets"].values():
        a["href"] = a["href"].replace(origin, f"http://{FOREIGN_HOST}:{fport}")
    items.append(foreign)
    cdir = out / collection
    (cdir / "items").mkdir(parents=True, exist_ok=True)
    for it in items:
        it["links"] = [
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
            {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
        ]
        (cdir / "items" / f"{it['id']}.json").write_text(json.dumps(it))
    coll = copy.deepcopy(base)
    coll.update(id=collection, title=f"{collection} (a static catalogue for tests)")
    coll["links"] = [
        {"rel": "root", "href": "../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
    ] + [{"rel": "item", "href": f"./items/{it['id']}.json"} for it in items]
    (cdir / "collection.json").write_text(json.dumps(coll))
    catalog = {
        "type": "Catalog",
        "stac_version": "1.1.0",
        "id": "remote-root",
        "description": "a static STAC catalogue for federation tests",
        "links": [
            {"rel": "root", "href": "./catalog.json", "type": "application/json"},
            {"rel": "child", "href": f"./{collection}/collection.json"},
            # a child on another host: the crawl must not read it
            {"rel": "child", "href": f"http://{FOREIGN_HOST}:{fport}/catalog.json"},
        ],
    }
    (out / "catalog.json").write_text(json.dumps(catalog))
    return {"items": items, "foreign_id": foreign["id"], "url": f"{origin}/catalog.json"}


class StaticServer:
    """``python -m http.server`` serving ``directory`` on 127.0.0.1:``port`` (a real
    server in its own process: stop() and start() again keep the port)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> StaticServer:
        argv = [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
                "--directory", str(self.directory)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.origin + "/catalog.json", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"http.server exited ({self.proc.returncode})")
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"http.server on {self.port} not answering after {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# ---- a second real STAC API ------------------------------------------------------------------
def start_pgstac_api(pg, dbname: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    """stac-fastapi-pgstac (the platform's ``create_plain_app``: no auth, no guard) on a new
    pgstac database of the test cluster ``pg``; returns the process and its root URL."""
    from twinhub.services.datalake.database import EXTENSIONS

    pg._ensure_role()
    pg.create_database(dbname)
    pg._psql("".join(f"CREATE EXTENSION IF NOT EXISTS {e};\n" for e in EXTENSIONS), dbname)
    dsn = f"postgresql:///{dbname}?host={pg.run_dir}&port={pg.port}&user={pg.os_user}"
    migrate = [sys.executable, "-m", "pypgstac.pypgstac", "migrate", "--dsn", dsn]
    if os.geteuid() == 0:
        migrate = ["runuser", "-u", pg.os_user, "--", *migrate]
    r = subprocess.run(migrate, capture_output=True, text=True, cwd="/", timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"pypgstac migrate failed: {r.stderr[-800:]}")
    pg._psql(f"GRANT pgstac_ingest TO {pg.role};\n", dbname)
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "api.json"
    cfg.write_text(json.dumps({
        "connection": {"host": str(pg.run_dir), "port": pg.port, "user": pg.role,
                       "dbname": dbname, "passfile": str(pg.passfile)},
        "prefix": "/stac/",
    }))  # fmt: skip
    log = open(workdir / "api.log", "w")  # noqa: SIM115 - the child writes it until stopped
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory",
         "twinhub.services.datalake.stac_app:create_plain_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "TWINHUB_STAC_CONFIG": str(cfg)},
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/stac/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "_mgmt/ping", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the second STAC API did not start: {(workdir / 'api.log').read_text()}")


def load_api(url: str, collection: dict, items: list[dict]) -> None:
    r = requests.post(url + "collections", json=collection, timeout=30)
    assert r.status_code in (200, 201), r.text
    for it in items:
        r = requests.post(url + f"collections/{collection['id']}/items", json=it, timeout=30)
        assert r.status_code in (200, 201), r.text


# ---- the fake remote API and a counting foreign host -----------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True


class CountingServer:
    """Answers anything with an empty JSON object and counts the requests (the foreign host:
    its count must stay 0)."""

    def __init__(self, host: str = FOREIGN_HOST, port: int | None = None) -> None:
        self.hits: list[str] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def _any(self) -> None:
                outer.hits.append(f"{self.command} {self.path}")
                body = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _any

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = _Server((host, port or 0), H)
        self.port = self.httpd.server_address[1]
        self.origin = f"http://{host}:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeStacApi:
    """A FAKE STAC API (see the module docstring).  ``mode``: ``"foreign-next"`` (one item,
    and a ``next`` link to ``foreign``), ``"redirect"`` (search redirects to ``foreign``),
    ``"slow"`` (answers after ``delay`` seconds), ``"get-only"`` (405 to POST /search).
    ``requests`` and ``bodies`` record what it was sent."""

    def __init__(self, foreign: str, mode: str = "foreign-next", delay: float = 3.0) -> None:
        self.mode, self.delay, self.foreign = mode, delay, foreign
        self.requests: list[str] = []
        self.bodies: list[Any] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def _send(self, status: int, doc: Any, headers: dict | None = None) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _any(self) -> None:
                outer.requests.append(f"{self.command} {self.path}")
                n = int(self.headers.get("Content-Length") or 0)
                outer.bodies.append(json.loads(self.rfile.read(n)) if n else None)
                status, doc, headers = outer.answer(self.command, self.path)
                self._send(status, doc, headers)

            do_GET = do_POST = _any

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = _Server(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def item(self) -> dict[str, Any]:
        return {
            "type": "Feature", "stac_version": "1.1.0", "id": "fake-1", "collection": "fake",
            "geometry": {"type": "Point", "coordinates": [10, 50]}, "bbox": [10, 50, 10, 50],
            "properties": {"datetime": "2030-01-01T00:00:00Z", "param": "2t"},
            "assets": {"data": {"href": f"{self.url}data/fake-1.zarr", "type": "application/vnd+zarr"}},
            "links": [],
        }  # fmt: skip

    def answer(self, method: str, path: str) -> tuple[int, Any, dict]:
        if path.rstrip("/").endswith("/collections"):
            return 200, {"collections": [{"type": "Collection", "id": "fake", "links": []}],
                         "links": []}, {}  # fmt: skip
        if self.mode == "get-only" and method == "POST":
            return 405, {"detail": "Method Not Allowed"}, {}
        if self.mode == "redirect":
            return 302, {}, {"Location": f"{self.foreign}/search"}
        if self.mode == "slow":
            time.sleep(self.delay)
        page = {
            "type": "FeatureCollection",
            "features": [self.item()],
            "links": [{"rel": "next", "href": f"{self.foreign}/search?page=2", "method": "GET"}],
        }
        return 200, page, {}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
