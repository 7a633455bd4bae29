"""What a fresh service would otherwise do during its first user's first view, done once at
start in a thread of its own.

A cold first view paid more than half a second before reading any chunk: xarray's backend
plugins, Dask, matplotlib and PIL's PNG encoder imported on first use, and the first S3
client, whose creation parses botocore's S3 model and endpoint rules. The S3 client is kept
by fsspec per set of options, so asking the lake bucket once for a group that is not there,
with the options every open uses, leaves the same client ready for the first item (the
imports first: measured, the first view is faster that way).

The thread runs at the service's own priority: the threads the client starts (Zarr's and
fsspec's event loops, their pools) inherit it and serve every later read. A failure here
changes nothing: the first view then pays as before.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import zarr

from twinlab.datalake.opening import import_backends
from twinlab.viz.colour import colormap_lut, encode_png

from .access import lake_bucket
from .context import TilesContext
from .metrics import WARM_UP_LAKE_CLIENT, WARM_UP_SECONDS
from .opening import storage_options
from .params import DEFAULT_CMAP

log = logging.getLogger("twinhub.tiles.warmup")

#: A key no item uses: the group looked up to create the S3 client (not found, by design).
PROBE_KEY = ".twinhub-tiles-warm-up"


def create_lake_client(ctx: TilesContext) -> bool:
    """Create the S3 client every open of lake data uses (blocking); whether it was.

    With the platform's keys, on a fixed key no item uses and no user may write (the lake
    is read-only to users): the group's own metadata at most is read, nothing listed."""
    try:
        zarr.open_group(
            f"s3://{lake_bucket(ctx)}/{PROBE_KEY}", mode="r", storage_options=storage_options(ctx)
        )
    except FileNotFoundError:
        return True  # the expected answer: the client now exists
    except Exception as e:  # the store may not be up yet (Kubernetes): the first view waits
        log.info("tiles warm-up could not reach the lake: %s", e)
        return False
    log.warning("tiles warm-up: %s/%s is a Zarr group", lake_bucket(ctx), PROBE_KEY)
    return True


def import_for_views() -> None:
    """Import what drawing a view needs (blocking)."""
    import_backends()
    encode_png(np.zeros((1, 1, 4), np.uint8))
    colormap_lut(DEFAULT_CMAP)


def start(ctx: TilesContext) -> threading.Thread:
    """The imports, then the lake's client, in a daemon thread (the service answers
    meanwhile)."""

    def run() -> None:
        began = time.monotonic()
        try:
            import_for_views()
            WARM_UP_LAKE_CLIENT.set(1 if create_lake_client(ctx) else 0)
        except Exception:
            log.exception("tiles warm-up failed (the first view pays for it)")
        WARM_UP_SECONDS.set(max(time.monotonic() - began, 1e-6))

    thread = threading.Thread(target=run, name="tiles-warm-up", daemon=True)
    thread.start()
    return thread
