"""Limits: 5,000 forwarded queries against a low in-flight bound and a slow-ish upstream. Every query is
answered (NOERROR, or an immediate SERVFAIL past the bound), none is lost, the overload is counted in
/metrics, and the daemon's memory stays flat (RSS after the run against RSS after a warm-up)."""

from __future__ import annotations

from collections.abc import Callable

import dns.rcode
import pytest

from .conftest import Addresses, Daemon
from .helpers import ScriptedUpstream, answer_with, load, metric_sum

pytestmark = pytest.mark.netns

INFLIGHT = 50
WINDOW = 100  # queries the client keeps unanswered: twice the bound, well under the socket buffers
RSS_GROWTH_LIMIT_KIB = 30 * 1024


def test_5000_queries_at_the_inflight_bound(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    upstream = scripted(addresses.take(), answer_with(["10.9.9.9"], ttl=300, delay=0.02))
    daemon = start_daemon([upstream.address], limits_inflight_total=INFLIGHT, cache_size=1000)
    netns = make_netns()
    daemon.join(netns)

    warmup = load(netns, [f"w{i}.load.test" for i in range(1500)], WINDOW, expect_address="10.9.9.9")
    assert (warmup.lost, warmup.mismatched) == ([], 0)
    rss_before = daemon.rss_kib()

    result = load(netns, [f"q{i}.load.test" for i in range(5000)], WINDOW, expect_address="10.9.9.9")
    rss_after = daemon.rss_kib()

    assert result.lost == [], f"{len(result.lost)} queries never answered, e.g. ids {result.lost[:10]}"
    assert result.mismatched == 0
    assert result.answered == 5000
    assert set(result.rcodes) <= {dns.rcode.NOERROR, dns.rcode.SERVFAIL}, result.rcodes
    servfails = result.rcodes.get(dns.rcode.SERVFAIL, 0) + warmup.rcodes.get(dns.rcode.SERVFAIL, 0)
    assert result.rcodes.get(dns.rcode.SERVFAIL, 0) > 0, "the in-flight bound was never reached"
    assert result.rcodes.get(dns.rcode.NOERROR, 0) > 0

    metrics = daemon.metrics()
    overloaded = metric_sum(metrics, "resolver_overload_total")
    assert overloaded > 0
    # every SERVFAIL the clients saw was an overload refusal (the upstream itself never failed)
    assert overloaded == servfails
    assert metric_sum(metrics, "resolver_upstream_errors_total") == 0
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB, (
        f"RSS grew from {rss_before} KiB to {rss_after} KiB over 5000 queries"
    )
    assert daemon.status()["cache"]["entries"] <= 1000
    assert daemon.proc.poll() is None
