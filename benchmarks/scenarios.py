"""The throughput scenarios: every server of a scenario gets the same query files, the same pinning and
the same dnsperf options, in one run, runs interleaved (run 1 of every server, then run 2...).

  local     local names: A/AAAA/PTR over the endpoints, 10% non-existent names under the domain
            (this daemon, dnsmasq with a hosts file, aardvark-dns 1.4)
  fwd-hit   forwarded names the server has cached (this daemon with its cache, dnsmasq with its cache)
  fwd-miss  forwarded names never asked before, every query goes to the upstream dnsmasq (this daemon
            with its cache, dnsmasq without cache, aardvark-dns, which has none, and the floor of a Python
            forwarder with a fresh socket per query, which checks nothing: what per-query ports cost)
  spread    the local load spread over N sandboxes of one daemon, one dnsperf per sandbox, against the
            same N clients all in one sandbox of the same daemon
  tcp       local names over TCP, several queries per connection (aardvark-dns 1.4 has no TCP)

Each server and its upstream run in a namespace of their own, pinned to the server core.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import dataset, load
from benchmarks.lab import Lab
from benchmarks.servers import (
    AARDVARK_LABEL,
    DNSMASQ_CACHE,
    DNSMASQ_HOSTS,
    DNSMASQ_NOCACHE,
    Daemon,
    Server,
    aardvark,
    dnsmasq_forwarder,
    dnsmasq_local,
    python_floor_forwarder,
    upstream,
    wait_answering,
)

RESOLVER = "resolver"
AARDVARK = AARDVARK_LABEL
# A forwarding run needs a distinct name per query: files are made for this many queries per second.
MISS_RATE_CAP = 150_000


@dataclass
class Options:
    seconds: float = 10.0
    runs: int = 3
    latency_seconds: float = 4.0
    endpoints: int = 1000
    spread: int = 100
    sandboxes: int = 1000
    containers: int = 30
    tcp_per_conn: int = 20


@dataclass
class Row:
    server: str
    runs: list[load.Measure] = field(default_factory=list)
    note: str = ""


@dataclass
class Scenario:
    name: str
    title: str
    anchor: str  # the row every other row is compared to
    rows: list[Row]


def compare(
    servers: list[Server],
    opts: Options,
    queries: Callable[[int], Path],
    warmup: Path,
    latency_queries: Callable[[int], Path] | None = None,
    tcp_per_conn: int = 0,
) -> list[Row]:
    rows = [Row(s.label) for s in servers]
    for server in servers:
        load.warm(server, warmup)
    for run in range(opts.runs):
        for server, row in zip(servers, rows, strict=True):
            measure = load.throughput(server, queries(run), opts.seconds, tcp_per_conn)
            if latency_queries is not None:
                measure.p50_ms, measure.p99_ms = load.latency(
                    server, latency_queries(run), opts.latency_seconds
                )
            row.runs.append(measure)
    return rows


def local_daemon(lab: Lab, netns: list[str], eps: list[dataset.Endpoint], tag: str) -> Daemon:
    """A daemon with one internal network under the domain; endpoint i joins sandbox i mod len(netns)."""
    daemon = Daemon(lab, tag)
    daemon.network("bench", domain=dataset.DOMAIN, internal=True)
    for ep in eps:
        daemon.join("bench", netns[ep.index % len(netns)], ep)
    return daemon


@contextlib.contextmanager
def local_servers(lab: Lab, opts: Options, with_aardvark: bool) -> Iterator[list[Server]]:
    with lab.scope():
        eps = dataset.endpoints(opts.endpoints)
        ours, theirs, avk = lab.add_namespaces(3)
        daemon = local_daemon(lab, [ours], eps, "local")
        ready = wait_answering(lab, daemon.server(RESOLVER, ours), f"host0.{dataset.DOMAIN}", daemon.log)
        hosts = dataset.hosts_file(lab.workdir / "hosts-local", eps, dataset.DOMAIN)
        anchor = dnsmasq_local(lab, theirs, hosts)
        yield [ready, anchor, *([aardvark(lab, avk, eps)] if with_aardvark else [])]


def local(lab: Lab, opts: Options) -> Scenario:
    queries = dataset.local_queries(lab.workdir / "local.txt", dataset.endpoints(opts.endpoints))
    with local_servers(lab, opts, with_aardvark=True) as servers:
        rows = compare(servers, opts, lambda _r: queries, queries, lambda _r: queries)
    title = f"local names: A/AAAA/PTR over {opts.endpoints} endpoints, 10% NXDOMAIN (UDP)"
    return Scenario("local", title, DNSMASQ_HOSTS, rows)


def tcp(lab: Lab, opts: Options) -> Scenario:
    queries = dataset.local_queries(lab.workdir / "local.txt", dataset.endpoints(opts.endpoints))
    with local_servers(lab, opts, with_aardvark=False) as servers:
        rows = compare(servers, opts, lambda _r: queries, queries, tcp_per_conn=opts.tcp_per_conn)
    title = f"local names over TCP, {opts.tcp_per_conn} queries per connection"
    return Scenario("tcp", title, DNSMASQ_HOSTS, rows)


@contextlib.contextmanager
def forwarding_servers(
    lab: Lab, opts: Options, cache: bool, with_aardvark: bool, with_floor: bool = False
) -> Iterator[list[Server]]:
    """This daemon (cache on: the default) and a dnsmasq forwarder (cache on or off), each in its own
    namespace with its own copy of the upstream on the same address; aardvark-dns and the Python floor
    forwarder likewise when asked."""
    with lab.scope():
        eps = dataset.endpoints(opts.endpoints)
        hosts = dataset.hosts_file(lab.workdir / "hosts-upstream", eps, dataset.HIT_ZONE)
        ours, theirs, avk, low = lab.add_namespaces(4)
        for netns in (ours, theirs, *([avk] if with_aardvark else []), *([low] if with_floor else [])):
            upstream(lab, netns, hosts)
        daemon = Daemon(lab, f"fwd-{'hit' if cache else 'miss'}")
        daemon.network("fwd", domain=dataset.DOMAIN)
        daemon.join("fwd", ours, eps[0], dns=[dataset.UPSTREAM])
        ready = wait_answering(lab, daemon.server(RESOLVER, ours), f"host0.{dataset.HIT_ZONE}", daemon.log)
        anchor = dnsmasq_forwarder(lab, theirs, cache)
        others = [*([aardvark(lab, avk, eps)] if with_aardvark else [])]
        yield [ready, anchor, *others, *([python_floor_forwarder(lab, low)] if with_floor else [])]


def forward_hit(lab: Lab, opts: Options) -> Scenario:
    queries = dataset.hit_queries(lab.workdir / "hit.txt", dataset.endpoints(opts.endpoints))
    with forwarding_servers(lab, opts, cache=True, with_aardvark=False) as servers:
        rows = compare(servers, opts, lambda _r: queries, queries, lambda _r: queries)
    title = "forwarded, cache hit (A/AAAA of names the upstream serves with TTL 300)"
    return Scenario("fwd-hit", title, DNSMASQ_CACHE, rows)


def forward_miss(lab: Lab, opts: Options) -> Scenario:
    warmup = dataset.hit_queries(lab.workdir / "hit.txt", dataset.endpoints(opts.endpoints))
    lines = math.ceil(opts.seconds * MISS_RATE_CAP)
    latency_lines = math.ceil(opts.latency_seconds * load.LATENCY_RATE * 1.2)
    files: dict[tuple[str, int], Path] = {}

    def miss_file(kind: str, count: int) -> Callable[[int], Path]:
        def make(run: int) -> Path:
            for (old_kind, old_run), path in list(files.items()):
                if old_kind == kind and old_run != run:
                    path.unlink(missing_ok=True)
                    del files[(old_kind, old_run)]
            if (kind, run) not in files:
                tag = run if kind == "load" else 1000 + run
                files[(kind, run)] = dataset.miss_queries(lab.workdir / f"miss-{kind}-{run}.txt", count, tag)
            return files[(kind, run)]

        return make

    with forwarding_servers(lab, opts, cache=False, with_aardvark=True, with_floor=True) as servers:
        rows = compare(servers, opts, miss_file("load", lines), warmup, miss_file("latency", latency_lines))
    for path in files.values():
        path.unlink(missing_ok=True)
    for row in rows:
        if any(m.sent > lines for m in row.runs):
            row.note = "names repeated: the query file was too short"
    title = "forwarded, cache miss (every name new, answered by the upstream dnsmasq)"
    return Scenario("fwd-miss", title, DNSMASQ_NOCACHE, rows)


def spread(lab: Lab, opts: Options) -> Scenario:
    eps = dataset.endpoints(opts.endpoints)
    queries = dataset.local_queries(lab.workdir / "local.txt", eps)
    n = opts.spread
    outstanding = math.ceil(100 / n)  # the same 100 queries in flight as one `dnsperf -q 100`
    one = Row(f"resolver, 1 sandbox, {n} clients")
    many = Row(f"resolver, {n} sandboxes, 1 client each")
    with lab.scope():
        sandboxes = lab.add_namespaces(n, lo_up=False)
        daemon = local_daemon(lab, sandboxes, eps, "spread")
        for netns in (sandboxes[0], sandboxes[-1]):
            server = wait_answering(
                lab, daemon.server(RESOLVER, netns), f"host0.{dataset.DOMAIN}", daemon.log
            )
        load.warm(server, queries)
        for _run in range(opts.runs):
            one.runs.append(load.spread(server, [sandboxes[0]] * n, queries, opts.seconds, outstanding))
            many.runs.append(load.spread(server, sandboxes, queries, opts.seconds, outstanding))
    title = f"the local load over {n} sandboxes of one daemon ({n} dnsperf, {outstanding} in flight each)"
    return Scenario("spread", title, one.server, [one, many])


THROUGHPUT = {"local": local, "fwd-hit": forward_hit, "fwd-miss": forward_miss, "spread": spread, "tcp": tcp}
