"""The tiles service's Prometheus metrics (``/services/tiles/metrics``, tokens with
``read:metrics``). What is counted is what this process did."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: The request-state key where a refusal's reason (auth, forbidden, limit...) is left for
#: the request counter (the app's error handler and the WMTS XML errors both set it).
REFUSAL_STATE = "tiles_refusal"

#: The service's own registry (not the process-global one: tests build several apps).
REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "twinhub_tiles_requests",
    "Requests answered, by kind (tile, view, legend, capabilities, edr_position, edr_area, "
    "page, metadata) and HTTP status class (2xx, 3xx, 4xx, 5xx).",
    ["kind", "status"],
    registry=REGISTRY,
)
TILE_SECONDS = Histogram(
    "twinhub_tiles_tile_seconds",
    "Time to answer one tile, in seconds, by cache outcome (hit: a kept PNG; miss: rendered).",
    ["cache"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
RENDER_SECONDS = Histogram(
    "twinhub_tiles_render_seconds",
    "Time to render one raster (tile or view) from its field, reads included, in seconds.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
CHUNK_READS = Counter(
    "twinhub_tiles_chunk_reads",
    "Data chunks read from storage (misses of the decoded-chunk cache).",
    registry=REGISTRY,
)
CHUNK_HITS = Counter(
    "twinhub_tiles_chunk_hits",
    "Data chunks found in the decoded-chunk cache.",
    registry=REGISTRY,
)
REFUSED = Counter(
    "twinhub_tiles_refused",
    "Requests refused, by reason (auth, forbidden, not_found, bad_request, limit).",
    ["reason"],
    registry=REGISTRY,
)
WARM_UP_SECONDS = Gauge(
    "twinhub_tiles_warm_up_seconds",
    "Seconds the start-up warm-up took (imports a first view needs and the lake's S3 "
    "client); 0 until it has ended.",
    registry=REGISTRY,
)
WARM_UP_LAKE_CLIENT = Gauge(
    "twinhub_tiles_warm_up_lake_client",
    "1 when the warm-up created the lake's S3 client (the store answered), else 0: the "
    "first view creates it.",
    registry=REGISTRY,
)
