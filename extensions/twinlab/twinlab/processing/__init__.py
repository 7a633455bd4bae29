"""twinlab.processing: run the platform's processes from a notebook, or register your own.

>>> from twinlab import processing as tp
>>> tp.processes()                                   # what you may run
>>> job = tp.execute("zonal-mean", {"item": "climate-dt-...", "variable": "2t"})
>>> job.watch(); series = job.result()               # progress bar, then the outputs
>>> tp.register(my_fn, inputs={"x": float})          # a process of yours

The service is the platform's OGC API - Processes at ``/services/processing/``; jobs run as
you, on a Dask cluster of their own, and their outputs are ingested into your STAC
collection. See docs/processing.md.

Importing this package loads the notebook API (:mod:`.client`, :mod:`.job`: requests, no
Dask or xarray): the hub imports :mod:`.schemas` and a job's runner :mod:`.runner` from it.
The imports are eager on purpose: ``job`` is both a submodule and a function here, and the
function must win whichever is imported first.
"""

from .client import Client, ProcessingError, describe, processes, register, unregister
from .job import Job, execute, job, jobs

__all__ = [
    "Client",
    "Job",
    "ProcessingError",
    "describe",
    "execute",
    "job",
    "jobs",
    "processes",
    "register",
    "unregister",
]
