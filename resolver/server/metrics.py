"""Query and daemon metrics, counted in plain integers on the hot path and exported in Prometheus
text format by a collector at scrape time (prometheus_client renders; nothing locks per query)."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from resolver.core import wire as w
from resolver.core.local import COUNTER_LABELS, FAST_COUNTERS

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_TYPE_NAMES = {
    w.A: "A",
    w.AAAA: "AAAA",
    w.PTR: "PTR",
    w.SRV: "SRV",
    w.ANY: "ANY",
    w.SOA: "SOA",
    w.NS: "NS",
    15: "MX",
    16: "TXT",
    5: "CNAME",
    65: "HTTPS",
    64: "SVCB",
}


def type_name(qtype: int) -> str:
    return _TYPE_NAMES.get(qtype, "other")


class FastCounts:
    """Queries the fast paths answered: local ones in a list indexed by the core's counter slot (see
    `resolver.core.local.counter_slot`), cached ones by raw qtype bytes."""

    __slots__ = ("cached", "local")

    def __init__(self) -> None:
        self.local: list[int] = [0] * FAST_COUNTERS
        self.cached: Counter[bytes] = Counter()

    def local_items(self) -> Iterator[tuple[tuple[bytes, str], int]]:
        """((raw qtype, rule), count) of every local counter in use."""
        for slot, n in enumerate(self.local):
            if n:
                yield (COUNTER_LABELS[slot] if slot < len(COUNTER_LABELS) else (b"", "other")), n


class Metrics:
    """Counters of the running daemon; `gauges` callbacks report sandboxes and endpoints."""

    def __init__(self) -> None:
        self.queries: Counter[tuple[str, str, str, str]] = Counter()
        self.fast = FastCounts()
        self.upstream_errors: Counter[tuple[str, str]] = Counter()
        self.overload: Counter[str] = Counter()
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.gauges: dict[str, Callable[[], float]] = {}

    def count(self, qtype: int, outcome: str, source: str, transport: str) -> None:
        self.queries[(type_name(qtype), outcome, source, transport)] += 1

    def observe(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def total_queries(self) -> int:
        return sum(self.queries.values()) + sum(self.fast.local) + sum(self.fast.cached.values())

    def render(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        queries = CounterMetricFamily(
            "resolver_queries",
            "DNS queries answered, by type, outcome, source and transport",
            labels=["type", "outcome", "source", "transport"],
        )
        merged: Counter[tuple[str, str, str, str]] = Counter(m.queries)
        for (qtype_bytes, rule), n in m.fast.local_items():
            merged[(type_name(int.from_bytes(qtype_bytes, "big")), rule, "local", "udp")] += n
        for qtype_bytes, n in m.fast.cached.items():
            merged[(type_name(int.from_bytes(qtype_bytes, "big")), "cache", "cache", "udp")] += n
        for labels, n in sorted(merged.items()):
            queries.add_metric(list(labels), n)
        yield queries
        errors = CounterMetricFamily(
            "resolver_upstream_errors",
            "Failed upstream attempts, by server and reason",
            labels=["server", "reason"],
        )
        for server_reason, n in sorted(m.upstream_errors.items()):
            errors.add_metric(list(server_reason), n)
        yield errors
        overload = CounterMetricFamily(
            "resolver_overload", "Queries refused with SERVFAIL because a limit was reached", labels=["limit"]
        )
        for label, n in sorted(m.overload.items()):
            overload.add_metric([label], n)
        yield overload
        yield self._latency()
        for name, read in sorted(m.gauges.items()):
            yield GaugeMetricFamily(f"resolver_{name}", f"Current number of {name}", value=read())

    def _latency(self) -> HistogramMetricFamily:
        m = self.metrics
        buckets, running = [], 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), m.latency_counts, strict=True):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return HistogramMetricFamily(
            "resolver_query_duration_seconds",
            "Time to answer queries that left the fast path (forwarded and general-path answers)",
            buckets=buckets,
            sum_value=m.latency_sum,
        )
