"""Cost of the object store's private network: S3 through run.py's relay vs weed direct.

    /opt/twinhub/venv/bin/python bench/objectstore_relay.py [--mb 64] [--small 200]

Starts the ``object-store`` component's process (``python -m twinhub.objectstore.run``)
twice on a scratch state dir, with ``TwinhubObjectStore.private_network`` 'on' (weed in
its own network namespace, S3 relayed from the host port to its unix socket; needs root)
and 'off' (weed's S3 port on the host: the anchor), and prints, best of 3, the time of one
PUT and one GET of ``--mb`` MiB and of ``--small`` sequential 1 KiB GETs, with the ratio to
the anchor.  Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hub"))

from traitlets.config import Config  # noqa: E402

from twinhub import objectstore  # noqa: E402
from twinhub.objectstore import seaweed  # noqa: E402
from twinhub.process import ports  # noqa: E402
from twinhub.process.runtime import Runtime  # noqa: E402


def start(base: Path, private: str) -> tuple[subprocess.Popen, Runtime]:
    state = base / private
    for sub in ("secrets", "run", "logs"):
        (state / sub).mkdir(mode=0o700, parents=True)
    cfg = Config()
    cfg.TwinhubObjectStore.private_network = private
    rt = Runtime(state_dir=state, config=cfg, instance_id="bench-" + private)
    for key in seaweed.PORT_KEYS.values():
        rt.ports[key] = ports.pick_port()
    rt.save()
    seaweed.write_config(rt)
    seaweed.write_identities(rt, seaweed.identities(objectstore.admin_keys(rt), [], "lake"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "twinhub.objectstore.run"],
        env={**os.environ, "TWINHUB_STATE": str(state), "PYTHONPATH": str(ROOT / "hub")},
        stdout=(state / "logs" / "object-store.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not objectstore._ready(rt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit((state / "logs" / "object-store.log").read_text()[-2000:])
        time.sleep(0.3)
    return proc, rt


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(rt: Runtime, mb: int, small: int) -> dict[str, float]:
    c = objectstore.admin_client(rt)
    big = os.urandom(mb * 2**20)
    c.put_object(Bucket="lake", Key="small", Body=b"x" * 1024)
    return {
        f"PUT {mb} MiB": best(lambda: c.put_object(Bucket="lake", Key="big", Body=big)),
        f"GET {mb} MiB": best(lambda: c.get_object(Bucket="lake", Key="big")["Body"].read()),
        f"{small} x GET 1 KiB": best(
            lambda: [c.get_object(Bucket="lake", Key="small")["Body"].read() for _ in range(small)]
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--small", type=int, default=200)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the private network needs root")
    base = Path(tempfile.mkdtemp(prefix="twinhub-relay-bench-"))
    results = {}
    try:
        for private in ("off", "on"):
            proc, rt = start(base, private)
            try:
                results[private] = measure(rt, args.mb, args.small)
            finally:
                proc.terminate()
                proc.wait(30)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{'operation':<20} {'direct (s)':>11} {'relayed (s)':>12} {'ratio':>6}")
    for op, direct in results["off"].items():
        relayed = results["on"][op]
        print(f"{op:<20} {direct:>11.3f} {relayed:>12.3f} {relayed / direct:>6.2f}")


if __name__ == "__main__":
    main()
