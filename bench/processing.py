"""Processing jobs: overhead to the processing stage (cold, warm) and zonal-mean throughput.

    /opt/twinhub/venv/bin/python bench/processing.py [--state DIR] [--rounds 5] [--json FILE]

(as root: multi-user mode makes OS accounts; $TWINHUB_TEST_USER_PREFIX is honoured.)
Without ``--state`` a multi-user platform with the small sample data is started (job
clusters of one 1 GiB worker, a 1 s service poll, as the test suite's) and removed at the
end; with ``--state DIR`` the running platform of that state dir is used (the bench adds
its user ``benchproc`` there, and removes nothing).

Jobs are submitted over HTTP with ``twinlab.processing.Client`` (the notebook API) as the
bench user, from this process. Times come from the job's own status document (RFC 3339,
the service's clock, the same machine's as this process's):

1. **overhead**: from just before the ``POST .../execution`` (this process's clock) until
   ``stages.processing.started``, for ``zonal-mean`` on the seeded HEALPix item. It spans
   the admission, the queue, the runner's start as the user's OS account (a new Python
   importing dask, xarray, twinlab), ``scheduling`` (a new Dask Gateway cluster of the job's
   own, its scheduler and worker started and connected) and ``fetching`` (the item resolved
   in the STAC API, opened lazily). Each stage's own seconds are printed too.
   - **cold**: the first job of a user new to the platform: the gateway has never started
     a cluster for them, their output collection does not exist yet, and (when the bench
     starts the platform) no job ran on it before. The OS page cache is not dropped (other
     work on the machine would pay for it) unless ``--drop-caches`` is given.
   - **warm**: the next ``--rounds`` jobs of that user, one after another: the gateway,
     the service and the STAC API have served jobs, the runner's and workers' Python
     modules are in the page cache, the user's collection exists. A job's cluster is always
     its own, so "warm" never means reusing a running cluster: every job starts one.
   Also the same figures for ``echo`` (no cluster: the runner's start and its reports
   only), the floor of any job.
2. **throughput**: the zonal mean of the item's variable (all its time steps) by the job's
   ``processing`` stage, in values read per second, against the **anchor**: the same
   computation in the user's own notebook kernel (``dl.open(item)[var].grid.zonal_mean()
   .compute()``, opening included, Dask's threaded scheduler of the kernel), best of
   ``--anchor-rounds``. Ratios: anchor seconds / processing-stage seconds (1 = as fast),
   and anchor seconds / the job's whole run (submit to successful).

Prints a table (p50/p95 with n) and the target (submit -> processing p50 <= 3 s warm);
writes every figure as JSON with ``--json``. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers.kernel import run_code  # noqa: E402
from tests.helpers.platform import (  # noqa: E402
    Platform,
    purge_shared_dir,
    twinhub_cli,
    wait_for_seed,
)
from twinhub.process.runtime import Runtime  # noqa: E402
from twinlab.processing import Client, execute  # noqa: E402

USER = "benchproc"
#: The platform options of a started platform (as tests/fixtures/platforms.py).
PROCESSING = [
    "--TwinhubProcessing.workers=1",
    "--TwinhubProcessing.worker_memory=1.0",
    "--TwinhubProcessing.poll_interval=1",
]
TARGET_WARM_P50 = 3.0
JOB_TIMEOUT = 900.0

FIND_ITEM = """
import json
from twinlab import datalake as dl
found = dl.search(collections=["climate-dt"], param="2t", max_items=None)
item = next(i for i in found.items if i.properties["twinhub:grid"]["grid_type"] == "healpix")
print("ITEM" + json.dumps({"id": item.id, "variable": "2t"}))
"""

ANCHOR = """
import json, time
from twinlab import datalake as dl
item = dl.resolve_item({item!r})
best, size = None, 0
for _ in range({rounds}):
    t0 = time.perf_counter()
    da = dl.open(item)[{variable!r}]
    da.grid.zonal_mean().compute()
    took = time.perf_counter() - t0
    best, size = took if best is None else min(best, took), int(da.size)
print("ANCHOR" + json.dumps({{"seconds": best, "values": size}}))
"""


def rfc3339(text: str) -> float:
    """Epoch seconds of an RFC 3339 time (``...Z``)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def stage_seconds(doc: dict[str, Any], stage: str) -> float | None:
    s = (doc.get("stages") or {}).get(stage) or {}
    if s.get("started") and s.get("finished"):
        return rfc3339(s["finished"]) - rfc3339(s["started"])
    return None


