"""The registry service's Prometheus metrics (``/services/registry/metrics``, admins)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

#: The service's own registry (not the process-global one: tests build several apps).
REGISTRY = CollectorRegistry(auto_describe=True)

TRANSITIONS = Counter(
    "twinhub_registry_transitions",
    "Onboarding transitions done, by the state reached.",
    ["to"],
    registry=REGISTRY,
)
EVALUATIONS = Counter(
    "twinhub_registry_evaluations",
    "Automated evaluations of submitted requests, by outcome (clean: every check passed; "
    "flagged: at least one finding).",
    ["outcome"],
    registry=REGISTRY,
)
SEARCH_SECONDS = Histogram(
    "twinhub_registry_search_seconds",
    "Time to answer one catalogue search (items of the services collection, facets "
    "included), in seconds.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
GATEWAY_REQUESTS = Counter(
    "twinhub_registry_gateway_requests",
    "Requests to registered web services through the sign-on gateway, by outcome "
    "(2xx/3xx/4xx/5xx: the upstream's answer; refused: the gateway's own refusal).",
    ["outcome"],
    registry=REGISTRY,
)
GATEWAY_SECONDS = Histogram(
    "twinhub_registry_gateway_seconds",
    "Time from a gateway request to the upstream's response headers, in seconds.",
    registry=REGISTRY,
)
HEALTH_CHECKS = Counter(
    "twinhub_registry_health_checks",
    "Health checks of integrated services' upstreams, by the status found (up/down/unknown).",
    ["status"],
    registry=REGISTRY,
)
OUTBOUND_REFUSED = Counter(
    "twinhub_registry_outbound_refused",
    "Fetches of provider-supplied URLs the outbound guard refused, by reason (scheme, "
    "address, redirect, size, time).",
    ["reason"],
    registry=REGISTRY,
)
