"""The short version of benchmarks/load_bench.py: dnsperf against 1 sandbox and against 20 sandboxes at
once, local and forwarded names mixed (a real dnsmasq upstream, the daemon's cache off), at a fixed rate
far below what one sandbox is answered at (hundreds of queries per second, where the benchmark measures
thousands even on a busy machine). No query may be lost or get SERVFAIL, and the daemon's RSS after the
runs stays within 10% of its RSS after a warm-up run.
"""

from __future__ import annotations

import shutil

import pytest

from benchmarks.load_bench import RSS_TOLERANCE, measure, rig

from .nstools import PREFIX

pytestmark = pytest.mark.netns

SANDBOXES = 20
SECONDS = 4.0
ONE_SANDBOX_RATE = 300.0
ALL_SANDBOXES_RATE = 300.0


def test_no_query_lost_and_memory_flat_under_load() -> None:
    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None:
            pytest.skip(f"the load test needs {tool}")
    with rig(SANDBOXES + 1, PREFIX) as r:
        one = measure(r, "1 sandbox", r.namespaces[:1], ONE_SANDBOX_RATE, SECONDS)
        many = measure(r, "20 sandboxes", r.namespaces[1:], ALL_SANDBOXES_RATE, SECONDS)
    for row in (one, many):
        assert row.perf.sent >= SECONDS * 300 * 0.8, f"{row.label}: dnsperf sent only {row.perf.sent}"
        assert row.perf.lost == 0, f"{row.label}: {row.perf.lost} of {row.perf.sent} queries lost"
        assert set(row.perf.rcodes) == {"NOERROR", "NXDOMAIN"}, f"{row.label}: {row.perf.rcodes}"
        assert row.perf.rcodes["NXDOMAIN"] > 0 and row.perf.rcodes["NOERROR"] > row.perf.rcodes["NXDOMAIN"]
    assert abs(many.rss_after - one.rss_before) <= RSS_TOLERANCE * one.rss_before, (
        f"RSS went from {one.rss_before} KiB to {many.rss_after} KiB"
    )