def run_job(client: Client, process: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """One job from submission to its end; its figures."""
    t0 = time.time()
    job = execute(process, inputs, client=client)
    submitted = time.time() - t0
    job.wait(JOB_TIMEOUT)
    doc = job.info
    if doc["status"] != "successful":
        raise RuntimeError(f"{process} job {job.id} {doc['status']}: {doc.get('message')}")
    started = (doc.get("stages") or {}).get("processing", {}).get("started")
    return {
        "job": job.id,
        "submit_http": submitted,
        "to_processing": rfc3339(started) - t0 if started else None,
        "total": rfc3339(doc["finished"]) - t0 if doc.get("finished") else None,
        "stages": {
            s: stage_seconds(doc, s) for s in ("scheduling", "fetching", "processing", "ingesting")
        },
    }


def summary(name: str, xs: list[float]) -> dict[str, Any]:
    if not xs:
        return {"name": name, "n": 0}
    return {"name": name, "n": len(xs), "p50": statistics.median(xs), "p95": pct(xs, 95)}


def print_row(row: dict[str, Any]) -> None:
    if not row["n"]:
        print(f"{row['name']:<44} (no data)")
        return
    print(f"{row['name']:<44} p50 {row['p50']:7.2f} s   p95 {row['p95']:7.2f} s   n={row['n']}")


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def attach(state: Path) -> Platform:
    """The running platform of ``state`` (not started nor stopped here)."""
    p = Platform(state=state, mode="multi-user", proc=None)  # type: ignore[arg-type]
    p.url = Runtime.load(state).url
    return p


def bench(p: Platform, rounds: int, anchor_rounds: int, drop: bool) -> dict[str, Any]:
    if p.api("GET", f"/users/{USER}", token=p.token("admin")).status_code == 404:
        p.add_user(USER)
    wait_for_seed(p)
    server = p.spawn(USER)
    token = p.token(USER)
    out = run_code(server, token, FIND_ITEM, timeout=120)
    item = json.loads(next(ln for ln in out.splitlines() if ln.startswith("ITEM"))[4:])
    client = Client(p.url + "services/processing/", token=token, timeout=120)
    inputs = {"item": item["id"], "variable": item["variable"]}
    if drop:
        drop_caches()
    cold = run_job(client, "zonal-mean", inputs)
    warm = [run_job(client, "zonal-mean", inputs) for _ in range(rounds)]
    echo = [run_job(client, "echo", {"stringInput": "bench"}) for _ in range(rounds)]
    code = ANCHOR.format(item=item["id"], variable=item["variable"], rounds=anchor_rounds)
    out = run_code(server, token, code, timeout=600)
    anchor = json.loads(next(ln for ln in out.splitlines() if ln.startswith("ANCHOR"))[6:])
    processing = [w["stages"]["processing"] for w in warm if w["stages"]["processing"]]
    totals = [w["total"] for w in warm if w["total"]]
    job_proc = statistics.median(processing) if processing else None
    return {
        "item": item,
        "cold": cold,
        "warm": warm,
        "echo": echo,
        "anchor": anchor,
        "rows": [
            summary("zonal-mean cold: submit -> processing", [cold["to_processing"]]),
            summary(
                "zonal-mean warm: submit -> processing",
                [w["to_processing"] for w in warm if w["to_processing"] is not None],
            ),
            summary("  warm: submit (HTTP answer)", [w["submit_http"] for w in warm]),
            summary(
                "  warm: scheduling (cluster)",
                [w["stages"]["scheduling"] for w in warm if w["stages"]["scheduling"]],
            ),
            summary(
                "  warm: fetching",
                [w["stages"]["fetching"] for w in warm if w["stages"]["fetching"]],
            ),
            summary("  warm: processing", processing),
            summary(
                "  warm: ingesting",
                [w["stages"]["ingesting"] for w in warm if w["stages"]["ingesting"]],
            ),
            summary("  warm: submit -> successful", totals),
            summary(
                "echo: submit -> processing",
                [e["to_processing"] for e in echo if e["to_processing"] is not None],
            ),
            summary("echo: submit -> successful", [e["total"] for e in echo if e["total"]]),
        ],
        "throughput": {
            "values": anchor["values"],
            "anchor_seconds": anchor["seconds"],
            "anchor_values_per_s": anchor["values"] / anchor["seconds"],
            "job_processing_seconds": job_proc,
            "job_values_per_s": anchor["values"] / job_proc if job_proc else None,
            "anchor_over_processing": anchor["seconds"] / job_proc if job_proc else None,
            "anchor_over_job_total": (
                anchor["seconds"] / statistics.median(totals) if totals else None
            ),
        },
    }


def report(results: dict[str, Any]) -> None:
    print(f"Processing jobs on item {results['item']['id']} ({results['item']['variable']})")
    for row in results["rows"]:
        print_row(row)
    warm = results["rows"][1]
    if warm["n"]:
        verdict = "meets" if warm["p50"] <= TARGET_WARM_P50 else "misses"
        print(
            f"target: warm submit -> processing p50 <= {TARGET_WARM_P50:g} s: {verdict} "
            f"(target x {warm['p50'] / TARGET_WARM_P50:.2f})"
        )
    t = results["throughput"]
    print(f"zonal mean of {t['values']} values:")
    print(
        f"  anchor (notebook kernel)  {t['anchor_seconds']:7.2f} s  "
        f"{t['anchor_values_per_s'] / 1e6:8.2f} M values/s"
    )
    if t["job_processing_seconds"]:
        print(
            f"  job processing stage      {t['job_processing_seconds']:7.2f} s  "
            f"{t['job_values_per_s'] / 1e6:8.2f} M values/s  "
            f"(anchor x {t['anchor_over_processing']:.2f})"
        )
    if t["anchor_over_job_total"]:
        print(f"  job submit -> successful: anchor x {t['anchor_over_job_total']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--state", type=Path, help="a running multi-user platform's state dir")
    ap.add_argument("--rounds", type=int, default=5, help="warm jobs (and echo jobs)")
    ap.add_argument("--anchor-rounds", type=int, default=3)
    ap.add_argument("--drop-caches", action="store_true", help="drop the page cache first")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/processing.py runs as root (multi-user mode makes OS accounts)")
    if args.state:
        results = bench(attach(args.state), args.rounds, args.anchor_rounds, args.drop_caches)
    else:
        with tempfile.TemporaryDirectory(prefix="twinhub-bench-", dir="/tmp") as tmp:
            state = Path(tmp) / "state"
            p = Platform.start(state, mode="multi-user", seed="small", extra=PROCESSING)
            try:
                results = bench(p, args.rounds, args.anchor_rounds, args.drop_caches)
            finally:
                p.stop()
                twinhub_cli("down", "--state", str(state), "--purge-users")
                purge_shared_dir(state)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
