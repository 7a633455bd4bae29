"""twinlab.processing from real users' kernels on the multi-user platform: the notebook API
against the real processing service, real runners as the users' OS accounts, real job
clusters, the seeded data lake. Nothing is faked.

- ``processes()`` lists the templated processes; ``execute("echo", ...)`` waits and reads
  back its inputs;
- ``execute("zonal-mean", ...)`` on the seeded HEALPix item: ``.result()``'s inline series
  equals what ``twinlab.grids`` computes in the same kernel on the same data, its file
  outputs open, and ``.item`` finds the ingested STAC item;
- ``register()`` a function, run it; another user neither lists, describes, runs it nor
  reads the job.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.helpers.kernel import run_code
from tests.helpers.platform import wait_for_seed

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]

OWNER, OTHER = "tlproca", "tlprocb"
#: Seconds a job may take here (a job cluster of one worker on a 2-core machine).
JOB_WAIT = 420


@pytest.fixture(scope="module")
def site(multiuser_platform):
    p = multiuser_platform
    admin = p.token("admin")
    for name in (OWNER, OTHER):
        if p.api("GET", f"/users/{name}", token=admin).status_code == 404:
            p.add_user(name)
    wait_for_seed(p)
    return p


def _kernel(p, user: str, code: str, timeout: float = JOB_WAIT + 120) -> dict:
    """Run ``code`` (which sets ``out``) in ``user``'s kernel; ``out`` as JSON, and under
    ``"printed"`` everything else the code printed (stdout and stderr)."""
    url = p.spawn(user)
    body = textwrap.dedent(code) + "\nprint('OUT' + json.dumps(out, default=str))\n"
    text = run_code(url, p.token(user), "import json\n" + body, timeout=timeout)
    line = next(ln for ln in text.splitlines() if ln.startswith("OUT"))
    return {**json.loads(line[3:]), "printed": text.replace(line, "")}


def test_processes_and_echo_from_a_kernel(site) -> None:
    out = _kernel(
        site,
        OWNER,
        f"""
        import twinlab.processing as tp
        ids = [p["id"] for p in tp.processes()]
        job = tp.execute("echo", {{"stringInput": "hello", "integerInput": 3,
                                  "arrayInput": [1, 2]}})
        job.watch(timeout={JOB_WAIT})  # a widget in a kernel: nothing printed
        res = job.result()
        try:
            tp.execute("echo", {{"stringInput": "a", "integerInput": "three"}})
            refused = None
        except tp.ProcessingError as e:
            refused = [e.status, str(e)]
        out = {{"ids": ids, "status": job.status, "stage": job.stage, "progress": job.progress,
               "result": res, "refused": refused, "html": job._repr_html_()}}
        """,
    )
    assert {"echo", "regrid", "zonal-mean", "area-mean", "climatology", "point-series"} <= set(
        out["ids"]
    )
    assert (out["status"], out["stage"], out["progress"]) == ("successful", "finished", 100)
    assert out["result"]["stringInput"] == "hello"
    assert out["result"]["integerInput"] == 3 and out["result"]["arrayInput"] == [1, 2]
    status, message = out["refused"]
    assert status == 400 and "integerInput" in message
    assert "<progress value='100'" in out["html"]
    assert "[" + "#" * 24 + "]" not in out["printed"]  # the widget bar, not a terminal line


def test_zonal_mean_job_equals_twinlab_grids_in_the_same_kernel(site) -> None:
    out = _kernel(
        site,
        OWNER,
        f"""
        import numpy as np
        import twinlab.processing as tp
        from twinlab import datalake as dl
        found = dl.search(collections=["climate-dt"], param="2t", max_items=None)
        item = next(i for i in found.items
                    if i.properties["twinhub:grid"]["grid_type"] == "healpix")
        job = tp.execute("zonal-mean", {{"item": item.id, "variable": "2t"}})
        job.wait(timeout={JOB_WAIT})
        if job.status != "successful":
            raise RuntimeError(job.status + ": " + job.message + "\\n" + job.logs())
        res = job.result()
        zm = res["zonal_mean"]
        direct = dl.open(item)["2t"].grid.zonal_mean().transpose("time", "latitude").compute()
        stac = job.item
        nc = res["netcdf"]
        out = {{
            "item": item.id,
            "nside": item.properties["twinhub:grid"].get("healpix_nside"),
            "lat_ok": bool(np.allclose(zm["latitude"], direct["latitude"].values)),
            "values_ok": bool(np.allclose(np.asarray(zm["values"], dtype=float),
                                          direct.values.astype(float),
                                          rtol=1e-5, atol=1e-6, equal_nan=True)),
            "shape": [len(zm["time"]), len(zm["latitude"])],
            "direct_shape": list(direct.shape),
            "nc_vars": sorted(nc.data_vars),
            "stages": sorted(job.info["stages"]),
            "stac_id": stac.id, "stac_collection": stac.collection_id,
            "provenance": stac.properties.get("twinhub:provenance", {{}}),
        }}
        """,
    )
    assert out["shape"] == out["direct_shape"], out
    nside = out["nside"]
    if nside:
        assert out["shape"][1] == 4 * nside - 1  # one value per iso-latitude ring
    assert out["lat_ok"] and out["values_ok"], out
    assert out["nc_vars"], out
    assert {"scheduling", "fetching", "processing", "ingesting"} <= set(out["stages"])
    assert out["stac_collection"].endswith(OWNER)
    assert out["provenance"]["process"] == "zonal-mean"
    assert out["provenance"]["job"] == out["stac_id"]


def test_registered_process_runs_and_stays_private(site) -> None:
    mine = _kernel(
        site,
        OWNER,
        f"""
        import twinlab.processing as tp

        def tl_double(x: float, times: int = 2) -> dict:
            '''Multiply x.'''
            return {{"result": x * times}}

        desc = tp.register(tl_double)
        job = tp.execute("tl-double", {{"x": 21.0}})
        job.wait(timeout={JOB_WAIT})
        if job.status != "successful":
            raise RuntimeError(job.status + ": " + job.message + "\\n" + job.logs())
        out = {{"id": desc["id"], "inputs": sorted(desc["inputs"]), "result": job.result(),
               "job": job.id, "listed": "tl-double" in [p["id"] for p in tp.processes()]}}
        """,
    )
    assert mine["id"] == "tl-double" and mine["inputs"] == ["times", "x"]
    assert mine["result"] == 42.0 and mine["listed"]
    theirs = _kernel(
        site,
        OTHER,
        f"""
        import twinlab.processing as tp
        seen = {{"listed": "tl-double" in [p["id"] for p in tp.processes()]}}
        for name, call in (("describe", lambda: tp.describe("tl-double")),
                           ("execute", lambda: tp.execute("tl-double", {{"x": 1.0}})),
                           ("job", lambda: tp.job({mine["job"]!r})),
                           ("results", lambda: tp.Job({mine["job"]!r}).results()),
                           ("dismiss", lambda: tp.Job({mine["job"]!r}).dismiss())):
            try:
                call()
                seen[name] = None
            except tp.ProcessingError as e:
                seen[name] = e.status
        out = seen
        """,
    )
    theirs.pop("printed")
    assert theirs == {
        "listed": False,
        "describe": 404,
        "execute": 404,
        "job": 404,
        "results": 404,
        "dismiss": 404,
    }
    gone = _kernel(
        site,
        OWNER,
        f"""
        import twinlab.processing as tp
        tp.unregister("tl-double")
        out = {{"listed": "tl-double" in [p["id"] for p in tp.processes()],
               "job": tp.job({mine["job"]!r}).status}}
        """,
    )
    assert (gone["listed"], gone["job"]) == (False, "successful")
