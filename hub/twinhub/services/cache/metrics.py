"""The cache's counters as Prometheus text (prometheus-client), from the store's stats."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

COUNTERS = {
    "hits": ("twinhub_cache_hits", "Requests answered without a fetch of their own"),
    "joined": ("twinhub_cache_joined", "Hits that read a download another request started"),
    "misses": ("twinhub_cache_misses", "Requests that started an upstream fetch"),
    "evictions": ("twinhub_cache_evictions", "Objects evicted to stay under max_size (LRU)"),
    "expired": ("twinhub_cache_expired", "Objects dropped for being older than max_age"),
    "errors": ("twinhub_cache_fetch_errors", "Upstream fetches that failed"),
    "bytes_served": ("twinhub_cache_served_bytes", "Bytes sent to clients"),
    "bytes_fetched": ("twinhub_cache_fetched_bytes", "Bytes fetched from sources"),
    "cancelled": ("twinhub_cache_cancelled", "Downloads stopped because every reader hung up"),
}
GAUGES = {
    "size": ("twinhub_cache_size_bytes", "Bytes held by complete objects"),
    "max_size": ("twinhub_cache_max_size_bytes", "The size limit (TwinhubCache.max_size)"),
    "objects": ("twinhub_cache_objects", "Complete objects held"),
    "downloading": ("twinhub_cache_downloads", "Upstream fetches in progress"),
}


class _StatsCollector:
    """Reads the values at scrape time: nothing to keep in step with the store."""

    def __init__(self, stats: Mapping[str, Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        for key, (name, doc) in COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=self.stats.get(key, 0))
        for key, (name, doc) in GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=self.stats.get(key, 0))


def render(stats: Mapping[str, Any]) -> tuple[bytes, str]:
    """(body, content type) of the metrics page for ``stats``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(stats))
    return generate_latest(registry), CONTENT_TYPE_LATEST
